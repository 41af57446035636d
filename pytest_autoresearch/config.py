"""Typed configuration composed with Hydra from ``pytest_autoresearch/conf`` plus command-line overrides."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING


@dataclass
class BudgetOverrides:
    """Each ``None`` keeps the task's own value."""

    train_seconds: Optional[float] = None
    eval_seconds: Optional[float] = None
    prepare_seconds: Optional[float] = None
    startup_seconds: Optional[float] = None
    seeds: Optional[int] = None
    artifact_bytes: Optional[int] = None
    threads: Optional[int] = None


@dataclass
class LineageConf:
    top_k: int = 5
    recent: int = 10
    failures: int = 5
    keep_outputs: bool = False


@dataclass
class AutoresearchConf:
    variant: str = "auto"
    device: str = "auto"
    seed: int = 0
    schedule: str = "round_robin"
    agent: Any = MISSING
    budget: BudgetOverrides = field(default_factory=BudgetOverrides)
    lineage: LineageConf = field(default_factory=LineageConf)


class ConfigError(ValueError):
    """A bad override or config value; the message names the key."""


_registered = False


def _register() -> None:
    global _registered
    if not _registered:
        from hydra.core.config_store import ConfigStore

        ConfigStore.instance().store(name="autoresearch_schema", node=AutoresearchConf)
        _registered = True


def compose(overrides: list[str], agent: str | None = None) -> Any:
    """Compose the run config; ``agent`` (from ``--autoresearch-agent``) selects the ``agent/`` group entry."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    _register()
    ovs = list(overrides)
    if agent and agent not in ("auto",) and not any(o.split("=")[0].lstrip("+~") == "agent" for o in ovs):
        ovs.append(f"agent={agent}" if _has_agent_yaml(agent) else f"agent.name={agent}")
    was = GlobalHydra.instance().is_initialized()
    if was:  # inside the `autoresearch` Hydra app: compose on a fresh instance, then restore nothing else
        GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module="pytest_autoresearch.conf", version_base="1.3"):
            cfg = hydra_compose(config_name="config", overrides=ovs)
    except (HydraException, OmegaConfBaseException) as e:
        raise ConfigError(f"bad --autoresearch-override in {ovs}: {_first_line(e)}") from None
    for key, allowed in (("variant", ("auto", "mini", "full")), ("device", ("auto", "cpu", "cuda")),
                         ("schedule", ("round_robin", "random"))):
        if cfg[key] not in allowed:
            raise ConfigError(f"{key}={cfg[key]!r} is not one of {allowed}")
    if cfg.budget.seeds is not None and cfg.budget.seeds < 1:
        raise ConfigError(f"budget.seeds={cfg.budget.seeds} must be >= 1")
    OmegaConf.set_readonly(cfg, True)
    return cfg


def _has_agent_yaml(name: str) -> bool:
    from importlib.resources import files

    return files("pytest_autoresearch.conf").joinpath("agent", f"{name}.yaml").is_file()


def _first_line(e: BaseException) -> str:
    parts = []
    while e is not None and len(parts) < 3:
        text = str(e).strip().splitlines()
        if text and text[0] not in parts:
            parts.append(text[0])
        e = e.__cause__ or e.__context__  # type: ignore[assignment]
    return ": ".join(parts) or "invalid override"


def to_dict(node: Any) -> dict[str, Any]:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(node, resolve=True)  # type: ignore[return-value]
