"""`autoresearch -m` through real Hydra launcher plugins (the `launchers` extra): joblib's process pool and
submitit's local executor (the code path of its SLURM executor), each running two jobs at once from the
project's conf/launcher presets. Parallel means: the jobs' recorded run times overlap."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from toytask import write_toy_task

REPO = Path(__file__).resolve().parents[1]
QUIET = "pytest_args=[-p,no:cacheprovider,-p,no:hypothesispytest,-q]"


def _multirun(root: Path, *args: str) -> subprocess.CompletedProcess:
    shutil.copytree(REPO / "conf", root / "conf")  # the presets as shipped
    write_toy_task(root, name="toy", seeds=(0,))
    write_toy_task(root, name="second", seeds=(0,))
    env = {k: v for k, v in os.environ.items() if k not in ("ANTHROPIC_API_KEY", "PYTEST_ADDOPTS")}
    proc = subprocess.run([sys.executable, "-m", "pytest_autoresearch.cli", "-m", *args, "trials=1", "agent=offline",
                           "hydra.sweep.dir=sweep", QUIET], cwd=root, env=env, capture_output=True, text=True,
                          timeout=300)
    proc.output = proc.stdout + proc.stderr  # type: ignore[attr-defined]
    return proc


def _jobs(root: Path) -> dict[str, dict]:
    return {json.loads(p.read_text())["overrides"][1]: json.loads(p.read_text()) for p in root.glob("sweep/*/job.json")}


def _overlap(a: dict, b: dict) -> float:
    return min(a["ended"], b["ended"]) - max(a["started"], b["started"])


def test_joblib_runs_jobs_in_parallel_and_a_failed_job_fails_the_sweep(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    proc = _multirun(tmp_path, "launcher=joblib", "task=toy,second,nosuch", "devices=[gpu-a,gpu-b]")
    assert proc.returncode == 2, proc.output          # the task folder `nosuch` does not exist
    assert "JoblibLauncher" in proc.output or "Joblib.Parallel(n_jobs=2" in proc.output
    assert "1 of 3 jobs failed" in proc.output and "#2 launcher=joblib task=nosuch" in proc.output
    jobs = _jobs(tmp_path)
    toy, second = jobs["task=toy"], jobs["task=second"]
    assert toy["exit"] == 0 and second["exit"] == 0 and jobs["task=nosuch"]["exit"] == 2
    assert toy["pid"] != second["pid"]                 # two worker processes ...
    assert _overlap(toy, second) > 0.5, (toy, second)  # ... running at the same time
    assert (toy["device"], second["device"]) == ("gpu-a", "gpu-b")   # job k gets devices[k % 2]
    for name in ("toy", "second"):
        lineage = next(tmp_path.glob(f"sweep/*/.autoresearch/{name}/lineage.jsonl"))
        assert len(lineage.read_text().splitlines()) == 2


def test_submitit_local_runs_jobs_in_parallel(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    proc = _multirun(tmp_path, "launcher=submitit_local", "task=toy,second")
    assert proc.returncode == 0, proc.output
    assert "Submitit 'local' sweep output dir" in proc.output and "all 2 jobs passed" in proc.output
    jobs = _jobs(tmp_path)
    toy, second = jobs["task=toy"], jobs["task=second"]
    assert toy["exit"] == 0 and second["exit"] == 0 and toy["pid"] != second["pid"]
    assert _overlap(toy, second) > 0.5, (toy, second)
    # submitit kept its own record of each job (the files a SLURM run leaves too).
    assert len(list(tmp_path.glob("sweep/.submitit/*/*_result.pkl"))) == 2
