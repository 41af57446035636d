"""Adding a task, as its author lives it: each common mistake gives one message that names the file, fixture or
region and what to do; a failed baseline is measured again once what it depends on changed; the scaffold of
``autoresearch new`` runs as it is; live lines say what a failed trial tried and in which unit it is scored.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import ToyRun
from toytask import write_toy_task

from pytest_autoresearch import Budget, Evaluator, Objective, Specialist, Surface
from pytest_autoresearch.report import live_line, plain_line, shorten
from pytest_autoresearch.task import Task


def _report(output: str) -> str:
    """The output before pytest's short summary, whose lines cut messages at the terminal width."""
    return output.split("short test summary info")[0]


def _replace(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new))


# -- a region the recipe does not mark -----------------------------------------------------------------------
def test_a_region_the_recipe_does_not_mark_is_one_error_naming_the_regions_it_does(toy: ToyRun):
    d = write_toy_task(toy.root)
    _replace(d / "test_toy.py", '"train.py::arch"', '"train.py::model"')
    r = toy.run("tasks/toy", "--autoresearch-trials", "3")
    msg = ("tasks/toy/test_toy.py: specialist 'arch' names region 'train.py::model', but tasks/toy/recipe/train.py "
           "marks no region 'model'; the regions it marks: opt, arch.")
    assert _report(r.output).count(msg) == 1, r.output[-3000:]
    assert "IndexError" not in r.output and "Traceback" not in r.output and "harness_error" not in r.output
    assert "1 error" in r.output and "test_toy[trial-02]" not in r.output, "the run stops at the first trial"
    assert r.returncode == 4, "a usage error: the task cannot run as written"
    assert not (toy.root / ".autoresearch" / "toy" / "lineage.jsonl").exists(), "nothing ran, nothing recorded"


def _task(tmp_path: Path, recipe_text: str, region: str) -> Task:
    (tmp_path / "recipe").mkdir(parents=True)
    (tmp_path / "recipe" / "train.py").write_text(recipe_text)
    (tmp_path / "evaluator.py").write_text("")
    return Task(name="t", module_path=tmp_path / "test_t.py", baseline_recipe=tmp_path / "recipe",
                budget=Budget(1, 1), legality=(), evaluator=Evaluator(tmp_path / "evaluator.py"),
                objective=Objective("m", "minimize"),
                specialists=(Specialist("opt", Surface(regions=(region,)), "."),))


def test_an_unclosed_region_or_a_missing_file_is_named_when_the_task_is_built(tmp_path: Path):
    with pytest.raises(ValueError, match=r"recipe/train.py:2 opens it but no '# autoresearch: end opt' line"):
        _task(tmp_path / "a", "x = 1\n# autoresearch: begin opt\nlr = 0.1\n", "train.py::opt")
    with pytest.raises(ValueError, match=r"has no file model.py \(its files: train.py\)"):
        _task(tmp_path / "b", "# autoresearch: begin opt\nlr = 0.1\n# autoresearch: end opt\n", "model.py::opt")
    _task(tmp_path / "c", "# autoresearch: begin opt\nlr = 0.1\n# autoresearch: end opt\n", "train.py::opt")


# -- a missing fixture ---------------------------------------------------------------------------------------
def test_a_missing_fixture_is_one_collection_error_per_task_module(toy: ToyRun):
    d = write_toy_task(toy.root)
    text = (d / "test_toy.py").read_text()
    start, end = text.index("@pytest.fixture\ndef legality"), text.index("@pytest.fixture\ndef evaluator")
    (d / "test_toy.py").write_text(text[:start] + text[end:])
    r = toy.run("tasks/toy", "--autoresearch-trials", "3")
    msg = "tasks/toy/test_toy.py: the task module defines no fixture 'legality'"
    assert _report(r.output).count(msg) == 1, r.output[-3000:]
    assert "def legality(): return []" in r.output, "says what an empty one looks like"
    assert "ERROR collecting tasks/toy/test_toy.py" in r.output and "Traceback" not in r.output
    assert "trial-01" not in r.output and r.returncode == 2, "a collection error: nothing runs"


