"""Recipe model code behind a pipe: the evaluator's model-running part in a sandbox of its own.

An evaluator that needs the recipe's code to score (a language model's ``log_probs``, a tokenizer's
``encode``) must not run that code in its own process, where it could read the validation files, keep
state outside the artifact, or rewrite the metrics. ``EvalContext.model_server`` starts this file as
``python -I serve.py CTX`` in a sandbox that shows only the trial's clean checkout (``/recipe``) and one
artifact file (``/artifact/<name>``): no data, no outputs, no network, a fresh ``/tmp``. The server builds
the object with ``factory(artifact_path, device=...)``, reports the attributes the evaluator asked for, then
answers calls to the methods it allowed, one request at a time, until the pipe closes.

Wire format, both directions: an 8-byte little-endian length, a JSON header, then the raw bytes of each
array the header lists (``{"dtype", "shape"}``; arguments and results refer to them as ``{"__array__": i}``).
Tensors are returned as numpy arrays. The server half imports only the standard library and numpy.
"""
from __future__ import annotations

import itertools
import json
import os
import select
import struct
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

HEADER = struct.Struct("<Q")
MAX_HEADER = 64 << 20


class ModelServerError(RuntimeError):
    """The recipe's model code failed, or broke the protocol: the trial's fault, not the evaluator's."""

    recipe_fault = True


# -- framing --------------------------------------------------------------------------------------------------
def _encode(value: Any, arrays: list[Any]) -> Any:
    import numpy as np

    if "torch" in sys.modules and isinstance(value, sys.modules["torch"].Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        arrays.append(np.ascontiguousarray(value))
        return {"__array__": len(arrays) - 1}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_encode(v, arrays) for v in value]
    if isinstance(value, dict):
        return {str(k): _encode(v, arrays) for k, v in value.items()}
    if isinstance(value, bytes):
        return {"__bytes__": value.hex()}
    return value


def _decode(value: Any, arrays: list[Any]) -> Any:
    if isinstance(value, dict):
        if set(value) == {"__array__"}:
            return arrays[int(value["__array__"])]
        if set(value) == {"__bytes__"}:
            return bytes.fromhex(value["__bytes__"])
        return {k: _decode(v, arrays) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v, arrays) for v in value]
    return value


def send(fd: int, header: dict[str, Any], payload: Any = None) -> None:
    arrays: list[Any] = []
    header = dict(header, body=_encode(payload, arrays))
    header["arrays"] = [{"dtype": a.dtype.str, "shape": list(a.shape)} for a in arrays]
    raw = json.dumps(header).encode()
    _write_all(fd, HEADER.pack(len(raw)) + raw)
    for a in arrays:
        _write_all(fd, memoryview(a).cast("B") if a.nbytes else b"")


def _write_all(fd: int, data: Any) -> None:
    view = memoryview(data)
    while len(view):
        n = os.write(fd, view[: 1 << 20])
        view = view[n:]


def recv(fd: int, deadline: float | None = None) -> tuple[dict[str, Any], Any]:
    import numpy as np

    (n,) = HEADER.unpack(bytes(_read_exact(fd, HEADER.size, deadline)))
    if n > MAX_HEADER:
        raise ModelServerError(f"protocol: a {n:,}-byte header exceeds {MAX_HEADER:,}")
    header = json.loads(bytes(_read_exact(fd, n, deadline)))
    arrays = []
    for spec in header.get("arrays", []):
        dtype = np.dtype(spec["dtype"])
        if dtype.hasobject:
            raise ModelServerError("protocol: object arrays are not allowed")
        shape = tuple(int(s) for s in spec["shape"])
        size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        arrays.append(np.frombuffer(_read_exact(fd, size, deadline), dtype=dtype).reshape(shape))  # writable
    return header, _decode(header.get("body"), arrays)


def _read_exact(fd: int, n: int, deadline: float | None) -> bytearray:
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError("no answer in time")
        k = os.readv(fd, [view[got:]])
        if k == 0:
            raise EOFError("the other side closed the pipe")
        got += k
    return buf


