"""Replay: run a recorded trial's commit again, under the lineage's budget, and compare with what was recorded.

``autoresearch replay <task> TRIAL`` runs ``pytest <task module> --autoresearch-replay TRIAL`` on the task's
lineage: the plain-run test executes that trial's commit exactly as a trial runs (sandbox, seeds, evaluator,
gates), and this module compares the outcome with the record. A replay reproduces the trial when both are
legal (or both failed) and the mean paired per-seed difference is within ``max(min_delta, 3 x se)`` of run
noise, se from the noise the lineage measured (``sqrt((1 + 1/k) var_run / n)``, k the runs the recorded score
averages). Each replay is appended to ``<lineage>/<task>/replays.jsonl``.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .acceptance import measured_noise, min_delta_on_scale, per_seed, runs_behind, scale_of, transform
from .lineage import LEGAL, Record, read_jsonl
from .reference import GateResult, float_floor

FILE_NAME = "replays.jsonl"
SIGMAS = 3.0


class ReplayError(ValueError):
    """The trial cannot be replayed; the message says why and what to do."""


def lineage_budget(run: Any, base: Record | None) -> tuple[Any, str]:
    """The budget the lineage's trials ran under (recorded with trial 0), else the task's current one."""
    from .task import Budget

    recorded = ((base or {}).get("baseline_inputs") or {}).get("budget")
    if not isinstance(recorded, dict):
        return run.task.budget, "the task's current budget (the lineage recorded none)"
    try:
        budget = Budget(**recorded)
    except (TypeError, ValueError) as e:
        return run.task.budget, f"the task's current budget (the recorded one does not load: {e})"
    if budget == run.task.budget:
        return budget, "the lineage's budget"
    changed = [f"{k} {getattr(run.task.budget, k)!r} -> {getattr(budget, k)!r}"
               for k in recorded if getattr(budget, k) != getattr(run.task.budget, k)]
    return budget, f"the lineage's budget ({', '.join(changed)} vs the task's current one)"


def run_replay(run: Any, trial: int, workdir: Path) -> tuple[Record, GateResult]:
    """Execute ``trial``'s commit and compare; returns a plain-run-like record and the comparison."""
    records = run.lineage.records(quiet=True)
    recorded = run.lineage.get(trial)
    if recorded is None:
        have = sorted({r["trial"] for r in records})
        raise ReplayError(f"lineage {run.lineage.path} has no trial {trial} (it holds "
                          f"{f'trials {have[0]}..{have[-1]}' if have else 'no trials'})")
    if recorded.get("imported"):
        raise ReplayError(f"trial {trial} was imported from {recorded['imported'].get('source')}: it has no commit "
                          f"to run")
    if not recorded.get("commit"):
        raise ReplayError(f"trial {trial} has no commit (label {recorded.get('label')}): nothing was run to replay")
    budget, budget_note = lineage_budget(run, run.lineage.get(0))
    run.task = dataclasses.replace(run.task, budget=budget)
    commit = run.commit_of(recorded)
    started = _now()
    outcome = run.execute(lambda dest: run.repo.export(commit, dest), Path(workdir) / "replay")
    legal = outcome.label is None
    label = outcome.label or (recorded.get("label") if recorded.get("label") in LEGAL else "discard")
    obj = run.task.objective
    rec: Record = {
        "task": run.task.name, "trial": trial, "label": label, "score": outcome.score, "metrics": outcome.metrics,
        "notes": outcome.notes, "train_s": outcome.train_s, "eval_s": outcome.eval_s, "metric": obj.metric,
        "direction": obj.direction, "seeds": list(budget.seeds), "commit": commit, "started": started,
        "ended": _now(), "specialist": recorded.get("specialist"), "hypothesis": recorded.get("hypothesis"),
    }
    check = compare(recorded, rec, records, obj)
    check.message = f"{run.task.name}: replay of trial {trial} under {budget_note}: {check.message}"
    _append(run.dir / FILE_NAME, {
        "trial": trial, "commit": commit, "replayed": rec["ended"], "reproduced": check.status == "reproduced",
        "label": label if not legal else "legal", "recorded_label": recorded.get("label"),
        "score": outcome.score, "recorded_score": recorded.get("score"), "gain": check.gain, "bar": check.bar,
        "budget": budget_note, "device": run.device, "message": check.message})
    return rec, check


