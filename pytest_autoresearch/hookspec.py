"""Hooks other plugins (and conftest.py files) implement to extend pytest-autoresearch without forking it."""
from __future__ import annotations

from typing import Any

import pytest
from pluggy import HookspecMarker

hookspec = HookspecMarker("pytest")


@hookspec
def pytest_autoresearch_register_agents(registry: dict[str, Any]) -> None:
    """Add agents: ``registry[name] = factory`` where ``factory(cfg: dict, *, seed: int)`` returns a Proposer."""


@hookspec
def pytest_autoresearch_trial_recorded(config: pytest.Config, record: dict[str, Any]) -> None:
    """Called after each trial's record has been appended to the lineage (e.g. to mirror it elsewhere)."""
