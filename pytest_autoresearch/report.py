"""Tables for the terminal: one live line per trial and the end-of-run summary (tabulate)."""
from __future__ import annotations

from collections import Counter
from typing import Any

from tabulate import tabulate

from .acceptance import bar_of, measured_noise, min_delta_on_scale, per_seed, runs_behind, scale_of
from .lineage import LABELS, Record, best


def fmt_score(v: Any) -> str:
    return "-" if not isinstance(v, (int, float)) else f"{v:.6g}"


def shorten(text: str | None, width: int) -> str:
    """``text`` on one line, cut at a word boundary to at most ``width`` characters, ending in one '…'."""
    s = " ".join((text or "").split())
    if len(s) <= width:
        return s
    cut = s[:width - 1]
    if " " in cut[width // 2:]:
        cut = cut[:cut.rindex(" ")]
    return cut.rstrip(" .,;:-") + "…"


def change_of(r: Record, width: int = 70) -> str:
    """The change a trial tried, short: the hypothesis' first sentence, else the edit's kind."""
    hyp = " ".join((r.get("hypothesis") or "").split())
    first = hyp.split(". ")[0].rstrip(".")
    return shorten(first, width) or shorten(r.get("kind"), width)


def live_line(nodeid_slot: str, r: Record) -> str:
    """``toy trial-03 #17 [opt] gate_miss mse=12.3 Δ+2.10% train 3.1s wall | change | why``; keep and discard
    lines end with the hypothesis. The score is named by its metric, so its unit shows."""
    d = r.get("delta_pct")
    delta = f"Δ{d:+.2f}%" if isinstance(d, (int, float)) else ""
    t = f"train {r['train_s']:.1f}s wall" if isinstance(r.get("train_s"), (int, float)) else ""
    if r.get("label") in ("keep", "discard", "baseline"):
        extra = shorten(r.get("hypothesis"), 110)
    else:
        extra = " | ".join(x for x in (change_of(r), shorten(r.get("notes"), 110)) if x)
    return " ".join(x for x in (f"{nodeid_slot} #{r['trial']} [{r.get('specialist')}] {r.get('label')}",
                                f"{r.get('metric') or 'score'}={fmt_score(r.get('score'))}", delta, t,
                                f"| {extra}") if x)


def plain_line(r: Record) -> str:
    """``toy: plain run baseline score=0.00811 (mse) | gates: r2>=0.9 ok (0.9998)``"""
    score = f"score={fmt_score(r.get('score'))}" + (f" ({r['metric']})" if r.get("metric") else "")
    line = f"{r['task']}: plain run {r['label']} {score}"
    gates = r.get("gates") or []
    if gates:
        line += " | gates: " + "; ".join(
            f"{g['check']} {'ok' if g.get('ok') else 'MISSED'}"
            + (f" ({fmt_score(g['value'])})" if isinstance(g.get("value"), (int, float)) else "") for g in gates)
    if r.get("notes"):
        line += " | " + str(r["notes"]).splitlines()[0]
    return line


def keep_bar(records: list[Record], objective: Any) -> str:
    """The keep bar as it stands, short: how far a trial must beat the best now."""
    import math

    b = best(records, objective.direction)
    n = len(per_seed(b)) if b else 1
    noise = measured_noise(records, objective)
    if noise.var is None:
        return f"min_delta {objective.min_delta:g} (noise unmeasured)"
    bar, _ = bar_of(objective, noise, n, min_delta_on_scale(objective, b.get("score") if b else None), runs_behind(b))
    if scale_of(objective) == "relative":
        return f"{100 * math.expm1(bar):.2f}% ({n} seeds, paired)"
    return f"{bar:.3g} ({n} seeds, paired)"


def task_summary(task: str, records: list[Record], direction: str, metric: str, this_run: set[int],
                 wall_s: float | None, objective: Any = None) -> str:
    """The summary block for one task: headline, labels, specialists."""
    if not records:
        return f"{task}: no trials recorded"
    base = next((r for r in reversed(records) if r["trial"] == 0), None)  # a failed baseline may be re-measured
    b = best(records, direction)
    this = [r for r in records if r["trial"] in this_run and r["trial"] != 0]
    spread = keep_bar(records, objective) if objective is not None else "-"
    gain = "-"
    if base and b and isinstance(base.get("score"), (int, float)) and base["score"]:
        gain = f"{100.0 * (b['score'] - base['score']) / abs(base['score']):+.2f}%"
    head = [[f"{task} ({direction} {metric})", fmt_score(base.get("score") if base else None), spread,
             f"{fmt_score(b['score'])} (trial {b['trial']})" if b else "-", gain,
             b.get("specialist") if b else "-", shorten((b or {}).get("hypothesis"), 70),
             f"{len(this)} / {len(records)}", f"{wall_s:.0f}s" if wall_s else "-"]]
    out = [tabulate(head, headers=["task", "baseline", "keep bar now", "best", "Δ vs baseline", "by",
                                   "hypothesis", "trials (run/all)", "wall"], tablefmt="github")]
    counts = Counter(r.get("label") for r in records if r["trial"] != 0)
    run_counts = Counter(r.get("label") for r in this)
    rows = [[lab, run_counts.get(lab, 0), counts.get(lab, 0)] for lab in LABELS if counts.get(lab)]
    if rows:
        out.append(tabulate(rows, headers=["label", "this run", "all"], tablefmt="github"))
    specs: dict[str, list[Record]] = {}
    for r in records:
        if r["trial"] != 0:
            specs.setdefault(r.get("specialist") or "?", []).append(r)
    srows = []
    for name, rs in sorted(specs.items()):
        keeps = [r for r in rs if r.get("label") == "keep"]
        deltas = [r["delta_pct"] for r in keeps if isinstance(r.get("delta_pct"), (int, float))]
        fails = sum(1 for r in rs if r.get("label") not in ("keep", "discard"))
        cost = sum(float((r.get("usage") or {}).get("cost_usd") or 0.0) for r in rs)
        srows.append([name, len(rs), len(keeps), sum(1 for r in rs if r.get("label") == "discard"), fails,
                      f"{(min(deltas) if direction == 'minimize' else max(deltas)):+.2f}%" if deltas else "-",
                      f"${cost:.4f}" if cost else "-"])
    if srows:
        out.append(tabulate(srows, headers=["specialist", "trials", "keep", "discard", "failed", "best keep Δ",
                                            "cost"], tablefmt="github"))
    return "\n\n".join(out)
