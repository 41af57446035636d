"""The keep rule: a candidate against the best, seed by seed, with run-to-run noise measured, not assumed.

A trial is kept when its mean paired gain over the best beats a bar:

    gain_i    = how much better the candidate is than the best on seed i (same seeds: a paired comparison),
                in metric units (``scale="absolute"``) or as a log ratio (``scale="relative"``: timings, whose
                noise grows with the score);
    keep iff  mean(gain_i) > max(min_delta, c * sqrt((1 + 1/k) * var_run / n)),
    c       = the one-sided quantile of Student's t with var_run's degrees of freedom at the confidence
              ``noise_sigmas`` standard normal deviations state (2 -> 97.7%),
    k       = how many runs the best's per-seed scores average (``runs_behind``): the baseline's repeats, a
              confirmed keep's two runs, 1 for a single run (a side-by-side re-run), where the bar is
              c * sqrt(2 * var_run / n).

A paired one-sided t-test, then: with few re-runs the variance estimate is itself uncertain (from one pair of
runs it can be a tenth of the truth), and a normal quantile would keep noise far more often than stated; with
many the quantile approaches ``noise_sigmas``.

``var_run`` is the variance of one seed's score between two runs of the same code, pooled over every re-run
the lineage holds: the baseline's repeats (``Objective.baseline_repeats``) and the side-by-side re-runs of
``confirm_keeps``. Seed-to-seed spread is not noise (both trials ran the same seeds), and a deterministic
score, whose re-runs agree exactly, has none: the bar is then ``min_delta`` alone. The exception is chaotic
training, where any edit moves a seed's score as far as a new seed would: with ``Objective.reseed_reruns``
the re-runs train on fresh seeds, so their spread is that seed-to-seed spread. A candidate that ignores the
seed it is given (a pinned ``torch.manual_seed``) would carry a lucky draw onto the fresh seeds and pool two
identical runs as zero noise: one whose fresh-seed re-run repeats its first run exactly, while the best's moved,
is not confirmed (``confirm.seed_ignored``) and its pair stays out of the pool. Until a task has any re-run,
the bar is ``min_delta`` too, and the record says so.

With ``confirm_keeps`` the first measurement only screens: a keep rests on a side-by-side replicate (the
candidate and the best re-run together) that passes this rule on its own. A candidate whose screen fell short
by at most ``Objective.replicate_near_misses`` standard errors earns that replicate too (``confirm.near_miss``):
the chance that noise is kept is still at most the replicate's, while a real win that drew one unlucky
measurement gets a second one.
"""
from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, field
from statistics import NormalDist
from typing import Any, Iterable, Mapping, Sequence

Record = Mapping[str, Any]


@dataclass(frozen=True)
class Noise:
    """Pooled run-to-run variance of one seed's score (on the objective's scale), and what it came from."""

    var: float | None
    dof: int = 0
    sources: tuple[str, ...] = ()

    def describe(self) -> str:
        if self.var is None:
            return "not measured yet (no re-runs of the same code)"
        return (f"run-to-run sd per seed {math.sqrt(self.var):.3g} from {self.dof} degree(s) of freedom "
                f"({', '.join(self.sources)})")


@dataclass(frozen=True)
class Verdict:
    """Why a candidate was or was not kept, in the numbers the rule used."""

    keep: bool
    gain: float                      # mean paired gain (metric units, or log ratio)
    threshold: float                 # the bar it had to beat
    se: float | None                 # standard error of the mean paired gain from run noise (None: unmeasured)
    n: int                           # seeds compared
    scale: str
    min_delta: float                 # min_delta on the same scale
    best_trial: int | None = None
    noise: str = ""
    gains: list[float] = field(default_factory=list)
    critical: float | None = None    # the t quantile the standard error is multiplied by (None: unmeasured)
    dof: int = 0                     # the noise estimate's degrees of freedom
    best_runs: int = 1               # runs the best's per-seed scores average (its share of the se)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        unit = "" if self.scale == "absolute" else " (log ratio)"
        bar = (f"max(min_delta {self.min_delta:.3g}, t({self.dof} dof) {self.critical:.3g} x se {self.se:.3g})"
               if self.se is not None and self.critical is not None else f"min_delta {self.min_delta:.3g}")
        runs = f" (mean of {self.best_runs} runs)" if self.best_runs > 1 else ""
        return (f"paired gain {self.gain:+.4g}{unit} over {self.n} seed(s) vs trial {self.best_trial}{runs}; bar "
                f"{self.threshold:.4g} = {bar}")


def scale_of(objective: Any) -> str:
    return getattr(objective, "scale", "absolute")


