"""``autoresearch``: a Hydra app that runs the pytest job once per config, so any Hydra launcher can sweep it.

    autoresearch task=airbench trials=50
    autoresearch -m task=airbench,paramgolf agent=offline,claude     # one job per combination
    autoresearch -m launcher=joblib task=airbench,paramgolf         # jobs in parallel (a conf/launcher preset)
    autoresearch new mytask [--tasks-dir tasks]                      # scaffold tasks/mytask/ to start from

Each job is ``pytest <task folder> --autoresearch-trials N --autoresearch-agent A`` in a subprocess. In a
multirun every job gets its own lineage under its Hydra output folder, so agents are compared on equal terms,
and the multirun exits non-zero when any job failed (``multirun.py``).

Config: the project's ``conf/autoresearch.yaml`` with its groups (``task/``, ``agent/``, ``search/``,
``launcher/``, ``sweep/``) when there is one (or the folder ``--config-dir`` names), else the schema below
alone; the command line wins over both.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore

from . import multirun as _multirun  # registers the callback that records each job's result
from .config import AutoresearchConf


@dataclass
class RunConf(AutoresearchConf):
    """The run config (``pytest_autoresearch/conf/config.yaml``), typed, so a wrong key or type is refused before
    any job starts. Each value that differs from the package default is passed on as an
    ``--autoresearch-override``; ``agent`` holds the chosen agent's own settings (``+run.agent.KEY=V``)."""

    agent: Dict[str, Any] = field(default_factory=dict)


@dataclass
class CliConf:
    defaults: List[Any] = field(default_factory=lambda: ["autoresearch_jobs", "_self_"])   # the jobs' results
    task: str = "airbench"
    task_path: Optional[str] = None   # the task folder; null: <tasks_dir>/<task>
    trials: int = 20
    agent: str = "auto"
    tasks_dir: str = "tasks"
    lineage: Optional[str] = None     # null: .autoresearch/ for a single run, the job's folder in a multirun
    run: RunConf = field(default_factory=RunConf)
    overrides: List[str] = field(default_factory=list)   # passed on as --autoresearch-override, after run.*
    pytest_args: List[str] = field(default_factory=list)
    devices: List[str] = field(default_factory=list)     # multirun job k sees CUDA_VISIBLE_DEVICES=devices[k % n]


ConfigStore.instance().store(name="autoresearch_cli", node=CliConf)

CONF_NAME = "autoresearch"   # the project's primary config: conf/autoresearch.yaml
USAGE = 2                    # exit status of a config the CLI cannot run (a bad key, type, task folder)


class UsageProblem(ValueError):
    """A job that cannot start as configured (the message says what to change)."""


def run_overrides(run: Any) -> list[str]:
    """``run.*`` as ``--autoresearch-override`` values: each leaf that differs from the package default, and
    every agent setting."""
    from omegaconf import OmegaConf

    have = OmegaConf.to_container(run, resolve=True)
    base = OmegaConf.to_container(OmegaConf.structured(RunConf), resolve=True)
    assert isinstance(have, dict) and isinstance(base, dict)
    out: list[str] = []

    def walk(value: Any, default: Any, key: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, default.get(k, _UNSET) if isinstance(default, dict) else _UNSET, f"{key}.{k}" if key else k)
        elif value != default:
            out.append(f"{key}={hydra_value(value)}")

    walk(have, base, "")
    return out


_UNSET = object()


def hydra_value(value: Any) -> str:
    """``value`` in Hydra's override grammar."""
    import re

    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{hydra_value(v)}" for k, v in value.items()) + "}"
    text = str(value)
    if re.fullmatch(r"[A-Za-z_/.][\w./-]*", text) and text not in ("null", "true", "false"):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def pytest_command(cfg: Any, job_dir: Path | None, cwd: Path) -> list[str]:
    target = Path(cfg.task_path) if cfg.task_path else Path(cfg.tasks_dir) / cfg.task
    if not (cwd / target).exists():
        raise UsageProblem(f"no task folder {cwd / target} (task={cfg.task}, "
                           + (f"task_path={cfg.task_path})" if cfg.task_path else f"tasks_dir={cfg.tasks_dir})"))
    cmd = [sys.executable, "-m", "pytest", str(target), "--autoresearch-trials", str(cfg.trials),
           "--autoresearch-agent", cfg.agent]
    lineage = cfg.lineage or (str(job_dir / ".autoresearch") if job_dir else None)
    if lineage:
        cmd += ["--autoresearch-lineage", lineage]
    for ov in [*run_overrides(cfg.run), *cfg.overrides]:
        cmd += ["--autoresearch-override", ov]
    return cmd + list(cfg.pytest_args)


