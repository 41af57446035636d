"""Runs one phase process: in its sandbox (recipe code) or as a plain scrubbed process (task code).

The harness owns every clock and every limit: a timed phase's clock starts when the runtime writes one line
to a pipe (after interpreter start-up and preloads, before any recipe code) and stops when the sandbox's
pid 1 exits, which takes every other process of the phase with it. CPU seconds come from the kernel's
accounting of the whole process tree (``wait4`` on bwrap), minus what the runtime spent before the signal.
The phase's output goes through a pipe into a capped log: the first ``log_bytes`` are kept, then only a tail,
so the harness' memory stays flat whatever the recipe prints.
"""
from __future__ import annotations

import collections
import json
import math
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Mapping

from .masking import StreamMasker
from .sandbox import RUN_DIR, Bind, Sandbox, sandbox_env

RUNTIME = Path(__file__).resolve().parent / "runtime.py"
PKG_PARENT = str(Path(__file__).resolve().parent.parent)
# Variables task code (stage, evaluate) may inherit. Everything else (API keys, tokens, credentials) is dropped.
ENV_ALLOW = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "CUDA_VISIBLE_DEVICES", "CUDA_HOME",
             "LD_LIBRARY_PATH", "NVIDIA_VISIBLE_DEVICES", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
SECRET_RE = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|CREDENTIAL|AUTH", re.I)
TAIL_BYTES = 64 << 10


def scrubbed_env(cache_dir: Path, home: Path, threads: int | None, extra: Mapping[str, str] | None = None) -> dict:
    """The environment of a process-level phase: an allow-list of the harness' variables plus our own."""
    env = {k: v for k, v in os.environ.items() if k in ENV_ALLOW and not SECRET_RE.search(k)}
    env.update({
        "HOME": str(home), "PYTHONHASHSEED": "0", "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1",
        "TORCHINDUCTOR_CACHE_DIR": str(cache_dir / "inductor"), "TRITON_CACHE_DIR": str(cache_dir / "triton"),
        "XDG_CACHE_HOME": str(cache_dir / "xdg"), "OMP_WAIT_POLICY": "PASSIVE",
    })
    if threads:
        for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[k] = str(threads)
    env.update(extra or {})
    return env


@dataclass
class PhaseResult:
    phase: str
    rc: int | None
    seconds: float            # timed phases: harness-timed seconds from the start signal to exit; else wall seconds
    wall_s: float
    cpu_s: float | None       # timed phases: CPU seconds of the whole process tree from the start signal to exit
    timed_out: str | None     # None, or which limit was hit ("startup", "train", ...)
    error: dict[str, Any] | None
    result: Any
    log_path: Path
    log_tail_text: str = ""
    curve: list[list[float]] = field(default_factory=list)   # (step, loss) points the phase reported
    stopped: str | None = None                                # why the harness stopped it early, if it did

    @property
    def ok(self) -> bool:
        return self.rc == 0 and self.timed_out is None

    def log_tail(self, n: int = 30) -> str:
        return "\n".join(self.log_tail_text.splitlines()[-n:])

    def deepest_error(self) -> str:
        """The deepest exception line (``file:line: Type: message``) for the record's notes."""
        if self.error:
            frames = self.error.get("frames") or []
            fr = next((f for f in reversed(frames) if f.get("in_recipe")), frames[-1] if frames else {})
            where = f"{Path(fr.get('file', '?')).name}:{fr.get('line', '?')}: " if fr else ""
            return f"{where}{self.error.get('type', 'Error')}: {self.error.get('message', '')}".strip()
        for line in reversed(self.log_tail(60).splitlines()):
            if re.match(r"^\w[\w.]*(Error|Exception|Interrupt|Exit)\b", line) or "Killed" in line:
                return line.strip()
        if self.rc is not None and self.rc < 0:
            sig = -self.rc
            return f"killed by signal {signal.Signals(sig).name if sig in signal.valid_signals() else sig}"
        return f"exit status {self.rc}"


