"""Trust figures: every attack of tests/adversarial run as a real trial, and what the sandbox costs per phase.

    python benchmarks/trust.py [--repeats 20] [--out benchmarks/results/trust.json]

The first table counts, per mechanism, the attacks tried, how many got the label they should, and how many
fooled the harness in each way: a score it did not earn (the attack's trial was kept), a lineage changed other
than by its own record, a process alive after its trial, the API key found anywhere (lineage, logs, outputs,
git history), something reached that the phase is not entitled to (its probe found it). The attacks always
run sandboxed (``sandbox.mode=bwrap``): without it they hunt the whole machine for evaluators, lineages and
repositories and rewrite what they find.

The second table times one trivial phase (interpreter start, runtime, a recipe that does nothing) bare and in
its sandbox, side by side, medians over ``--repeats`` runs each, interleaved.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from tabulate import tabulate

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "adversarial"))

from sessions import GROUPS, run_group  # noqa: E402

from pytest_autoresearch.runner import Phase, run_phase, scrubbed_env  # noqa: E402
from pytest_autoresearch.sandbox import Bind, Limits, Sandbox, detect  # noqa: E402

COLUMNS = ("tried", "labelled right", "fooled: score", "fooled: lineage", "records lost", "orphans", "leaks",
           "reached")


def attack_figures(work: Path) -> tuple[list[list[Any]], list[dict[str, Any]]]:
    rows: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(COLUMNS, 0))
    detail = []
    for group in GROUPS:
        t = time.monotonic()
        s = run_group(group, work / group)
        print(f"  {group}: {len(s.attacks)} attacks in {time.monotonic() - t:.0f}s", flush=True)
        for a in s.attacks:
            v = s.verdict(a)
            r = rows[a.mechanism]
            r["tried"] += 1
            r["labelled right"] += int(v["labelled_right"])
            r["fooled: score"] += int(v["recorded"] and not v["score_unchanged"])
            r["fooled: lineage"] += int(v["recorded"] and not v["lineage_unchanged"])
            r["records lost"] += int(not v["recorded"])
            r["orphans"] += int(v["orphans"] > 0)
            r["leaks"] += int(v["leaks"] > 0)
            r["reached"] += int(bool(v["reached"]))
            detail.append({"attack": a.name, "mechanism": a.mechanism, **v,
                           "reached": [str(x) for x in v["reached"]][:5]})
    table = [[m, *(rows[m][c] for c in COLUMNS)] for m in sorted(rows)]
    table.append(["all", *(sum(rows[m][c] for m in rows) for c in COLUMNS)])
    return table, detail


def phase_cost(repeats: int, work: Path) -> list[list[Any]]:
    src, out, cache = work / "src", work / "out", work / "cache"
    for d in (src, out, cache):
        d.mkdir(parents=True, exist_ok=True)
    (src / "train.py").write_text("def train(ctx):\n    pass\n")
    iso = detect("auto")
    variants = {"bare (process-level)": Sandbox(detect("off"), Limits()), "sandboxed (bwrap)": Sandbox(iso, Limits())}
    if not iso.sandboxed:
        print(f"  no sandbox here ({iso.reason}): only the bare phase is timed")
        variants.pop("sandboxed (bwrap)")
    times: dict[str, list[float]] = {k: [] for k in variants}
    for i in range(repeats):
        for name, sb in variants.items():
            phase = Phase("train", dict(seeds=[0], seed=0, device="cpu", variant="mini", threads=1, preload=[]),
                          work_dir=work / f"w-{i}-{name[:4]}", limit_s=30, timed=True, threads=1,
                          binds={"recipe": Bind(src), "out": Bind(out, "rw"), "cache": Bind(cache, "overlay")},
                          env=scrubbed_env(cache, work / "home", 1))
            t = time.perf_counter()
            r = run_phase(phase, sb)
            times[name].append((time.perf_counter() - t) * 1000)
            assert r.ok, r.log_tail()
    base = statistics.median(times["bare (process-level)"])
    return [[name, f"{statistics.median(v):.1f}", f"{min(v):.1f}", f"{statistics.median(v) - base:+.1f}"]
            for name, v in times.items()]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--out", default="benchmarks/results/trust.json")
    args = ap.parse_args()
    result: dict[str, Any] = {"isolation": detect("auto").describe()}
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        table, detail = attack_figures(work)
        print(f"\nAttacks, sandboxed: {result['isolation']}")
        print(tabulate(table, headers=["mechanism", *COLUMNS], tablefmt="github"))
        result["attacks"] = {"table": [dict(zip(["mechanism", *COLUMNS], row)) for row in table], "detail": detail}
        cost = phase_cost(args.repeats, work / "cost")
        print(f"\nOne trivial phase, {args.repeats} runs each, interleaved (ms)")
        print(tabulate(cost, headers=["phase", "median", "min", "vs bare"], tablefmt="github"))
        result["phase_cost_ms"] = [dict(zip(["phase", "median", "min", "vs_bare"], row)) for row in cost]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
