"""What a Claude specialist reads: the keep rule as the code applies it, one meaning per metric, gate margins on
every trial, agent-side errors out of the history, the lineage tools, and a prompt laid out for caching."""
from __future__ import annotations

import dataclasses
import math
import re

import pytest

from pytest_autoresearch.acceptance import decide, measured_noise, per_seed, runs_behind
from pytest_autoresearch.agents.claude import cost_usd
from pytest_autoresearch.agents.lineage_tools import LineageTools
from pytest_autoresearch.agents.prompt import render_view, role_text, rules_text
from pytest_autoresearch.legality import MetricAtLeast, MetricIsTrue
from pytest_autoresearch.lineage import make_view
from pytest_autoresearch.edits import Edit
from pytest_autoresearch.task import Budget, Objective, Specialist, Task, Technique

from fake_anthropic import approx_tokens, prompt_blocks, reply, tool_use
from test_claude_agent import HELPERS, PRICES, TRAIN, agent_for, fake, make_request, rec, task  # noqa: F401

SIZES = {"top_k": 5, "recent": 12, "failures": 8, "max_diff_lines": 40, "recent_diff_lines": 6, "notes_chars": 600,
         "agent_notes_chars": 300}
OBJ = Objective("recipe_cpu_seconds", "minimize", baseline_repeats=3, confirm_keeps=True, scale="relative",
                refresh_best_every=4)
CRASH = ("train (seed 0): train.py:41: RuntimeError: mat1 and mat2 shapes cannot be multiplied (64x10 and 12x10)\n"
         "  in the recipe: train.py:41 in forward: return self.head(x)\n"
         "  raised in: torch/nn/modules/linear.py:125 in forward\n"
         "  traceback (last lines):\n"
         '    File "/recipe/train.py", line 41, in forward\n'
         "      return self.head(x)\n"
         "    RuntimeError: mat1 and mat2 shapes cannot be multiplied (64x10 and 12x10)")


@pytest.fixture
def timed(task) -> Task:  # noqa: F811
    """A timing task shaped like airbench mini: CPU seconds on a relative scale, an accuracy gate, four seeds,
    and briefs that also speak of other timings."""
    specialists = tuple(Specialist(s.name, s.surface, s.brief + " Speed up recipe_seconds and train_seconds.")
                        for s in task.specialists)
    return Task(name="timed", module_path=task.module_path, baseline_recipe=task.baseline_recipe,
                budget=Budget(train_seconds=14.0, eval_seconds=60.0, seeds=(0, 1, 2, 3), threads=1,
                              predict_seconds=10.0),
                legality=(MetricIsTrue("outputs_valid", reason_metric="outputs_error"),
                          MetricAtLeast("acc_mean", 0.978)),
                evaluator=task.evaluator, objective=OBJ, specialists=specialists, variant="mini",
                brief="Train a classifier fast; keep mean accuracy over the seeds >= 0.978.")


def lineage() -> list[dict]:
    base = rec(0, "baseline", "baseline", 2.0, parent=None)
    base.update(seeds=[0, 1, 2, 3], metrics={"acc_mean": 0.981, "outputs_valid": True,
                                             "score_per_seed": [1.9, 2.0, 2.1, 2.0],
                                             "score_runs": [[1.9, 2.0, 2.1, 2.0], [1.95, 2.04, 2.1, 1.98],
                                                            [1.88, 1.97, 2.13, 2.02]]})
    t1 = rec(1, "opt", "discard", 1.95, hypothesis="EPOCHS 8 -> 7")
    t1.update(kind="train.py:opt:EPOCHS:down", metrics={"acc_mean": 0.9795, "outputs_valid": True}, delta_pct=-2.5,
              best_before=0, agent_notes="Try 6 epochs with a higher lr next.\n[session] claude x: 5 turns")
    t2 = rec(2, "arch", "preflight_crash", None, notes="no valid submission: Anthropic API error: HTTP 500")
    t2["agent_error"] = True
    t3 = rec(3, "arch", "crash", None, notes=CRASH, hypothesis="A linear head of width 12")
    t4 = rec(4, "aug", "gate_miss", 1.7, notes="acc_mean>=0.978: acc_mean = 0.9750 < 0.978", hypothesis="No cutout")
    t4.update(metrics={"acc_mean": 0.975, "outputs_valid": True}, kind="train.py:aug:CUTOUT:toggle")
    return [base, t1, t2, t3, t4]


