"""Every label of the brief, each reached by a deliberately broken toy recipe, agent or evaluator.

One pytest subprocess runs a scripted agent through a sequence of trials (specialists alternate opt, arch);
the tests below read what each trial became.
"""
from __future__ import annotations



import pytest
from conftest import ToyRun
from toytask import edit, write_toy_task

# (specialist whose turn it is, expected label, script entry)
SCRIPT = [
    ("opt", "keep", {"edits": [edit("steps = 20", "steps = 200")], "hypothesis": "train longer"}),
    ("arch", "discard", {"edits": [edit("use_bias = False", "use_bias = True")], "hypothesis": "unused knob"}),
    ("opt", "preflight_crash", {"edits": [edit("steps = 999", "steps = 1")], "hypothesis": "stale search"}),
    ("arch", "surface_violation", {"edits": [edit("lr = 0.1", "lr = 0.2")], "hypothesis": "arch edits opt"}),
    ("opt", "crash", {"edits": [edit("pad = 0", "pad = 0\nboom = 1 / 0")], "hypothesis": "divide"}),
    ("arch", "preflight_crash", {"no_proposal": "ran out of turns"}),
    ("opt", "gate_miss", {"edits": [edit("steps = 200", "steps = 1")], "hypothesis": "barely train"}),
    ("arch", "preflight_crash", {"edits": [edit("use_bias = False", "use_bias = (False")], "hypothesis": "typo"}),
    ("opt", "budget_overrun", {"edits": [edit("\nsleep_s = 0.0", "\nsleep_s = 60.0")], "hypothesis": "slow train"}),
    ("arch", "surface_violation", {"edits": [edit("use_bias = False", "use_bias = False\nleak = 'private/y_test.npy'")],
                                   "hypothesis": "peek at labels"}),
    ("opt", "size_blocked", {"edits": [edit("pad = 0", "pad = 100")], "hypothesis": "bigger artifact"}),
    ("arch", "discard", {"edits": [edit("use_bias = False", "use_bias = True")], "parent": 0,
                         "hypothesis": "branch from the baseline"}),
    ("opt", "budget_overrun", {"edits": [edit("predict_sleep_s = 0.0", "predict_sleep_s = 60.0")],
                               "hypothesis": "slow predict"}),
    ("arch", "harness_error", {"edits": [{"path": "train.py", "search": "use_bias", "replace": 5}]}),
]


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory):
    run = ToyRun(tmp_path_factory.mktemp("labels"))
    write_toy_task(run.root, script=[s for _, _, s in SCRIPT], gate=0.9, train_seconds=4, eval_seconds=6,
                   artifact_bytes=400)
    proc = run.run("tasks/toy", "--autoresearch-trials", str(len(SCRIPT)), "--autoresearch-agent", "scripted")
    return proc, {r["trial"]: r for r in run.records()}, run


def test_every_trial_gets_its_expected_label(labelled):
    proc, recs, _ = labelled
    got = [(recs[i + 1]["specialist"], recs[i + 1]["label"]) for i in range(len(SCRIPT))]
    assert got == [(s, lab) for s, lab, _ in SCRIPT], proc.output[-3000:]
    assert recs[0]["label"] == "baseline"


def test_pytest_outcomes_follow_the_labels(labelled):
    proc, _, _ = labelled
    # keep + two discards pass; harness_error is an error; the other ten are expected research failures.
    assert "3 passed, 10 xfailed, 1 error" in proc.output, proc.output[-2000:]
    assert proc.returncode == 1


def test_preflight_notes_say_what_to_do(labelled):
    _, recs, _ = labelled
    assert "was not found in train.py" in recs[3]["notes"] and "exactly once" in recs[3]["notes"]
    assert "ran out of turns" in recs[6]["notes"]
    assert "does not compile" in recs[8]["notes"]
    assert recs[3]["commit"] and recs[6]["commit"], "a trial that never ran still has its commit"


def test_surface_violations_are_committed_but_not_run(labelled):
    _, recs, _ = labelled
    assert "outside region(s) ['arch']" in recs[4]["notes"] and "lr = 0.2" in recs[4]["diff"]
    assert "evaluator-owned" in recs[10]["notes"]
    assert recs[4]["train_s"] is None and recs[10]["train_s"] is None


def test_crash_names_the_deepest_exception_line(labelled):
    _, recs, _ = labelled
    assert recs[5]["notes"].startswith("train (seed 0): train.py:12:") and "ZeroDivisionError" in recs[5]["notes"]


def test_gate_miss_and_size_blocked_say_by_how_much(labelled):
    _, recs, _ = labelled
    assert "r2 = " in recs[7]["notes"] and "< 0.9" in recs[7]["notes"]
    assert "> cap 400" in recs[11]["notes"] and recs[11]["metrics"]["artifact_bytes"] > 400


def test_budget_overruns_name_the_phase_and_kill_at_the_limit(labelled):
    _, recs, _ = labelled
    assert recs[9]["notes"].startswith("train (seed 0): exceeded the 4s limit") and recs[9]["train_s"] < 15
    assert recs[13]["notes"].startswith("eval (predict) (seed 0): exceeded the 6s limit")


def test_agent_may_name_another_parent(labelled):
    _, recs, _ = labelled
    assert recs[12]["parent"] == 0 and recs[12]["label"] == "discard"
    assert recs[12]["delta_vs_best"] > 0, "compared with the best, not with its own parent"


def test_harness_error_is_recorded_then_raised(labelled):
    proc, recs, _ = labelled
    assert recs[14]["label"] == "harness_error" and recs[14]["notes"]
    assert "ERROR tasks/toy/test_toy.py::test_toy[trial-14]" in proc.output


def test_every_trial_has_one_commit(labelled):
    _, recs, run = labelled
    import git

    repo = git.Repo(run.root / ".autoresearch/toy/repo")
    log = repo.git.log("--all", "--format=%H %s").splitlines()
    assert len(log) == len(recs) == len(SCRIPT) + 1
    assert {r["commit"] for r in recs.values()} == {line.split()[0] for line in log}
    keep = recs[1]
    assert repo.commit(keep["commit"]).parents[0].hexsha == recs[0]["commit"]


def test_evaluator_error_is_a_pytest_error(toy):
    write_toy_task(toy.root, options={"explode": True})
    proc = toy.run("tasks/toy", "--autoresearch-trials", "2")
    rec = toy.records()[0]
    assert rec["label"] == "evaluator_error" and "evaluator bug on purpose" in rec["notes"]
    assert "1 error" in proc.output and "xfail" not in proc.output.split("short test summary")[-1].lower()
    assert "labelled evaluator_error" in proc.output
    assert len(toy.records()) == 1, "no trial runs against a baseline that was never measured"


def test_broken_baseline_stops_the_run_with_a_clear_error(toy):
    write_toy_task(toy.root, train_extra="raise RuntimeError('recipe broken')")
    proc = toy.run("tasks/toy", "--autoresearch-trials", "3")
    assert [r["label"] for r in toy.records()] == ["crash"]
    assert "labelled crash" in proc.output and "recipe broken" in proc.output
    assert "must pass its own legality checks" in proc.output
    assert proc.returncode == pytest.ExitCode.USAGE_ERROR, "the task cannot run as written: not a failed trial"