def compare(recorded: Record, replayed: Record, records: list[Record], objective: Any) -> GateResult:
    """Did the replay reproduce the recorded trial? (status ``reproduced`` or ``not_reproduced``)"""
    was_legal = recorded.get("label") in LEGAL
    now_legal = replayed.get("label") in LEGAL
    rs, ns = recorded.get("score"), replayed.get("score")
    props: list[tuple[str, Any]] = [("replay_of", recorded.get("trial")), ("recorded_label", recorded.get("label")),
                                    ("recorded_score", rs)]
    if was_legal != now_legal:
        msg = (f"NOT reproduced: recorded {recorded.get('label')}, replayed "
               f"{'legal' if now_legal else replayed.get('label')}")
        return GateResult("not_reproduced", msg, score=ns, reference=rs, properties=props)
    if not isinstance(rs, (int, float)) or not isinstance(ns, (int, float)):
        same = recorded.get("label") == replayed.get("label")
        msg = (f"{'reproduced' if same else 'NOT reproduced'}: recorded {recorded.get('label')}, "
               f"replayed {replayed.get('label')}")
        return GateResult("reproduced" if same else "not_reproduced", msg, score=ns, reference=rs, properties=props)
    a, b = per_seed(replayed), per_seed(recorded)
    seeds = sorted(set(a) & set(b)) or [-1]
    av = [a.get(s, ns) for s in seeds] if seeds != [-1] else [ns]
    bv = [b.get(s, rs) for s in seeds] if seeds != [-1] else [rs]
    scale = scale_of(objective)
    ta, tb = transform(av, scale), transform(bv, scale)
    if ta is None or tb is None:
        scale, ta, tb = "absolute", av, bv
    sign = 1.0 if objective.direction == "minimize" else -1.0
    gain = sum(sign * (y - x) for x, y in zip(ta, tb)) / len(ta)
    noise = measured_noise(records, objective)
    # The recorded score may average several runs (runs_behind); the replay is one.
    se = math.sqrt((1.0 + 1.0 / runs_behind(recorded)) * noise.var / len(ta)) if noise.var is not None else 0.0
    bar = max(min_delta_on_scale(objective, rs) if scale == scale_of(objective) else 0.0, SIGMAS * se,
              float_floor(rs, scale))
    ok = abs(gain) <= bar
    pct = 100.0 * (ns - rs) / abs(rs) if rs else float("nan")
    unit = " (log ratio)" if scale == "relative" else ""
    msg = (f"{'reproduced' if ok else 'NOT reproduced'}: {objective.metric} {ns:.6g} now vs {rs:.6g} recorded "
           f"({pct:+.2f}%); paired gain {gain:+.4g}{unit} over {len(ta)} seed(s), |gain| must be <= {bar:.4g} "
           f"= max(min_delta, {SIGMAS:g} x se {se:.3g}; {noise.describe()})")
    props += [("replay_gain", gain), ("replay_bar", bar)]
    return GateResult("reproduced" if ok else "not_reproduced", msg, score=ns, reference=rs, gain=gain, bar=bar,
                      properties=props)


def read(lineage_dir: Path) -> list[dict[str, Any]]:
    return read_jsonl(Path(lineage_dir) / FILE_NAME)


def _append(path: Path, entry: dict[str, Any]) -> None:
    data = (json.dumps(entry, ensure_ascii=False, default=str) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)  # one write: concurrent replays never interleave a line
    finally:
        os.close(fd)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
