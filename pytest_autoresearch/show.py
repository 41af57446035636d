"""``autoresearch show <task> TRIAL``: one trial as a person reads it: hypothesis, label, metrics, cost, notes,
ancestry, the keep rule's numbers and the diff; with its promotions and replays, if any."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from tabulate import tabulate

from .html_report import _acceptance_text, _scalar_metrics
from .lineage import Record, ancestors, read_jsonl
from .report import fmt_score


def render(rec: Record, records: Sequence[Record], *, promotions: Sequence[dict[str, Any]] = (),
           replays: Sequence[dict[str, Any]] = ()) -> str:
    t = rec["trial"]
    metric = rec.get("metric") or "score"
    d = rec.get("delta_pct")
    head = f"trial {t} [{rec.get('specialist')}] {rec.get('label')}  {metric}={fmt_score(rec.get('score'))}"
    if isinstance(d, (int, float)):
        head += f"  Δ{d:+.2f}% vs trial {rec.get('best_before')} (the best then)"
    chain = [t] + [a["trial"] for a in ancestors(list(records), t)]
    lines = [head, "=" * min(len(head), 100)]
    rows = [("hypothesis", rec.get("hypothesis") or "-"),
            ("expected Δ", rec.get("expected_delta") if rec.get("expected_delta") is not None else "-"),
            ("ancestry", " <- ".join(f"trial {n}" for n in chain)),
            ("keep rule", _acceptance_text(rec.get("acceptance") if isinstance(rec.get("acceptance"), dict) else None)
             or "-"),
            ("notes", rec.get("notes") or "-"),
            ("train / eval s", f"{fmt_score(rec.get('train_s'))} / {fmt_score(rec.get('eval_s'))}"),
            ("seeds", rec.get("seeds")),
            ("agent", _agent(rec)),
            ("cost", _cost(rec)),
            ("commit", rec.get("commit") or "-"),
            ("session", rec.get("session") or "-"),
            ("started / ended", f"{rec.get('started')} / {rec.get('ended')}")]
    if rec.get("imported"):
        rows.append(("imported from", json.dumps(rec["imported"])))
    lines.append(tabulate([[k, v] for k, v in rows], tablefmt="plain", maxcolwidths=[None, 96]))
    metrics = _scalar_metrics(rec.get("metrics"))
    if metrics:
        lines += ["", "metrics:", tabulate([[k, ", ".join(fmt_score(x) for x in v) if isinstance(v, list) else
                                             fmt_score(v) if isinstance(v, (int, float)) and not isinstance(v, bool)
                                             else v] for k, v in metrics.items()], tablefmt="plain")]
    for p in promotions:
        if p.get("trial") == t:
            lines.append(f"promoted to {p.get('recipe')} at {p.get('promoted')}")
    for r in replays:
        if r.get("trial") == t:
            lines.append(f"replayed {r.get('replayed')}: {r.get('message')}")
    lines += ["", "diff:", rec.get("diff") or "(no change)"]
    return "\n".join(lines)


def _agent(rec: Record) -> str:
    a = rec.get("agent") if isinstance(rec.get("agent"), dict) else {}
    return f"{a.get('name') or '-'}" + (f" ({a['model']})" if a.get("model") else "")


def _cost(rec: Record) -> str:
    u = rec.get("usage") if isinstance(rec.get("usage"), dict) else {}
    if not u:
        return "-"
    cost = u.get("cost_usd")
    return (f"${float(cost):.4f}, " if isinstance(cost, (int, float)) else "") + \
        f"tokens in {u.get('input_tokens', 0)} / out {u.get('output_tokens', 0)}"


def show(lineage_dir: Path, trial: int) -> str:
    from .lineage import Lineage
    from .replay import read as read_replays

    records = Lineage(Path(lineage_dir) / "lineage.jsonl").records()
    found = [r for r in records if r.get("trial") == trial]
    if not found:
        have = sorted({r["trial"] for r in records})
        raise KeyError(f"{lineage_dir}/lineage.jsonl has no trial {trial}"
                       + (f" (trials {have[0]}..{have[-1]})" if have else " (no trials)"))
    return render(found[-1], records, promotions=read_jsonl(Path(lineage_dir) / "promotions.jsonl"),
                  replays=read_replays(lineage_dir))
