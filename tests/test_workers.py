"""Trial-level workers: one session holds the agent and the lineage and dispatches each trial's recipe to a
submitit worker (the local executor here: a process per job, the code path of its SLURM executor)."""
from __future__ import annotations

import os
import subprocess
import sys

from toytask import read_lineage, write_toy_task

QUIET = ["-p", "no:cacheprovider", "-p", "no:hypothesispytest", "-q", "-rs"]


def _pytest(root, *args, script=False):
    env = {k: v for k, v in os.environ.items() if k not in ("ANTHROPIC_API_KEY", "PYTEST_ADDOPTS")}
    if script:
        env["TOY_SCRIPT"] = str(root / "script.json")
        env["TOY_SEEN"] = str(root / "seen.jsonl")
    proc = subprocess.run([sys.executable, "-m", "pytest", *QUIET, "tasks/toy", *args], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)
    proc.output = proc.stdout + proc.stderr  # type: ignore[attr-defined]
    return proc


def test_two_workers_run_trials_at_once_into_one_lineage(tmp_path):
    write_toy_task(tmp_path, sleep_s=1.0, seeds=(0,))
    proc = _pytest(tmp_path, "--autoresearch-trials", "4", "--autoresearch-agent", "offline",
                   "--autoresearch-override", "workers.executor=local", "--autoresearch-override", "workers.n=2",
                   "--autoresearch-override", "workers.devices=[dev-a,dev-b]")
    assert proc.returncode == 0, proc.output
    assert "trials run on 2 workers (submitit local executor" in proc.output
    recs = read_lineage(tmp_path / ".autoresearch/toy/lineage.jsonl")
    assert sorted(r["trial"] for r in recs) == [0, 1, 2, 3, 4]          # one lineage, each number once
    assert len({r["session"] for r in recs}) == 1 and recs[0]["label"] == "baseline"
    where = {r["trial"]: r["worker"] for r in recs}
    # Every recipe ran in a submitit job of its own, none in this session's process, each with its slot's device.
    assert len({w["pid"] for w in where.values()}) == 5 and all(w["job"] for w in where.values())
    assert all(r["host"] == w["host"] for r, w in zip(recs, (where[r["trial"]] for r in recs)))
    assert {w["cuda_visible_devices"] for w in where.values() if w["slot"] == 1} == {"dev-b"}
    assert {w["slot"] for w in where.values()} == {0, 1}
    # Two trials were on their workers at the same time.
    spans = sorted((w["started"], w["ended"]) for t, w in where.items() if t > 0)
    overlaps = [min(a[1], b[1]) - max(a[0], b[0]) for a, b in zip(spans, spans[1:])]
    assert max(overlaps) > 0.5, spans
    assert (tmp_path / ".autoresearch/toy/workers").is_dir()   # submitit's job folders, next to the lineage


def test_code_a_worker_is_measuring_is_shown_to_the_next_proposer_and_not_measured_twice(tmp_path):
    lr = {"path": "train.py", "search": "lr = 0.1", "replace": "lr = 0.05"}
    write_toy_task(tmp_path, sleep_s=1.5, seeds=(0,), script=[
        {"edits": [lr], "hypothesis": "\x1b[2Jhalve lr"},
        {"edits": [dict(lr, replace="lr = 0.05  # the same, said again")], "hypothesis": "halve lr again"},
        {"edits": [dict(lr, replace="lr = 0.2")], "hypothesis": "double lr"}])
    proc = _pytest(tmp_path, "--autoresearch-trials", "3", "--autoresearch-agent", "scripted",
                   "--autoresearch-override", "workers.executor=local", "--autoresearch-override", "workers.n=2",
                   "--autoresearch-override", "search.specialists=merged", script=True)
    assert proc.returncode == 0, proc.output
    recs = {r["trial"]: r for r in read_lineage(tmp_path / ".autoresearch/toy/lineage.jsonl")}
    # Trial 2 was proposed while trial 1 ran on its worker: it saw it, and its copy of trial 1's code was refused.
    seen = {s["trial"]: s for s in read_lineage(tmp_path / "seen.jsonl")}
    assert seen[2]["in_flight"] == [1]
    # Its hypothesis is cleaned as the record's is: no control character reaches another proposer's prompt.
    shown = seen[2]["hypotheses"][0]
    assert shown == recs[1]["hypothesis"] and "\x1b" not in shown and shown.endswith("halve lr")
    assert recs[1]["label"] in ("keep", "discard") and recs[1]["score"] is not None
    assert recs[2]["label"] == "preflight_crash" and recs[2]["score"] is None
    assert "reproduces the code trial 1 [generalist] is measuring right now" in recs[2]["notes"]
    assert recs[2]["code_hash"] == recs[1]["code_hash"]
    assert recs[3]["label"] in ("keep", "discard") and recs[3]["score"] is not None
    assert not list((tmp_path / ".autoresearch/toy/in_flight").glob("*.json"))   # every claim ended with its trial


def test_an_agent_stop_holds_for_the_whole_search(tmp_path):
    write_toy_task(tmp_path, seeds=(0,), script=[
        {"edits": [{"path": "train.py", "search": "lr = 0.1", "replace": "lr = 0.2"}]},
        {"stop": "cost cap reached (scripted)"}, {"stop": "cost cap reached (scripted)"},
        {"stop": "cost cap reached (scripted)"}])
    proc = _pytest(tmp_path, "--autoresearch-trials", "4", "--autoresearch-agent", "scripted",
                   "--autoresearch-override", "workers.executor=local", "--autoresearch-override", "workers.n=2",
                   "--autoresearch-override", "schedule=round_robin", script=True)
    assert proc.returncode == 0, proc.output
    assert "agent stopped proposing: cost cap reached (scripted)" in proc.output
    assert "1 passed, 3 skipped" in proc.output
    recs = read_lineage(tmp_path / ".autoresearch/toy/lineage.jsonl")
    assert [r["trial"] for r in recs] == [0, 1]   # nothing proposed after the stop, by any worker slot


def test_worker_settings_are_checked():
    import pytest

    from pytest_autoresearch.config import ConfigError, compose

    with pytest.raises(ConfigError, match="workers.executor='ray' is not one of"):
        compose(["workers.executor=ray"])
    with pytest.raises(ConfigError, match="workers.n=0 must be > 0"):
        compose(["workers.n=0"])
