"""Audit: which files and marked regions each trial's diff touched, and whether that lies inside the surface of
the specialist it is recorded under; a table per specialist (``autoresearch audit <task>``).

The harness refuses out-of-surface edits before they run (``surface_violation``); the audit checks the
recorded result independently, from the task repository's commits (each trial against its parent), so a
lineage from another tool, an older version, a changed surface or an edited record is checked the same way.
Surfaces come from ``task.json`` (what the trials ran under, written by each trial run next to the lineage).
Where a commit is missing, the recorded diff gives the files and line ranges, but not the regions.
"""
from __future__ import annotations

import difflib
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from .edits import MARK_RE
from .lineage import Lineage, Record, latest_per_trial

OUTSIDE = "(outside regions)"


@dataclass(frozen=True)
class Touch:
    """One changed area: a file, the region it lies in (None: outside every marked region), the new lines."""

    path: str
    region: str | None
    lines: str
    allowed: bool | None = None   # None: the specialist's surface is unknown, or the region could not be told

    def where(self) -> str:
        r = OUTSIDE if self.region is None else self.region
        return f"{self.path}::{r} {self.lines}" if r != "?" else f"{self.path} {self.lines}"


@dataclass
class TrialAudit:
    trial: int
    specialist: str
    label: str
    source: str                       # repo | diff | none
    touches: list[Touch] = field(default_factory=list)
    verdict: str = "in surface"       # in surface | out of surface | refused | no change | unknown surface
    note: str = ""

    @property
    def flagged(self) -> bool:
        return self.verdict in ("out of surface", "refused")


@dataclass
class Surface:
    files: tuple[str, ...]
    regions: dict[str, tuple[str, ...]]

    def owns_file(self, path: str) -> bool:
        import fnmatch

        return any(fnmatch.fnmatchcase(path, p) for p in self.files)

    def allows(self, t: Touch) -> bool | None:
        if self.owns_file(t.path):
            return True
        if t.path not in self.regions:
            return False
        if t.region == "?":
            return None
        return t.region is not None and t.region in self.regions[t.path] and t.lines not in ("created", "deleted")

    def describe(self) -> str:
        parts = [f"file {f}" for f in self.files] + [f"{p}::{r}" for p, rs in self.regions.items() for r in rs]
        return ", ".join(parts) or "(nothing)"


def surfaces_from(info: Mapping[str, Any] | None) -> dict[str, Surface]:
    out: dict[str, Surface] = {}
    for s in (info or {}).get("specialists") or []:
        regions: dict[str, list[str]] = {}
        for r in s.get("regions") or []:
            path, _, name = str(r).partition("::")
            regions.setdefault(path, []).append(name)
        out[str(s.get("name"))] = Surface(tuple(s.get("files") or ()), {k: tuple(v) for k, v in regions.items()})
    return out


# -- what a change touched --------------------------------------------------------------------------------
def line_regions(text: str) -> list[str | None]:
    """The region each line of ``text`` lies in (marker lines lie outside), as ``edits.split_regions`` reads it."""
    out: list[str | None] = []
    region: str | None = None
    for line in text.splitlines():
        m = MARK_RE.match(line)
        if m and m["kind"] == "begin" and region is None:
            out.append(None)
            region = m["name"]
        elif m and m["kind"] == "end" and region == m["name"]:
            out.append(None)
            region = None
        else:
            out.append(region)
    return out


def _span(a: int, b: int) -> str:
    return f"line {a}" if b <= a else f"lines {a}-{b}"


def touched(before: Mapping[str, str], after: Mapping[str, str]) -> list[Touch]:
    """Every changed area between two recipe trees, by file and region."""
    out: list[Touch] = []
    for path in sorted(set(before) | set(after)):
        old, new = before.get(path), after.get(path)
        if old == new:
            continue
        if old is None or new is None:
            out.append(Touch(path, None, "created" if old is None else "deleted"))
            continue
        a, b = old.splitlines(), new.splitlines()
        ra, rb = line_regions(old), line_regions(new)
        found: dict[str | None, list[int]] = {}
        for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
            if tag == "equal":
                continue
            names = set(ra[i1:i2]) | set(rb[j1:j2])
            if not names:  # a pure deletion at a boundary: the region around it
                names = {ra[i1 - 1] if i1 else None}
            for n in names:
                found.setdefault(n, []).extend([j1 + 1, max(j2, j1 + 1)])
        for n, marks in sorted(found.items(), key=lambda kv: (kv[0] is not None, kv[0] or "")):
            out.append(Touch(path, n, _span(min(marks), max(marks))))
    return out


_HUNK = re.compile(r"^@@ -\d+(?:,\d+)? \+(\d+)(?:,(\d+))? @@")


def touched_from_diff(diff: str) -> list[Touch]:
    """Files and new-side line ranges from a unified diff (regions unknown: ``?``)."""
    out: list[Touch] = []
    path, whole = None, False   # whole: the file was created or deleted (one touch, not one per hunk)
    for line in diff.splitlines():
        if line.startswith("diff --git "):
            path, whole = line.split(" b/", 1)[-1], False
        elif line.startswith(("new file mode", "deleted file mode")) and path:
            out.append(Touch(path, "?", "created" if line.startswith("new") else "deleted"))
            whole = True
        elif path and not whole and (m := _HUNK.match(line)):
            start, n = int(m[1]), int(m[2] or 1)
            out.append(Touch(path, "?", _span(start, start + max(n, 1) - 1)))
    return out


