"""What the harness adds to a trial: the same tiny recipe run bare (its phases only) and as a full trial
(propose, preflight, git worktree + commit, phases, record), side by side, medians over N trials.

    python benchmarks/harness_overhead.py [--trials 10] [--out benchmarks/results/harness_overhead.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from toytask import write_toy_task  # noqa: E402

from pytest_autoresearch import Budget, Evaluator, Objective, Specialist, Surface  # noqa: E402
from pytest_autoresearch.agents.offline import OfflineAgent  # noqa: E402
from pytest_autoresearch.task import Task  # noqa: E402
from pytest_autoresearch.config import compose  # noqa: E402
from pytest_autoresearch.trial import TaskRun, _write_recipe  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--out", default="benchmarks/results/harness_overhead.json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        td = write_toy_task(root)
        task = Task(name="toy", module_path=td / "test_toy.py", baseline_recipe=td / "recipe",
                    budget=Budget(train_seconds=30, eval_seconds=30, seeds=(0, 1)), legality=(),
                    evaluator=Evaluator(td / "evaluator.py"), objective=Objective("mse", "minimize"),
                    specialists=(Specialist("opt", Surface(regions=("train.py::opt",)), "x"),))
        cfg = compose([])
        run = TaskRun(task, root=root / ".autoresearch", session_id="bench", agent=OfflineAgent(seed=0),
                      agent_name="offline", device="cpu", cfg=cfg)
        run.ensure_baseline()
        bare, full = [], []
        for i in range(args.trials):
            t = time.perf_counter()
            run.execute(lambda dest: _write_recipe(td / "recipe", dest), root / "bare" / str(i))
            bare.append(time.perf_counter() - t)
            t = time.perf_counter()
            run.run_trial(f"trial-{i}")
            full.append(time.perf_counter() - t)
    mb, mf = statistics.median(bare), statistics.median(full)
    rows = [{"what": "recipe phases only (train+predict+evaluate)", "median_s": round(mb, 3)},
            {"what": "full trial (agent, preflight, git, phases, record)", "median_s": round(mf, 3)},
            {"what": "harness overhead per trial", "median_s": round(mf - mb, 3)},
            {"what": "full / bare", "median_s": round(mf / mb, 2)}]
    print(tabulate(rows, headers="keys", tablefmt="github"))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"trials": args.trials, "bare_s": bare, "full_s": full, "rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