# -- a syntax error in the baseline recipe --------------------------------------------------------------------
def test_a_syntax_error_in_the_baseline_names_file_line_and_the_line(toy: ToyRun):
    d = write_toy_task(toy.root)
    _replace(d / "recipe" / "train.py", "lr = 0.1", "lr = (0.1")
    r = toy.run("tasks/toy")
    msg = "tasks/toy/recipe/train.py:8: SyntaxError: '(' was never closed: lr = (0.1"
    assert _report(r.output).count(msg) == 2, "the failed assert's message, and the plain run's line"
    assert "task toy: the baseline recipe failed (crash): " + msg in r.output, r.output[-3000:]
    assert "defines no top-level train" not in r.output and "'session':" not in r.output, "no record dump"
    assert r.returncode == 1, "a plain run is a test: the broken recipe fails it"


# -- a failed baseline, measured again once something changed -----------------------------------------------------
def test_a_failed_baseline_is_re_measured_once_what_it_depends_on_changed(toy: ToyRun):
    d = write_toy_task(toy.root, gate=0.5)
    train, module = d / "recipe" / "train.py", d / "test_toy.py"
    _replace(train, "lr = 0.1", "lr = (0.1")
    first = toy.run("tasks/toy", "--autoresearch-trials", "2")
    stop = "task toy: the baseline recipe is not a legal starting point: trial 0 is labelled crash: "
    assert _report(first.output).count(stop) == 1, first.output[-3000:]
    assert "Traceback" not in first.output and "During handling" not in first.output
    assert "Interrupted: task toy has no legal baseline (see the error above)" in first.output
    assert first.returncode == 4, "a usage error: the task cannot run as written"

    again = toy.run("tasks/toy", "--autoresearch-trials", "2")
    assert _report(again.output).count(stop) == 1 and "Nothing of it changed since trial 0" in again.output
    assert "re-measuring" not in again.output and len(toy.records()) == 1, "unchanged: the failure stands"

    _replace(train, "lr = (0.1", "lr = 0.1")
    _replace(train, "steps = 20 ", "steps = 1 ")  # runs now, but misses the gate
    gated = toy.run("tasks/toy", "--autoresearch-trials", "2")
    said = "autoresearch: task toy: re-measuring the baseline: trial 0 was crash"
    assert gated.output.count(said) == 1 and "since then the recipe (tasks/toy/recipe) changed." in gated.output
    assert "trial 0 is labelled gate_miss: r2>=0.5: r2 = " in gated.output, gated.output[-3000:]

    _replace(module, 'MetricAtLeast("r2", 0.5)', 'MetricAtLeast("r2", 0.0)')
    fixed = toy.run("tasks/toy", "--autoresearch-trials", "1")
    assert fixed.returncode == 0, fixed.output[-3000:]
    assert ("trial 0 was gate_miss" in fixed.output
            and "the task module (tasks/toy/test_toy.py) and the gates changed" in fixed.output)
    recs = toy.records()
    assert [(r["trial"], r["label"]) for r in recs[:3]] == [(0, "crash"), (0, "gate_miss"), (0, "baseline")]
    assert recs[2]["remeasured"]["after_label"] == "gate_miss" and (recs[3]["trial"], recs[3]["parent"]) == (1, 0)
    assert recs[1]["commit"] == recs[2]["commit"] != recs[0]["commit"], "same code, same commit; a fix, a new one"
    tags = subprocess.run(["git", "-C", str(toy.root / ".autoresearch" / "toy" / "repo"), "tag"],
                          check=True, capture_output=True, text=True).stdout.split()
    assert sorted(tags) == ["trial-0", "trial-0-failed-1", "trial-1"], "the failed baseline's commit stays reachable"