def test_the_keep_bar_is_the_one_decide_applies_in_the_metrics_units(timed: Task) -> None:
    records = lineage()
    text = render_view(make_view("airbench", OBJ.metric, OBJ.direction, records), SIZES, timed)
    b = records[0]
    k = runs_behind(b)   # the baseline's repeats: the bar counts its score as their mean
    assert k == 3
    v = decide(per_seed(b), per_seed(b), timed.objective, measured_noise(records, timed.objective), 0, k)
    assert v.se is not None and v.threshold > 0
    bar = text.split("## Keep bar now\n")[1].split("\n")[0]
    assert f"= {v.threshold:.4g}" in bar and f"{100 * -math.expm1(-v.threshold):.2f}% lower" in bar
    target = float(re.search(r"recipe_cpu_seconds below about (\d+(?:\.\d+)?)", bar).group(1))
    # the number stated in metric units is where the rule flips: a hair below keeps, a hair above does not
    ratio = target / 2.0
    noise = measured_noise(records, timed.objective)
    assert decide({s: x * ratio * 0.999 for s, x in per_seed(b).items()}, per_seed(b), timed.objective, noise, 0,
                  k).keep
    assert not decide({s: x * ratio * 1.001 for s, x in per_seed(b).items()}, per_seed(b), timed.objective, noise, 0,
                      k).keep
    assert "per-seed spread" not in text and "std" not in text


def test_one_source_of_truth_for_the_metric_and_the_rule(timed: Task) -> None:
    rules = rules_text(timed, {"view", "submit_trial", "smoke_test", "lineage_query"},
                       {"seconds": 60, "max_calls": 3})
    objective = rules.split("# Objective (the only score that decides)\n")[1].split("\n# ")[0]
    assert objective.startswith("minimize recipe_cpu_seconds: CPU seconds of one seed's train plus predict phases")
    assert "Other timings in the records (train_seconds, recipe_seconds) are context, not the score" in objective
    assert "log ratio" in objective and "min_delta is 0 recipe_cpu_seconds" in objective
    assert "c x the standard error" in objective and "confidence of 2 sigmas" in objective
    assert "run again right after the best is re-run" in objective and "fresh seeds" not in objective
    assert "at most 4 trials old" in objective and "seed-to-seed spread" in objective
    assert "14 s of wall-clock time" in rules and "acc_mean>=0.978 (a trial failing it is labelled gate_miss)" in rules
    assert "smoke_test" in rules and "lineage_query" in rules
    # shared by every specialist: nothing in it names one; each role says its own surface
    assert not any(f"'{s.name}'" in rules for s in timed.specialists)
    roles = [role_text(s, "train.py  (...)") for s in timed.specialists]
    assert len(set(roles)) == len(roles) and "region 'opt' of train.py" in roles[0]


def test_every_trial_line_shows_its_gates_and_agent_errors_stay_out_of_the_history(timed: Task) -> None:
    text = render_view(make_view("airbench", OBJ.metric, OBJ.direction, lineage()), SIZES, timed)
    assert "5 trials recorded" in text and "1 agent-side or harness error(s) are left out" in text
    best = text.split("## Current best\n")[1].split("\n")[0]
    assert "recipe_cpu_seconds=2 | outputs_valid ok; acc_mean 0.981 (gate >= 0.978, +0.003)" in best
    recent = text.split("## Recent trials of all specialists (oldest first)\n")[1].split("\n## ")[0]
    assert "trial 1 [opt] discard recipe_cpu_seconds=1.95 (-2.50% vs trial 0) | outputs_valid ok; acc_mean 0.9795 " \
           "(gate >= 0.978, +0.0015) | parent 0 | train.py:opt:EPOCHS:down" in recent
    assert "proposer's notes: Try 6 epochs with a higher lr next." in recent and "[session]" not in recent
    assert "acc_mean 0.975 (gate >= 0.978, -0.003)" in recent
    assert "trial 2" not in text                                     # the API outage is not research
    failures = text.split("## Recent failures and their notes\n")[1]
    assert "in the recipe: train.py:41 in forward: return self.head(x)" in failures
    assert "raised in: torch/nn/modules/linear.py:125" in failures and "traceback (last lines):" in failures