def _job(cfg: Any) -> int:
    """One job: its pytest run's exit status is the job's value. A single run exits with it; in a multirun each
    job's is recorded where it ran (``multirun.JobResults``) and the CLI exits non-zero if any failed."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    _multirun.STARTED = True
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    cwd = Path(hc.runtime.cwd)
    out_dir = Path(hc.runtime.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        cmd = pytest_command(cfg, out_dir if multirun else None, cwd)
    except UsageProblem as e:
        print(f"autoresearch: {e}", file=sys.stderr, flush=True)
        if not multirun:
            raise SystemExit(USAGE) from None
        (out_dir / _multirun.RESULT_FILE).write_text(json.dumps({"error": f"cannot start: {e}"}))
        return USAGE
    env = os.environ.copy()
    device = None
    if cfg.devices:
        num = int(hc.job.num) if multirun and hc.job.get("num") is not None else 0
        device = env["CUDA_VISIBLE_DEVICES"] = str(cfg.devices[num % len(cfg.devices)])
    print("autoresearch job:", " ".join(cmd), flush=True)
    # What ran and where, next to the job's Hydra config; the callback adds how it ended (multirun.py).
    (out_dir / _multirun.RESULT_FILE).write_text(json.dumps(
        {"command": cmd, "device": device, "started": time.time()}, indent=1))
    rc = subprocess.call(cmd, cwd=cwd, env=env)
    if rc != 0 and not multirun:
        raise SystemExit(rc)
    return rc


def new(argv: list[str]) -> int:
    """``autoresearch new <task>``: scaffold a task folder that passes a plain run and a trial run as it is."""
    import argparse

    from .scaffold import ScaffoldError, new_task

    ap = argparse.ArgumentParser(prog="autoresearch new", description="Scaffold a new task to edit from.")
    ap.add_argument("task", help="the task's name (a Python identifier): writes <tasks-dir>/<task>/")
    ap.add_argument("--tasks-dir", default="tasks", help="the folder holding task folders (default: tasks)")
    args = ap.parse_args(argv)
    try:
        files = new_task(args.task, Path(args.tasks_dir))
    except ScaffoldError as e:
        print(f"autoresearch new: {e}", file=sys.stderr)
        return 2
    target = Path(args.tasks_dir) / args.task
    print("\n".join(f"wrote {f}" for f in files))
    print(f"next:\n  pytest {target}                            # plain run: the recipe once\n"
          f"  pytest --autoresearch-trials 2 {target}    # two offline-agent trials\n"
          f"then replace the recipe, evaluator and fixtures with your task's (README, 'Adding a task')")
    return 0


def main() -> None:
    if sys.argv[1:2] == ["new"]:  # a plain subcommand, before Hydra parses the command line
        raise SystemExit(new(sys.argv[2:]))
    if sys.argv[1:2] == ["recheck"]:  # a trial found at one scale, run at the other (recheck.py)
        from .recheck import main as recheck

        raise SystemExit(recheck(sys.argv[2:]))
    from .commands import COMMANDS, main as run_command

    if sys.argv[1:2] and sys.argv[1] in COMMANDS:  # show, promote, replay, audit, report, import
        raise SystemExit(run_command(sys.argv[1:]))
    import hydra

    conf_dir = config_dir(sys.argv[1:], Path.cwd())
    app = (hydra.main(version_base="1.3", config_path=str(conf_dir), config_name=CONF_NAME) if conf_dir else
           hydra.main(version_base="1.3", config_path=None, config_name="autoresearch_cli"))(_job)
    try:
        app()
    except SystemExit as e:
        results = _multirun.collect()
        if e.code == 1 and not _multirun.STARTED and not results:  # Hydra refused the config (it said why)
            raise SystemExit(USAGE) from None
        if results:
            _multirun.verdict(results)
        raise
    raise SystemExit(_multirun.verdict(_multirun.collect()))


def config_dir(argv: list[str], cwd: Path) -> Path | None:
    """The project's config folder: the one ``--config-dir``/``-cd`` names, else ``./conf``, when it holds
    ``autoresearch.yaml``; None: the package's schema and defaults alone."""
    named = None
    for i, a in enumerate(argv):
        if a in ("--config-dir", "-cd") and i + 1 < len(argv):
            named = argv[i + 1]
        elif a.startswith("--config-dir="):
            named = a.split("=", 1)[1]
    d = (cwd / (named or "conf")).resolve()
    return d if (d / f"{CONF_NAME}.yaml").is_file() else None


if __name__ == "__main__":
    # ``python -m pytest_autoresearch.cli``: run the importable module's main, so the job function and the
    # schema pickled to launcher workers (joblib, submitit) name a module they can import.
    from pytest_autoresearch.cli import main as _main

    _main()
