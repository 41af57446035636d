"""Faults a long research session meets: pytest killed with SIGKILL mid-trial, a lock held by a hung process,
a deleted task repository, an unwritable lineage folder, bad override values. Each ends in a clear message
and loses nothing already recorded; none is an INTERNALERROR."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ToyRun
from toytask import edit, write_toy_task

MARK = "FAULTMARKER"


def _alive_with(text: str) -> list[int]:
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            try:
                if text.encode() in (d / "cmdline").read_bytes():
                    found.append(int(d.name))
            except OSError:
                pass
    return found


def _start(toy: ToyRun, *args: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("ANTHROPIC_API_KEY", "PYTEST_ADDOPTS")}
    env.update(TOY_SCRIPT=str(toy.root / "script.json"), PYTHONDONTWRITEBYTECODE="1")
    log = open(toy.root / "killed-run.log", "wb")
    if "scripted" in args:  # the script is written per specialist turn: turns go round-robin (as in ToyRun)
        args = (*args, "--autoresearch-override", "schedule=round_robin")
    return subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *args], cwd=toy.root,
                            env=env, stdout=log, stderr=subprocess.STDOUT)


def _wait_for(path_glob: str, root: Path, timeout: float = 120) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        hits = sorted(root.glob(path_glob))
        if hits:
            return hits[0]
        time.sleep(0.05)
    raise AssertionError(f"{path_glob} never appeared under {root}")


# A recipe edit that, in every phase it reaches, starts a long-lived marked process and waits.
SPAWN = ("import subprocess as _sp\n"
         "_sp.Popen(['/bin/sleep', '600', '" + MARK + "'], start_new_session=True)\n")


@pytest.mark.parametrize("point", ["train", "predict", "evaluate"])
def test_sigkill_of_pytest_mid_trial_leaves_nothing_running_and_loses_nothing(toy: ToyRun, point: str):
    slow = {"train": "sleep_s = 30.0\n" + SPAWN, "predict": "predict_sleep_s = 30.0\n" + SPAWN,
            "evaluate": "EVAL_SLOW = True\n"}[point]  # code, not a comment: a comment alone is the parent's code
    script = [{"edits": [edit("steps = 20  # range: 1..2000", "steps = 30  # range: 1..2000")]},
              {"edits": [edit("use_bias = False", "use_bias = False\n" + slow)]}]  # the arch specialist's turn
    write_toy_task(toy.root, script=script, train_seconds=60, eval_seconds=60)
    proc = _start(toy, "tasks/toy", "--autoresearch-trials", "3", "--autoresearch-agent", "scripted")
    log = {"train": "phases/train-seed-0/train.log", "predict": "phases/predict-seed-0/predict.log",
           "evaluate": "eval/evaluate.log"}[point]
    _wait_for(f".autoresearch/toy/trials/00002/{log}", toy.root)
    time.sleep(1.0)  # the phase is running now
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(1.5)
    assert _alive_with(MARK) == [], "a process the recipe started outlived pytest"
    assert _alive_with(str(toy.root)) == [], "a phase process (sandbox, evaluator) outlived pytest"
    before = toy.records()
    assert [r["trial"] for r in before] == [0, 1], "the completed trials are all recorded"
    # Resume: completed trials stay; numbering never reuses the claimed-but-unfinished trial 2.
    script = [{"edits": [edit("lr = 0.1", "lr = 0.05")]}, {"edits": [edit("use_bias = False", "use_bias = True")]}]
    (toy.root / "script.json").write_text(json.dumps(script))
    r = toy.run("tasks/toy", "--autoresearch-trials", "2", "--autoresearch-agent", "scripted")
    after = toy.records()
    assert after[:2] == before, "a completed record changed"
    assert [x["trial"] for x in after[2:]] == [3, 4], r.output[-2000:]
    assert "INTERNALERROR" not in r.output
    killed = toy.root / ".autoresearch/toy/trials/00002"
    assert not (killed / "src").exists() and not (killed / "owner.json").exists(), \
        "the killed trial's leftovers were not cleaned on the next run"


def test_a_held_lock_fails_with_its_holder_named(toy: ToyRun):
    write_toy_task(toy.root)
    assert toy.run("tasks/toy", "--autoresearch-trials", "1").returncode == 0
    lock = toy.root / ".autoresearch/toy/lineage.jsonl.lock"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\nfrom pathlib import Path\nfrom pytest_autoresearch.lineage import HeldLock\n"
        f"with HeldLock(Path({str(lock)!r}), 5, what='a hung session'):\n"
        "    print('held', flush=True)\n    time.sleep(60)\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        t = time.monotonic()
        r = toy.run("tasks/toy", "--autoresearch-trials", "2", "--autoresearch-override", "lineage.lock_timeout_s=2")
        assert time.monotonic() - t < 60
    finally:
        holder.kill()
        holder.wait()
    assert f"held by pid {holder.pid}" in r.output and "lineage.lock_timeout_s" in r.output, r.output[-2000:]
    assert "INTERNALERROR" not in r.output and r.returncode == 2, "interrupted: the tool could not run"
    # pytest's short summary and its "Interrupted" line cut the message at the terminal width: count before them
    report = r.output.split("short test summary info")[0]
    assert report.count("was not released within") == 2, "once as the error, once as the summary's stop line"
    assert "! Interrupted: " in r.output, "the run stops as interrupted"
    assert len(toy.records()) == 2, "what was recorded before stays"


def test_a_deleted_task_repository_is_rebuilt_from_the_lineage(toy: ToyRun):
    script = [{"edits": [edit("steps = 20  # range: 1..2000", "steps = 200  # range: 1..2000")]},
              {"edits": [edit("use_bias = False", "use_bias = True")]}]
    write_toy_task(toy.root, script=script)
    toy.run("tasks/toy", "--autoresearch-trials", "2", "--autoresearch-agent", "scripted")
    first = toy.records()
    assert [r["label"] for r in first] == ["baseline", "keep", "discard"]
    shutil.rmtree(toy.root / ".autoresearch/toy/repo")
    (toy.root / "script.json").write_text(json.dumps([
        {"edits": [edit("predict_sleep_s = 0.0", "predict_sleep_s = 0.001")]},
        {"edits": [edit("use_bias = False", "use_bias = True\nbias_init = 0.0")]}]))  # not trial 2's code
    r = toy.run("tasks/toy", "--autoresearch-trials", "2", "--autoresearch-agent", "scripted")
    recs = toy.records()
    assert [x["label"] for x in recs[3:]] == ["discard", "discard"], r.output[-2000:]
    assert all(x["parent"] == 1 for x in recs[3:]), "the new trials build on the rebuilt best"
    assert "rebuilding them from the lineage" in r.output
    import git

    repo = git.Repo(toy.root / ".autoresearch/toy/repo")
    best = repo.commit("refs/tags/trial-1")
    assert "steps = 200" in best.tree["train.py"].data_stream.read().decode()
    assert repo.commit(f"refs/tags/trial-{recs[3]['trial']}").parents[0] == best


def test_a_repository_that_cannot_be_rebuilt_stops_the_run_once(toy: ToyRun):
    script = [{"edits": [edit("steps = 20  # range: 1..2000", "steps = 200  # range: 1..2000")]}]
    write_toy_task(toy.root, script=script)
    toy.run("tasks/toy", "--autoresearch-trials", "1", "--autoresearch-agent", "scripted")
    path = toy.root / ".autoresearch/toy/lineage.jsonl"
    recs = [json.loads(x) for x in path.read_text().splitlines()]
    recs[1]["diff"] = recs[1]["diff"].replace("steps = 20 ", "steps = 21 ")  # no longer applies
    path.write_text("".join(json.dumps(x) + "\n" for x in recs))
    shutil.rmtree(toy.root / ".autoresearch/toy/repo")
    r = toy.run("tasks/toy", "--autoresearch-trials", "3", "--autoresearch-agent", "scripted")
    assert "cannot rebuild trial 1" in r.output and "--autoresearch-lineage" in r.output, r.output[-2000:]
    assert r.output.count("ERROR tasks/toy") == 1 and "INTERNALERROR" not in r.output, "one error, then the run stops"
    assert r.returncode == pytest.ExitCode.INTERRUPTED, "the tool could not run, not a failed trial"
    assert [x["trial"] for x in toy.records()] == [0, 1], "nothing is recorded for trials that never ran"


@pytest.mark.parametrize("where", ["under-a-file", "proc"])
def test_an_unwritable_lineage_folder_is_a_usage_error(toy: ToyRun, where: str):
    write_toy_task(toy.root)
    (toy.root / "afile").write_text("x")
    target = str(toy.root / "afile" / "lineage") if where == "under-a-file" else "/proc/autoresearch-lineage"
    r = toy.run("tasks/toy", "--autoresearch-trials", "1", "--autoresearch-lineage", target)
    assert r.returncode == 4 and "is not writable" in r.output and "INTERNALERROR" not in r.output, r.output[-1500:]


@pytest.mark.parametrize("override, message", [
    ("budget.train_seconds=-1", "budget.train_seconds=-1.0 must be > 0"),
    ("budget.train_seconds=fast", "budget.train_seconds"),
    ("sandbox.mode=maybe", "sandbox.mode='maybe' is not one of"),
    ("lineage.lock_timeout_s=0", "lineage.lock_timeout_s=0.0 must be > 0"),
    ("sandbox.memory_bytes=-5", "sandbox.memory_bytes=-5 must be > 0"),
    ("lineage.recent=-2", "lineage.recent=-2 must be >= 0"),
])
def test_bad_override_values_are_usage_errors(toy: ToyRun, override: str, message: str):
    write_toy_task(toy.root)
    r = toy.run("tasks/toy", "--autoresearch-trials", "1", "--autoresearch-override", override)
    assert r.returncode == 4 and message in r.output and "INTERNALERROR" not in r.output, r.output[-1500:]
