"""The Hydra app: one pytest job per config, sweepable with -m, each multirun job on its own lineage."""
from __future__ import annotations

import os
import subprocess
import sys

from toytask import write_toy_task


def test_multirun_runs_one_job_per_combination_with_separate_lineages(tmp_path):
    write_toy_task(tmp_path, name="toy")
    write_toy_task(tmp_path, name="second")
    env = {k: v for k, v in os.environ.items() if k != "ANTHROPIC_API_KEY"}
    proc = subprocess.run([sys.executable, "-m", "pytest_autoresearch.cli", "-m", "task=toy,second", "trials=1",
                           "agent=offline", "hydra.sweep.dir=sweep", "pytest_args=[-p,no:cacheprovider,-q]"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lineages = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.glob("sweep/*/.autoresearch/*/lineage.jsonl"))
    assert lineages == ["sweep/0/.autoresearch/toy/lineage.jsonl", "sweep/1/.autoresearch/second/lineage.jsonl"]
    assert all(len(p.read_text().splitlines()) == 2 for p in tmp_path.glob("sweep/*/.autoresearch/*/lineage.jsonl"))


def test_unknown_task_is_a_clear_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pytest_autoresearch.cli", "task=nosuch"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "no task folder" in proc.stdout + proc.stderr
