"""The GPU check: each task's full baseline once and two offline-agent trials, through the real harness, and
what the hardware did with them: per task the epoch or step time, tokens/s and MFU where the recipe reports
them, the compile warm-up of the first trial (cold compile cache) against the later ones (the cache kept in
``<lineage>/<task>/cache`` and reused), the train seconds and the score.

    python benchmarks/gpu_check.py                          # on a CUDA machine: every task, variant full
    python benchmarks/gpu_check.py --tasks paramgolf --trials 2 --override budget.seeds=1
    python benchmarks/gpu_check.py --variant mini           # the same check at the CPU scale

Full scale needs each task's data (README of each task: CIFAR-10, FineWeb sp1024 shards, the DCLM CORE bundle and
pretraining shards) and time: airbench ~10 min, paramgolf ~45 min, nanochat ~5 h (its recipe trains 90 min per
trial). A task whose data is missing is reported as skipped with pytest's reason. Without CUDA the script says so
and runs what it was asked on the CPU (the numbers are then no GPU numbers). Prints a table and writes JSON
(default ``benchmarks/results/gpu_check.json``).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tabulate import tabulate

ROOT = Path(__file__).resolve().parents[1]
TASKS = ("airbench", "paramgolf", "nanochat")


def cuda_device() -> str | None:
    """The GPU's name, or None (asked in a child process, so this one never imports torch)."""
    code = "import torch; print(torch.cuda.get_device_name() if torch.cuda.is_available() else '')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip()
    return out or None


def run_task(task: str, tasks_dir: Path, lineage: Path, variant: str, trials: int, overrides: list[str],
             log: Path) -> tuple[int, float]:
    module = tasks_dir / task / f"test_{task}.py"
    cmd = [sys.executable, "-m", "pytest", str(module), "-q", "-p", "no:cacheprovider", "-rs",
           "--autoresearch-trials", str(trials), "--autoresearch-agent", "offline",
           "--autoresearch-lineage", str(lineage), "--autoresearch-override", f"variant={variant}",
           "--autoresearch-override", "lineage.keep_outputs=true"]
    for o in overrides:
        cmd += ["--autoresearch-override", o]
    env = {k: v for k, v in os.environ.items() if k != "ANTHROPIC_API_KEY"}
    t = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
    return rc, time.perf_counter() - t


def recipe_logs(task_dir: Path, trial: int) -> list[dict[str, Any]]:
    """What the recipe reported with ctx.log, per seed (kept with lineage.keep_outputs)."""
    out = []
    for f in sorted((task_dir / "trials" / f"{trial:05d}" / "out").glob("seed-*/recipe_log.jsonl")):
        for line in f.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def _mean(values: list[Any]) -> float | None:
    nums = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return statistics.fmean(nums) if nums else None


def summarize(task: str, task_dir: Path) -> dict[str, Any]:
    """One row per trial of the task's lineage: speed, compile warm-up and score."""
    path = task_dir / "lineage.jsonl"
    rows = []
    for rec in (json.loads(x) for x in path.read_text().splitlines() if x.strip()) if path.is_file() else ():
        m = rec.get("metrics") or {}
        logs = recipe_logs(task_dir, int(rec["trial"]))
        per_seed = m.get("train_seconds_per_seed") or []
        epochs = _mean([x.get("epochs") for x in logs])
        steps = _mean([x.get("steps") for x in logs])
        loop = _mean([x.get("train_loop_s") if x.get("train_loop_s") is not None else x.get("loop_s") for x in logs])
        step_ms = _mean([x.get("step_ms") for x in logs])
        if step_ms is None and loop is not None and steps:
            step_ms = 1000 * loop / steps
        rows.append({
            "task": task, "trial": rec["trial"], "label": rec.get("label"), "specialist": rec.get("specialist"),
            "metric": rec.get("metric"), "score": rec.get("score"), "train_s": _mean(per_seed) or rec.get("train_s"),
            "epoch_s": (_mean(per_seed) / epochs) if per_seed and epochs else None,
            "step_ms": step_ms, "tokens_per_s": _mean([x.get("tokens_per_s") for x in logs]),
            "mfu": _mean([x.get("mfu") for x in logs]),
            "compile_s": m.get("prepare_seconds", rec.get("prepare_s")), "device": rec.get("device"),
            "variant": rec.get("variant"), "notes": (rec.get("notes") or "")[:120],
        })
    return {"task": task, "trials": rows,
            "compile_cold_s": rows[0]["compile_s"] if rows else None,
            "compile_warm_s": _mean([r["compile_s"] for r in rows[1:]]) if len(rows) > 1 else None}


