"""The Claude agent against a loopback Messages API server, through the real ``anthropic`` SDK."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
import traceback
from pathlib import Path

import pytest

from pytest_autoresearch.agents.base import AgentFatal, AgentStop, NoProposal, Proposal, ProposalRequest
from pytest_autoresearch.agents.claude import ClaudeAgent, make_agent, render_view
from pytest_autoresearch.edits import apply_edits, check_surface
from pytest_autoresearch.legality import MetricAtLeast
from pytest_autoresearch.lineage import make_view
from pytest_autoresearch.task import Budget, Evaluator, Objective, Specialist, Surface, Task

sys.path.insert(0, str(Path(__file__).parent))
from fake_anthropic import FakeAnthropic, error, reply, researcher, text, tool_use  # noqa: E402

SECRET = "sk-ant-api03-TESTSECRET-0123456789abcdef"
TRAIN = textwrap.dedent("""\
    import math

    # autoresearch: begin opt
    lr = 0.2  # range: 0.01..2
    momentum = 0.9
    # autoresearch: end opt

    # autoresearch: begin arch
    width = 32
    # autoresearch: end arch


    def train(ctx):
        steps = int(100 * lr * width / 32)
        ctx.log(steps=steps, loss=math.exp(-momentum))
    """)
HELPERS = "def helper():\n    return 1\n"
PRICES = {"claude-test": {"input": 3.0, "output": 15.0, "cache_write": 3.75, "cache_read": 0.3},
          "claude-big": {"input": 15.0, "output": 75.0, "cache_write": 18.75, "cache_read": 1.5}}


@pytest.fixture
def task(tmp_path: Path) -> Task:
    recipe = tmp_path / "toy" / "recipe"
    recipe.mkdir(parents=True)
    (recipe / "train.py").write_text(TRAIN)
    (recipe / "helpers.py").write_text(HELPERS)
    evaluator = tmp_path / "toy" / "evaluator.py"
    evaluator.write_text("def evaluate(ctx):\n    return {'acc': 1.0}\n")
    specialists = (
        Specialist("opt", Surface(regions=("train.py::opt",)), "You tune the optimizer."),
        Specialist("arch", Surface(regions=("train.py::arch",)), "You change the architecture."),
        Specialist("data", Surface(files=("data_*.py",)), "You own data loading modules."),
    )
    return Task(name="toy", module_path=tmp_path / "toy" / "test_toy.py", baseline_recipe=recipe,
                budget=Budget(train_seconds=7.5, eval_seconds=5, seeds=(0, 1)),
                legality=(MetricAtLeast("acc", 0.9),),
                evaluator=Evaluator(script=evaluator, forbidden=(r"load_private",)),
                objective=Objective("train_seconds", "minimize"), specialists=specialists,
                brief="Toy task: train the tiny model as fast as possible at accuracy >= 0.9.")


def rec(trial: int, specialist: str, label: str, score: float | None, parent: int | None = 0, notes: str = "",
        hypothesis: str = "", diff: str = "") -> dict:
    return {"schema": 1, "task": "toy", "trial": trial, "session": "s", "specialist": specialist, "parent": parent,
            "hypothesis": hypothesis or f"idea {trial}", "expected_delta": None, "label": label, "score": score,
            "metrics": {}, "delta_vs_best": None, "commit": None, "diff": diff, "train_s": None, "eval_s": None,
            "seeds": [0], "agent": {"name": "offline"}, "usage": {}, "notes": notes, "started": "", "ended": ""}


def make_request(task: Task, specialist: str = "opt", records: list | None = None, parent: int = 0,
                 files: dict | None = None) -> ProposalRequest:
    records = records if records is not None else [rec(0, "baseline", "baseline", 5.0, parent=None)]
    view = make_view("toy", "train_seconds", "minimize", records)
    return ProposalRequest(task=task, specialist=task.specialist(specialist), trial=len(records), parent=parent,
                           files=files or {"train.py": TRAIN, "helpers.py": HELPERS}, view=view, seed=0)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)
    monkeypatch.delenv("ANTHROPIC_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("ANTHROPIC_BASE_URL", raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    with FakeAnthropic() as server:
        yield server


def agent_for(fake: FakeAnthropic, **over) -> ClaudeAgent:
    cfg = {"model": "claude-test", "models": {}, "base_url": fake.url, "max_retries": 2, "timeout": 20,
           "max_turns": 8, "prices": PRICES, "max_cost_usd": None, "max_tokens_total": None}
    cfg.update(over)
    return make_agent(cfg, seed=0)


def tool_results(body: dict) -> list[dict]:
    return [b for b in body["messages"][-1]["content"] if isinstance(b, dict) and b.get("type") == "tool_result"]


def everything_text(obj) -> str:
    """All text an object exposes: its fields, str/repr, and for exceptions the formatted traceback."""
    if isinstance(obj, BaseException):
        parts = [str(obj), repr(obj), "".join(traceback.format_exception(obj))]
        parts += [json.dumps(getattr(obj, "usage", {})), str(getattr(obj, "model", ""))]
        return "\n".join(parts)
    if dataclasses.is_dataclass(obj):
        return json.dumps(dataclasses.asdict(obj), default=str) + repr(obj)
    return str(obj)


USAGE = {"input_tokens": 1000, "output_tokens": 200, "cache_creation_input_tokens": 3000,
         "cache_read_input_tokens": 0}


def test_tool_edits_become_the_proposal(fake: FakeAnthropic, task: Task) -> None:
    fake.queue(
        reply(text("Looking."), tool_use("view", {"path": "train.py", "view_range": [3, 6]}), usage=USAGE),
        reply(tool_use("str_replace", {"path": "train.py", "old_str": "lr = 0.2", "new_str": "lr = 0.4"}),
              usage={"input_tokens": 100, "output_tokens": 50, "cache_read_input_tokens": 3000}),
        reply(tool_use("submit_trial", {"hypothesis": "Double the learning rate to converge in fewer steps.",
                                        "expected_delta": -0.5}), usage={"input_tokens": 10, "output_tokens": 30}),
    )
    agent = agent_for(fake)
    p = agent.propose(make_request(task))

    assert isinstance(p, Proposal)
    after = apply_edits({"train.py": TRAIN, "helpers.py": HELPERS}, p.edits)
    assert after["train.py"] == TRAIN.replace("lr = 0.2", "lr = 0.4") and after["helpers.py"] == HELPERS
    assert p.hypothesis.startswith("Double the learning rate") and p.expected_delta == -0.5
    assert p.parent is None and p.refused_edits == 0 and p.model == "claude-test"
    assert p.usage == {"input_tokens": 1110, "output_tokens": 280, "cache_creation_input_tokens": 3000,
                       "cache_read_input_tokens": 3000,
                       "cost_usd": round((1110 * 3 + 280 * 15 + 3000 * 3.75 + 3000 * 0.3) / 1e6, 6)}
    assert agent.usage() == p.usage

    assert len(fake.requests) == 3
    first = fake.requests[0]
    assert first["model"] == "claude-test" and "temperature" not in first
    assert [t["name"] for t in first["tools"]] == ["view", "str_replace", "insert", "create", "lineage_query",
                                                   "lineage_trial", "submit_trial"]   # no workbench: no smoke_test
    rules, files, role = (b["text"] for b in first["system"])
    assert all(b["cache_control"] == {"type": "ephemeral"} for b in first["system"])  # three cached blocks
    assert "Toy task: train the tiny model" in rules and "7.5 s" in rules and "acc>=0.9" in rules
    assert "'opt'" not in rules and "region 'opt' of train.py" in role          # shared rules, then the role
    assert "lr = 0.2" in files and "def helper" in files                        # the parent's files, all of them
    lineage, ask = first["messages"][0]["content"]
    assert lineage["text"].startswith("# Lineage of task toy") and "cache_control" not in lineage
    assert ask["cache_control"] == {"type": "ephemeral"}                        # the moving breakpoint
    # the view result went back as a tool_result with line numbers; each turn moves the cache breakpoint
    viewed = tool_results(fake.requests[1])[0]
    assert viewed["content"].startswith("     3\t# autoresearch: begin opt") and not viewed.get("is_error")
    assert viewed["cache_control"] == {"type": "ephemeral"}
    assert "lr = 0.4" in tool_results(fake.requests[2])[0]["content"]
    sent = fake.headers[0].get("x-api-key") or fake.headers[0].get("authorization", "")
    assert sent.endswith(SECRET)                                              # the SDK read it from the env


def test_out_of_surface_edits_are_refused_and_counted(fake: FakeAnthropic, task: Task) -> None:
    fake.queue(
        reply(tool_use("str_replace", {"path": "train.py", "old_str": "width = 32", "new_str": "width = 64"})),
        reply(tool_use("create", {"path": "evil.py", "file_text": "x = 1\n"}),
              tool_use("str_replace", {"path": "train.py", "old_str": "    ctx.log(",
                                       "new_str": "    print(1)\n    ctx.log("})),
        reply(tool_use("insert", {"path": "train.py", "insert_line": 5,
                                  "new_str": "data = load_private()"})),
        reply(tool_use("insert", {"path": "train.py", "insert_line": 5, "new_str": "nesterov = True"})),
        reply(tool_use("submit_trial", {"hypothesis": "Nesterov momentum.", "expected_delta": None})),
    )
    p = agent_for(fake).propose(make_request(task))

    assert p.refused_edits == 4
    errs = [r for body in fake.requests[1:4] for r in tool_results(body)]
    assert len(errs) == 4 and all(r["is_error"] for r in errs)
    assert "outside region(s) ['opt']" in errs[0]["content"] and "nothing was changed" in errs[0]["content"]
    assert "creates evil.py" in errs[1]["content"]
    assert "load_private" in errs[3]["content"]
    after = apply_edits({"train.py": TRAIN, "helpers.py": HELPERS}, p.edits)
    assert after == {"train.py": TRAIN.replace("momentum = 0.9\n", "momentum = 0.9\nnesterov = True\n"),
                     "helpers.py": HELPERS}
    check_surface({"train.py": TRAIN, "helpers.py": HELPERS}, after, task.specialist("opt").surface, "opt")
    assert p.expected_delta is None and "4 edits refused" in p.notes


def test_malformed_tool_input_gets_error_results(fake: FakeAnthropic, task: Task) -> None:
    fake.queue(
        reply(tool_use("str_replace", {"path": "train.py", "new_str": "x"}),            # old_str missing
              tool_use("insert", {"path": "train.py", "insert_line": "five", "new_str": "x"}),
              tool_use("view", ["train.py"]),                                          # not an object
              tool_use("rm_rf", {"path": "."}),                                        # unknown tool
              tool_use("view", {"path": "../evaluator.py"}),                           # leaves the recipe
              tool_use("str_replace", {"path": "train.py", "old_str": "lr = 9", "new_str": "lr = 1"}),
              tool_use("submit_trial", {"hypothesis": "nothing yet", "expected_delta": 0})),
        reply(tool_use("str_replace", {"path": "train.py", "old_str": "lr = 0.2", "new_str": "lr = ("}),
              tool_use("submit_trial", {"hypothesis": "broken", "expected_delta": "a lot"}),
              tool_use("submit_trial", {"hypothesis": "broken", "expected_delta": -1})),
        reply(tool_use("str_replace", {"path": "train.py", "old_str": "lr = (", "new_str": "lr = 0.3"}),
              tool_use("submit_trial", {"hypothesis": "lr 0.3", "expected_delta": -0.1, "parent": 77})),
        reply(tool_use("submit_trial", {"hypothesis": "lr 0.3", "expected_delta": -0.1})),
    )
    p = agent_for(fake).propose(make_request(task))

    first = tool_results(fake.requests[1])
    assert len(first) == 7 and all(r["is_error"] for r in first)
    assert "required field(s) 'old_str' missing" in first[0]["content"]
    assert "'insert_line' must be an integer" in first[1]["content"]
    assert "must be a JSON object" in first[2]["content"]
    assert "unknown tool 'rm_rf'" in first[3]["content"]
    assert "not inside the recipe folder" in first[4]["content"]
    assert "was not found" in first[5]["content"]
    assert "not changed any file" in first[6]["content"]
    second = tool_results(fake.requests[2])
    assert not second[0].get("is_error") and "does not compile" in second[0]["content"]   # warned, not refused
    assert "'expected_delta' must be a number or null" in second[1]["content"]
    assert "does not compile" in second[2]["content"] and second[2]["is_error"]
    third = tool_results(fake.requests[3])
    assert "trial 77 cannot be a parent" in third[1]["content"]
    assert p.refused_edits == 0 and p.expected_delta == -0.1
    assert apply_edits({"train.py": TRAIN, "helpers.py": HELPERS}, p.edits)["train.py"] == \
        TRAIN.replace("lr = 0.2", "lr = 0.3")


def test_session_without_submission_is_no_proposal(fake: FakeAnthropic, task: Task) -> None:
    fake.queue(reply(text("I think the lr is fine.")), reply(text("Really, it is fine.")))
    agent = agent_for(fake)
    with pytest.raises(NoProposal) as info:
        agent.propose(make_request(task))
    assert "without calling submit_trial" in str(info.value)
    assert info.value.model == "claude-test" and info.value.usage["output_tokens"] > 0
    assert "No trial is recorded until you call submit_trial" in \
        fake.requests[1]["messages"][-1]["content"][0]["text"]

    # the turn cap ends a session that keeps calling tools without submitting
    fake.queue(*[reply(tool_use("view", {"path": "train.py"})) for _ in range(3)])
    with pytest.raises(NoProposal, match="max_turns=3"):
        agent_for(fake, max_turns=3).propose(make_request(task))
    assert len(fake.requests) == 5


def test_thinking_blocks_go_back_verbatim_and_cut_replies_are_resumed(fake: FakeAnthropic, task: Task) -> None:
    thinking = {"type": "thinking", "thinking": "Momentum first.", "signature": "c2lnbmF0dXJl"}
    fake.queue(reply(text("Let me think at len"), stop_reason="max_tokens"),
               reply(thinking, tool_use("str_replace", {"path": "train.py", "old_str": "momentum = 0.9",
                                                        "new_str": "momentum = 0.95"})),
               reply(tool_use("submit_trial", {"hypothesis": "More momentum.", "expected_delta": -0.1})))
    p = agent_for(fake, request_extra={"output_config": {"effort": "medium"}}).propose(make_request(task))
    assert p.hypothesis == "More momentum."
    assert "cut off at max_tokens" in fake.requests[1]["messages"][-1]["content"][0]["text"]
    assert fake.requests[2]["messages"][-2]["content"][0] == thinking   # signed thinking returned untouched
    assert fake.requests[0]["output_config"] == {"effort": "medium"}    # request_extra reaches the API

    fake.queue(reply(text("I won't."), stop_reason="refusal"))
    with pytest.raises(NoProposal, match="declined"):
        agent_for(fake).propose(make_request(task))


def _happy_script() -> list:
    return [reply(tool_use("str_replace", {"path": "train.py", "old_str": "momentum = 0.9",
                                           "new_str": "momentum = 0.95"})),
            reply(tool_use("submit_trial", {"hypothesis": "More momentum.", "expected_delta": -0.1}))]


@pytest.mark.parametrize("status,headers", [(429, {"retry-after-ms": "1"}), (529, {"retry-after-ms": "1"}),
                                            (529, {"retry-after": "0.001"})])
def test_rate_limit_and_overload_are_retried(fake: FakeAnthropic, task: Task, status: int, headers: dict) -> None:
    fake.queue(error(status, headers=headers), error(status, headers=headers), *_happy_script())
    p = agent_for(fake, max_retries=2).propose(make_request(task))
    assert p.hypothesis == "More momentum."
    assert len(fake.requests) == 4 and fake.requests[0] == fake.requests[1] == fake.requests[2]
    assert [h.get("x-stainless-retry-count") for h in fake.headers[:3]] == ["0", "1", "2"]


def test_exhausted_retries_end_the_proposal_but_not_the_run(fake: FakeAnthropic, task: Task) -> None:
    agent = agent_for(fake, max_retries=1, max_consecutive_api_errors=2)
    for _ in range(3):  # transient errors never count towards stopping the run
        fake.queue(error(529, headers={"retry-after-ms": "1"}), error(529, headers={"retry-after-ms": "1"}))
        with pytest.raises(NoProposal, match="HTTP 529: overloaded_error"):
            agent.propose(make_request(task))
    fake.queue(*_happy_script())
    assert agent.propose(make_request(task)).hypothesis == "More momentum."


def test_persistent_request_errors_stop_the_run(fake: FakeAnthropic, task: Task) -> None:
    agent = agent_for(fake, max_consecutive_api_errors=2)
    fake.queue(error(400, "temperature is not supported"))
    with pytest.raises(NoProposal, match="HTTP 400: invalid_request_error: temperature is not supported"):
        agent.propose(make_request(task))
    fake.queue(error(400, "temperature is not supported"))
    with pytest.raises(AgentFatal, match="rejected 2 proposals in a row"):
        agent.propose(make_request(task))
    assert len(fake.requests) == 2  # a 400 is not retried


@pytest.mark.parametrize("stream", [False, True])
def test_slow_response_times_out_and_is_retried(fake: FakeAnthropic, task: Task, stream: bool) -> None:
    script = _happy_script()
    fake.queue(dataclasses.replace(script[0], delay=3.0), *script)
    limits = {"idle_timeout": 0.5} if stream else {"timeout": 0.5}   # streaming: no first event is idleness
    p = agent_for(fake, max_retries=1, stream=stream, **limits).propose(make_request(task))
    assert p.hypothesis == "More momentum." and len(fake.requests) == 3
    assert all(body.get("stream", False) is stream for body in fake.requests)


@pytest.mark.parametrize("status", [401, 403])
def test_auth_failure_is_fatal_and_never_shows_the_key(fake: FakeAnthropic, task: Task, status: int) -> None:
    fake.queue(error(status, f"invalid x-api-key {SECRET}"))   # even a server echoing the key is scrubbed
    with pytest.raises(AgentFatal) as info:
        agent_for(fake).propose(make_request(task))
    msg = str(info.value)
    assert f"HTTP {status}" in msg and "ANTHROPIC_API_KEY" in msg and "--autoresearch-agent offline" in msg
    assert SECRET not in everything_text(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert len(fake.requests) == 1  # not retried


def test_missing_credentials_are_fatal(fake: FakeAnthropic, task: Task, monkeypatch, tmp_path: Path) -> None:
    from pytest_autoresearch.agents import claude

    monkeypatch.delenv("ANTHROPIC_API_KEY")
    monkeypatch.setattr(claude, "_CREDENTIALS", {})  # none taken earlier in this process either
    for var in ("ANTHROPIC_CONFIG_DIR", "ANTHROPIC_PROFILE", "ANTHROPIC_IDENTITY_TOKEN",
                "ANTHROPIC_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))                  # no credentials profile on disk either
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / ".config"))
    with pytest.raises(AgentFatal, match="ANTHROPIC_API_KEY"):
        agent_for(fake).propose(make_request(task))
    assert fake.requests == []


def test_cost_cap_stops_proposing(fake: FakeAnthropic, task: Task) -> None:
    big = {"input_tokens": 200_000, "output_tokens": 10_000}   # $0.60 + $0.15 at claude-test prices
    fake.queue(reply(tool_use("str_replace", {"path": "train.py", "old_str": "lr = 0.2", "new_str": "lr = 0.3"}),
                     usage=big),
               reply(tool_use("submit_trial", {"hypothesis": "h", "expected_delta": 0}), usage=big))
    agent = agent_for(fake, max_cost_usd=1.0)
    p = agent.propose(make_request(task))          # under the cap when it started: runs to the end
    assert p.usage["cost_usd"] == pytest.approx(1.5)
    with pytest.raises(AgentStop, match=r"cost cap reached: \$1.5000 spent of max_cost_usd=\$1"):
        agent.propose(make_request(task))
    with pytest.raises(AgentStop):                  # and stays stopped
        agent.propose(make_request(task))
    assert len(fake.requests) == 2                  # no session was started after the cap


def test_token_cap_counts_failed_sessions_too(fake: FakeAnthropic, task: Task) -> None:
    fake.queue(reply(text("hmm"), usage={"input_tokens": 600, "output_tokens": 100}),
               reply(text("hmm"), usage={"input_tokens": 600, "output_tokens": 100}))
    agent = agent_for(fake, max_tokens_total=1000)
    with pytest.raises(NoProposal):
        agent.propose(make_request(task))
    with pytest.raises(AgentStop, match="token cap reached: 1,400 tokens"):
        agent.propose(make_request(task))


def test_lineage_view_shows_other_specialists_failures(fake: FakeAnthropic, task: Task) -> None:
    records = [
        rec(0, "baseline", "baseline", 5.0, parent=None),
        rec(1, "arch", "crash", None, notes="RuntimeError: mat1 and mat2 shapes cannot be multiplied (64x10)",
            hypothesis="Widen the stem to 64 channels"),
        rec(2, "opt", "keep", 4.2, hypothesis="Raise lr to 0.3",
            diff="--- a/train.py\n+++ b/train.py\n@@ -4 +4 @@\n-lr = 0.2\n+lr = 0.3\n"),
        rec(3, "data", "budget_overrun", None, parent=2, notes="train limit: 7.5 s exceeded (killed at 9.1 s)",
            hypothesis="Heavier augmentation"),
        rec(4, "arch", "gate_miss", 3.1, parent=2, notes="acc>=0.9: acc = 0.8712 < 0.9", hypothesis="Halve width"),
    ]
    fake.queue(*_happy_script())
    agent_for(fake).propose(make_request(task, "opt", records, parent=2))
    lineage, ask = (b["text"] for b in fake.requests[0]["messages"][0]["content"])
    assert "trial 1 [arch] crash" in lineage and "mat1 and mat2 shapes cannot be multiplied" in lineage
    assert "trial 3 [data] budget_overrun" in lineage and "killed at 9.1 s" in lineage
    assert "trial 4 [arch] gate_miss" in lineage and "acc = 0.8712 < 0.9" in lineage
    assert "## Current best\ntrial 2 [opt] keep train_seconds=4.2" in lineage
    assert "+lr = 0.3" in lineage                                    # the best's diff
    assert ask.startswith("Propose trial 5. Your edits apply to the files of trial 2")
    assert "<file path=\"train.py\">" in fake.requests[0]["system"][1]["text"]


def test_view_sizes_come_from_config(task: Task) -> None:
    records = [rec(0, "baseline", "baseline", 5.0, parent=None)]
    records += [rec(i, "opt", "crash", None, notes=f"failure number {i} " + "x" * 500) for i in range(1, 30)]
    view = make_view("toy", "train_seconds", "minimize", records, n_recent=2, n_failures=1)
    sizes = {"top_k": 5, "recent": 20, "failures": 3, "max_diff_lines": 10, "recent_diff_lines": 0,
             "notes_chars": 50}
    out = render_view(view, sizes)
    recent = out.split("## Recent trials of all specialists (oldest first)\n")[1].split("## ")[0]
    assert recent.count("\n- ") + recent.startswith("- ") == 20
    failures = out.split("## Recent failures and their notes\n")[1]
    assert failures.count("notes: failure number") == 3 and "failure number 29" in failures
    assert max(len(ln) for ln in failures.splitlines() if "notes:" in ln) <= 6 + len("notes: ") + 50


def test_per_specialist_model_and_prompt_caching(fake: FakeAnthropic, task: Task) -> None:
    agent = agent_for(fake, models={"arch": "claude-big"})
    fake.queue(reply(tool_use("str_replace", {"path": "train.py", "old_str": "width = 32",
                                              "new_str": "width = 48"})),
               reply(tool_use("submit_trial", {"hypothesis": "wider", "expected_delta": 0.2})))
    p1 = agent.propose(make_request(task, "arch"))
    fake.queue(reply(tool_use("str_replace", {"path": "train.py", "old_str": "width = 32",
                                              "new_str": "width = 40"})),
               reply(tool_use("submit_trial", {"hypothesis": "a bit wider", "expected_delta": 0.1})))
    p2 = agent.propose(make_request(task, "arch"))
    assert p1.model == p2.model == "claude-big" and fake.requests[0]["model"] == "claude-big"
    # the fake caches prefixes as the API does: the first call writes, the second reads what it wrote
    first, second, again = fake.usages[0], fake.usages[1], fake.usages[2]
    assert first["cache_creation_input_tokens"] > 0 and first["cache_read_input_tokens"] == 0
    assert second["cache_read_input_tokens"] >= first["cache_creation_input_tokens"]
    # the second session (same lineage, same parent) finds its whole first call in the cache
    assert again["cache_creation_input_tokens"] == 0 and again["input_tokens"] == 0
    assert again["cache_read_input_tokens"] == first["cache_creation_input_tokens"]
    u = p2.usage
    assert u["cost_usd"] == pytest.approx(round((u["input_tokens"] * 15 + u["output_tokens"] * 75
                                                 + u["cache_creation_input_tokens"] * 18.75
                                                 + u["cache_read_input_tokens"] * 1.5) / 1e6, 6))
    fake.queue(*_happy_script())
    assert agent.propose(make_request(task, "opt")).model == "claude-test"
    assert "claude-big" in agent.describe() and SECRET not in agent.describe()


def test_naming_another_parent_gives_portable_edits(fake: FakeAnthropic, task: Task) -> None:
    records = [rec(0, "baseline", "baseline", 5.0, parent=None), rec(1, "arch", "discard", 5.1),
               rec(2, "opt", "keep", 4.0)]
    fake.queue(reply(tool_use("str_replace", {"path": "train.py", "old_str": "momentum = 0.9",
                                              "new_str": "momentum = 0.8"})),
               reply(tool_use("submit_trial", {"hypothesis": "Less momentum on the wider net.",
                                               "expected_delta": -0.1, "parent": 1})))
    p = agent_for(fake).propose(make_request(task, "opt", records, parent=2))
    assert p.parent == 1
    trial1_files = {"train.py": TRAIN.replace("width = 32", "width = 64"), "helpers.py": HELPERS}
    assert apply_edits(trial1_files, p.edits)["train.py"] == \
        TRAIN.replace("width = 32", "width = 64").replace("momentum = 0.9", "momentum = 0.8")


def test_whole_file_surface_can_create_files(fake: FakeAnthropic, task: Task) -> None:
    fake.queue(reply(tool_use("view", {"path": "."})),
               reply(tool_use("create", {"path": "data_fast.py", "file_text": "BATCH = 256\n"})),
               reply(tool_use("submit_trial", {"hypothesis": "A faster loader module.", "expected_delta": -1})))
    p = agent_for(fake).propose(make_request(task, "data"))
    listing = tool_results(fake.requests[1])[0]["content"]
    assert "train.py  (15 lines; read-only for you)" in listing
    assert "you may also create files matching: data_*.py" in listing
    assert [(e.path, e.create) for e in p.edits] == [("data_fast.py", True)]
    assert apply_edits({"train.py": TRAIN}, p.edits)["data_fast.py"] == "BATCH = 256\n"


def test_scripted_researcher_edits_inside_the_surface(fake: FakeAnthropic, task: Task) -> None:
    fake.responder = researcher(seed=1)
    for name in ("opt", "arch"):
        p = agent_for(fake).propose(make_request(task, name))
        after = apply_edits({"train.py": TRAIN, "helpers.py": HELPERS}, p.edits)
        assert after["train.py"] != TRAIN and p.refused_edits == 0
        check_surface({"train.py": TRAIN, "helpers.py": HELPERS}, after, task.specialist(name).surface, name)


def test_the_key_never_appears_in_what_the_agent_returns_or_raises(fake: FakeAnthropic, task: Task) -> None:
    agent = agent_for(fake, max_cost_usd=10.0)
    seen: list = [agent.describe()]
    fake.queue(*_happy_script())
    seen.append(agent.propose(make_request(task)))
    fake.queue(reply(text(f"my key is {SECRET}")), reply(text("no")))
    with pytest.raises(NoProposal) as no:
        agent.propose(make_request(task))
    seen.append(no.value)
    fake.queue(*[error(500, f"upstream said {SECRET}", headers={"retry-after-ms": "1"}) for _ in range(3)])
    with pytest.raises(NoProposal) as crashed:
        agent.propose(make_request(task))
    assert "[redacted]" in str(crashed.value)
    seen.append(crashed.value)
    seen.append(agent.usage())
    for obj in seen:
        assert SECRET not in everything_text(obj)
    for body in fake.requests:   # nor is it ever sent to the model
        assert SECRET not in json.dumps(body).replace(f"my key is {SECRET}", "")


def test_packaged_config_is_valid_and_errors_name_the_key() -> None:
    agent = make_agent({}, seed=0)            # conf/agent/claude.yaml supplies every default
    assert agent.cfg["name"] == "claude" and agent.cfg["max_turns"] >= 1
    assert agent.cfg["prices"]["default"]["output"] > 0
    with pytest.raises(ValueError, match="'max_turns'.*positive integer"):
        make_agent({"max_turns": 0}, seed=0)
    with pytest.raises(ValueError, match="prices.claude-x"):
        make_agent({"prices": {"claude-x": {"input": 1}}}, seed=0)
    with pytest.raises(ValueError, match="view.recent"):
        make_agent({"view": {"recent": -1}}, seed=0)


def test_end_to_end_trials_with_the_claude_agent(tmp_path: Path) -> None:
    """``pytest --autoresearch-agent claude`` on a toy task, the SDK talking to the loopback server."""
    from toytask import write_toy_task

    # the recipe prints its whole environment: the key must not be in it (trial processes never get it)
    write_toy_task(tmp_path, train_extra="import os; print('ENV', sorted(os.environ.items()))")
    # and after each trial, the harness' own environment: the key left it when the client was built
    (tmp_path / "conftest.py").write_text(
        "import json, os\n"
        "def pytest_autoresearch_trial_recorded(config, record):\n"
        "    with open(os.path.join(str(config.rootpath), 'harness_env.jsonl'), 'a') as f:\n"
        "        f.write(json.dumps(sorted(k for k in os.environ if k.startswith('ANTHROPIC'))) + '\\n')\n")
    lineage = tmp_path / "lineage"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "PYTEST_"))}
    with FakeAnthropic(responder=researcher(seed=3)) as server:
        env.update(ANTHROPIC_API_KEY=SECRET, ANTHROPIC_BASE_URL=server.url, NO_PROXY="127.0.0.1,localhost",
                   PYTHONDONTWRITEBYTECODE="1")
        proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-s",
                               "--autoresearch-trials", "2", "--autoresearch-agent", "claude",
                               "--autoresearch-override", "schedule=round_robin",  # both specialists get a turn
                               "--autoresearch-lineage", str(lineage), "tasks/toy"],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        requests = list(server.requests)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    records = [json.loads(line) for line in (lineage / "toy" / "lineage.jsonl").read_text().splitlines()]
    trials = [r for r in records if r["trial"] > 0]
    assert len(trials) == 2 and {r["specialist"] for r in trials} == {"opt", "arch"}
    for r in trials:
        expected_model = {"opt": "claude-sonnet-5-5", "arch": "claude-opus-5-5"}[r["specialist"]]  # per specialist
        assert r["agent"]["name"] == "claude" and r["agent"]["model"] == expected_model
        u = r["usage"]
        assert u["cache_read_input_tokens"] > 0 and u["output_tokens"] > 0 and u["cost_usd"] > 0
        assert r["label"] not in ("preflight_crash", "surface_violation", "harness_error"), r
        assert r["diff"] and r["hypothesis"].startswith("Scaling one tunable constant")
    assert len(requests) == 10     # 5 turns per session: list, view, edit, smoke test, submit
    smoke = [b for body in requests for m in body["messages"] if isinstance(m["content"], list)
             for b in m["content"] if b.get("type") == "tool_result" and b.get("content", "").startswith("ok: train")]
    assert len(smoke) == 2, smoke          # the smoke test ran the edited recipe in the trial sandbox
    assert all("[session] claude" in r["agent_notes"] and "1 smoke test(s) (1 ok)" in r["agent_notes"]
               for r in trials)
    assert all(r["kind"].startswith("train.py:") for r in trials)          # the knob the edit changed
    assert "claude (model claude-sonnet-5-5" in output          # the header names agent and model
    assert SECRET not in output
    seen = [json.loads(x) for x in (tmp_path / "harness_env.jsonl").read_text().splitlines()]
    assert len(seen) == 2 and all("ANTHROPIC_API_KEY" not in names for names in seen), seen
    files = [p for p in lineage.rglob("*") if p.is_file()]
    assert any(p.name == "lineage.jsonl" for p in files)
    assert any(b"ENV [" in p.read_bytes() for p in files)          # the recipe's log was kept
    for path in files:
        assert SECRET.encode() not in path.read_bytes(), path
    history = subprocess.run(["git", "-C", str(lineage / "toy" / "repo"), "log", "--all", "-p"],
                             capture_output=True, text=True).stdout    # git objects are compressed: ask git
    assert "autoresearch: begin opt" in history and SECRET not in history