# -- server (inside the sandbox) ------------------------------------------------------------------------------
def _resolve(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if part.startswith("_"):
            raise AttributeError(f"{dotted}: private names are not served")
        obj = getattr(obj, part)
    return obj


def serve(ctx: dict[str, Any]) -> int:
    import importlib.util

    req, resp = int(ctx["req_fd"]), int(ctx["resp_fd"])
    try:
        for name in ctx.get("preload", []):
            __import__(name)
        if ctx.get("threads") and "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(int(ctx["threads"]))
        recipe = ctx["recipe"]
        sys.path.insert(0, recipe)
        os.chdir(recipe)
        path = Path(recipe) / ctx["module"]
        spec = importlib.util.spec_from_file_location(Path(ctx["module"]).stem, path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load {ctx['module']} from the recipe")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod
        spec.loader.exec_module(mod)
        factory = getattr(mod, ctx["factory"])
        args = [ctx["artifact"]] if ctx.get("artifact") else []
        kwargs = {"data_dir": ctx["data"]} if ctx.get("data") else {}
        obj = factory(*args, device=ctx["device"], **kwargs)
        attrs = {a: _resolve(obj, a) for a in ctx.get("attrs", [])}
        send(resp, {"ok": True}, attrs)
    except BaseException as e:  # noqa: BLE001 - reported to the evaluator as the recipe's failure
        send(resp, {"ok": False, "error": _describe(e)})
        return 1
    allowed = set(ctx.get("methods", []))
    tensors = ctx.get("tensors") == "torch"
    while True:
        try:
            header, body = recv(req)
        except EOFError:
            return 0
        method = header.get("method")
        try:
            if method not in allowed:
                raise AttributeError(f"method {method!r} is not served (allowed: {sorted(allowed)})")
            call_args = body or []
            if tensors and any(hasattr(a, "dtype") for a in call_args):  # torch only when arrays arrive
                torch = sys.modules.get("torch") or __import__("torch")
                call_args = [torch.from_numpy(a).to(ctx["device"]) if hasattr(a, "dtype") else a
                             for a in call_args]
            result = _resolve(obj, method)(*call_args)
            send(resp, {"ok": True}, result)
        except BaseException as e:  # noqa: BLE001
            send(resp, {"ok": False, "error": _describe(e)})


def _describe(e: BaseException) -> dict[str, Any]:
    tb = traceback.extract_tb(e.__traceback__)
    return {"type": type(e).__name__, "message": str(e)[:2000],
            "where": f"{Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else "",
            "traceback_tail": "".join(traceback.format_list(tb[-4:]))[-3000:]}


def _widen(fd: int) -> None:
    """Ask for a 1 MiB pipe buffer (Linux' default is 64 KiB): fewer round trips for large answers."""
    try:
        import fcntl

        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), 1 << 20)
    except OSError:
        pass  # above /proc/sys/fs/pipe-max-size for this user: keep the default


