"""``autoresearch recheck <task> TRIAL --variant full``: a trial found at one scale, run at the other.

A task's recipe is one folder at two scales: code both scales share, and per variant a declared scale
(``scale_mini.py``, ``scale_full.py``: sizes, data format, device settings) that the recipe binds from
``ctx.variant``. A trial's change to the shared code is therefore the same code at the other scale; its changes
to its own scale file are that scale's values and do not carry over.

The recheck runs one trial of the task at the target variant, in the target lineage (default: the source
lineage's folder with ``-<variant>`` appended, e.g. ``.autoresearch-full``): its baseline is measured first if
that lineage has none, then a trial whose edits are the source trial's changes to the shared files, applied to
that baseline (the ``recheck`` agent proposes them; one specialist owns the task's whole surface at the target
scale, ``search.specialists=merged``). The trial is recorded in the target lineage like any other (its
``agent_notes`` name the source), and a link row goes to ``<source lineage>/<task>/rechecks.jsonl``: source
trial, variant and commit; target lineage, trial, label, score, and the target baseline's score.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

FILE_NAME = "rechecks.jsonl"
VARIANTS = ("mini", "full")


class RecheckError(ValueError):
    """The trial cannot be rechecked; the message says why and what to do."""


@dataclass
class Plan:
    """What to run: the source trial's changes to shared files, as (baseline text, trial text) per file."""

    task: str
    trial: int
    source_variant: str
    target_variant: str
    source: Path                     # <lineage>/<task>
    commit: str
    hypothesis: str
    changes: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)
    scale_only: list[str] = field(default_factory=list)   # files changed that belong to the source scale alone


def scale_file(variant: str) -> str:
    return f"scale_{variant}.py"


def plan(lineage: Path, task: str, which: str, target: str) -> Plan:
    """Read the source trial and work out its shared changes (raises RecheckError)."""
    from .lineage import LEGAL, Lineage
    from .promote import PromoteError, pick
    from .vcs import RepoError, TaskRepo

    d = Path(lineage).resolve() / task
    if not (d / "lineage.jsonl").is_file():
        raise RecheckError(f"no lineage at {d / 'lineage.jsonl'}: pass --lineage DIR (the folder given to "
                           f"--autoresearch-lineage; default .autoresearch)")
    records = Lineage(d / "lineage.jsonl").records(quiet=True)
    try:
        rec = pick(records, which)
    except PromoteError as e:
        raise RecheckError(str(e)) from None
    source_variant = str(rec.get("variant") or "")
    if source_variant == target:
        raise RecheckError(f"trial {rec['trial']} already ran at the {target} scale; recheck runs a trial at the "
                           f"other scale (--variant {'full' if target == 'mini' else 'mini'})")
    if rec.get("label") not in LEGAL or not rec.get("commit"):
        raise RecheckError(f"trial {rec['trial']} is {rec.get('label')}: only a legal trial with a commit is "
                           f"rechecked at another scale")
    base = Lineage(d / "lineage.jsonl").get(0)
    if base is None or not base.get("commit"):
        raise RecheckError(f"lineage {d} has no baseline commit (trial 0) to compare trial {rec['trial']} with")
    try:
        repo = TaskRepo(d / "repo")
        before, after = repo.files_at(base["commit"]), repo.files_at(rec["commit"])
    except RepoError as e:
        raise RecheckError(f"cannot read the commits of trials 0 and {rec['trial']} from {d / 'repo'}: {e}") from None
    p = Plan(task, int(rec["trial"]), source_variant, target, d, str(rec["commit"]), str(rec.get("hypothesis") or ""))
    own_scale = scale_file(source_variant)
    for path in sorted(set(before) | set(after)):
        if before.get(path) == after.get(path):
            continue
        if path == own_scale:
            p.scale_only.append(path)
        else:
            p.changes[path] = (before.get(path), after.get(path))
    return p


class RecheckAgent:
    """Proposes the source trial's shared changes, branching from the target lineage's baseline."""

    name = "recheck"

    def __init__(self, p: Plan) -> None:
        self.plan = p
        self.model = None

    def describe(self) -> str:
        return f"recheck ({self.plan.source_variant} trial {self.plan.trial} of {self.plan.source})"

    def propose(self, request: Any) -> Any:
        from .agents.base import NoProposal, Proposal
        from .edits import Edit

        p = self.plan
        edits = []
        for path, (old, new) in p.changes.items():
            if new is None:
                raise NoProposal(f"trial {p.trial} deletes {path}: an edit cannot delete a file")
            edits.append(Edit(path, "", new, create=True) if old is None else Edit(path, old, new))
        link = {"rechecks": {"lineage": str(p.source), "trial": p.trial, "variant": p.source_variant,
                             "commit": p.commit}}
        return Proposal(hypothesis=f"Recheck at the {p.target_variant} scale of {p.source_variant} trial {p.trial} "
                                   f"({', '.join(p.changes)}): {p.hypothesis}",
                        expected_delta=None, edits=edits, parent=0, kind="recheck", notes=json.dumps(link))


class _Session:
    """The pytest plugin object of one recheck run: registers the agent and keeps the record."""

    def __init__(self, p: Plan) -> None:
        self.plan, self.records = p, []  # type: ignore[var-annotated]

    def pytest_autoresearch_register_agents(self, registry: dict[str, Any]) -> None:
        registry["recheck"] = lambda cfg, *, seed: RecheckAgent(self.plan)

    def pytest_autoresearch_trial_recorded(self, config: Any, record: dict[str, Any]) -> None:
        self.records.append(record)


