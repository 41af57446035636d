"""What the jobs of an ``autoresearch -m`` sweep returned, whatever launcher ran them, and the sweep's verdict.

Hydra's ``main`` drops the jobs' return values of a multirun, so a sweep of pytest jobs would exit 0 however
its jobs ended. A Hydra callback runs where each job runs (this process, a joblib worker, a submitit or SLURM
job) and writes the job's result next to its Hydra config (``<job folder>/job.json``); the CLI reads them when
the sweep is over and exits non-zero when any job failed, after naming every failed job.
"""
from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.experimental.callback import Callback

RESULT_FILE = "job.json"


@dataclass
class JobResult:
    number: int
    overrides: list[str]
    status: int          # the job's pytest exit status (2: it could not start; 1: it raised)
    error: str = ""
    folder: str = ""


class JobResults(Callback):
    """``hydra.callbacks.autoresearch_jobs``: records each job's result where the job ran."""

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        SWEEP.update(dir=str(config.hydra.sweep.dir), since=time.time())

    def on_job_start(self, config: Any, **kwargs: Any) -> None:
        self._started = time.time()

    def on_job_end(self, config: Any, job_return: Any, **kwargs: Any) -> None:
        from hydra.core.utils import JobStatus

        out = Path(str(config.hydra.runtime.output_dir))
        path = out / RESULT_FILE
        try:
            info = json.loads(path.read_text())   # what the job wrote about its command
        except (OSError, ValueError):
            info = {}
        value = job_return._return_value  # the property re-raises a failed job's exception
        if job_return.status == JobStatus.COMPLETED:
            status = value if isinstance(value, int) and not isinstance(value, bool) else 0
            error = info.get("error", "")
        else:
            first = str(value).strip().splitlines()[:1]
            status, error = 1, f"{type(value).__name__}: {first[0] if first else ''}"
        info.update(number=int(config.hydra.job.get("num") or 0), overrides=list(config.hydra.overrides.task),
                    exit=status, error=error, host=socket.gethostname(), pid=os.getpid(),
                    started=info.get("started", getattr(self, "_started", None)), ended=time.time())
        out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(info, indent=1))


ConfigStore.instance().store(
    name="autoresearch_jobs", package="_global_",
    node={"hydra": {"callbacks": {"autoresearch_jobs": {"_target_": f"{__name__}.JobResults"}}}})

# The sweep this process started (set in this process by ``on_multirun_start``), and whether any job started
# in this process (a single run).
SWEEP: dict[str, Any] = {}
STARTED = False


def collect() -> list[JobResult]:
    """The results the jobs of this process's sweep wrote (older files in a reused sweep folder are skipped)."""
    if not SWEEP:
        return []
    found: dict[int, JobResult] = {}
    for f in Path(SWEEP["dir"]).rglob(RESULT_FILE):
        try:
            d = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(d.get("ended"), (int, float)) or d["ended"] < SWEEP["since"] or "exit" not in d:
            continue
        found[int(d.get("number", 0))] = JobResult(int(d.get("number", 0)), list(d.get("overrides") or []),
                                                   int(d["exit"]), str(d.get("error") or ""), str(f.parent))
    return [found[k] for k in sorted(found)]


def verdict(results: list[JobResult]) -> int:
    """Say how the jobs ended, naming every failed one, and return the sweep's exit status: 0 when every job
    passed, else the highest status among the failed jobs."""
    if not results:
        return 0
    failed = [r for r in results if r.status != 0]
    if not failed:
        print(f"autoresearch: all {len(results)} jobs passed", flush=True)
        return 0
    lines = [f"autoresearch: {len(failed)} of {len(results)} jobs failed:"]
    for r in failed:
        why = r.error or f"pytest exited {r.status}"
        lines.append(f"  #{r.number} {' '.join(r.overrides)}: {why} (job folder {r.folder})")
    print("\n".join(lines), flush=True)
    return max(r.status for r in failed)
