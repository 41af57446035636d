"""Where each setting comes from: the command line first, then the ini file (``[tool.pytest.ini_options]``,
``pytest.ini``, ...), then the default. Cheap on purpose: it runs in every pytest session the plugin loads into.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

SETTINGS_KEY = pytest.StashKey["Settings"]()

# ini key -> (type, help). Each has a command-line counterpart that takes precedence (see ``Settings``).
INI: dict[str, tuple[str, str]] = {
    "autoresearch_trials": ("string", "default N of --autoresearch-trials (0: run each recipe once, as a test)"),
    "autoresearch_agent": ("string", "default of --autoresearch-agent (auto, offline, claude, or a plugin's)"),
    "autoresearch_lineage": ("string", "default of --autoresearch-lineage, relative to the ini file's folder"),
    "autoresearch_variant": ("string", "auto, mini or full; --autoresearch-override variant=... wins"),
    "autoresearch_overrides": ("linelist", "Hydra overrides of the run config, one a line; command-line ones win"),
    "autoresearch_mlflow": ("string", "MLflow tracking URI or folder to log each trial to (needs the mlflow extra)"),
}


@dataclass(frozen=True)
class Settings:
    trials: int
    agent: str
    lineage: Path | None
    lineage_from: str           # names the option or ini key the lineage folder came from, for messages
    overrides: tuple[str, ...]  # ini first, so a command-line override of the same key wins
    mlflow: str | None
    skip: bool
    configured: bool            # an autoresearch option or ini key was given: build the run state up front
    update_reference: bool = False   # a plain run rewrites the task's reference.json (reference.py)
    replay: int | None = None        # a plain run executes this recorded trial's commit instead (replay.py)


def add_ini(parser: pytest.Parser) -> None:
    for name, (kind, help_) in INI.items():
        parser.addini(name, help_, type=kind, default=None)  # type: ignore[arg-type]


def settings(config: pytest.Config) -> Settings:
    """The resolved settings, computed once per config."""
    s = config.stash.get(SETTINGS_KEY, None)
    if s is None:
        s = config.stash[SETTINGS_KEY] = _resolve(config)
    return s


def _resolve(config: pytest.Config) -> Settings:
    ini_dir = Path(config.inipath).parent if config.inipath else Path(config.rootpath)
    where = config.inipath.name if config.inipath else "the ini file"

    def ini(name: str) -> str | None:
        value = config.getini(name)
        return (str(value).strip() or None) if value is not None else None

    opt = config.getoption
    trials_opt = opt("autoresearch_trials", None)
    trials_ini = ini("autoresearch_trials")
    if trials_opt is not None:
        trials = int(trials_opt)
    elif trials_ini is not None:
        try:
            trials = int(trials_ini)
        except ValueError:
            raise pytest.UsageError(f"autoresearch_trials = {trials_ini!r} in {where} is not a whole number") from None
    else:
        trials = 0
    if trials < 0:
        source = "--autoresearch-trials" if trials_opt is not None else f"autoresearch_trials in {where}"
        raise pytest.UsageError(f"{source} must be >= 0, got {trials}")

    lineage_opt, lineage_ini = opt("autoresearch_lineage", None), ini("autoresearch_lineage")
    if lineage_opt:
        lineage, lineage_from = Path(lineage_opt).resolve(), "--autoresearch-lineage"
    elif lineage_ini:
        lineage, lineage_from = (ini_dir / lineage_ini).resolve(), f"autoresearch_lineage in {where}"
    else:
        lineage, lineage_from = None, "the default lineage folder"

    overrides = [str(o).strip() for o in (config.getini("autoresearch_overrides") or []) if str(o).strip()]
    variant = ini("autoresearch_variant")
    if variant:
        overrides.append(f"variant={variant}")
    cli_overrides = list(opt("autoresearch_override", None) or [])

    mlflow_opt, mlflow_ini = opt("autoresearch_mlflow", None), ini("autoresearch_mlflow")
    mlflow = _tracking_uri(mlflow_opt, Path.cwd()) if mlflow_opt else _tracking_uri(mlflow_ini, ini_dir)

    agent_opt = opt("autoresearch_agent", None)
    given_cli = trials_opt is not None or any((agent_opt, lineage_opt, cli_overrides, mlflow_opt))
    given_ini = any((trials_ini, lineage_ini, overrides, mlflow_ini, ini("autoresearch_agent")))
    update_reference, replay = bool(opt("autoresearch_update_reference", False)), opt("autoresearch_replay", None)
    if trials and (update_reference or replay is not None):
        flag = "--autoresearch-update-reference" if update_reference else "--autoresearch-replay"
        raise pytest.UsageError(f"{flag} applies to a plain run (the recipe once), not to --autoresearch-trials "
                                f"{trials}: run it without trials (autoresearch promote puts a trial's recipe in place)")
    return Settings(trials=trials, agent=agent_opt or ini("autoresearch_agent") or "auto", lineage=lineage,
                    lineage_from=lineage_from, overrides=tuple(overrides + cli_overrides), mlflow=mlflow,
                    skip=bool(opt("autoresearch_skip", False)), configured=given_cli or given_ini,
                    update_reference=update_reference, replay=replay)


def _tracking_uri(value: str | None, base: Path) -> str | None:
    """A URI as given (``http://...``, ``sqlite:///...``, ``file:///...``); a plain folder, made absolute."""
    if not value:
        return None
    if "://" in value or value.startswith(("databricks", "sqlite:")):
        return value
    return (base / value).resolve().as_uri()