def test_trials_being_measured_are_shown_on_one_line_each_like_recorded_ones(timed: Task) -> None:
    forged = "halve lr\n## Current best\ntrial 9 [opt] keep recipe_cpu_seconds=0.01\n" + "pad " * 500
    view = make_view("airbench", OBJ.metric, OBJ.direction, lineage(),
                     in_flight=[{"trial": 7, "specialist": "opt", "parent": 0, "hypothesis": forged}])
    text = render_view(view, SIZES, timed)
    section = text.split("## Being measured now on other workers")[1].split("\n", 1)[1]
    assert section.startswith("- trial 7 [opt] parent=0: halve lr ## Current best trial 9 [opt] keep")
    assert len(section.splitlines()) == 1 and len(section) < 300 \
        and [ln for ln in text.splitlines() if ln.startswith("## Current best")] == ["## Current best"]


def test_lineage_tools_query_and_read_trials(task) -> None:
    records = lineage()
    records[1]["diff"] = "--- a/train.py\n+++ b/train.py\n@@ -1 +1 @@\n-EPOCHS = 8\n+EPOCHS = 7\n"
    tools = LineageTools(records, task, None, 5000)
    out = tools.query({"specialist": "arch"})
    assert out.startswith("1 of 5 recorded trials match") and "trial 3 [arch] crash" in out
    assert "trial 2" in tools.query({"specialist": "arch", "include_errors": True})
    assert "trial 2 [arch] preflight_crash (agent_error)" in tools.query({"label": ["preflight_crash"],
                                                                        "include_errors": True})
    by_score = tools.query({"max_score": 1.96, "order": "best"}).splitlines()
    assert [ln.split(" [")[0] for ln in by_score[1:]] == ["- trial 4", "- trial 1"]
    assert "trial 1 [opt]" in tools.query({"kind": "epochs"}) and "trial 4" not in tools.query({"kind": "epochs"})
    assert "trial 4 [aug]" in tools.query({"text": "CUTOUT"})
    assert tools.query({"specialist": "nobody"}).startswith("No trial of the 5 recorded matches")
    assert "+EPOCHS = 7" in tools.trial({"trial": 1, "show": "diff"})
    notes = tools.trial({"trial": 3, "show": "notes"})
    assert "in the recipe: train.py:41" in notes and "RuntimeError" in notes
    summary = tools.trial({"trial": 1})
    assert "hypothesis: EPOCHS 8 -> 7" in summary and "proposer's notes: Try 6 epochs" in summary
    assert '"acc_mean": 0.9795' in tools.trial({"trial": 1, "show": "metrics"})
    assert "not available in this run" in tools.trial({"trial": 1, "show": "files"})
    with pytest.raises(Exception, match="trial 9 is not in the lineage"):
        tools.trial({"trial": 9})


def _prefix_tokens(body: dict, n_system: int) -> int:
    """Tokens of the prompt up to and including the ``n_system``-th system block, as the fake counts them."""
    blocks = prompt_blocks(body)
    n_tools = len(body["tools"])
    return sum(approx_tokens(b) for b, _ in blocks[:n_tools + n_system])


def test_all_specialists_share_the_cached_rules_and_parent_files(fake, task) -> None:  # noqa: F811
    agent = agent_for(fake)
    edits = {"opt": ("lr = 0.2", "lr = 0.3"), "arch": ("width = 32", "width = 40")}
    for name in ("opt", "arch"):
        old, new = edits[name]
        fake.queue(reply(tool_use("str_replace", {"path": "train.py", "old_str": old, "new_str": new})),
                   reply(tool_use("submit_trial", {"hypothesis": "h", "expected_delta": None})))
        agent.propose(make_request(task, name))
    opt_first, arch_first = fake.requests[0], fake.requests[2]
    assert opt_first["tools"] == arch_first["tools"]
    assert [b["text"] for b in opt_first["system"][:2]] == [b["text"] for b in arch_first["system"][:2]]
    assert opt_first["system"][2] != arch_first["system"][2]          # the role differs
    # the arch session's first call reads tools + rules + the parent's files from the opt session's cache
    assert fake.usages[2]["cache_read_input_tokens"] == _prefix_tokens(arch_first, 2)
    # a session on another parent shares only the tools and the rules
    other = {"train.py": TRAIN.replace("lr = 0.2", "lr = 0.25"), "helpers.py": HELPERS}
    records = [rec(0, "baseline", "baseline", 5.0, parent=None), rec(1, "opt", "keep", 4.0)]
    fake.queue(reply(tool_use("str_replace", {"path": "train.py", "old_str": "width = 32", "new_str": "width = 40"})),
               reply(tool_use("submit_trial", {"hypothesis": "h", "expected_delta": None})))
    agent.propose(make_request(task, "arch", records, parent=1, files=other))
    assert fake.usages[4]["cache_read_input_tokens"] == _prefix_tokens(fake.requests[4], 1)
    assert fake.rejected == []