def skipped_reason(log: Path) -> str:
    text = log.read_text(errors="replace") if log.is_file() else ""
    for line in text.splitlines():
        if line.startswith("SKIPPED"):
            return line.split(":", 2)[-1].strip()[:200]
    return ""


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", nargs="+", default=list(TASKS))
    ap.add_argument("--tasks-dir", default=str(ROOT / "tasks"))
    ap.add_argument("--variant", default="full", choices=("full", "mini"))
    ap.add_argument("--trials", type=int, default=2, help="offline-agent trials after the baseline (default 2)")
    ap.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                    help="passed on as --autoresearch-override (e.g. budget.seeds=2)")
    ap.add_argument("--work", default=None, help="where lineages and logs go (default: a temp folder, kept)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gpu_check.json"))
    args = ap.parse_args(argv)

    gpu = cuda_device()
    print(f"gpu_check: {gpu or 'no CUDA device here: running on the CPU, these are no GPU numbers'} | "
          f"variant {args.variant} | tasks {', '.join(args.tasks)} | baseline + {args.trials} offline trials",
          flush=True)
    work = Path(args.work or tempfile.mkdtemp(prefix="gpu_check-"))
    work.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    for task in args.tasks:
        lineage, log = work / "lineage", work / f"{task}.log"
        shutil.rmtree(lineage / task, ignore_errors=True)  # a fresh lineage: trial 0 pays the cold compile
        rc, wall = run_task(task, Path(args.tasks_dir), lineage, args.variant, args.trials, args.override, log)
        s = summarize(task, lineage / task)
        s.update(pytest_exit=rc, wall_s=round(wall, 1), log=str(log), skipped=skipped_reason(log))
        results.append(s)
        print(f"gpu_check: {task}: pytest exit {rc} in {wall:.0f}s, {len(s['trials'])} trials recorded "
              f"(log {log})" + (f"; skipped: {s['skipped']}" if s["skipped"] else ""), flush=True)

    table = [[r["task"], t["trial"], t["label"], t["specialist"], f"{t['metric']}={_fmt(t['score'], 6)}",
              _fmt(t["train_s"]), _fmt(t["epoch_s"]), _fmt(t["step_ms"]), _fmt(t["tokens_per_s"], 6),
              _fmt(t["mfu"], 3), _fmt(t["compile_s"])]
             for r in results for t in r["trials"]]
    print(tabulate(table, headers=["task", "trial", "label", "by", "score", "train s/seed", "s/epoch", "ms/step",
                                   "tokens/s", "MFU", "compile s"], tablefmt="github"))
    print(tabulate([[r["task"], _fmt(r["compile_cold_s"]), _fmt(r["compile_warm_s"]), r["pytest_exit"],
                     r["wall_s"], r["skipped"] or ""] for r in results],
                   headers=["task", "compile cold s (trial 0)", "compile warm s (later trials)", "pytest exit",
                            "wall s", "skipped"], tablefmt="github"))
    report = {"gpu": gpu, "host": platform.node(), "python": platform.python_version(), "variant": args.variant,
              "trials": args.trials, "overrides": args.override, "work": str(work), "tasks": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"gpu_check: wrote {args.out}")
    return 0 if all(r["pytest_exit"] in (0, 5) and (r["trials"] or r["skipped"]) for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
