"""The entry point of every phase process: ``python -I runtime.py PHASE CTX_JSON``.

Recipe phases run in a sandbox (see ``sandbox.py``), one process per seed, and see only what they are
entitled to (``ctx.data_dir``):

- ``prepare``  the recipe's optional ``prepare(ctx)``: untimed warm-up (compile caches). No data; the only
               phase whose writes to ``ctx.cache_dir`` persist to later trials.
- ``train``    the recipe's ``train(ctx)`` for one seed, with the training data. Timed by the harness: the
               clock starts when this process writes one line to the signal pipe, just before the recipe
               module is imported, and stops when the sandbox's pid 1 (this process) exits. With progress
               on, the pipe stays open and ``ctx.report(step, loss)`` writes the training curve to it.
- ``predict``  the recipe's optional ``predict(ctx)`` for one seed: that seed's outputs plus the unlabeled test
               inputs, never the training data. Timed the same way, against the predict budget.

Task phases run as plain processes, never with recipe code in them:

- ``stage``    the task's ``stage(ctx)``: writes training data, test inputs and private data. Once per task.
- ``evaluate`` the task's ``evaluate(ctx) -> dict``: scores a clean checkout of the trial's commit and its
               validated outputs; recipe code it needs (a language model) runs in sandboxed model servers.

This file runs inside the sandbox on its own (no package around it): it imports only the standard library.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import os
import resource
import signal
import stat
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class RecipeContext:
    """What a recipe function receives."""

    seed: int
    seeds: tuple[int, ...]
    out_dir: Path | None
    data_dir: Path | None
    cache_dir: Path
    device: str
    variant: str
    threads: int | None = None
    options: dict[str, Any] = field(default_factory=dict)
    phase: str = "train"
    progress_fd: int | None = field(default=None, repr=False)

    def report(self, step: float, loss: float) -> None:
        """Report training progress: ``loss`` (lower is better) at ``step``. The harness keeps the curve in
        the record and, with ``search.early_stop.enabled``, stops a run clearly behind the best's curve at the
        same step. Only the train phase reports; elsewhere this does nothing."""
        if self.progress_fd is None:
            return
        try:
            os.write(self.progress_fd, f"P {float(step)!r} {float(loss)!r}\n".encode())
        except (OSError, ValueError, TypeError):
            self.progress_fd = None  # the harness stopped listening (or a bad value): training goes on

    def log(self, **values: Any) -> None:
        """Record recipe-reported values (informational only: scores come from the evaluator)."""
        if self.out_dir is not None:
            with open(self.out_dir / "recipe_log.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(values, default=str) + "\n")


class OutputError(ValueError):
    """An output file is missing or is not a regular file inside the outputs folder."""


@dataclass
class EvalContext:
    """What a task's ``evaluate`` (and ``stage``) receives.

    ``workspace`` is a fresh read-only checkout of the trial's commit (never the folder the recipe ran in);
    ``code_bytes`` is the size of its files as the harness counted them from git. ``train_dir`` holds the
    training data, ``test_dir`` the unlabeled test inputs, ``private_dir`` what only the evaluator reads.
    """

    outputs_dir: Path | None
    seeds: tuple[int, ...]
    workspace: Path | None
    train_dir: Path
    test_dir: Path
    private_dir: Path
    device: str
    variant: str
    options: dict[str, Any] = field(default_factory=dict)
    artifact_bytes: int | None = None
    threads: int | None = None
    code_bytes: int | None = None
    sandbox: dict[str, Any] | None = None

    def seed_dir(self, seed: int) -> Path:
        assert self.outputs_dir is not None
        return self.outputs_dir / f"seed-{seed}"

    def output(self, seed: int, name: str) -> Path:
        """The path of a regular file the recipe wrote for ``seed``, checked: no symlink, no other kind of file."""
        path = self.seed_dir(seed) / name
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            raise OutputError(f"seed {seed}: the recipe wrote no {name}") from None
        if not stat.S_ISREG(st.st_mode):
            raise OutputError(f"seed {seed}: {name} is not a regular file")
        return path

    def read_output(self, seed: int, name: str) -> bytes:
        """The bytes of an output file, opened without following links."""
        fd = os.open(self.output(seed, name), os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as f:
            return f.read()

    def model_server(self, seed: int | None, *, module: str, factory: str, artifact: str | None = None,
                     attrs: tuple[str, ...] = (), methods: tuple[str, ...] = (), timeout_s: float = 600.0,
                     tensors: str = "torch", preload: tuple[str, ...] = ("numpy",), data: Path | None = None) -> Any:
        """Start the recipe's model in a sandbox of its own: ``module``'s ``factory(artifact_path, device=...)``
        builds it from the clean checkout and (optionally) one output file of ``seed``; the returned client
        reads ``attrs`` and calls ``methods`` over a pipe, array arguments arriving as torch tensors
        (``tensors="torch"``) or numpy arrays (``"numpy"``). ``data`` shows a staged folder that is not
        private (e.g. a tokenizer's vocabulary in ``train_dir``) read-only; the factory then also gets
        ``data_dir=``. See ``pytest_autoresearch.serve``."""
        from pytest_autoresearch.serve import ModelClient

        if data is not None:
            d, priv = Path(data).resolve(), self.private_dir.resolve()
            if d == priv or priv in d.parents or d in priv.parents:
                raise ValueError(f"model_server(data={data}): a model server may never see the private folder")
        art = self.output(seed, artifact) if artifact is not None and seed is not None else None
        return ModelClient.start(self, module=module, factory=factory, artifact=art, attrs=attrs, methods=methods,
                                 timeout_s=timeout_s, tensors=tensors, preload=preload, data=data)


def _load_file(path: Path, name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def _write_status(ctx: dict[str, Any], name: str, payload: Any) -> None:
    path = Path(ctx["status_dir"]) / name
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, default=float), encoding="utf-8")
    os.replace(tmp, path)


def _write_error(ctx: dict[str, Any], exc: BaseException) -> None:
    tb = traceback.extract_tb(exc.__traceback__)
    recipe = ctx.get("recipe_root")
    root = os.path.abspath(recipe) + os.sep if recipe else None
    frames = [{"file": f.filename, "line": f.lineno, "func": f.name, "code": (f.line or "")[:200],
               "in_recipe": bool(root) and os.path.isabs(f.filename) and os.path.abspath(f.filename).startswith(root)}
              for f in tb]
    in_recipe = any(f["in_recipe"] for f in frames) or bool(getattr(exc, "recipe_fault", False))
    # The recipe's own frames tell its author the most; library and import machinery frames only if none.
    shown = [f for f, d in zip(tb, frames) if d["in_recipe"]] or [f for f in tb if not f.filename.startswith("<")]
    tail = "".join(traceback.format_exception_only(type(exc), exc))[-2000:]
    err = {"type": type(exc).__name__, "message": str(exc)[:2000], "frames": frames[-12:], "in_recipe": in_recipe,
           "traceback_tail": "".join(traceback.format_list(shown[-4:]))[-3000:] + tail}
    _write_status(ctx, "error.json", err)


def _apply_limits(ctx: dict[str, Any]) -> None:
    for name, value in (ctx.get("limits") or {}).items():
        which = getattr(resource, name, None)
        if which is None:
            continue
        try:
            resource.setrlimit(which, (int(value), int(value)))
        except (ValueError, OSError):
            soft, hard = resource.getrlimit(which)
            if hard == resource.RLIM_INFINITY or int(value) <= hard:
                resource.setrlimit(which, (int(value), hard))


def _die_with_parent() -> None:
    """Outside a sandbox: make sure this process dies with the harness (``kill -9`` of pytest included)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent is already gone
        os._exit(1)


def _recipe_ctx(ctx: dict[str, Any], phase: str) -> RecipeContext:
    dirs = ctx.get("dirs") or {}
    seed = ctx.get("seed")
    seeds = tuple(ctx["seeds"])
    return RecipeContext(
        seed=seeds[0] if seed is None else int(seed), seeds=seeds,
        out_dir=Path(dirs["out"]) if dirs.get("out") else None,
        data_dir=Path(dirs["data"]) if dirs.get("data") else None,
        cache_dir=Path(dirs.get("cache") or "/tmp/cache"), device=ctx["device"], variant=ctx["variant"],
        threads=ctx.get("threads"), options=dict(ctx.get("recipe_options") or {}), phase=phase)


def _configure_threads(ctx: dict[str, Any]) -> None:
    if ctx.get("threads") and "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(int(ctx["threads"]))


def _signal_start(ctx: dict[str, Any]) -> None:
    """Tell the harness the clock starts now, with the CPU seconds spent so far (start-up and preloads)."""
    fd = ctx.get("signal_fd")
    if fd is None:
        return
    usage = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = usage.ru_utime + usage.ru_stime + kids.ru_utime + kids.ru_stime
    os.write(int(fd), f"T {cpu:.6f}\n".encode())
    if not ctx.get("progress"):
        os.close(int(fd))


def _eval_ctx(ctx: dict[str, Any]) -> EvalContext:
    return EvalContext(
        outputs_dir=Path(ctx["outputs_dir"]) if ctx.get("outputs_dir") else None, seeds=tuple(ctx["seeds"]),
        workspace=Path(ctx["workspace"]) if ctx.get("workspace") else None,
        train_dir=Path(ctx["train_dir"]), test_dir=Path(ctx["test_dir"]), private_dir=Path(ctx["private_dir"]),
        device=ctx["device"], variant=ctx["variant"], options=dict(ctx.get("options") or {}),
        artifact_bytes=ctx.get("artifact_bytes"), threads=ctx.get("threads"), code_bytes=ctx.get("code_bytes"),
        sandbox=ctx.get("sandbox"))


def main(argv: list[str]) -> int:
    phase, ctx_path = argv[0], argv[1]
    ctx = json.loads(Path(ctx_path).read_text(encoding="utf-8"))
    try:
        if ctx.get("pdeathsig"):
            _die_with_parent()
        _apply_limits(ctx)
        if phase in ("stage", "evaluate"):
            ctx["recipe_root"] = ctx.get("workspace")
            if ctx.get("threads"):
                os.environ.setdefault("OMP_NUM_THREADS", str(ctx["threads"]))
            mod = _load_file(Path(ctx["evaluator_script"]), "_autoresearch_evaluator")
            ectx = _eval_ctx(ctx)
            if phase == "stage":
                getattr(mod, "stage", lambda c: None)(ectx)
                return 0
            metrics = getattr(mod, ctx.get("function", "evaluate"))(ectx)
            if not isinstance(metrics, dict):
                raise TypeError(f"evaluate() must return a dict of metrics, got {type(metrics).__name__}")
            _write_status(ctx, "result.json", metrics)
            return 0
        if phase not in ("prepare", "train", "predict"):
            raise ValueError(f"unknown phase {phase!r}")
        # Preloads serve the recipe's phases (kept out of the timer).
        for name in ctx.get("preload", []):
            importlib.import_module(name)
        _configure_threads(ctx)
        recipe_dir = (ctx.get("dirs") or {}).get("recipe")
        ctx["recipe_root"] = recipe_dir
        sys.path.insert(0, recipe_dir)
        os.chdir(recipe_dir)
        # The clock starts now, before any recipe code (module body included) has run.
        _signal_start(ctx)
        recipe = importlib.import_module("train")
        rctx = _recipe_ctx(ctx, phase)
        if ctx.get("progress") and ctx.get("signal_fd") is not None:
            rctx.progress_fd = int(ctx["signal_fd"])
        if phase == "prepare":
            rctx.out_dir = None
            recipe.prepare(rctx)
        elif phase == "train":
            recipe.train(rctx)
        else:
            recipe.predict(rctx)
        return 0
    except BaseException as exc:  # noqa: BLE001 - everything a recipe raises is reported, then the process fails
        if isinstance(exc, SystemExit) and exc.code in (0, None):
            return 0
        traceback.print_exc()
        try:
            _write_error(ctx, exc)
        except Exception:  # noqa: BLE001 - a full disk or a removed status folder must not hide the exit status
            pass
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
