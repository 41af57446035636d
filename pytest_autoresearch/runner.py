"""Runs one trial phase in a subprocess: own process group, scrubbed environment, wall-clock limit."""
from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Mapping

# Variables a trial may inherit. Everything else (API keys, tokens, cloud credentials) is dropped.
ENV_ALLOW = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "CUDA_VISIBLE_DEVICES", "CUDA_HOME",
             "LD_LIBRARY_PATH", "NVIDIA_VISIBLE_DEVICES", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE",
             "VIRTUAL_ENV", "CONDA_PREFIX", "PYTHONPATH")
SECRET_RE = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|CREDENTIAL|AUTH", re.I)


def scrubbed_env(cache_dir: Path, home: Path, threads: int | None, extra: Mapping[str, str] | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k in ENV_ALLOW and not SECRET_RE.search(k)}
    env.update({
        "HOME": str(home), "PYTHONHASHSEED": "0", "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1",
        # One compile cache per task, kept across trials: compile warm-up is paid once, not per trial.
        "TORCHINDUCTOR_CACHE_DIR": str(cache_dir / "inductor"), "TRITON_CACHE_DIR": str(cache_dir / "triton"),
        "XDG_CACHE_HOME": str(cache_dir / "xdg"),
    })
    if threads:
        for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[k] = str(threads)
    # Spinning OpenMP workers waste most of their time when cores are shared (xdist, other jobs); on a
    # 2-thread matmul the difference was 5 vs 32 GFLOP/s on a loaded machine.
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    env.update(extra or {})
    return {k: v for k, v in env.items() if not SECRET_RE.search(k) or k in (extra or {})}


@dataclass
class PhaseResult:
    phase: str
    rc: int | None
    seconds: float            # train: harness-timed seconds from the start signal to exit; else wall seconds
    wall_s: float
    cpu_s: float | None       # train: CPU seconds (user + system, kernel-accounted) from the start signal to exit
    timed_out: str | None     # None, or which limit was hit ("startup", "train", ...)
    error: dict[str, Any] | None
    result: Any
    log_path: Path

    @property
    def ok(self) -> bool:
        return self.rc == 0 and self.timed_out is None

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def deepest_error(self) -> str:
        """The deepest exception line (``file:line: Type: message``) for the record's notes."""
        if self.error:
            fr = (self.error.get("frames") or [{}])[-1]
            where = f"{Path(fr.get('file', '?')).name}:{fr.get('line', '?')}: " if fr else ""
            return f"{where}{self.error['type']}: {self.error['message']}".strip()
        for line in reversed(self.log_tail(60).splitlines()):
            if re.match(r"^\w[\w.]*(Error|Exception|Interrupt|Exit)\b", line) or "Killed" in line:
                return line.strip()
        return f"exit status {self.rc}"


def _kill_group(proc: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=3)
            return
        except subprocess.TimeoutExpired:
            continue


def run_phase(phase: str, ctx: dict[str, Any], *, limit_s: float, work_dir: Path, env: Mapping[str, str],
              startup_s: float = 120.0) -> PhaseResult:
    """Run ``python -m pytest_autoresearch.runtime PHASE`` with ``ctx``; kill its process group on overrun.

    For ``train`` the limit counts from the runtime's start signal (after interpreter start and preloads,
    bounded by ``startup_s``); for other phases it counts from spawn.
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    ctx = dict(ctx)
    ctx["error_path"] = str(work_dir / f"{phase}.error.json")
    ctx["result_path"] = str(work_dir / f"{phase}.result.json")
    for p in (ctx["error_path"], ctx["result_path"]):
        Path(p).unlink(missing_ok=True)
    log_path = work_dir / f"{phase}.log"
    r_fd = w_fd = None
    if phase == "train":
        r_fd, w_fd = os.pipe()
        ctx["signal_fd"] = w_fd
    ctx_path = work_dir / f"{phase}.ctx.json"
    ctx_path.write_text(json.dumps(ctx, default=str), encoding="utf-8")
    cmd = [sys.executable, "-m", "pytest_autoresearch.runtime", phase, str(ctx_path)]
    # The runtime must import from the harness' own install, whatever the workspace holds.
    env = dict(env)
    pkg_root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = pkg_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    with open(log_path, "wb") as log:
        t_spawn = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                cwd=ctx.get("workspace") or str(work_dir), start_new_session=True,
                                pass_fds=(w_fd,) if w_fd is not None else ())
        timed_out: str | None = None
        t_start, cpu_start, rusage = t_spawn, None, None
        try:
            if r_fd is not None:
                os.close(w_fd)
                got = _wait_signal(r_fd, proc, startup_s)
                if got is None:
                    timed_out = "startup"
                else:
                    t_start, cpu_start = got
            if timed_out is None:
                rusage = _wait(proc, t_start + limit_s)
                if rusage is None:
                    timed_out = phase
            t_end = time.monotonic()
        finally:
            if r_fd is not None:
                os.close(r_fd)
            # Also reaps anything the recipe left running in its group after the main process exited.
            _kill_group(proc)
    error = None
    if Path(ctx["error_path"]).exists():
        error = json.loads(Path(ctx["error_path"]).read_text(encoding="utf-8"))
    result = None
    if Path(ctx["result_path"]).exists():
        result = json.loads(Path(ctx["result_path"]).read_text(encoding="utf-8"))
    cpu_s = None
    if rusage is not None and cpu_start is not None:
        cpu_s = max(0.0, rusage.ru_utime + rusage.ru_stime - cpu_start)
    return PhaseResult(phase=phase, rc=None if timed_out else proc.returncode, seconds=t_end - t_start,
                       wall_s=t_end - t_spawn, cpu_s=cpu_s, timed_out=timed_out, error=error, result=result,
                       log_path=log_path)


_NO_USAGE = SimpleNamespace(ru_utime=0.0, ru_stime=0.0)


def _wait(proc: subprocess.Popen, deadline: float) -> Any:
    """Reap ``proc`` by ``deadline`` (monotonic); its kernel resource usage, or None on timeout."""
    while True:
        if proc.returncode is not None:  # already reaped by a poll (it died during start-up)
            return _NO_USAGE
        try:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        except ChildProcessError:
            return _NO_USAGE
        if pid == proc.pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return usage
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        time.sleep(min(0.02, left))


def _wait_signal(r_fd: int, proc: subprocess.Popen, startup_s: float) -> tuple[float, float | None] | None:
    """Monotonic time of the runtime's start message and the CPU seconds it reported spending before it;
    None if no message came within ``startup_s``."""
    deadline = time.monotonic() + startup_s
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        ready, _, _ = select.select([r_fd], [], [], min(left, 0.5))
        if ready:
            now = time.monotonic()
            msg = os.read(r_fd, 64).decode(errors="replace").split()
            try:  # EOF without a message means the process died during start-up; time it from here
                cpu = float(msg[1]) if len(msg) >= 2 and msg[0] == "T" else None
            except ValueError:
                cpu = None
            return now, cpu
        if proc.poll() is not None:
            return time.monotonic(), None