# -- the scaffold, the plain run's line and the live lines ----------------------------------------------------------
def test_autoresearch_new_scaffolds_a_task_that_runs_as_it_is(toy: ToyRun, capsys: pytest.CaptureFixture):
    from pytest_autoresearch.cli import new

    assert new(["lsq", "--tasks-dir", str(toy.root / "tasks")]) == 0
    assert "pytest --autoresearch-trials 2" in capsys.readouterr().out
    d = toy.root / "tasks" / "lsq"
    assert sorted(p.relative_to(d).as_posix() for p in d.rglob("*.py")) == [
        "evaluator.py", "recipe/train.py", "test_lsq.py"]
    assert "# autoresearch: begin opt" in (d / "recipe" / "train.py").read_text()
    assert new(["lsq", "--tasks-dir", str(toy.root / "tasks")]) == 2, "never overwrites"
    assert new(["no-dash", "--tasks-dir", str(toy.root / "tasks")]) == 2
    assert "already exists" in capsys.readouterr().err

    plain = toy.run("tasks/lsq")
    assert plain.returncode == 0, plain.output[-3000:]
    line = next(ln for ln in plain.output.splitlines() if ln.startswith("lsq: plain run"))
    assert line.startswith("lsq: plain run baseline score=") and " (mse) | gates: r2>=0.9 ok (0." in line, line
    score = line.split("score=")[1].split()[0]
    assert len(score.replace(".", "").lstrip("0")) <= 6, "rounded"

    trials = toy.run("tasks/lsq", "--autoresearch-trials", "2")
    assert trials.returncode == 0 and "2 passed" in trials.output, trials.output[-3000:]
    assert [r["label"] in ("baseline", "keep", "discard") for r in toy.records("lsq")] == [True] * 3
    lines = [ln for ln in trials.output.splitlines() if ln.startswith("lsq trial-0")]
    assert len(lines) == 2 and all(" mse=" in ln and "s wall |" in ln for ln in lines), lines


def test_failed_trial_lines_show_the_change_that_caused_them():
    rec = {"trial": 3, "specialist": "aug", "label": "gate_miss", "score": 2.23551234, "metric": "recipe_cpu_seconds",
           "delta_pct": 23.68, "train_s": 6.4, "kind": "train.py:aug:CUTOUT:up",
           "hypothesis": "Change CUTOUT 8->12 (train.py, region aug). Evidence: trial 2 changed it and was kept.",
           "notes": "acc_mean>=0.978: acc_mean = 0.9745 < 0.978"}
    line = live_line("airbench trial-03", rec)
    assert line == ("airbench trial-03 #3 [aug] gate_miss recipe_cpu_seconds=2.23551 Δ+23.68% train 6.4s wall | "
                    "Change CUTOUT 8->12 (train.py, region aug) | acc_mean>=0.978: acc_mean = 0.9745 < 0.978")
    crash = live_line("t trial-01", {**rec, "label": "crash", "hypothesis": "", "notes": "train.py:9: ZeroDivisionError"})
    assert "| train.py:aug:CUTOUT:up | train.py:9: ZeroDivisionError" in crash, "no hypothesis: the edit's kind"
    keep = live_line("t trial-01", {**rec, "label": "discard", "hypothesis": "Lower the learning rate. " * 20})
    assert keep.endswith(" rate. Lower…") and len(keep.split("| ")[1]) <= 110, "whole words, one ellipsis"


def test_shorten_cuts_at_a_word_boundary_with_one_ellipsis():
    assert shorten("Train one epoch fewer. Saves about 12% of the time.", 30) == "Train one epoch fewer. Saves…"
    assert shorten("Train one epoch fewer.", 30) == "Train one epoch fewer."
    assert shorten("One two three. Four five", 16) == "One two three…", "no period before the ellipsis"
    assert shorten("a" * 50, 10) == "a" * 9 + "…"
    assert plain_line({"task": "t", "label": "gate_miss", "score": 0.123456789, "metric": "mse",
                       "gates": [{"check": "r2>=0.9", "value": 0.8512345, "ok": False}],
                       "notes": "r2>=0.9: r2 = 0.8512 < 0.9"}) == (
        "t: plain run gate_miss score=0.123457 (mse) | gates: r2>=0.9 MISSED (0.851235) | r2>=0.9: r2 = 0.8512 < 0.9")
