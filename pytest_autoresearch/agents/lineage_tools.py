"""Lineage tools for model-driven agents: query trials, and read any trial's diff, notes, metrics and files.

They read the records the proposal was given (so ``search.lineage_view=false`` shows only the parent here too)
and, for a trial's files, the harness' workbench (the task repository).
"""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Mapping

from ..lineage import LABELS, Record
from .prompt import agent_notes, fmt, research_records, trial_line
from .tools import ToolError, numbered

if TYPE_CHECKING:
    from ..task import Task
    from .base import Workbench

MAX_ROWS = 50


def lineage_specs(metric: str) -> list[dict[str, Any]]:
    """The tools' JSON-schema definitions (same every session, so they cache)."""
    return [
        {"name": "lineage_query",
         "description": "List recorded trials matching every filter given, one line each: label, score, the gate "
                        "values with their margins, parent, kind, hypothesis. Without filters: the latest trials. "
                        "Agent-side and harness errors are left out unless include_errors is true.",
         "input_schema": {"type": "object", "additionalProperties": False, "required": [], "properties": {
             "specialist": {"type": "string", "description": "Only trials proposed by this specialist."},
             "label": {"type": "array", "items": {"type": "string", "enum": list(LABELS)},
                       "description": "Only trials with one of these labels."},
             "kind": {"type": "string", "description": "Text the trial's kind contains: the knob or region it "
                                                       "changed, e.g. 'lr', 'train.py:opt' or ':up'."},
             "text": {"type": "string", "description": "Text its hypothesis or notes contain (any case)."},
             "min_score": {"type": "number", "description": f"Only trials with {metric} >= this."},
             "max_score": {"type": "number", "description": f"Only trials with {metric} <= this."},
             "order": {"type": "string", "enum": ["recent", "best"],
                       "description": "recent (default): newest first; best: best score first."},
             "limit": {"type": "integer", "minimum": 1, "maximum": MAX_ROWS,
                       "description": "At most this many lines (default 20)."},
             "include_errors": {"type": "boolean",
                                "description": "Also list agent-side errors (API outages) and harness errors."}}}},
        {"name": "lineage_trial",
         "description": "One recorded trial in full. show: summary (default; everything but the diff and files), "
                        "diff (its change versus its parent), notes (the harness' notes, e.g. a crash's traceback, "
                        "and the proposer's notes), metrics (every metric the evaluator and harness recorded), files "
                        "(without path: its files; with path: that file, numbered, view_range optional).",
         "input_schema": {"type": "object", "additionalProperties": False, "required": ["trial"], "properties": {
             "trial": {"type": "integer", "minimum": 0, "description": "The trial number."},
             "show": {"type": "string", "enum": ["summary", "diff", "notes", "metrics", "files"]},
             "path": {"type": "string", "description": "With show=files: a file of that trial."},
             "view_range": {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 2}}}},
    ]


