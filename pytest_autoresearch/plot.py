"""The progress plot: score over trial number, the running best, keeps highlighted, failures marked, a colour
per specialist. Headless (matplotlib's Agg canvas, no pyplot state); needs the ``report`` extra.

Trials without a score (crashes, overruns, refused edits) are drawn on a band along the bottom of the axes, and
scores far outside the legal trials' range (a diverged run's loss) on a band along the top, so every trial
appears and none squashes the scale. The PNG's text chunks (``Title``, ``Description``) carry what was drawn,
as JSON.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from .lineage import Record, latest_per_trial

# label -> (marker, size, what the legend calls it)
MARKERS: dict[str, tuple[str, float, str]] = {
    "baseline": ("D", 60, "baseline"),
    "keep": ("*", 260, "keep (new best)"),
    "discard": ("o", 26, "discard"),
    "gate_miss": ("X", 60, "gate miss"),
    "size_blocked": ("s", 44, "size blocked"),
    "crash": ("v", 60, "crash"),
    "budget_overrun": (">", 60, "budget overrun"),
    "preflight_crash": ("d", 50, "preflight crash"),
    "surface_violation": ("P", 60, "surface violation"),
    "evaluator_error": ("x", 60, "evaluator error"),
    "harness_error": ("x", 60, "harness error"),
}
BASELINE_COLOUR = "#444444"
BEST_COLOUR = "#111111"


def installed() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def preload_in_background() -> None:
    """Import matplotlib on a thread while trials run (the session mostly waits on recipe processes), so the plot
    written at the end of the session does not add the import's second to every run."""
    import threading

    def load() -> None:
        try:
            import matplotlib.backends.backend_agg  # noqa: F401
            import matplotlib.figure  # noqa: F401
        except Exception:  # noqa: BLE001 - not installed or broken: the session says so when it writes the report
            pass

    if installed_spec():
        threading.Thread(target=load, name="autoresearch-plot-preload", daemon=True).start()


def installed_spec() -> bool:
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def specialist_colours(records: Sequence[Record]) -> dict[str, str]:
    """A stable colour per specialist (matplotlib's tab10/tab20 cycle in name order)."""
    names = sorted({str(r.get("specialist")) for r in records if r.get("specialist") not in (None, "baseline")})
    palette = _palette(len(names))
    return {n: palette[i % len(palette)] for i, n in enumerate(names)}


def _palette(n: int) -> list[str]:
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [to_hex(cmap(i)) for i in range(cmap.N)]


def running_best(records: Sequence[Record], direction: str) -> list[tuple[int, float]]:
    """(trial, best score so far) after each baseline or keep."""
    out: list[tuple[int, float]] = []
    best: float | None = None
    for r in latest_per_trial(records):
        s = r.get("score")
        if r.get("label") in ("baseline", "keep") and isinstance(s, (int, float)):
            if best is None or (s < best if direction == "minimize" else s > best):
                best = float(s)
            out.append((r["trial"], best))
    return out


def y_limits(records: Sequence[Record]) -> tuple[float, float] | None:
    """The score range to draw: the legal trials' range with a margin, widened to failed trials' scores only
    when they lie near it (None: nothing scored)."""
    legal = [float(r["score"]) for r in records if r.get("label") in ("baseline", "keep", "discard")
             and isinstance(r.get("score"), (int, float))]
    scored = [float(r["score"]) for r in records if isinstance(r.get("score"), (int, float))]
    core = legal or scored
    if not core:
        return None
    lo, hi = min(core), max(core)
    span = (hi - lo) or abs(hi) * 0.1 or 1.0
    near = [v for v in scored if lo - span <= v <= hi + span]
    lo, hi = min([lo, *near]), max([hi, *near])
    span = (hi - lo) or span
    return lo - 0.12 * span, hi + 0.12 * span


