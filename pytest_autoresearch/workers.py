"""Trial-level workers: this pytest session proposes and records; the recipe runs on workers, one device each.

With ``workers.executor`` set (``local``: submitit's local executor, one process per job on this machine;
``slurm``: one SLURM job each), a task's trials are dispatched to ``workers.n`` worker slots through submitit.
This process stays the only one that talks to the agent and writes the lineage and the task's repository (the
single writer: no lock is shared with a worker, so a lineage on a network file system is safe). While one trial
waits for its worker, the next ones are proposed and dispatched, so ``workers.n`` trials run at once.

What runs where:

- controller (this process): baseline bookkeeping, the agent's proposal, preflight, the trial's commit, the keep
  decision and the record; one thread per worker slot, of which one at a time holds the controller (``lock``),
  the others wait for their worker with it released.
- worker (a submitit job): the trial's recipe phases and its evaluator, exactly as ``TaskRun.execute`` runs them
  here, on the worker's host, under its sandbox, timed there. Worker slot ``i`` sees
  ``CUDA_VISIBLE_DEVICES=workers.devices[i % len]`` when devices are given, so a timed trial never shares a
  device. The record names the worker: ``host`` and ``worker`` (slot, pid, visible devices).

Cost caps and the agent's stop or fatal state hold for the whole search: there is one agent. The trial folders,
the staged data and the compile cache live under the lineage folder, which the workers must see at the same
path (a shared file system for SLURM).
"""
from __future__ import annotations

import os
import re
import socket
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

EXECUTORS = ("inline", "local", "slurm")


@dataclass
class WorkerJob:
    """Everything a worker needs to run one commit's recipe and evaluator (pickled to it by submitit)."""

    task: Any
    cfg: Any
    root: Path
    session_id: str
    agent_name: str
    device: str
    files: dict[str, bytes]
    trial_dir: Path
    staged: Any
    fingerprint: str | None
    stop_against: dict[str, Any] | None = None
    worker: int = 0
    visible_devices: str | None = None   # the device(s) this slot may use; None: as the job was started
    hide_devices: bool = False           # unset CUDA_VISIBLE_DEVICES (a local job on a machine without GPUs)
    seeds: tuple[int, ...] | None = None  # train on these instead of the budget's (a re-run on fresh seeds)


@dataclass
class WorkerResult:
    outcome: Any
    where: dict[str, Any] = field(default_factory=dict)


def run_on_worker(job: WorkerJob) -> WorkerResult:
    """The worker's side of a trial: the recipe and the evaluator on ``job.files``, timed here."""
    if job.visible_devices is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = job.visible_devices  # inherited by every sandboxed phase
    elif job.hide_devices:
        os.environ.pop("CUDA_VISIBLE_DEVICES", None)
    from .integrity import freeze
    from .trial import TaskRun

    t, started = time.perf_counter(), time.time()
    run = TaskRun(job.task, root=job.root, session_id=job.session_id, agent=None, agent_name=job.agent_name,
                  device=job.device, cfg=job.cfg)
    run._staged, run._fingerprint = job.staged, job.fingerprint  # staged by the controller, fingerprinted there

    def materialize(dest: Path) -> None:
        dest.mkdir(parents=True)
        for rel, data in job.files.items():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            (dest / rel).write_bytes(data)
        freeze(dest)

    outcome = run.execute(materialize, job.trial_dir, stop_against=job.stop_against, seeds=job.seeds)
    return WorkerResult(outcome, {"host": socket.gethostname(), "pid": os.getpid(), "slot": job.worker,
                                  "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                                  "started": started, "ended": time.time(),
                                  "seconds": round(time.perf_counter() - t, 3)})


