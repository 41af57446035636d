"""The Claude agent's hardening, in the Messages API's wire format (the real SDK against the loopback server):
replies cut off at max_tokens, tool inputs that miss their schema, malformed 200s, broken streams, timeouts."""
from __future__ import annotations

import pytest

from pytest_autoresearch.agents.base import NoProposal
from pytest_autoresearch.agents.claude import make_agent, validate_config
from pytest_autoresearch.edits import apply_edits

from fake_anthropic import FakeAnthropic, Step, malformed, reply, text, tool_use, validate_request
from test_claude_agent import HELPERS, TRAIN, agent_for, fake, make_request, task, tool_results  # noqa: F401

EDIT = {"path": "train.py", "old_str": "lr = 0.2", "new_str": "lr = 0.3"}
SUBMIT = {"hypothesis": "A higher learning rate.", "expected_delta": -0.1}


def applied(p) -> str:
    return apply_edits({"train.py": TRAIN, "helpers.py": HELPERS}, p.edits)["train.py"]


@pytest.mark.parametrize("stream", [True, False])
def test_a_reply_cut_off_at_max_tokens_is_never_executed(fake: FakeAnthropic, task, stream: bool) -> None:
    cut = tool_use("str_replace", {"path": "train.py", "old_str": "momentum = 0.9", "new_str": "momentum = 0."})
    fake.queue(reply(text("I will lower the momentum"), cut, stop_reason="max_tokens"),
               reply(tool_use("str_replace", EDIT)), reply(tool_use("submit_trial", SUBMIT)))
    p = agent_for(fake, stream=stream, max_tokens=300).propose(make_request(task))

    answer = fake.requests[1]["messages"][-1]["content"]
    assert answer[0] == {"type": "tool_result", "tool_use_id": cut["id"], "is_error": True,
                         "content": "not executed: your reply was cut off at max_tokens (300) before this call was "
                                    "complete"}
    assert answer[-1]["type"] == "text" and "cut off at max_tokens (300 tokens)" in answer[-1]["text"]
    assert "nothing in it was executed" in answer[-1]["text"]
    assert applied(p) == TRAIN.replace("lr = 0.2", "lr = 0.3")       # the cut edit never landed
    assert fake.rejected == []                                       # every tool_use got its tool_result

    fake.queue(*[reply(text("long..."), stop_reason="max_tokens") for _ in range(3)])
    with pytest.raises(NoProposal, match="cut off at max_tokens=16000 3 times in a row") as info:
        agent_for(fake, stream=stream).propose(make_request(task))
    assert not info.value.agent_side                                 # the model's doing: a preflight_crash


def test_required_and_unknown_fields_are_tool_errors_the_model_fixes(fake: FakeAnthropic, task) -> None:
    fake.queue(reply(tool_use("str_replace", EDIT),
                     tool_use("submit_trial", {"hypothesis": "A higher learning rate."})),           # no expected_delta
               reply(tool_use("submit_trial", {**SUBMIT, "confidence": 0.9})),                      # unknown field
               reply(tool_use("submit_trial", {**SUBMIT, "expected_delta": None, "notes": "lr sweep: try 0.4 next"})))
    p = agent_for(fake).propose(make_request(task))
    first = tool_results(fake.requests[1])
    assert not first[0].get("is_error") and first[1]["is_error"]
    assert first[1]["content"].startswith("submit_trial: required field(s) 'expected_delta' missing "
                                          "(expected_delta: Predicted change of train_seconds versus the parent")
    second = tool_results(fake.requests[2])[0]
    assert second["is_error"] and "unknown field(s) 'confidence'" in second["content"]
    assert "expected_delta, hypothesis, notes, parent" in second["content"]
    assert p.expected_delta is None and p.notes.startswith("lr sweep: try 0.4 next\n[session] claude claude-test")
    assert p.kind == "train.py:opt:lr:up" and p.step == pytest.approx(1.5)   # what the edit changed, and by how much
    assert fake.rejected == []


@pytest.mark.parametrize("bad,stream", [(malformed(), False), (malformed(), True),
                                        (malformed("<html>gateway</html>", "text/html"), False),
                                        (malformed('{"type": "message", "role": "assistant"}'), False)],
                         ids=["truncated-json", "json-to-a-stream", "not-json", "no-content"])
