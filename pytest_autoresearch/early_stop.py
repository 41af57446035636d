"""Early stopping: a trial whose training curve is clearly behind the best's at the same step stops there.

A recipe reports its curve with ``ctx.report(step, loss)`` (lower is better) during ``train``. With
``search.early_stop.enabled``, each seed's reported loss is compared with the best trial's curve for the same
seed (its first seed's, when the seeds differ), linearly interpolated at the same step:

    behind  iff  loss > ref + margin * |ref|

judged only between ``min_fraction`` of the best's last reported step and that step. ``patience`` consecutive
reports behind stop the phase; the trial is recorded as ``discard`` with ``early_stop`` saying where and why,
and its curve kept. The reference curve is what the best's own recipe reported: it can only decide when a
later trial stops, never a score. Leave it off where a gate needs the full run to say anything.
"""
from __future__ import annotations

import bisect
from typing import Any, Callable, Mapping, Sequence

Curve = Sequence[Sequence[float]]
MAX_KEPT = 256


def interpolate(curve: Curve, step: float) -> float | None:
    """The curve's loss at ``step`` (linear between reported points); None outside its range."""
    if not curve or step < curve[0][0] or step > curve[-1][0]:
        return None
    steps = [p[0] for p in curve]
    i = bisect.bisect_left(steps, step)
    if steps[i] == step:
        return float(curve[i][1])
    (s0, v0), (s1, v1) = curve[i - 1], curve[i]
    return float(v0 + (v1 - v0) * (step - s0) / (s1 - s0))


def monotone(curve: Curve) -> list[list[float]]:
    """Points in increasing step order, one per step (the last report of a step wins)."""
    by: dict[float, float] = {}
    for step, loss in curve:
        by[float(step)] = float(loss)
    return [[s, by[s]] for s in sorted(by)]


def thin(curve: Curve, n: int = MAX_KEPT) -> list[list[float]]:
    """At most ``n`` points for the record, first and last kept."""
    pts = [list(map(float, p)) for p in curve]
    if len(pts) <= n:
        return pts
    idx = sorted({round(i * (len(pts) - 1) / (n - 1)) for i in range(n)})
    return [pts[i] for i in idx]


def reference(best: Mapping[str, Any] | None, seed: int) -> list[list[float]] | None:
    """The best trial's curve for ``seed`` (or its first seed's), from its record."""
    curves = ((best or {}).get("metrics") or {}).get("curve_per_seed")
    if not isinstance(curves, dict) or not curves:
        return None
    c = curves.get(str(seed)) or next(iter(curves.values()))
    try:
        pts = monotone([(float(s), float(v)) for s, v in c])
    except (TypeError, ValueError):
        return None
    return pts if len(pts) >= 2 else None


def rule(ref: Curve, *, margin: float, min_fraction: float, patience: int,
         best_trial: int | None = None) -> Callable[[float, float], str | None]:
    """A monitor for ``run_phase``: returns why to stop once the run is behind ``ref`` ``patience`` times."""
    last = float(ref[-1][0])
    behind = 0

    def monitor(step: float, loss: float) -> str | None:
        nonlocal behind
        if step < min_fraction * last:
            return None
        target = interpolate(ref, step)
        if target is None:
            return None
        if loss > target + margin * abs(target):
            behind += 1
        else:
            behind = 0
        if behind >= patience:
            return (f"stopped early at step {step:g}: loss {loss:.4g} vs {target:.4g} for the best "
                    f"(trial {best_trial}) at the same step, behind by more than {100 * margin:g}% for "
                    f"{patience} report(s) in a row")
        return None

    return monitor