def local_gpus() -> list[str]:
    """This machine's visible GPUs, one per worker slot (CUDA_VISIBLE_DEVICES, else every device torch sees)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        return [d.strip() for d in visible.split(",") if d.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def tree_files(repo: Any, commit: str) -> dict[str, bytes]:
    """Every file of ``commit`` as bytes (what ``TaskRepo.export`` writes)."""
    return {b.path: b.data_stream.read() for b in repo.repo.commit(commit).tree.traverse() if b.type == "blob"}


class Dispatcher:
    """Runs a task's trials on ``conf.n`` submitit worker slots, proposing and recording here."""

    def __init__(self, run: Any, conf: Any, total: int) -> None:
        import submitit

        self.run, self.total, self.n = run, int(total), int(conf.n)
        self.devices = [str(d) for d in (conf.devices or [])]
        if not self.devices and str(conf.executor) == "local" and run.device.startswith("cuda"):
            self.devices = local_gpus()
            if len(self.devices) < self.n:
                raise ValueError(f"workers.n={self.n} trials at once on {len(self.devices)} GPU(s) here would share "
                                 f"a device (a timed trial never does): set workers.n <= {len(self.devices)} or "
                                 f"list workers.devices")
        folder = Path(conf.folder) if conf.folder else Path(run.dir) / "workers"
        self.executor = submitit.AutoExecutor(folder=folder / "%j", cluster=str(conf.executor))
        params = {"timeout_min": int(conf.timeout_min), **dict(conf.parameters or {})}
        self.executor.update_parameters(**params)
        self.folder = folder
        self.lock = threading.Lock()          # the controller: proposals, commits, records, one thread at a time
        self.free = list(range(self.n))       # idle worker slots
        self.local = threading.local()        # the slot this thread's trial runs on
        self.pool = ThreadPoolExecutor(max_workers=self.n, thread_name_prefix="autoresearch-trial")
        self.futures: dict[str, Future] = {}
        self.baseline_done = False
        self._register_task_module()

    def describe(self) -> str:
        devices = f", devices {self.devices}" if self.devices else ""
        return (f"trials run on {self.n} workers (submitit {self.executor.cluster} executor{devices}, jobs in "
                f"{self.folder}); this session proposes and records")

    def _register_task_module(self) -> None:
        """Classes a task module defines (a legality check of its own) travel by value: a worker cannot import
        the test module pytest imported."""
        import cloudpickle

        path = Path(self.run.task.module_path).resolve()
        for mod in list(sys.modules.values()):
            f = getattr(mod, "__file__", None)
            if f and Path(f).resolve() == path:
                cloudpickle.register_pickle_by_value(mod)

    # -- the pytest side: one call per trial item, in slot order ------------------------------------------
    def result(self, slot: str) -> Any:
        """``slot``'s record, with the trials of the next slots started meanwhile (``n`` in flight)."""
        if not self.baseline_done:
            with self.lock:
                self.local.worker = 0
                self.run.ensure_baseline()   # once, before any trial runs beside it
            self.baseline_done = True
        for s in self._slots_from(slot):
            if s not in self.futures:
                self.futures[s] = self.pool.submit(self._trial, s)
        return self.futures.pop(slot).result()

    def _slots_from(self, slot: str) -> list[str]:
        m = re.fullmatch(r"(.*?)(\d+)", slot)
        if m is None:
            return [slot]
        head, num = m.group(1), m.group(2)
        first = int(num)
        return [f"{head}{k:0{len(num)}d}" for k in range(first, min(first + self.n, self.total + 1))]

    def _trial(self, slot: str) -> Any:
        with self.lock:
            self.local.worker = self.free.pop(0)
            try:
                return self.run.trial_now(slot)
            finally:
                self.free.append(self.local.worker)

    # -- called by TaskRun.run_recipe, in a thread holding the controller ---------------------------------
    def run_recipe(self, commit: str, trial_dir: Path, stop_against: Any = None,
                   seeds: tuple[int, ...] | None = None) -> Any:
        run = self.run
        wid = getattr(self.local, "worker", 0)
        job = WorkerJob(task=run.task, cfg=run.cfg, root=Path(run.dir).parent, session_id=run.session_id,
                        agent_name=run.agent_name, device=run.device, files=tree_files(run.repo, commit),
                        trial_dir=Path(trial_dir), staged=run.staged(), fingerprint=run._fingerprint,
                        stop_against=stop_against, worker=wid, seeds=tuple(seeds) if seeds else None,
                        visible_devices=self.devices[wid % len(self.devices)] if self.devices else None,
                        hide_devices=self.executor.cluster == "local" and not run.device.startswith("cuda"))
        submitted = self.executor.submit(run_on_worker, job)
        self.lock.release()   # other trials propose and record while this one runs on its worker
        try:
            # submitit's own wait polls once a second; a local job's end is cheap to check more often.
            poll = 0.05 if self.executor.cluster == "local" else 1.0
            while not submitted.done():
                time.sleep(poll)
            res: WorkerResult = submitted.result()
        finally:
            self.lock.acquire()
        res.outcome.where = dict(res.where, job=str(submitted.job_id))
        return res.outcome