class CappedLog:
    """Copies a pipe into a file: the first ``head`` bytes, then a note, then (at the end) the last bytes."""

    def __init__(self, fd: int, path: Path, head: int) -> None:
        self.fd, self.path, self.head = fd, path, head
        self.written = self.dropped = 0
        self.tail: collections.deque[bytes] = collections.deque()
        self.tail_len = 0
        self.thread = threading.Thread(target=self._pump, daemon=True)
        self.thread.start()

    def _pump(self) -> None:
        masker = StreamMasker()
        with open(self.path, "wb") as f:
            while True:
                try:
                    raw = os.read(self.fd, 1 << 16)
                except OSError:
                    raw = b""
                chunk = masker.feed(raw) if raw else masker.flush()
                if not raw and not chunk:
                    break
                room = self.head - self.written
                if room > 0:
                    f.write(chunk[:room])
                    self.written += min(room, len(chunk))
                    chunk = chunk[room:]
                if chunk:
                    self.dropped += len(chunk)
                    self.tail.append(chunk)
                    self.tail_len += len(chunk)
                    while self.tail_len - len(self.tail[0]) >= TAIL_BYTES:
                        self.tail_len -= len(self.tail.popleft())
                if not raw:
                    break
            if self.dropped:
                tail = b"".join(self.tail)[-TAIL_BYTES:]
                f.write(f"\n[... {self.dropped - len(tail):,} bytes of output dropped: the log keeps the first "
                        f"{self.head:,} and the last {len(tail):,} ...]\n".encode())
                f.write(tail)

    def finish(self, timeout: float = 5.0) -> str:
        self.thread.join(timeout)
        try:
            os.close(self.fd)
        except OSError:
            pass
        self.thread.join(1.0)
        try:
            with open(self.path, "rb") as f:
                f.seek(max(0, os.fstat(f.fileno()).st_size - TAIL_BYTES))
                return f.read().decode("utf-8", errors="replace")
        except OSError:
            return ""


@dataclass
class Phase:
    """What to run: a phase name, its context, what it may see, and its limits."""

    name: str
    ctx: dict[str, Any]
    work_dir: Path                       # harness-side folder: ctx file, log, status
    limit_s: float
    startup_s: float = 120.0
    timed: bool = False                  # clock from the runtime's start signal (else from spawn)
    binds: Mapping[str, Bind] | None = None
    threads: int | None = None
    env: Mapping[str, str] | None = None  # process-level environment (task code, or recipe code without bwrap)
    # Timed phases only: called with each reported (step, loss); a returned reason stops the phase early.
    monitor: Callable[[float, float], str | None] | None = None
    progress: bool = False               # keep the signal pipe open for ctx.report()


def run_phase(phase: Phase, sandbox: Sandbox | None) -> PhaseResult:
    """Run ``phase``: recipe phases in ``sandbox``; with ``sandbox=None``, task code as a plain process."""
    wd = phase.work_dir
    wd.mkdir(parents=True, exist_ok=True)
    status = wd / f"{phase.name}.status"
    status.mkdir(exist_ok=True)
    for f in status.iterdir():
        f.unlink()
    ctx = dict(phase.ctx)
    sandboxed = sandbox is not None and sandbox.sandboxed
    binds = dict(phase.binds or {})
    if sandbox is not None:
        binds["status"] = Bind(status, "rw")
        dirs = {name: sandbox.inside(name, b.src) for name, b in binds.items()}
        ctx["dirs"] = dirs
        ctx["status_dir"] = dirs["status"]
        ctx["limits"] = sandbox.limits.rlimits()
    else:
        ctx["status_dir"] = str(status)
    ctx["pdeathsig"] = not sandboxed
    r_fd = w_fd = None
    if phase.timed:
        r_fd, w_fd = os.pipe()
        ctx["signal_fd"] = w_fd
        ctx["progress"] = phase.progress
    ctx_path = wd / f"{phase.name}.ctx.json"
    ctx_path.write_text(json.dumps(ctx, default=str), encoding="utf-8")
    if sandboxed:
        assert sandbox is not None
        argv = [sys.executable, "-I", f"{RUN_DIR}/runtime.py", phase.name, f"{RUN_DIR}/ctx.json"]
        cmd = sandbox.command(argv, binds=binds, env=sandbox_env(threads=phase.threads, device=sandbox.device),
                              cwd="/recipe" if "recipe" in binds else "/tmp",
                              run_files={"runtime.py": RUNTIME, "ctx.json": ctx_path})
        env: Mapping[str, str] | None = {}
        cwd = None
    else:
        # Task code (and recipe code where no sandbox runs): isolated mode, a harness-owned cwd, our package
        # importable by path, so a file the recipe wrote can never shadow a module.
        boot = (f"import sys; sys.path.append({PKG_PARENT!r}); from pytest_autoresearch.runtime import main; "
                f"sys.exit(main(sys.argv[1:]))")
        cmd = [sys.executable, "-I", "-c", boot, phase.name, str(ctx_path)]
        env = dict(phase.env or {})
        cwd = str(binds["recipe"].src) if "recipe" in binds and sandbox is not None else str(wd)
    read_fd, write_fd = os.pipe()
    log_path = wd / f"{phase.name}.log"
    head = sandbox.limits.log_bytes if sandbox is not None else 8 << 20
    t_spawn = time.monotonic()
    try:
        proc = subprocess.Popen(cmd, stdout=write_fd, stderr=write_fd, stdin=subprocess.DEVNULL, env=env, cwd=cwd,
                                start_new_session=True, pass_fds=(w_fd,) if w_fd is not None else ())
    finally:
        os.close(write_fd)
    log = CappedLog(read_fd, log_path, head)
    timed_out: str | None = None
    t_start, cpu_before, rusage = t_spawn, 0.0, None
    progress: _Progress | None = None
    try:
        if r_fd is not None:
            assert w_fd is not None
            os.close(w_fd)
            got = _wait_signal(r_fd, proc, phase.startup_s)
            if got is None:
                timed_out = "startup"
            else:
                t_start, cpu_before, rest = got
                if phase.progress:
                    progress = _Progress(r_fd, rest, phase.monitor)
        if timed_out is None:
            rusage = _wait(proc, t_start + phase.limit_s, progress)
            if rusage is None and not (progress and progress.stopped):
                timed_out = phase.name
        t_end = time.monotonic()
    finally:
        if r_fd is not None:
            os.close(r_fd)
        # Also reaps anything left in the group; in a sandbox, pid 1's death already took the namespace.
        killed_usage = _kill_group(proc)
    if rusage is None:
        rusage = killed_usage
    tail = log.finish()
    error = _read_json(status / "error.json")
    result = _read_json(status / "result.json") if not sandboxed else None
    cpu_s = None
    if rusage is not None:
        cpu_s = max(0.0, rusage.ru_utime + rusage.ru_stime - cpu_before)
    stopped = progress.stopped if progress else None
    return PhaseResult(phase=phase.name, rc=None if timed_out or stopped else proc.returncode,
                       seconds=t_end - t_start, wall_s=t_end - t_spawn, cpu_s=cpu_s, timed_out=timed_out,
                       error=None if stopped else error, result=result, log_path=log_path, log_tail_text=tail,
                       curve=progress.curve if progress else [], stopped=stopped)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