def test_malformed_replies_are_retried_then_end_as_agent_side_failures(fake: FakeAnthropic, task, bad: Step,
                                                                       stream: bool) -> None:
    fake.queue(bad, reply(tool_use("str_replace", EDIT)), bad, bad, reply(tool_use("submit_trial", SUBMIT)))
    p = agent_for(fake, stream=stream, max_retries=2).propose(make_request(task))
    assert applied(p) == TRAIN.replace("lr = 0.2", "lr = 0.3") and len(fake.requests) == 5

    fake.queue(bad, bad, bad)
    with pytest.raises(NoProposal) as info:
        agent_for(fake, stream=stream, max_retries=2).propose(make_request(task))
    assert info.value.agent_side                                     # recorded as agent_error, never harness_error
    assert "failed 3 time(s): malformed reply" in str(info.value)


def test_a_stream_that_breaks_or_stalls_is_retried(fake: FakeAnthropic, task) -> None:
    overloaded = reply(tool_use("str_replace", EDIT))
    overloaded.stream_error = "overloaded_error"                     # an error event after the content
    fake.queue(overloaded, reply(tool_use("str_replace", EDIT), stall=3.0),
               reply(tool_use("str_replace", EDIT)), reply(tool_use("submit_trial", SUBMIT)))
    p = agent_for(fake, idle_timeout=0.5, max_retries=2).propose(make_request(task))
    assert applied(p) == TRAIN.replace("lr = 0.2", "lr = 0.3")
    assert len(fake.requests) == 4 and all(b["stream"] for b in fake.requests)
    assert fake.requests[0]["messages"] == fake.requests[1]["messages"] == fake.requests[2]["messages"]

    bad = reply(text("x"))
    bad.stream_error = "invalid_request_error"                       # not transient: no retry, counted
    fake.queue(bad)
    with pytest.raises(NoProposal, match="in the stream: invalid_request_error"):
        agent_for(fake).propose(make_request(task))
    assert len(fake.requests) == 5


@pytest.mark.parametrize("value", [0, -5, None, True, "10"])
def test_timeouts_must_be_positive_numbers(value) -> None:
    with pytest.raises(ValueError, match="'timeout': must be a positive number of seconds"):
        make_agent({"timeout": value}, seed=0)
    with pytest.raises(ValueError, match="'idle_timeout'"):
        validate_config({"idle_timeout": value})
    with pytest.raises(ValueError, match="'smoke.seconds'"):
        validate_config({"smoke": {"seconds": value}})
    assert validate_config({"smoke": {"rows": 0}})["smoke"]["seconds"] == 60   # smoke settings merge one by one


def test_a_bad_agent_timeout_is_a_usage_error_at_compose() -> None:
    from pytest_autoresearch.config import ConfigError, compose

    for bad in ("agent.timeout=0", "agent.timeout=null", "agent.idle_timeout=-1", "agent.smoke.seconds=abc"):
        with pytest.raises(ConfigError, match=f"{bad.split('=')[0]}=.* must be a number of seconds > 0"):
            compose([bad], agent="claude")
    assert compose(["agent.timeout=30"], agent="claude").agent.timeout == 30
    assert compose([], agent="offline")        # agents without these limits are not asked for them


def test_the_fake_refuses_what_the_api_refuses() -> None:
    use = tool_use("view", {"path": "."})
    turn = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": [use]}]
    ok = {"model": "m", "max_tokens": 10, "messages": turn + [
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use["id"], "content": "x"}]}]}
    assert validate_request(ok) == ""
    assert "without `tool_result` blocks" in validate_request(
        {**ok, "messages": turn + [{"role": "user", "content": [{"type": "text", "text": "?"}]}]})
    cc = {"type": "ephemeral"}
    five = [{"type": "text", "text": f"s{i}", "cache_control": cc} for i in range(5)]
    assert "maximum of 4 blocks with cache_control" in validate_request({**ok, "system": five})
    late = [{"type": "text", "text": "a", "cache_control": cc},
            {"type": "text", "text": "b", "cache_control": {"type": "ephemeral", "ttl": "1h"}}]
    assert "must not come after a ttl='5m'" in validate_request({**ok, "system": late})