def plot_progress(records: Sequence[Record], path: Path, *, task: str, metric: str, direction: str,
                  title_extra: str = "") -> dict[str, Any]:
    """Draw the plot to ``path`` (PNG); returns what was drawn (also stored in the PNG's Description)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Rectangle
    from matplotlib.transforms import blended_transform_factory

    recs = latest_per_trial(records)
    colours = specialist_colours(recs)
    fig = Figure(figsize=(11, 5.2), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    band = blended_transform_factory(ax.transData, ax.transAxes)
    drawn: dict[str, Any] = {"task": task, "metric": metric, "direction": direction, "trials": len(recs),
                             "scored": 0, "unscored": 0, "off_scale": 0, "labels": {}, "specialists": colours}
    limits = y_limits(recs)
    has_unscored = any(not isinstance(r.get("score"), (int, float)) for r in recs)
    if limits is not None:
        lo, hi = limits
        span = hi - lo
        off = [r for r in recs if isinstance(r.get("score"), (int, float)) and not lo <= r["score"] <= hi]
        # Room for the bands: below the data for unscored trials, above it for off-scale ones.
        limits = (lo - (0.1 * span if has_unscored else 0.0), hi + (0.1 * span if off else 0.0))
    in_range = (lambda v: limits[0] <= v <= limits[1]) if limits else (lambda v: True)
    for label, (marker, size, _name) in MARKERS.items():
        group = [r for r in recs if r.get("label") == label]
        if not group:
            continue
        drawn["labels"][label] = len(group)
        scored = [r for r in group if isinstance(r.get("score"), (int, float)) and in_range(r["score"])]
        offscale = [r for r in group if isinstance(r.get("score"), (int, float)) and not in_range(r["score"])]
        unscored = [r for r in group if not isinstance(r.get("score"), (int, float))]
        filled = marker not in ("x",)
        for part, transform, ys in ((scored, ax.transData, [r.get("score") for r in scored]),
                                    (unscored, band, [0.03] * len(unscored)),
                                    (offscale, band, [0.97] * len(offscale))):
            if not part:
                continue
            cols = [BASELINE_COLOUR if r.get("specialist") in (None, "baseline") else colours[str(r["specialist"])]
                    for r in part]
            kw: dict[str, Any] = {"edgecolors": BEST_COLOUR, "linewidths": 0.9} if label == "keep" else {}
            ax.scatter([r["trial"] for r in part], ys, c=cols, marker=marker, s=size, transform=transform,
                       alpha=1.0 if label in ("keep", "baseline") else 0.75, zorder=4 if label == "keep" else 3,
                       clip_on=False, **({} if not filled else kw))
        drawn["scored"] += len(scored) + len(offscale)
        drawn["unscored"] += len(unscored)
        drawn["off_scale"] += len(offscale)
    steps = running_best(recs, direction)
    if steps:
        last = recs[-1]["trial"] if recs else steps[-1][0]
        xs = [t for t, _ in steps] + [max(last, steps[-1][0])]
        ys = [b for _, b in steps] + [steps[-1][1]]
        ax.step(xs, ys, where="post", color=BEST_COLOUR, linewidth=1.6, zorder=2)
        drawn["best"] = steps[-1][1]
        drawn["running_best"] = steps
    if limits is not None:
        ax.set_ylim(*limits)
    for flag, y, text in ((has_unscored, 0.0, "no score"), (drawn["off_scale"] > 0, 0.94, "off scale")):
        if flag:
            ax.add_patch(Rectangle((0.0, y), 1.0, 0.06, transform=ax.transAxes, color="#f0f0f0", zorder=0,
                                   linewidth=0))
            ax.text(0.004, y + 0.03, text, transform=ax.transAxes, ha="left", va="center", fontsize=7,
                    color="#777777", zorder=1)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel(f"{metric} ({'lower' if direction == 'minimize' else 'higher'} is better)")
    n = sum(1 for r in recs if r.get("trial") != 0)
    head = f"{task}: baseline + {n} trials" if len(recs) > n else f"{task}: {n} trials"
    if steps and isinstance(recs[0].get("score"), (int, float)) and recs[0].get("score"):
        base, best = recs[0]["score"], steps[-1][1]
        head += f", best {best:.5g} ({100.0 * (best - base) / abs(base):+.2f}% vs baseline)"
    ax.set_title(head + (f" {title_extra}" if title_extra else ""), fontsize=11)
    ax.grid(True, alpha=0.25)
    handles = [Line2D([], [], color=BEST_COLOUR, linewidth=1.6, label="running best")]
    handles += [Line2D([], [], linestyle="", marker="o", markersize=7, color=c, label=n) for n, c in colours.items()]
    handles += [Line2D([], [], linestyle="", marker=MARKERS[lab][0], markersize=8, color="#666666",
                       markeredgecolor=BEST_COLOUR if lab == "keep" else "#666666", label=MARKERS[lab][2])
                for lab in drawn["labels"]]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    fig.subplots_adjust(left=0.08, right=0.80, bottom=0.11, top=0.91)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, format="png", metadata={"Title": head, "Description": json.dumps(drawn, default=str)})
    tmp.replace(path)
    return drawn