_NO_USAGE = SimpleNamespace(ru_utime=0.0, ru_stime=0.0)


def _kill_group(proc: subprocess.Popen) -> Any:
    """SIGKILL the phase's process group and reap its leader; its resource usage if we reaped it here."""
    usage = None
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if proc.returncode is None:
        try:
            pid, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
        except ChildProcessError:
            pass
    return usage


class _Progress:
    """The ``P step loss`` lines a timed phase writes after its start signal, read as they come. The phase is
    untrusted: lines are capped in length and number, and anything unparsable is ignored."""

    MAX_POINTS = 10_000
    MAX_LINE = 256

    def __init__(self, fd: int, rest: bytes, monitor: Callable[[float, float], str | None] | None) -> None:
        self.fd, self.buf, self.monitor = fd, b"", monitor
        self.curve: list[list[float]] = []
        self.stopped: str | None = None
        self.open = True
        self._take(rest)

    def _take(self, chunk: bytes) -> None:
        lines = (self.buf + chunk).split(b"\n")
        self.buf = lines.pop()[-self.MAX_LINE:]
        for line in lines:
            parts = line[:self.MAX_LINE].split()
            if len(parts) != 3 or parts[0] != b"P" or len(self.curve) >= self.MAX_POINTS:
                continue
            try:
                step, loss = float(parts[1]), float(parts[2])
            except ValueError:
                continue
            if not (math.isfinite(step) and math.isfinite(loss)):
                continue
            self.curve.append([step, loss])
            if self.monitor is not None and self.stopped is None:
                self.stopped = self.monitor(step, loss)

    def pump(self, timeout: float) -> None:
        """Wait up to ``timeout`` for progress lines and take them (at EOF, just sleep)."""
        if not self.open:
            time.sleep(timeout)
            return
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if ready:
            chunk = os.read(self.fd, 1 << 16)
            if chunk:
                self._take(chunk)
            else:
                self.open = False


def _wait(proc: subprocess.Popen, deadline: float, progress: _Progress | None = None) -> Any:
    """Reap ``proc`` by ``deadline`` (monotonic); its kernel resource usage, or None on timeout (or when
    ``progress`` says to stop early)."""
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
        if left <= 0 or (progress is not None and progress.stopped):
            return None
        if progress is not None:
            progress.pump(min(0.01, left))
        else:
            time.sleep(min(0.01, left))


def _wait_signal(r_fd: int, proc: subprocess.Popen, startup_s: float) -> tuple[float, float, bytes] | None:
    """Monotonic time of the runtime's start message, the CPU seconds it reported spending before it, and
    whatever followed it on the pipe; None if no message came within ``startup_s``."""
    deadline = time.monotonic() + startup_s
    buf = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        ready, _, _ = select.select([r_fd], [], [], min(left, 0.05))
        if ready:
            now = time.monotonic()
            chunk = os.read(r_fd, 64)
            buf += chunk
            if chunk and b"\n" not in buf:
                continue
            first, _, rest = buf.partition(b"\n")
            msg = first.decode(errors="replace").split()
            try:  # EOF without a message means the process died during start-up; time it from here
                cpu = float(msg[1]) if len(msg) >= 2 and msg[0] == "T" else 0.0
            except ValueError:
                cpu = 0.0
            return now, cpu, rest
        if proc.poll() is not None:
            return time.monotonic(), 0.0, b""
