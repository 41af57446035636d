"""Agents that propose trials, by the name ``--autoresearch-agent`` takes.

Plugins add their own through the ``pytest_autoresearch_register_agents`` hook (see ``hookspec.py``).
"""
from __future__ import annotations

import importlib
import os
from typing import Any, Callable, Mapping

Factory = Callable[..., Any]

# name -> "module:function"; imported only when chosen, so the SDK is never loaded for offline runs.
BUILTIN: dict[str, str] = {
    "offline": "pytest_autoresearch.agents.offline:make_agent",
    "claude": "pytest_autoresearch.agents.claude:make_agent",
}


def resolve_name(requested: str) -> str:
    """``auto`` means claude when an API key is present, else offline."""
    if requested == "auto":
        return "claude" if os.environ.get("ANTHROPIC_API_KEY") else "offline"
    return requested


def load_factory(name: str, extra: Mapping[str, Factory | str]) -> Factory:
    table: dict[str, Factory | str] = {**BUILTIN, **extra}
    if name not in table:
        raise KeyError(f"unknown agent {name!r}; known: {sorted(table)} (plugins add agents through the "
                       f"pytest_autoresearch_register_agents hook)")
    target = table[name]
    if callable(target):
        return target
    module, _, attr = target.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise KeyError(f"agent {name!r} could not be loaded from {target}: {e}") from None
