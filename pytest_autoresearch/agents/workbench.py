"""The harness side of an agent's tools: other trials' files, and a smoke test of proposed code.

A smoke test runs the proposed recipe the way a trial runs it, through the same ``run_phase`` and the task's
own sandbox: ``train`` for the budget's first seed on a slice of the staged training data (the first ``rows``
rows of each ``.npy`` array; other files as they are), stopped after ``steps`` progress reports
(``ctx.report``) or ``seconds``, whichever comes first, then ``predict`` when training finished. Its writes to
the compile cache vanish with it, like a trial's ``train``. Nothing it measures is a score: it answers
"does this run?" before a trial is spent on finding out.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from .. import masking
from .base import SmokeResult

if TYPE_CHECKING:
    from ..runner import PhaseResult
    from ..trial import TaskRun

TAIL_LINES = 8  # traceback lines kept under a crash's first line


def crash_note(r: "PhaseResult", what: str, tail_lines: int = TAIL_LINES) -> str:
    """A crash, readable in a few lines: the deepest frame in the recipe's own files with its code, where the
    exception was raised when that is deeper (a library), the exception, and a short masked traceback tail."""
    err = r.error or {}
    frames = err.get("frames") or []
    lines = [f"{what}: {r.deepest_error()}"]
    own = [f for f in frames if f.get("in_recipe")]
    if own:
        f = own[-1]
        lines.append(f"  in the recipe: {Path(str(f.get('file'))).name}:{f.get('line')} in {f.get('func')}: "
                     f"{str(f.get('code') or '').strip()}")
    if frames and not frames[-1].get("in_recipe"):
        f = frames[-1]
        lines.append(f"  raised in: {_short_path(str(f.get('file')))}:{f.get('line')} in {f.get('func')}")
    tail = (err.get("traceback_tail") or "") if err else r.log_tail(40)
    kept = [ln.rstrip() for ln in tail.splitlines() if ln.strip()][-tail_lines:]
    if kept:
        lines.append("  traceback (last lines):")
        lines += ["    " + ln[:300] for ln in kept]
    return masking.clean("\n".join(lines))


def _short_path(path: str) -> str:
    """A library file named from its package folder on (``torch/nn/modules/conv.py``), not the host path."""
    parts = Path(path).parts
    for marker in ("site-packages", "dist-packages"):
        if marker in parts:
            return "/".join(parts[len(parts) - 1 - parts[::-1].index(marker) + 1:])
    stdlib = [i for i, p in enumerate(parts) if re.fullmatch(r"python\d+\.\d+", p)]
    return "/".join(parts[stdlib[-1] + 1:] if stdlib else parts[-3:])


class TrialWorkbench:
    """A :class:`~pytest_autoresearch.agents.base.Workbench` over one task's ``TaskRun``."""

    def __init__(self, run: "TaskRun") -> None:
        self.run = run

    def files_of(self, trial: int) -> Mapping[str, str]:
        rec = self.run.lineage.get(trial)
        if rec is None or not rec.get("commit"):
            raise KeyError(f"trial {trial} has no recorded commit")
        return self.run.repo.files_at(self.run.commit_of(rec))

    def smoke(self, files: Mapping[str, str], *, seconds: float, steps: int, rows: int) -> SmokeResult:
        from ..integrity import check_outputs, freeze, rmtree
        from ..runner import Phase, run_phase, scrubbed_env
        from ..sandbox import Bind
        from ..trial import recipe_functions

        run = self.run
        b = run.task.budget
        base = run.dir / "smoke"
        base.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="run-", dir=base))
        try:
            src = work / "src"
            for rel, text in files.items():
                (src / rel).parent.mkdir(parents=True, exist_ok=True)
                (src / rel).write_text(text, encoding="utf-8")
            freeze(src)
            fns, syntax = recipe_functions(src / "train.py")
            if syntax or "train" not in fns:
                return SmokeResult(False, f"crash: {syntax or 'train.py defines no top-level train(ctx) function'}")
            staged = run.staged()
            train_data, sliced = self._slice(staged.train, rows)
            seed = b.seeds[0]
            out = work / "out" / f"seed-{seed}"
            out.mkdir(parents=True)
            run.cache_dir.mkdir(parents=True, exist_ok=True)
            ctx = dict(seeds=list(b.seeds), seed=seed, device=run.device, variant=run.task.variant, threads=b.threads,
                       preload=list(b.preload), recipe_options={})
            env = None
            if not run.sandbox.sandboxed:  # process-level isolation: a home of its own, an allow-listed environment
                (work / "home").mkdir()
                env = scrubbed_env(run.cache_dir, work / "home", b.threads)
            seen: list[tuple[float, float]] = []

            def enough(step: float, loss: float) -> str | None:
                seen.append((step, loss))
                return f"{steps} progress reports" if steps and len(seen) >= steps else None

            def phase(name: str, data: Path, monitor: Any = None) -> "PhaseResult":
                binds = {"recipe": Bind(src, "ro"), "cache": Bind(run.cache_dir, "overlay"), "data": Bind(data, "ro"),
                         "out": Bind(out, "rw")}
                return run_phase(Phase(name, ctx, work_dir=work / "phases" / name, limit_s=seconds,
                                       startup_s=b.startup_seconds, timed=True, binds=binds, threads=b.threads, env=env,
                                       monitor=monitor, progress=name == "train"), run.sandbox)

            where = f"seed {seed}" + (f", the first {rows:,} rows of each training array" if sliced else "")
            r = phase("train", train_data, enough)
            if r.timed_out == "startup":
                return SmokeResult(False, f"inconclusive: the interpreter and preloads did not start within "
                                          f"{b.startup_seconds:g}s (not the recipe's code)", r.wall_s)
            if r.stopped or r.timed_out:
                last = (f"; last report: step {seen[-1][0]:g}, loss {seen[-1][1]:.4g}" if seen else
                        "; the recipe reports no progress (ctx.report)")
                why = f"after {r.stopped}" if r.stopped else f"at the smoke test's {seconds:g}s limit"
                return SmokeResult(True, f"ok: train ({where}) ran {r.seconds:.1f}s without an error and was stopped "
                                         f"{why}{last}. predict was not run.", r.wall_s)
            if r.rc != 0:
                return SmokeResult(False, "crash: " + crash_note(r, f"train ({where})"), r.wall_s)
            report = f"ok: train ({where}) finished in {r.seconds:.1f}s"
            spent = r.wall_s
            if "predict" in fns:
                test_data, _ = self._slice(staged.test, rows)
                p = phase("predict", test_data)
                spent += p.wall_s
                if p.timed_out:
                    return SmokeResult(True, f"{report}; predict ran {seconds:g}s without an error and was stopped "
                                             f"at the smoke test's limit", spent)
                if p.rc != 0:
                    return SmokeResult(False, "crash: " + crash_note(p, f"predict (seed {seed})"), spent)
                report += f"; predict finished in {p.seconds:.1f}s"
            bad = check_outputs(work / "out")
            if bad:
                return SmokeResult(False, f"{report}, but the outputs are not valid: {masking.clean(bad)}", spent)
            written = sorted(f"{p.name} ({p.stat().st_size:,} bytes)" for p in out.iterdir() if p.is_file())
            report += f"; it wrote {', '.join(written) or 'no output files'}"
            return SmokeResult(True, report + ". (Smoke-test timings are not scores: a trial times every seed on "
                                              "all the data.)", spent)
        finally:
            rmtree(work)

    def _slice(self, folder: Path, rows: int) -> tuple[Path, bool]:
        """``folder``, or a cached copy with every ``.npy`` array cut to its first ``rows`` rows (hard links for
        everything else); whether anything was cut."""
        if rows <= 0:
            return folder, False
        import numpy as np

        key = hashlib.sha1(f"{folder.resolve()}:{rows}".encode()).hexdigest()[:12]
        dest = self.run.dir / "smoke" / f"data-{key}"
        marker = dest / "sliced"  # beside the data, not in it: the recipe sees only the data
        if not marker.exists():
            tmp = Path(tempfile.mkdtemp(prefix="data-", dir=self.run.dir / "smoke"))
            cut = False
            for path in sorted(folder.rglob("*")):
                target = tmp / "data" / path.relative_to(folder)
                if path.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                if path.suffix == ".npy":
                    try:
                        arr = np.load(path, mmap_mode="r", allow_pickle=False)
                    except ValueError:
                        arr = None
                    if arr is not None and arr.ndim >= 1 and arr.shape[0] > rows:
                        np.save(target, np.ascontiguousarray(arr[:rows]))
                        cut = True
                        continue
                try:
                    os.link(path, target)
                except OSError:
                    shutil.copy2(path, target)
            (tmp / "data").mkdir(exist_ok=True)
            (tmp / "sliced").write_text("1" if cut else "0")
            try:
                os.rename(tmp, dest)
            except OSError:  # another worker made it first
                shutil.rmtree(tmp, ignore_errors=True)
        return dest / "data", marker.read_text() == "1"
