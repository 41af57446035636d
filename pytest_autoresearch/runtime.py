"""The entry point of every trial subprocess: ``python -m pytest_autoresearch.runtime PHASE CTX_JSON``.

Phases and what each may see:

- ``stage``    task code: writes recipe-visible data (public) and evaluator-only data (private). Once per task.
- ``prepare``  recipe's optional ``prepare(ctx)``: untimed warm-up (compile caches). Gets no data.
- ``train``    recipe's ``train(ctx)`` once per seed. Timed by the parent: the clock starts when this process
               writes one byte to the signal pipe, just before the recipe module is imported, and stops when
               the process exits. Nothing the recipe does can move either end.
- ``predict``  recipe's optional ``predict(ctx)`` once per seed: turns saved outputs plus unlabeled inputs
               (public data) into predictions. Counted against the eval budget.
- ``evaluate`` task's ``evaluate(ctx) -> dict``: sees the private data and the outputs, never runs in the same
               process as recipe code unless the task chooses to load it.

This module must stay import-light: it runs before the timer starts and must not import the harness.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import os
import resource
import sys
import time
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

    def log(self, **values: Any) -> None:
        """Record recipe-reported values (informational only: scores come from the evaluator)."""
        if self.out_dir is not None:
            with open(self.out_dir / "recipe_log.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(values, default=str) + "\n")


@dataclass
class EvalContext:
    """What a task's ``evaluate`` (and ``stage``) receives."""

    outputs_dir: Path | None
    seeds: tuple[int, ...]
    workspace: Path | None
    public_dir: Path
    private_dir: Path
    device: str
    variant: str
    options: dict[str, Any] = field(default_factory=dict)
    artifact_bytes: int | None = None
    threads: int | None = None

    def seed_dir(self, seed: int) -> Path:
        assert self.outputs_dir is not None
        return self.outputs_dir / f"seed-{seed}"


def _load_file(path: Path, name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def _write_error(ctx: dict[str, Any], exc: BaseException) -> None:
    tb = traceback.extract_tb(exc.__traceback__)
    frames = [{"file": f.filename, "line": f.lineno, "func": f.name} for f in tb]
    workspace = ctx.get("workspace")
    in_recipe = bool(workspace) and any(
        os.path.abspath(f["file"]).startswith(os.path.abspath(workspace) + os.sep) for f in frames)
    err = {"type": type(exc).__name__, "message": str(exc)[:2000], "frames": frames[-8:], "in_recipe": in_recipe}
    Path(ctx["error_path"]).write_text(json.dumps(err), encoding="utf-8")


def _recipe_ctx(ctx: dict[str, Any], seed: int | None, with_data: bool) -> RecipeContext:
    seeds = tuple(ctx["seeds"])
    out_dir = None
    if seed is not None and ctx.get("outputs_dir"):
        out_dir = Path(ctx["outputs_dir"]) / f"seed-{seed}"
        out_dir.mkdir(parents=True, exist_ok=True)
    return RecipeContext(
        seed=seeds[0] if seed is None else seed, seeds=seeds, out_dir=out_dir,
        data_dir=Path(ctx["public_dir"]) if with_data else None, cache_dir=Path(ctx["cache_dir"]),
        device=ctx["device"], variant=ctx["variant"], threads=ctx.get("threads"),
        options=dict(ctx.get("recipe_options") or {}))


def _configure_threads(ctx: dict[str, Any]) -> None:
    if ctx.get("threads") and "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(int(ctx["threads"]))


def main(argv: list[str]) -> int:
    phase, ctx_path = argv[0], argv[1]
    ctx = json.loads(Path(ctx_path).read_text(encoding="utf-8"))
    try:
        # Preloads serve the recipe's phases (kept out of the timer); task code imports what it needs.
        if phase in ("prepare", "train", "predict"):
            for name in ctx.get("preload", []):
                importlib.import_module(name)
        _configure_threads(ctx)
        if phase in ("stage", "evaluate"):
            mod = _load_file(Path(ctx["evaluator_script"]), "_autoresearch_evaluator")
            ectx = EvalContext(
                outputs_dir=Path(ctx["outputs_dir"]) if ctx.get("outputs_dir") else None, seeds=tuple(ctx["seeds"]),
                workspace=Path(ctx["workspace"]) if ctx.get("workspace") else None,
                public_dir=Path(ctx["public_dir"]), private_dir=Path(ctx["private_dir"]), device=ctx["device"],
                variant=ctx["variant"], options=dict(ctx.get("options") or {}),
                artifact_bytes=ctx.get("artifact_bytes"), threads=ctx.get("threads"))
            if phase == "stage":
                getattr(mod, "stage", lambda c: None)(ectx)
                return 0
            metrics = getattr(mod, ctx.get("function", "evaluate"))(ectx)
            if not isinstance(metrics, dict):
                raise TypeError(f"evaluate() must return a dict of metrics, got {type(metrics).__name__}")
            Path(ctx["result_path"]).write_text(json.dumps(metrics, default=float), encoding="utf-8")
            return 0

        sys.path.insert(0, ctx["workspace"])
        os.chdir(ctx["workspace"])
        if phase == "train":
            # The clock starts now, before any recipe code (module body included) has run.
            # With it goes the CPU time spent so far (start-up, preloads), sent before recipe code can run.
            usage = resource.getrusage(resource.RUSAGE_SELF)
            os.write(int(ctx["signal_fd"]), f"T {usage.ru_utime + usage.ru_stime:.6f}\n".encode())
            os.close(int(ctx["signal_fd"]))
            recipe = importlib.import_module("train")
            wall, cpu = [], []
            for seed in ctx["seeds"]:
                t, c = time.perf_counter(), time.process_time()
                recipe.train(_recipe_ctx(ctx, seed, with_data=True))
                wall.append(time.perf_counter() - t)
                cpu.append(time.process_time() - c)
            # Per-seed times are reported from inside the recipe's process, so they only estimate noise.
            Path(ctx["outputs_dir"], "seed_seconds.json").write_text(json.dumps({"wall": wall, "cpu": cpu}),
                                                                      encoding="utf-8")
            return 0
        recipe = importlib.import_module("train")
        if phase == "prepare":
            recipe.prepare(_recipe_ctx(ctx, None, with_data=False))
        elif phase == "predict":
            for seed in ctx["seeds"]:
                recipe.predict(_recipe_ctx(ctx, seed, with_data=True))
        else:
            raise ValueError(f"unknown phase {phase!r}")
        return 0
    except BaseException as exc:  # noqa: BLE001 - everything a recipe raises is reported, then the process fails
        if isinstance(exc, SystemExit) and exc.code in (0, None):
            return 0
        traceback.print_exc()
        _write_error(ctx, exc)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
