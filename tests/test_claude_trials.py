"""Claude specialists in real trials (toy task, real git, real sandbox, the SDK against the loopback server): a
smoke test that catches a crash in the trial sandbox, crash notes with the recipe's frame, an API outage kept
out of the research history, the lineage tools reading another trial's files, and one fix-up try."""
from __future__ import annotations

from pathlib import Path

from pytest_autoresearch.config import compose
from pytest_autoresearch.legality import MetricAtLeast
from pytest_autoresearch.task import Budget, Evaluator, Objective, Specialist, Surface, Task
from pytest_autoresearch.trial import TaskRun

from fake_anthropic import FakeAnthropic, error, reply, tool_use
from test_claude_agent import agent_for, fake, tool_results  # noqa: F401
from toytask import write_toy_task

STEPS = "steps = 20  # range: 1..2000"
BROKEN = 'steps = "20"  # range: 1..2000'


def toy_run(root: Path, agent) -> TaskRun:
    d = write_toy_task(root)
    task = Task(name="toy", module_path=d / "test_toy.py", baseline_recipe=d / "recipe",
                budget=Budget(train_seconds=30, eval_seconds=30, seeds=(0, 1)), legality=(MetricAtLeast("r2", 0.0),),
                evaluator=Evaluator(d / "evaluator.py", forbidden=(r"y_test", r"private")),
                objective=Objective("mse", "minimize"),
                specialists=(Specialist("opt", Surface(regions=("train.py::opt",)), "Optimizer knobs."),
                             Specialist("arch", Surface(regions=("train.py::arch",)), "Model knobs.")))
    return TaskRun(task, root=root / ".autoresearch", session_id="t", agent=agent, agent_name="claude", device="cpu",
                   cfg=compose(["schedule=round_robin"]))


def last_user(body: dict) -> list[dict]:
    return body["messages"][-1]["content"]


def test_smoke_test_fix_up_and_lineage_tools_in_real_trials(fake: FakeAnthropic, tmp_path: Path) -> None:  # noqa: F811
    agent = agent_for(fake, max_retries=2, smoke={"rows": 100, "seconds": 30})
    run = toy_run(tmp_path, agent)

    # trial 1 (opt): breaks the recipe, sees the crash in a smoke test, submits anyway
    submit = tool_use("submit_trial", {"hypothesis": "Steps as text.", "expected_delta": 0.0,
                                       "notes": "smoke test crashed; recorded to show the fix-up"})
    fake.queue(reply(tool_use("str_replace", {"path": "train.py", "old_str": STEPS, "new_str": BROKEN})),
               reply(tool_use("smoke_test", {})), reply(submit))
    t1 = run.run_trial("s1")
    smoke = tool_results(fake.requests[2])[0]["content"]
    assert smoke.startswith("crash: train (seed 0, the first 100 rows of each training array): train.py:")
    assert "TypeError: 'str' object cannot be interpreted as an integer" in smoke
    assert "in the recipe: train.py:" in smoke and "in train: for _ in range(steps):" in smoke
    assert t1["label"] == "crash" and "TypeError" in t1["notes"]
    assert "smoke test crashed" in t1["agent_notes"] and "1 smoke test(s) (0 ok)" in t1["agent_notes"]
    assert [b["name"] for b in fake.requests[0]["tools"]][-4:] == ["smoke_test", "lineage_query", "lineage_trial",
                                                                  "submit_trial"]

    # trial 2 (arch): the API is down; an agent-side failure, recorded, never a research failure
    fake.queue(*[error(500, "upstream down", headers={"retry-after-ms": "1"}) for _ in range(3)])
    t2 = run.run_trial("s2")
    assert t2["label"] == "preflight_crash" and t2.get("agent_error") is True

    # trial 3 (opt): the same session resumes with trial 1's crash and fixes it
    n = len(fake.requests)
    fake.queue(reply(tool_use("str_replace", {"path": "train.py", "old_str": 'steps = "20"', "new_str": "steps = 40"})),
               reply(tool_use("smoke_test", {})),
               reply(tool_use("submit_trial", {"hypothesis": "Steps as a number again, and twice as many.",
                                               "expected_delta": -0.01})))
    t3 = run.run_trial("s3")
    resumed = fake.requests[n]
    assert resumed["messages"][:4] == fake.requests[2]["messages"][:4]     # the same conversation, continued
    assert resumed["messages"][5]["content"] == [submit]
    answer = last_user(resumed)[0]
    assert answer["tool_use_id"] == submit["id"] and "Trial 1 ran and was labelled crash" in answer["content"]
    assert "TypeError" in answer["content"] and "one fix-up try" in answer["content"]
    assert "recorded as trial 3, built on trial 0" in answer["content"]
    assert tool_results(fake.requests[n + 2])[0]["content"].startswith("ok: train (seed 0, the first 100 rows")
    assert t3["label"] in ("keep", "discard") and t3["parent"] == 0, t3["notes"]
    assert "fix-up of trial 1" in t3["agent_notes"] and t3["kind"] == "train.py:opt:steps:up"
    assert "steps = 40" in t3["diff"]

    # trial 4 (arch): the history has the crash with its recipe frame, not the outage; the tools read trial 1
    n = len(fake.requests)
    fake.queue(reply(tool_use("lineage_trial", {"trial": 1, "show": "files", "path": "train.py",
                                                "view_range": [6, 8]}),
                     tool_use("lineage_query", {"label": ["preflight_crash"], "include_errors": True})),
               reply(tool_use("str_replace", {"path": "train.py", "old_str": "use_bias = False",
                                              "new_str": "use_bias = True"})),
               reply(tool_use("submit_trial", {"hypothesis": "A bias term.", "expected_delta": None})))
    t4 = run.run_trial("s4")
    view = last_user(fake.requests[n])[0]["text"]
    assert "1 agent-side or harness error(s) are left out" in view
    failures = view.split("## Recent failures and their notes\n")[1]
    assert "trial 1 [opt] crash" in failures and "in the recipe: train.py:" in failures
    assert "trial 2" not in view.split("## Keep bar now")[1]
    files, query = tool_results(fake.requests[n + 1])
    assert 'steps = "20"' in files["content"] and files["content"].startswith("train.py at trial 1:")
    assert "trial 2 [arch] preflight_crash (agent_error)" in query["content"]
    assert t4["label"] in ("keep", "discard") and t4["kind"] == "train.py:arch:use_bias:toggle"
    assert fake.rejected == []


