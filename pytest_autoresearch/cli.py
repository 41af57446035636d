"""``autoresearch``: a Hydra app that runs the pytest job once per config, so any Hydra launcher can sweep it.

    autoresearch task=airbench trials=50
    autoresearch -m task=airbench,paramgolf agent=offline,claude     # one job per combination
    autoresearch new mytask [--tasks-dir tasks]                      # scaffold tasks/mytask/ to start from

Each job is ``pytest <tasks_dir>/<task> --autoresearch-trials N --autoresearch-agent A`` in a subprocess. In a
multirun every job gets its own lineage under its Hydra output folder, so agents are compared on equal terms.
"""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore


@dataclass
class CliConf:
    task: str = "airbench"
    trials: int = 20
    agent: str = "auto"
    tasks_dir: str = "tasks"
    lineage: Optional[str] = None     # null: .autoresearch/ for a single run, the job's folder in a multirun
    overrides: list[str] = field(default_factory=list)   # passed on as --autoresearch-override
    pytest_args: list[str] = field(default_factory=list)


ConfigStore.instance().store(name="autoresearch_cli", node=CliConf)


def pytest_command(cfg: Any, job_dir: Path | None, cwd: Path) -> list[str]:
    target = Path(cfg.tasks_dir) / cfg.task
    if not (cwd / target).exists():
        raise SystemExit(f"autoresearch: no task folder {cwd / target} (task={cfg.task}, tasks_dir={cfg.tasks_dir})")
    cmd = [sys.executable, "-m", "pytest", str(target), "--autoresearch-trials", str(cfg.trials),
           "--autoresearch-agent", cfg.agent]
    lineage = cfg.lineage or (str(job_dir / ".autoresearch") if job_dir else None)
    if lineage:
        cmd += ["--autoresearch-lineage", lineage]
    for ov in cfg.overrides:
        cmd += ["--autoresearch-override", ov]
    return cmd + list(cfg.pytest_args)


def _job(cfg: Any) -> int:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    cwd = Path(hc.runtime.cwd)
    cmd = pytest_command(cfg, Path(hc.runtime.output_dir) if multirun else None, cwd)
    print("autoresearch job:", " ".join(cmd), flush=True)
    rc = subprocess.call(cmd, cwd=cwd, env=os.environ.copy())
    if rc not in (0,) and not multirun:
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
    import hydra

    hydra.main(version_base="1.3", config_path=None, config_name="autoresearch_cli")(_job)()


if __name__ == "__main__":
    main()