def transform(values: Sequence[float], scale: str) -> list[float] | None:
    """Scores on the rule's scale: as they are, or their logs (None where a relative score is not positive)."""
    if scale == "absolute":
        return [float(v) for v in values]
    if any(v is None or not v > 0 for v in values):
        return None
    return [math.log(float(v)) for v in values]


def per_seed(rec: Record) -> dict[int, float]:
    """Seed -> score of a record (its seeds' scores when the evaluator reported them, else one entry, -1)."""
    metrics = rec.get("metrics") or {}
    ps = metrics.get("score_per_seed")
    seeds = rec.get("seeds") or []
    if isinstance(ps, list) and len(ps) == len(seeds) and all(isinstance(v, (int, float)) for v in ps):
        return {int(s): float(v) for s, v in zip(seeds, ps)}
    s = rec.get("score")
    return {-1: float(s)} if isinstance(s, (int, float)) else {}


def runs_behind(rec: Record | None) -> int:
    """How many runs each of a record's per-seed scores averages: its repeats (the baseline), 2 for a keep
    confirmed side by side (the screen and the replicate), else 1. The mean of k runs carries 1/k of one run's
    noise, which is the best's share of a paired gain's standard error."""
    m = (rec or {}).get("metrics") or {}
    if isinstance(m.get("score_runs"), list) and len(m["score_runs"]) >= 2:
        return len(m["score_runs"])
    if isinstance(m.get("score_repeats"), list) and len(m["score_repeats"]) >= 2 and set(per_seed(rec or {})) == {-1}:
        return len(m["score_repeats"])  # no per-seed scores: the score itself is the repeats' mean
    c = m.get("confirm") or {}
    if isinstance(c.get("runs"), list) and len(c["runs"]) == 2 and not c.get("seed_ignored"):
        return 2
    return 1


def _run_groups(rec: Record) -> Iterable[tuple[str, list[list[float]]]]:
    """Groups of per-seed score lists measured on the same code (each list one run, seeds aligned)."""
    m = rec.get("metrics") or {}
    if isinstance(m.get("score_runs"), list) and len(m["score_runs"]) >= 2:
        yield f"trial {rec.get('trial')} repeats", m["score_runs"]
    elif isinstance(m.get("score_repeats"), list) and len(m["score_repeats"]) >= 2:
        yield f"trial {rec.get('trial')} repeats", [[v] for v in m["score_repeats"]]
    c = m.get("confirm") or {}
    # A candidate that pinned its seed ran one draw twice: its pair says nothing about noise (trial.py).
    keys = (("best_runs_per_seed", "re-run of the best"),) if c.get("seed_ignored") else (
        ("runs_per_seed", "re-run"), ("best_runs_per_seed", "re-run of the best"))
    for key, what in keys:
        runs = c.get(key)
        if isinstance(runs, list) and len(runs) >= 2:
            yield f"trial {rec.get('trial')} {what}", runs


def measured_noise(records: Iterable[Record], objective: Any) -> Noise:
    """Pool the within-seed variance of every group of re-runs of identical code in the lineage."""
    scale = scale_of(objective)
    ss, dof, sources = 0.0, 0, []
    for rec in records:
        for name, runs in _run_groups(rec):
            cols = list(zip(*[r for r in runs if isinstance(r, list)]))  # per seed: its values across runs
            used = False
            for col in cols:
                vals = transform([v for v in col if isinstance(v, (int, float))], scale)
                if vals is None or len(vals) < 2:
                    continue
                mean = sum(vals) / len(vals)
                ss += sum((v - mean) ** 2 for v in vals)
                dof += len(vals) - 1
                used = True
            if used:
                sources.append(name)
    if dof == 0:
        return Noise(None)
    return Noise(ss / dof, dof, tuple(sources[:4]) + ((f"+{len(sources) - 4} more",) if len(sources) > 4 else ()))


def min_delta_on_scale(objective: Any, best_score: float | None) -> float:
    md = float(getattr(objective, "min_delta", 0.0) or 0.0)
    if scale_of(objective) == "absolute" or not md:
        return md
    if not best_score:
        return 0.0
    return abs(math.log1p(md / abs(best_score)))


@functools.lru_cache(maxsize=256)
def critical_value(sigmas: float, dof: int) -> float:
    """Student's t quantile, with ``dof`` degrees of freedom, at the one-sided confidence of ``sigmas`` normal
    deviations (``dof`` <= 0: the normal quantile, ``sigmas`` itself)."""
    if dof <= 0:
        return float(sigmas)
    from scipy.special import stdtrit  # scipy comes with scikit-learn; imported only once noise is measured

    return float(stdtrit(dof, NormalDist().cdf(float(sigmas))))