def test_a_crash_note_keeps_the_recipe_frame_and_where_a_library_raised(tmp_path: Path, sandbox) -> None:
    from pytest_autoresearch.agents.workbench import crash_note
    from pytest_autoresearch.masking import register
    from pytest_autoresearch.runner import Phase, run_phase
    from pytest_autoresearch.sandbox import Bind

    register("sk-ant-crash-note-secret-0001")
    src, out = tmp_path / "src", tmp_path / "out" / "seed-0"
    for d in (src, out):
        d.mkdir(parents=True)
    (src / "train.py").write_text("import json\n\n\ndef train(ctx):\n    pass\n"
                                  "    return json.loads('{' + 'sk-ant-crash-note-secret-0001')\n")
    r = run_phase(Phase("train", dict(seeds=[0], seed=0, device="cpu", variant="mini", preload=[]),
                        work_dir=tmp_path / "w", limit_s=20, timed=True,
                        binds={"recipe": Bind(src), "out": Bind(out, "rw")}), sandbox)
    note = crash_note(r, "train (seed 0)").splitlines()
    assert note[0].startswith("train (seed 0): train.py:6: JSONDecodeError")           # the recipe's frame first
    assert note[1] == "  in the recipe: train.py:6 in train: return json.loads('{' + '[secret]')"
    assert note[2].startswith("  raised in: json/decoder.py:")                         # the library, short
    assert note[3] == "  traceback (last lines):" and len(note) <= 4 + 8
    assert any("[secret]" in ln for ln in note[4:]) and not any("sk-ant-crash" in ln for ln in note)  # masked


def test_a_smoke_test_cannot_poison_the_cache_or_reach_what_a_trial_cannot(tmp_path: Path, sandbox) -> None:
    """The shortcut: use the free smoke test to plant a file that later trials (or their prepare) read from the
    shared cache, or to read the test labels. Smoke writes to the cache vanish and its predict sees test inputs."""
    from pytest_autoresearch.agents.workbench import TrialWorkbench

    run = toy_run(tmp_path, agent=None)
    files = {p.name: p.read_text() for p in run.task.baseline_recipe.glob("*.py")}
    test_inputs = sorted(p.name for p in run.staged().test.rglob("*"))
    attack = ("def _attack(ctx, allowed):\n"
              "    (ctx.cache_dir / 'planted.txt').write_text('poison')\n"
              "    seen = sorted(p.name for p in ctx.data_dir.rglob('*'))\n"
              "    if allowed is not None and seen != allowed:\n"
              "        raise RuntimeError(f'predict saw {seen}')\n")
    text = files["train.py"].replace("def train(ctx):\n", attack + "def train(ctx):\n    _attack(ctx, None)\n", 1)
    text = text.replace("def predict(ctx):\n", f"def predict(ctx):\n    _attack(ctx, {test_inputs!r})\n", 1)
    files["train.py"] = text
    result = TrialWorkbench(run).smoke(files, seconds=30, steps=0, rows=0)
    assert result.ok and "predict finished" in result.report, result.report
    assert not list(run.cache_dir.rglob("planted.txt")), "a smoke test's cache write persisted"
    assert not list((run.dir / "smoke").glob("run-*")), "the smoke test left its work folder behind"