class LineageTools:
    """Handlers of ``lineage_query`` and ``lineage_trial`` over one proposal's records."""

    def __init__(self, records: list[Record], task: "Task", bench: "Workbench | None", max_chars: int) -> None:
        self.records = sorted(records, key=lambda r: r.get("trial", 0))
        self.task = task
        self.bench = bench
        self.max_chars = max_chars

    def handlers(self) -> dict[str, Any]:
        return {"lineage_query": self.query, "lineage_trial": self.trial}

    # -- lineage_query -----------------------------------------------------------------------------------
    def query(self, args: Mapping[str, Any]) -> str:
        recs = self.records if args.get("include_errors") else research_records(self.records)
        if args.get("specialist"):
            recs = [r for r in recs if r.get("specialist") == args["specialist"]]
        if args.get("label"):
            recs = [r for r in recs if r.get("label") in args["label"]]
        if args.get("kind"):
            recs = [r for r in recs if args["kind"].lower() in str(r.get("kind") or "").lower()]
        if args.get("text"):
            t = args["text"].lower()
            recs = [r for r in recs if t in f"{r.get('hypothesis') or ''}\n{r.get('notes') or ''}\n"
                                           f"{agent_notes(r)}".lower()]
        for key, keep in (("min_score", lambda s, v: s >= v), ("max_score", lambda s, v: s <= v)):
            if args.get(key) is not None:
                recs = [r for r in recs if isinstance(r.get("score"), (int, float)) and keep(r["score"], args[key])]
        if args.get("order") == "best":
            sign = 1 if self.task.objective.direction == "minimize" else -1
            recs = sorted([r for r in recs if isinstance(r.get("score"), (int, float))],
                          key=lambda r: (sign * r["score"], r["trial"]))
        else:
            recs = list(reversed(recs))
        limit = int(args.get("limit") or 20)
        filters = {k: v for k, v in args.items() if k not in ("limit", "order")}
        if not recs:
            known = sorted({str(r.get("specialist")) for r in self.records})
            return (f"No trial of the {len(self.records)} recorded matches {json.dumps(filters)}. Specialists: "
                    f"{', '.join(known)}.")
        head = f"{len(recs)} of {len(self.records)} recorded trials match {json.dumps(filters) if filters else '(no filter)'}"
        head += f"; showing {min(limit, len(recs))}, {'best' if args.get('order') == 'best' else 'newest'} first:"
        return "\n".join([head] + ["- " + trial_line(r, self.task, expected=True) for r in recs[:limit]])

    # -- lineage_trial -----------------------------------------------------------------------------------
    def _get(self, n: int) -> Record:
        found = [r for r in self.records if r.get("trial") == n]
        if not found:
            have = [r["trial"] for r in self.records]
            raise ToolError(f"lineage_trial: trial {n} is not in the lineage you were given (trials "
                            f"{have[0]}..{have[-1]})" if have else "lineage_trial: the lineage is empty")
        return found[-1]

    def trial(self, args: Mapping[str, Any]) -> str:
        r = self._get(int(args["trial"]))
        show = args.get("show") or "summary"
        if show == "diff":
            diff = r.get("diff") or "(no diff: its code is its parent's)"
            return self._cap(f"trial {r['trial']} versus its parent, trial {r.get('parent')}:\n{diff}")
        if show == "notes":
            return self._cap(f"trial {r['trial']} [{r.get('label')}] notes:\n{r.get('notes') or '(none)'}\n\n"
                             f"proposer's notes:\n{agent_notes(r) or '(none)'}")
        if show == "metrics":
            m = {k: _compact(v) for k, v in sorted((r.get("metrics") or {}).items())}
            extra = {k: r[k] for k in ("acceptance", "early_stop") if r.get(k)}
            return self._cap(f"trial {r['trial']} metrics:\n" + json.dumps({**m, **extra}, indent=1, default=str))
        if show == "files":
            return self._files(r, args)
        lines = [trial_line(r, self.task, expected=True),
                 f"hypothesis: {r.get('hypothesis') or '-'}"]
        for key, what in (("kind", "kind"), ("step", "step factor"), ("expected_delta", "expected delta"),
                          ("delta_vs_best", "delta vs the best at the time"), ("train_s", "train seconds (all seeds)")):
            if r.get(key) is not None:
                lines.append(f"{what}: {fmt(r[key])}")
        if r.get("acceptance"):
            a = r["acceptance"]
            lines.append(f"keep decision: gain {fmt(a.get('gain'))} vs bar {fmt(a.get('threshold'))} over "
                         f"{a.get('n')} seed(s) ({a.get('scale')} scale) against trial {a.get('best_trial')}")
        if r.get("notes"):
            lines.append(f"notes: {r['notes']}")
        if agent_notes(r):
            lines.append(f"proposer's notes: {agent_notes(r)}")
        lines.append("lineage_trial show=diff / notes / metrics / files gives the rest.")
        return self._cap("\n".join(lines))

    def _files(self, r: Record, args: Mapping[str, Any]) -> str:
        if self.bench is None:
            return "Files of other trials are not available in this run; show=diff gives the change."
        try:
            files = self.bench.files_of(int(r["trial"]))
        except KeyError as e:
            raise ToolError(f"lineage_trial: {e.args[0] if e.args else e}") from None
        path = args.get("path")
        if not path:
            return "\n".join([f"files of trial {r['trial']}:"] +
                             [f"{p}  ({len(t.splitlines())} lines)" for p, t in sorted(files.items())])
        if path not in files:
            raise ToolError(f"lineage_trial: trial {r['trial']} has no file {path!r}; its files: "
                            f"{', '.join(sorted(files))}")
        lines = files[path].splitlines(keepends=True)
        start, end = 1, len(lines)
        rng = args.get("view_range")
        if rng:
            start, end = rng[0], len(lines) if rng[1] == -1 else rng[1]
            if not 1 <= start <= max(len(lines), 1) or end < start or end > len(lines):
                raise ToolError(f"lineage_trial: view_range {rng} is outside {path}, which has {len(lines)} lines")
        return self._cap(f"{path} at trial {r['trial']}:\n" + numbered("".join(lines[start - 1:end]), start))

    def _cap(self, text: str) -> str:
        if len(text) <= self.max_chars:
            return text
        cut = text[:self.max_chars]
        return cut[:cut.rfind("\n") + 1] + f"... (truncated at {self.max_chars:,} characters)"


def _compact(v: Any) -> Any:
    """Long per-step lists (curves) shortened, so a metrics view stays readable."""
    if isinstance(v, list) and len(v) > 12:
        return v[:6] + [f"... {len(v) - 9} more ..."] + v[-3:]
    if isinstance(v, dict) and len(json.dumps(v, default=str)) > 2000:
        return {k: _compact(x) for k, x in list(v.items())[:8]}
    return v
