"""Reusable legality checks. A task's ``legality`` fixture returns a list of them.

A check looks at the evaluator's metrics (and the budget) and returns ``None`` when the trial passes, or the
reason it does not. Its ``label`` is what a failing trial is recorded as.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Protocol, runtime_checkable

from .task import Budget


@runtime_checkable
class Check(Protocol):
    name: str
    label: str

    def __call__(self, metrics: Mapping[str, Any], budget: Budget) -> str | None: ...


def _number(metrics: Mapping[str, Any], key: str) -> float | str:
    if key not in metrics:
        return f"the evaluator reported no '{key}' (reported: {sorted(metrics)})"
    try:
        v = float(metrics[key])
    except (TypeError, ValueError):
        return f"'{key}' is not a number: {metrics[key]!r}"
    return f"'{key}' is {v}" if math.isnan(v) else v


class _Bound:
    """A gate on one metric against a fixed threshold; subclasses say which side passes."""

    metric: str
    threshold: float
    label: str
    _ok_symbol = _fail_symbol = ""

    def _passes(self, v: float) -> bool:
        raise TypeError  # pragma: no cover - subclasses define it

    @property
    def name(self) -> str:
        return f"{self.metric}{self._ok_symbol}{self.threshold:g}"

    def __call__(self, metrics: Mapping[str, Any], budget: Budget) -> str | None:
        v = _number(metrics, self.metric)
        if isinstance(v, str):
            return v
        return None if self._passes(v) else f"{self.metric} = {v:.4f} {self._fail_symbol} {self.threshold:g}"


@dataclass(frozen=True)
class MetricAtLeast(_Bound):
    """Gate: ``metrics[metric] >= threshold`` (e.g. mean accuracy over seeds >= 0.96)."""

    metric: str
    threshold: float
    label: str = "gate_miss"
    _ok_symbol, _fail_symbol = ">=", "<"

    def _passes(self, v: float) -> bool:
        return v >= self.threshold


@dataclass(frozen=True)
class MetricAtMost(_Bound):
    """Gate: ``metrics[metric] <= threshold``."""

    metric: str
    threshold: float
    label: str = "gate_miss"
    _ok_symbol, _fail_symbol = "<=", ">"

    def _passes(self, v: float) -> bool:
        return v <= self.threshold


@dataclass(frozen=True)
class ArtifactBytesAtMost:
    """Size cap: the evaluator-measured ``metrics[metric]`` must not exceed ``budget.artifact_bytes``."""

    metric: str = "artifact_bytes"
    label: str = "size_blocked"

    @property
    def name(self) -> str:
        return f"{self.metric}<=budget.artifact_bytes"

    def __call__(self, metrics: Mapping[str, Any], budget: Budget) -> str | None:
        if budget.artifact_bytes is None:
            return None
        v = _number(metrics, self.metric)
        if isinstance(v, str):
            return v
        cap = budget.artifact_bytes
        return None if v <= cap else f"artifact is {int(v):,} bytes > cap {cap:,} (over by {int(v) - cap:,})"


@dataclass(frozen=True)
class MetricIsTrue:
    """A boolean verdict computed by the evaluator (a causality probe, a normalization check, ...).

    ``reason_metric`` optionally names a metric holding the evaluator's explanation.
    """

    metric: str
    reason_metric: str | None = None
    label: str = "gate_miss"

    @property
    def name(self) -> str:
        return self.metric

    def __call__(self, metrics: Mapping[str, Any], budget: Budget) -> str | None:
        if self.metric not in metrics:
            return f"the evaluator reported no '{self.metric}'"
        if metrics[self.metric] is True or metrics[self.metric] == 1:
            return None
        why = metrics.get(self.reason_metric) if self.reason_metric else None
        return f"{self.metric} failed" + (f": {why}" if why else "")


def run_checks(checks: tuple[Any, ...], metrics: Mapping[str, Any], budget: Budget) -> tuple[str, str] | None:
    """The first failing check's ``(label, reason)``, or ``None`` when all pass."""
    for check in checks:
        reason = check(metrics, budget)
        if reason is not None:
            return check.label, f"{check.name}: {reason}"
    return None