def run(p: Plan, module: Path, into: Path, pytest_args: list[str]) -> tuple[int, dict[str, Any] | None]:
    """Run the recheck trial in this process (pytest builds the task from its module); its exit status and
    record, with the link row appended next to the source lineage."""
    import pytest

    from .lineage import Lineage

    s = _Session(p)
    args = [str(module), "--autoresearch-trials", "1", "--autoresearch-agent", "recheck",
            "--autoresearch-lineage", str(into), "--autoresearch-override", f"variant={p.target_variant}",
            "--autoresearch-override", "search.specialists=merged", "-p", "no:cacheprovider", *pytest_args]
    status = int(pytest.main(args, plugins=[s]))
    rec = s.records[-1] if s.records else None
    if rec is None:
        return status, None
    base = Lineage(Path(into) / p.task / "lineage.jsonl").get(0) or {}
    delta = None
    if isinstance(rec.get("score"), (int, float)) and isinstance(base.get("score"), (int, float)) and base["score"]:
        delta = 100.0 * (rec["score"] - base["score"]) / abs(base["score"])
    row = {"task": p.task, "trial": p.trial, "variant": p.source_variant, "commit": p.commit,
           "files": sorted(p.changes), "target_variant": p.target_variant,
           "target_lineage": str(Path(into).resolve()), "target_trial": rec.get("trial"), "label": rec.get("label"),
           "score": rec.get("score"), "target_baseline_score": base.get("score"), "delta_vs_baseline_pct": delta,
           "notes": rec.get("notes"), "ended": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    append_row(p.source / FILE_NAME, row)
    return status, row


def append_row(path: Path, row: dict[str, Any]) -> None:
    """One JSON line, written once under a lock (as the lineage is)."""
    from filelock import FileLock

    data = (json.dumps(row, ensure_ascii=False, default=str) + "\n").encode()
    with FileLock(str(path) + ".lock"):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)


def read(source: Path) -> list[dict[str, Any]]:
    path = Path(source) / FILE_NAME
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="autoresearch recheck",
                                 description="Run a trial found at one scale at the other (its shared-code changes "
                                             "on the other scale's baseline) and record it, linked to the trial.")
    ap.add_argument("task", help="the task's name (its folder under the lineage folder and under --tasks-dir)")
    ap.add_argument("trial", help="a trial number, or 'best'")
    ap.add_argument("--variant", default="full", choices=VARIANTS, help="the scale to run it at (default: full)")
    ap.add_argument("--lineage", default=".autoresearch", metavar="DIR",
                    help="the source lineage folder (given to --autoresearch-lineage; default .autoresearch)")
    ap.add_argument("--into", default=None, metavar="DIR",
                    help="the lineage folder to record the run in (default: <--lineage>-<variant>)")
    ap.add_argument("--tasks-dir", default="tasks", help="the folder holding task folders (default: tasks)")
    ap.epilog = "Arguments after -- go to pytest as they are (e.g. -- -q -x)."
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    args = ap.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    try:
        p = plan(Path(args.lineage), args.task, args.trial, args.variant)
    except RecheckError as e:
        print(f"autoresearch recheck: {e}", file=sys.stderr)
        return 2
    if not p.changes:
        print(f"autoresearch recheck: {p.task} trial {p.trial} changed only {', '.join(p.scale_only) or 'nothing'}: "
              f"the {p.source_variant} scale's own values, which do not apply at the {p.target_variant} scale. "
              f"Nothing of it runs there; nothing recorded.")
        return 0
    module = Path(args.tasks_dir) / args.task / f"test_{args.task}.py"
    if not module.is_file():
        print(f"autoresearch recheck: no task module {module}; pass --tasks-dir DIR", file=sys.stderr)
        return 2
    into = Path(args.into) if args.into else Path(f"{str(Path(args.lineage)).rstrip('/')}-{args.variant}")
    print(f"autoresearch recheck: {p.task} trial {p.trial} ({p.source_variant}) at the {p.target_variant} scale: "
          f"{', '.join(p.changes)} from commit {p.commit[:12]}" +
          (f" ({', '.join(p.scale_only)} left out: the {p.source_variant} scale's values)" if p.scale_only else "") +
          f"; recorded in {into / p.task}", flush=True)
    status, row = run(p, module, into, extra)
    if row is None:
        print(f"autoresearch recheck: no trial was recorded (pytest exit {status})", file=sys.stderr)
        return status or 1
    delta = (f" ({row['delta_vs_baseline_pct']:+.2f}% vs the {p.target_variant} baseline "
             f"{row['target_baseline_score']:.6g})" if row["delta_vs_baseline_pct"] is not None else "")
    score = f"{row['score']:.6g}" if isinstance(row["score"], (int, float)) else "none"
    print(f"autoresearch recheck: {p.task} {p.source_variant} trial {p.trial} at {p.target_variant}: "
          f"{row['label']} score={score}{delta}; trial {row['target_trial']} of "
          f"{into / p.task / 'lineage.jsonl'}; linked in {p.source / FILE_NAME}")
    return status
