"""pytest-autoresearch: specialist agents propose recipe edits; the harness runs, scores and records them.

The public names are imported lazily so that trial subprocesses (``pytest_autoresearch.runtime``) start
without loading the harness.
"""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Budget": "task", "Objective": "task", "Surface": "task", "Specialist": "task", "Technique": "task",
    "Evaluator": "task", "Task": "task", "Edit": "edits",
    "MetricAtLeast": "legality", "MetricAtMost": "legality", "ArtifactBytesAtMost": "legality",
    "MetricIsTrue": "legality",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'pytest_autoresearch' has no attribute {name!r}")