# -- client (in the evaluator's process) ----------------------------------------------------------------------
class ModelClient:
    """The evaluator's handle on one sandboxed model server.

    ``client.attrs`` holds the attributes read once at start; ``client.call("log_probs", x)`` (or
    ``client.log_probs(x)`` for a served method) sends numpy arrays and returns the result. A recipe
    failure raises :class:`ModelServerError`, which the harness labels ``crash``.
    """

    def __init__(self, proc: subprocess.Popen, req: int, resp: int, attrs: dict[str, Any], methods: tuple[str, ...],
                 timeout_s: float, log: Any) -> None:
        self.proc, self.req, self.resp, self.attrs = proc, req, resp, attrs
        self.methods, self.timeout_s, self.log = set(methods), timeout_s, log
        self.calls = 0

    _numbers = itertools.count()  # log and ctx file names, unique within the evaluator process

    @classmethod
    def start(cls, ectx: Any, *, module: str, factory: str, artifact: Path | None, attrs: tuple[str, ...],
              methods: tuple[str, ...], timeout_s: float = 600.0, tensors: str = "torch",
              preload: tuple[str, ...] = ("numpy",), data: Path | None = None) -> "ModelClient":
        from .runner import CappedLog
        from .sandbox import RUN_DIR, Bind, sandbox_env, sandbox_from_json

        sb = sandbox_from_json(ectx.sandbox or {})
        assert ectx.workspace is not None
        binds = {"recipe": Bind(Path(ectx.workspace), "ro")}
        art_inside = None
        if artifact is not None:
            binds[f"artifact/{artifact.name}"] = Bind(artifact, "ro")
            art_inside = sb.inside(f"artifact/{artifact.name}", artifact)
        data_inside = None
        if data is not None:
            binds["data"] = Bind(Path(data), "ro")
            data_inside = sb.inside("data", Path(data))
        req_r, req_w = os.pipe()
        resp_r, resp_w = os.pipe()
        for fd in (req_w, resp_w):
            _widen(fd)
        ctx = {"req_fd": req_r, "resp_fd": resp_w, "recipe": sb.inside("recipe", Path(ectx.workspace)),
               "module": module, "factory": factory, "artifact": art_inside, "device": ectx.device,
               "attrs": list(attrs), "methods": list(methods), "threads": ectx.threads, "tensors": tensors,
               "preload": list(preload), "data": data_inside}
        n = next(cls._numbers)
        ctx_path = Path.cwd() / f"model-server-{n}.ctx.json"
        ctx_path.write_text(json.dumps(ctx), encoding="utf-8")
        here = Path(__file__).resolve()
        if sb.sandboxed:
            argv = [sys.executable, "-I", f"{RUN_DIR}/serve.py", f"{RUN_DIR}/ctx.json"]
            cmd = sb.command(argv, binds=binds, env=sandbox_env(threads=ectx.threads, device=sb.device,
                                                                 extra={"TORCHINDUCTOR_CACHE_DIR": "/tmp/inductor",
                                                                        "TRITON_CACHE_DIR": "/tmp/triton",
                                                                        "XDG_CACHE_HOME": "/tmp/xdg"}),
                             cwd="/recipe", run_files={"serve.py": here, "ctx.json": ctx_path})
            env: dict[str, str] = {}
        else:
            cmd = [sys.executable, "-I", str(here), str(ctx_path)]
            env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "OMP_NUM_THREADS",
                                                                  "CUDA_VISIBLE_DEVICES", "LD_LIBRARY_PATH")}
        log_r, log_w = os.pipe()
        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log_w, stderr=log_w, env=env,
                                    pass_fds=(req_r, resp_w), start_new_session=True)
        finally:
            for fd in (req_r, resp_w, log_w):
                os.close(fd)
        log = CappedLog(log_r, Path.cwd() / f"model-server-{n}.log", sb.limits.log_bytes)
        client = cls(proc, req_w, resp_r, {}, methods, timeout_s, log)
        header, body = client._recv("start")
        client.attrs = body or {}
        return client

    def __getattr__(self, name: str) -> Any:
        if name in ("attrs", "methods"):
            raise AttributeError(name)
        if name in self.attrs:
            return self.attrs[name]
        if name in self.methods:
            return lambda *args: self.call(name, *args)
        raise AttributeError(f"the model server has no attribute or method {name!r}")

    def call(self, method: str, *args: Any) -> Any:
        self.calls += 1
        try:
            send(self.req, {"method": method}, list(args))
        except (BrokenPipeError, OSError) as e:
            raise ModelServerError(f"the model server is gone ({e}); {self._log_hint()}") from None
        return self._recv(method)[1]

    def _recv(self, what: str) -> tuple[dict[str, Any], Any]:
        try:
            header, body = recv(self.resp, time.monotonic() + self.timeout_s)
        except TimeoutError:
            self.close()
            raise ModelServerError(f"the model server did not answer {what} within {self.timeout_s:g}s") from None
        except (EOFError, OSError, ValueError) as e:
            self.close()
            raise ModelServerError(f"the model server broke off during {what} ({type(e).__name__}: {e}); "
                                   f"{self._log_hint()}") from None
        if not header.get("ok"):
            err = header.get("error") or {}
            raise ModelServerError(f"{what}: {err.get('where', '')}: {err.get('type')}: {err.get('message')}\n"
                                   f"{err.get('traceback_tail', '')}".strip())
        return header, body

    def _log_hint(self) -> str:
        self.proc.poll()
        tail = self.log.finish(1.0) if self.proc.returncode is not None else ""
        return f"exit status {self.proc.returncode}" + (f"; its log ends: {tail[-800:]}" if tail else "")

    def close(self) -> None:
        for fd in (self.req, self.resp):
            try:
                os.close(fd)
            except OSError:
                pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(self.proc.pid, 9)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.poll()

    def __enter__(self) -> "ModelClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


if __name__ == "__main__":
    _ctx = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
    sys.exit(serve(_ctx))