def bar_of(objective: Any, noise: Noise, n_seeds: int, min_delta: float,
           best_runs: int = 1) -> tuple[float, float | None]:
    """The bar a mean paired gain over ``n_seeds`` seeds must beat against a best whose scores average
    ``best_runs`` runs, and the standard error behind it (None when the noise is unmeasured, so the bar is
    ``min_delta``, already on the rule's scale)."""
    if noise.var is None:
        return min_delta, None
    se = math.sqrt((1.0 + 1.0 / max(best_runs, 1)) * noise.var / max(n_seeds, 1))
    return max(min_delta, critical_value(objective.noise_sigmas, noise.dof) * se), se


def decide(candidate: Mapping[int, float], best: Mapping[int, float], objective: Any, noise: Noise,
           best_trial: int | None = None, best_runs: int = 1) -> Verdict:
    """The keep verdict for one run's per-seed scores of ``candidate`` against ``best``'s, which average
    ``best_runs`` runs (see the module docstring)."""
    scale = scale_of(objective)
    seeds = sorted(set(candidate) & set(best))
    if not seeds:  # measured on other seeds (or per-seed scores missing): compare the means, unpaired
        seeds, candidate = [-1], {-1: _mean(candidate.values())}
        best = {-1: _mean(best.values())}
    c = transform([candidate[s] for s in seeds], scale)
    b = transform([best[s] for s in seeds], scale)
    best_mean = _mean(best[s] for s in seeds)
    if c is None or b is None:  # a relative scale needs positive scores
        scale, c, b = "absolute", [candidate[s] for s in seeds], [best[s] for s in seeds]
    sign = 1.0 if objective.direction == "minimize" else -1.0
    gains = [sign * (bi - ci) for bi, ci in zip(b, c)]
    gain = sum(gains) / len(gains)
    md = min_delta_on_scale(objective, best_mean) if scale == scale_of(objective) else float(objective.min_delta)
    threshold, se = bar_of(objective, noise, len(gains), md, best_runs)
    return Verdict(keep=gain > threshold, gain=gain, threshold=threshold, se=se, n=len(gains), scale=scale,
                   min_delta=md, best_trial=best_trial, noise=noise.describe(), gains=[round(g, 6) for g in gains],
                   critical=None if se is None else round(critical_value(objective.noise_sigmas, noise.dof), 4),
                   dof=noise.dof, best_runs=max(best_runs, 1))


def bar_fraction(objective: Any, records: Sequence[Record], best: Record | None) -> float | None:
    """The keep bar now, as a fraction of the best score: what a change must move the score by to be kept
    (None without a scored best, or when the bar is 0)."""
    score = best.get("score") if best else None
    if not isinstance(score, (int, float)) or not score:
        return None
    bar, _ = bar_of(objective, measured_noise(records, objective), len(per_seed(best)),
                    min_delta_on_scale(objective, score), runs_behind(best))
    if scale_of(objective) == "absolute":
        bar /= abs(float(score))
    return bar or None


def describe_rule(objective: Any, noise: Noise, n_seeds: int, best_score: float | None, best_runs: int = 1) -> str:
    """The rule as it stands now, for agents and the summary."""
    scale = scale_of(objective)
    md = min_delta_on_scale(objective, best_score)
    what = "metric units" if scale == "absolute" else "log ratio, i.e. relative"
    head = (f"a trial is kept when its mean per-seed gain over the best, on the same {n_seeds} seed(s) "
            f"({what}), exceeds the bar")
    if noise.var is None:
        bar = f"min_delta = {md:.4g}; run-to-run noise is not measured yet"
    else:
        value, se = bar_of(objective, noise, n_seeds, md, best_runs)
        c = critical_value(objective.noise_sigmas, noise.dof)
        bar = (f"max(min_delta {md:.4g}, {c:.3g} x {se:.4g}) = {value:.4g}, where {c:.3g} is Student's t quantile "
               f"for {noise.dof} degree(s) of freedom at the confidence of {objective.noise_sigmas:g} sigmas")
        if best_runs > 1:
            bar += f" and the standard error counts the best's scores as the mean of {best_runs} runs"
        if scale == "relative":
            bar += f", i.e. {100 * math.expm1(value):.2f}% faster or better"
        bar += f"; {noise.describe()}"
    return f"{head}: {bar}"


def _mean(values: Iterable[float]) -> float:
    v = list(values)
    return sum(v) / len(v) if v else float("nan")
