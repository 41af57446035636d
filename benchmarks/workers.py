"""Trials per hour with 1 and 2 workers, on one-thread trials of a toy task (generated in a temp dir).

Modes, each a fresh copy of the same lineage (its baseline and first trial already measured), then N offline-agent
trials in one pytest session:

- ``inline``: 1 worker, the session runs each trial itself (the default);
- ``xdist -n 2``: 2 pytest-xdist workers, each a session of its own with its own agent, sharing the lineage
  through its lock (the one-box path that existed before trial-level workers);
- ``submitit local, 1 worker`` / ``2 workers``: ``workers.executor=local``: this session holds the agent and the
  lineage and dispatches each trial's recipe and evaluator to submitit's local executor (one process per job).

Each trial's recipe burns ``--work`` seconds on one thread (``--kind cpu``: CPU time, so the trials compete for
cores like real ones; ``--kind sleep``: wall time, what the harness itself parallelizes when cores are free).
Throughput is given twice: trials / wall seconds of the whole session (pytest start-up and the executor's included,
the same work in every mode), and the steady rate: trials finished between the first and the last trial's end
(record timestamps, 1 s resolution), which leaves the fixed start-up out.

    python benchmarks/workers.py [--trials 12] [--work 3] [--kind cpu|sleep|both]
                                 [--out benchmarks/results/workers.json]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from tabulate import tabulate

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from toytask import read_lineage, write_toy_task  # noqa: E402

BUSY = {
    "cpu": "import time as _t; _s = _t.process_time()\n    while _t.process_time() - _s < {work}: pass",
    "sleep": "import time as _t; _t.sleep({work})",
}
MODES: dict[str, tuple[int, list[str]]] = {
    "inline": (1, []),
    "xdist -n 2": (2, ["-n", "2"]),
    "submitit local, 1 worker": (1, ["--autoresearch-override", "workers.executor=local",
                                     "--autoresearch-override", "workers.n=1"]),
    "submitit local, 2 workers": (2, ["--autoresearch-override", "workers.executor=local",
                                      "--autoresearch-override", "workers.n=2"]),
}


def pytest(root: Path, lineage: Path, trials: int, extra: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    env = {k: v for k, v in os.environ.items() if k not in ("ANTHROPIC_API_KEY", "PYTEST_ADDOPTS")}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:hypothesispytest",
           "tasks/toy", "--autoresearch-trials", str(trials), "--autoresearch-agent", "offline",
           "--autoresearch-lineage", str(lineage), "--autoresearch-override", "budget.threads=1", *extra]
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    return time.perf_counter() - t, proc


def measure(kind: str, work: float, trials: int, root: Path) -> list[dict[str, Any]]:
    proj = root / kind
    # Knobs that do not change the work a trial does: lr and use_bias (steps are 20 either way).
    write_toy_task(proj, seeds=(0,), train_extra=BUSY[kind].format(work=work), train_seconds=10 * work + 30)
    seed_lineage = proj / "seed-lineage"
    wall, proc = pytest(proj, seed_lineage, 1, [])  # the baseline and trial 1, shared by every mode
    if proc.returncode != 0:
        raise SystemExit(f"seeding the lineage failed:\n{proc.stdout[-3000:]}{proc.stderr[-2000:]}")
    rows = []
    for mode, (workers, extra) in MODES.items():
        lineage = root / f"{kind}-{mode.replace(' ', '_').replace(',', '')}"
        shutil.copytree(seed_lineage, lineage)
        load = os.getloadavg()[0]
        wall, proc = pytest(proj, lineage, trials, extra)
        recs = read_lineage(lineage / "toy" / "lineage.jsonl")
        new = [r for r in recs if r["trial"] > 1]
        ok = proc.returncode == 0 and len(new) == trials and len({r["trial"] for r in recs}) == len(recs)
        ends = sorted(datetime.fromisoformat(r["ended"]).timestamp() for r in new)
        steady = 3600 * (len(ends) - 1) / (ends[-1] - ends[0]) if len(ends) > 1 and ends[-1] > ends[0] else None
        rows.append({"kind": kind, "mode": mode, "workers": workers, "trials": len(new), "wall_s": round(wall, 2),
                     "trials_per_hour": round(3600 * len(new) / wall, 1), "unique_numbers": ok,
                     "steady_trials_per_hour": round(steady, 1) if steady else None,
                     "hosts": sorted({r.get("host") for r in new}), "load_before": round(load, 2),
                     "pytest_exit": proc.returncode})
        print(f"workers: {kind} {mode}: {len(new)} trials in {wall:.1f}s (pytest exit {proc.returncode}, "
              f"load {load:.1f})", flush=True)
    for key in ("trials_per_hour", "steady_trials_per_hour"):
        inline = next(r[key] for r in rows if r["mode"] == "inline")
        sub1 = next(r[key] for r in rows if r["mode"] == "submitit local, 1 worker")
        for r in rows:
            ref = sub1 if r["mode"].startswith("submitit") else inline
            r["speedup" if key == "trials_per_hour" else "steady_speedup"] = (
                round(r[key] / ref, 2) if r[key] and ref else None)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--work", type=float, default=3.0, help="seconds each trial's recipe works (one thread)")
    ap.add_argument("--kind", default="both", choices=("cpu", "sleep", "both"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "workers.json"))
    args = ap.parse_args(argv)
    kinds = ["cpu", "sleep"] if args.kind == "both" else [args.kind]
    print(f"workers: {args.trials} trials per mode, each working {args.work:g}s on one thread; "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}", flush=True)
    with tempfile.TemporaryDirectory(prefix="workers-bench-") as tmp:
        rows = [r for k in kinds for r in measure(k, args.work, args.trials, Path(tmp))]
    print(tabulate([[r["kind"], r["mode"], r["workers"], r["trials"], r["wall_s"], r["trials_per_hour"],
                     f"{r['speedup']:.2f}x", r["steady_trials_per_hour"],
                     f"{r['steady_speedup']:.2f}x" if r["steady_speedup"] else "-", r["unique_numbers"],
                     r["load_before"]] for r in rows],
                   headers=["work", "mode", "workers", "trials", "wall s", "trials/hour (session)",
                            "vs 1 worker", "trials/hour (steady)", "vs 1 worker", "one lineage, unique numbers",
                            "load before"], tablefmt="github"))
    report = {"trials": args.trials, "work_s": args.work, "cpus": os.cpu_count(), "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"workers: wrote {args.out}")
    return 0 if all(r["pytest_exit"] == 0 and r["unique_numbers"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
