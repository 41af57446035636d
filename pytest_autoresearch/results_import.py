"""Import a ``results.tsv`` written by another research loop into a lineage view, so its runs can be plotted,
reported, shown and audited beside ours (``autoresearch import FILE``).

Two layouts, told apart by the header:

- ``karpathy``: karpathy/autoresearch's ``program.md`` layout, five tab-separated columns
  ``commit  val_bpb  memory_gb  status  description``; status ``keep`` / ``discard`` / ``crash`` (a crash
  logs val_bpb 0.000000, read here as no score); lower val_bpb is better. The first row is the baseline.
  The loop advances its branch on a keep and resets on anything else, so each row's parent is the latest
  kept row before it.
- ``trajectory``: one row per trial with named columns, as the specialist-agent trajectory records a trial
  (hypothesis, specialist, evaluator outcome, failure label): ``trial``, ``specialist``, ``parent``,
  ``label`` (or ``status``), ``score`` (or the column ``--metric`` names), ``hypothesis`` (or
  ``description``), and optionally ``notes``, ``commit``; any other numeric column becomes a metric. Labels
  are this project's (``keep``, ``discard``, ``crash``, ``gate_miss``, ``budget_overrun``, ...).

Every imported record carries ``imported: {source, layout, row}``; it has no commit in a task repository,
so it can be shown and reported, not promoted or replayed.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

from .lineage import BEST_LABELS, LABELS, SCHEMA, Lineage, Record

KARPATHY = ("commit", "val_bpb", "memory_gb", "status", "description")
LAYOUTS = ("auto", "karpathy", "trajectory")
SCORED = ("baseline", "keep", "discard", "gate_miss", "size_blocked")   # labels whose runs were measured
STATUS_ALIASES = {"kept": "keep", "discarded": "discard", "crashed": "crash", "timeout": "budget_overrun"}


class ResultsFormatError(ValueError):
    """The file does not read as a known layout; the message names the file, the row and what is expected."""


def detect(header: list[str]) -> str:
    cols = [c.strip().lower() for c in header]
    if tuple(cols) == KARPATHY:
        return "karpathy"
    if ("label" in cols or "status" in cols) and ("trial" in cols or "specialist" in cols or "score" in cols):
        return "trajectory"
    raise ResultsFormatError(f"header {header} matches no layout: karpathy/autoresearch's is "
                       f"{chr(9).join(KARPATHY)!r}; the trajectory layout names trial, specialist, parent, label, "
                       f"score, hypothesis (tab-separated)")


def read_tsv(path: Path, layout: str = "auto", *, task: str | None = None, metric: str | None = None,
             direction: str | None = None) -> list[Record]:
    """The rows of ``path`` as lineage records (trial 0 first)."""
    path = Path(path)
    if layout not in LAYOUTS:
        raise ResultsFormatError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as e:
        raise ResultsFormatError(f"cannot read {path}: {e.strerror}") from None
    rows = [r for r in csv.reader(text.splitlines(), delimiter="\t", quoting=csv.QUOTE_NONE)
            if any(c.strip() for c in r)]
    if not rows:
        raise ResultsFormatError(f"{path} is empty: expected a header row and one row per run")
    header = [c.strip() for c in rows[0]]
    found = detect(header)
    if layout != "auto" and layout != found:
        raise ResultsFormatError(f"{path} reads as the {found} layout, not {layout} (header {header})")
    cols = [c.lower() for c in header]
    name = task or f"imported-{path.stem}"
    if found == "karpathy":
        metric, direction = metric or "val_bpb", direction or "minimize"
    else:
        metric, direction = metric or "score", direction or "minimize"
        if metric.lower() not in cols:
            raise ResultsFormatError(f"{path}: no column {metric!r} to score by (columns {header}); name it with "
                                     f"--metric")
    if direction not in ("minimize", "maximize"):
        raise ResultsFormatError(f"direction must be minimize or maximize, got {direction!r}")
    records: list[Record] = []
    last_kept: int | None = None
    for i, row in enumerate(rows[1:]):
        line = i + 2
        if len(row) < len(cols) - 1 or len(row) > len(cols):
            raise ResultsFormatError(f"{path}:{line}: {len(row)} columns, the header has {len(cols)} (tab-separated; "
                               f"a description must not contain a tab)")
        cell = dict(zip(cols, [c.strip() for c in row] + [""] * (len(cols) - len(row))))
        status = cell.get("label") or cell.get("status") or ""
        label = STATUS_ALIASES.get(status.lower(), status.lower())
        if label not in LABELS:
            raise ResultsFormatError(f"{path}:{line}: status {status!r} is not a label ({', '.join(LABELS)})")
        trial = _int(cell.get("trial"), f"{path}:{line}: trial") if cell.get("trial") else i
        score = _float(cell.get(metric.lower()), f"{path}:{line}: {metric}")
        if label not in SCORED and not score:
            score = None  # a failed run's placeholder score (karpathy's 0.000000) is no measurement
        if any(r["trial"] == trial for r in records):
            raise ResultsFormatError(f"{path}:{line}: trial {trial} repeats")
        if not records and label in ("keep", "discard"):
            label = "baseline"  # the first run is the starting recipe
        if cell.get("parent") not in (None, ""):
            parent: int | None = _int(cell["parent"], f"{path}:{line}: parent")
        else:
            parent = None if not records else (last_kept if last_kept is not None else records[0]["trial"])
        metrics: dict[str, Any] = {}
        for k, v in cell.items():
            if k in ("trial", "parent", "label", "status", "specialist", "hypothesis", "description", "notes",
                     "commit") or v == "":
                continue
            try:
                metrics[k] = float(v)
            except ValueError:
                metrics[k] = v
        if score is not None:
            metrics[metric] = score
        hyp = cell.get("hypothesis") or cell.get("description") or ""
        rec: Record = {
            "schema": SCHEMA, "task": name, "trial": trial, "session": f"import:{path.name}",
            "specialist": cell.get("specialist") or ("baseline" if not records else "agent"), "parent": parent,
            "hypothesis": hyp, "expected_delta": None, "label": label, "score": score, "metrics": metrics,
            "delta_vs_best": None, "delta_pct": None, "commit": cell.get("commit") or None, "diff": "",
            "train_s": None, "eval_s": None, "seeds": [], "agent": {"name": "imported", "model": None}, "usage": {},
            "notes": cell.get("notes") or (hyp if label not in ("baseline", "keep", "discard") else ""),
            "started": None, "ended": None, "metric": metric, "direction": direction,
            "imported": {"source": str(path.resolve()), "layout": found, "row": line},
        }
        _delta(rec, records, direction)
        records.append(rec)
        if label in BEST_LABELS:
            last_kept = trial
    if not records:
        raise ResultsFormatError(f"{path} has a header but no runs")
    return records


def _delta(rec: Record, before: list[Record], direction: str) -> None:
    """delta_vs_best against the best legal run before it, as the harness records it."""
    scored = [r for r in before if r["label"] in BEST_LABELS and isinstance(r.get("score"), (int, float))]
    if not scored or rec["score"] is None:
        return
    b = min(scored, key=lambda r: r["score"]) if direction == "minimize" else max(scored, key=lambda r: r["score"])
    rec["delta_vs_best"] = rec["score"] - b["score"]
    rec["delta_pct"] = 100.0 * rec["delta_vs_best"] / abs(b["score"]) if b["score"] else None
    rec["best_before"] = b["trial"]


def _int(v: Any, what: str) -> int:
    try:
        return int(str(v).strip())
    except ValueError:
        raise ResultsFormatError(f"{what} must be a whole number, got {v!r}") from None


def _float(v: Any, what: str) -> float | None:
    if v in (None, "", "-", "N/A", "nan"):
        return None
    try:
        x = float(v)
    except ValueError:
        raise ResultsFormatError(f"{what} must be a number, got {v!r}") from None
    return x if math.isfinite(x) else None


def write_view(records: list[Record], folder: Path) -> Path:
    """Write the records as ``<folder>/lineage.jsonl`` (replacing an earlier import there)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "lineage.jsonl"
    existing = Lineage(path).records(quiet=True)
    if existing and not all(r.get("imported") for r in existing):
        raise ResultsFormatError(f"{path} holds trials of a real run: import into another folder (--name)")
    path.unlink(missing_ok=True)
    lin = Lineage(path)
    for r in records:
        lin.append(r)
    return path