# -- the audit ----------------------------------------------------------------------------------------------
def audit_records(records: Sequence[Record], surfaces: Mapping[str, Surface],
                  files_at: Any = None) -> list[TrialAudit]:
    """Audit each trial after the baseline. ``files_at(commit) -> {path: text}`` reads a commit (None: diffs only)."""
    by = {r["trial"]: r for r in latest_per_trial(records)}
    out = []
    for t in sorted(by):
        r = by[t]
        if t == 0:
            continue
        a = TrialAudit(t, str(r.get("specialist")), str(r.get("label")), "none")
        parent = by.get(r.get("parent")) if r.get("parent") is not None else None
        touches: list[Touch] | None = None
        if files_at is not None and r.get("commit") and parent and parent.get("commit"):
            try:
                touches = touched(files_at(parent["commit"]), files_at(r["commit"]))
                a.source = "repo"
            except Exception:  # noqa: BLE001 - a commit the repository lost: fall back to the recorded diff
                touches = None
        if touches is None and r.get("diff"):
            touches, a.source = touched_from_diff(str(r["diff"])), "diff"
        touches = touches or []
        surface = surfaces.get(a.specialist)
        a.touches = [Touch(x.path, x.region, x.lines, surface.allows(x) if surface else None) for x in touches]
        if not a.touches:
            a.verdict = "no change"
        elif surface is None:
            a.verdict, a.note = "unknown surface", f"no surface recorded for specialist '{a.specialist}'"
        elif any(x.allowed is False for x in a.touches):
            bad = "; ".join(x.where() for x in a.touches if x.allowed is False)
            a.verdict = "refused" if a.label == "surface_violation" else "out of surface"
            a.note = f"{bad} (surface of '{a.specialist}': {surface.describe()})"
        else:
            a.verdict = "in surface"
        out.append(a)
    return out


@dataclass
class AuditReport:
    task: str
    trials: list[TrialAudit]
    surfaces: dict[str, Surface]
    note: str = ""

    @property
    def out_of_surface(self) -> list[TrialAudit]:
        """Out-of-surface edits the harness did not refuse: these ran and were scored."""
        return [a for a in self.trials if a.verdict == "out of surface"]

    def table(self) -> list[list[Any]]:
        rows = []
        for name in sorted({a.specialist for a in self.trials}):
            mine = [a for a in self.trials if a.specialist == name]
            areas = Counter(f"{x.path}::{x.region if x.region is not None else OUTSIDE}" if x.region != "?"
                            else x.path for a in mine for x in a.touches)
            v = Counter(a.verdict for a in mine)
            rows.append([name, len(mine), v["in surface"], v["out of surface"], v["refused"], v["no change"],
                         v["unknown surface"], ", ".join(f"{k} x{n}" for k, n in areas.most_common(4)) or "-"])
        return rows

    def render(self) -> str:
        from tabulate import tabulate

        out = [f"audit of {self.task}: {len(self.trials)} trials after the baseline"
               + (f" ({self.note})" if self.note else "")]
        out.append(tabulate(self.table(), headers=["specialist", "trials", "in surface", "out of surface", "refused",
                                                   "no change", "unknown surface", "touched"], tablefmt="github"))
        flagged = [a for a in self.trials if a.flagged or a.verdict == "unknown surface"]
        if flagged:
            out.append(tabulate([[a.trial, a.specialist, a.label, a.verdict, a.note] for a in flagged],
                                headers=["trial", "specialist", "label", "verdict", "what"], tablefmt="github"))
        n, refused = len(self.out_of_surface), sum(a.verdict == "refused" for a in self.trials)
        out.append((f"FLAGGED: {n} out-of-surface edit(s) ran and were scored" if n else "no out-of-surface edit ran")
                   + (f"; {refused} out-of-surface attempt(s) refused by the harness" if refused else ""))
        return "\n\n".join(out)

    def to_json(self) -> dict[str, Any]:
        return {"task": self.task, "trials": [dict(asdict(a), flagged=a.flagged) for a in self.trials],
                "surfaces": {k: asdict(v) for k, v in self.surfaces.items()},
                "out_of_surface": [a.trial for a in self.out_of_surface]}


def audit(lineage_dir: Path) -> AuditReport:
    """Audit a task's lineage folder (``<lineage>/<task>``)."""
    from .taskinfo import read as read_info

    lineage_dir = Path(lineage_dir)
    records = Lineage(lineage_dir / "lineage.jsonl").records(quiet=True)
    info = read_info(lineage_dir)
    surfaces = surfaces_from(info)
    note = "" if info else "no task.json next to the lineage: surfaces unknown (a trial run writes it)"
    files_at = None
    if (lineage_dir / "repo" / ".git").exists():
        from .vcs import TaskRepo

        files_at = TaskRepo(lineage_dir / "repo").files_at
    elif records:
        note = "; ".join(x for x in (note, "no task repository: from recorded diffs, regions unknown") if x)
    task = str((info or {}).get("task") or (records[0].get("task") if records else lineage_dir.name))
    return AuditReport(task, audit_records(records, surfaces, files_at), surfaces, note)