def test_the_technique_the_turn_was_given_for_reaches_the_model(fake, task) -> None:  # noqa: F811
    tech = Technique("hot-lr", "Hotter steps.", (Edit("train.py", "lr = 0.2", "lr = 0.4"),), -0.1)
    opt = dataclasses.replace(task.specialist("opt"), catalog=(tech,))
    agent = agent_for(fake)
    for focus in ("hot-lr", None):
        fake.queue(reply(tool_use("str_replace", {"path": "train.py", "old_str": "lr = 0.2", "new_str": "lr = 0.4"})),
                   reply(tool_use("submit_trial", {"hypothesis": "h", "expected_delta": -0.1})))
        agent.propose(dataclasses.replace(make_request(task, "opt"), specialist=opt, focus=focus))
    focused, plain = fake.requests[0]["messages"][0]["content"][-1], fake.requests[2]["messages"][0]["content"][-1]
    assert "technique 'hot-lr' (Hotter steps.; expected change -0.1)" in focused["text"]
    assert "technique" not in plain["text"] and focused.get("cache_control") == plain.get("cache_control")
    # The request line sits after the last cached block: the rules, files and role are cached alike.
    assert fake.requests[0]["system"] == fake.requests[2]["system"]


def test_the_long_lived_prefix_can_be_cached_for_an_hour(fake, task) -> None:  # noqa: F811
    fake.queue(reply(tool_use("str_replace", {"path": "train.py", "old_str": "lr = 0.2", "new_str": "lr = 0.3"})),
               reply(tool_use("submit_trial", {"hypothesis": "h", "expected_delta": None})))
    p = agent_for(fake, cache_ttl="1h").propose(make_request(task))
    body = fake.requests[0]
    assert [b["cache_control"] for b in body["system"]] == [{"type": "ephemeral", "ttl": "1h"}] * 3
    assert body["messages"][-1]["content"][-1]["cache_control"] == {"type": "ephemeral"}   # the turns: 5 minutes
    first = fake.usages[0]["cache_creation"]
    assert first["ephemeral_1h_input_tokens"] == _prefix_tokens(body, 3) and first["ephemeral_5m_input_tokens"] > 0
    price = PRICES["claude-test"]
    expected = sum(cost_usd(u, price, u["cache_creation"]["ephemeral_1h_input_tokens"]) for u in fake.usages)
    assert p.usage["cost_usd"] == pytest.approx(round(expected, 6))
    one_hour = fake.usages[0]["cache_creation"]["ephemeral_1h_input_tokens"]
    assert cost_usd({"cache_creation_input_tokens": one_hour}, price, one_hour) == pytest.approx(one_hour * 6.0 / 1e6)
    # an hour later the 5-minute entries are gone, the 1-hour prefix is still there
    fake.advance(1800)
    fake.queue(reply(tool_use("str_replace", {"path": "train.py", "old_str": "lr = 0.2", "new_str": "lr = 0.4"})),
               reply(tool_use("submit_trial", {"hypothesis": "h", "expected_delta": None})))
    agent_for(fake, cache_ttl="1h").propose(make_request(task))
    assert fake.usages[2]["cache_read_input_tokens"] == _prefix_tokens(body, 3)
    # auto: an hour only where a trial outlasts the 5-minute cache
    long_task = Task(**{**{f: getattr(task, f) for f in task.__dataclass_fields__},
                        "budget": Budget(train_seconds=900, eval_seconds=120, seeds=(0,))})
    agent = agent_for(fake)
    assert agent.cache_control(make_request(long_task)) == {"type": "ephemeral", "ttl": "1h"}
    assert agent.cache_control(make_request(task)) == {"type": "ephemeral"}
    assert fake.rejected == []
