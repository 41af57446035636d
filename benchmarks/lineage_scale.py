"""How the lineage store scales: append, full read, agent view and trial claim at 1k / 10k / 50k records.

    python benchmarks/lineage_scale.py [--out benchmarks/results/lineage_scale.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from tabulate import tabulate

from pytest_autoresearch.lineage import REQUIRED_KEYS, Lineage, make_view

DIFF = "".join(f"-x{i} = {i}\n+x{i} = {i + 1}\n" for i in range(20))


def record(trial: int) -> dict:
    r = {k: None for k in REQUIRED_KEYS}
    r.update(schema=1, task="bench", trial=trial, label="discard" if trial % 5 else "keep", score=100.0 - trial * 1e-3,
             parent=0, metrics={"acc": 0.9, "score_per_seed": [1.0, 1.1]}, diff=DIFF, specialist=f"s{trial % 5}",
             hypothesis="raise lr " * 8, notes="")
    return r


def median_ms(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1000,10000,50000")
    ap.add_argument("--out", default="benchmarks/results/lineage_scale.json")
    args = ap.parse_args()
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        with tempfile.TemporaryDirectory() as d:
            lin = Lineage(Path(d) / "lineage.jsonl")
            t = time.perf_counter()
            for i in range(n):
                lin.append(record(i))
            append_ms = 1000 * (time.perf_counter() - t) / n
            read_ms = median_ms(lambda: lin.records(quiet=True), 5)
            recs = lin.records(quiet=True)
            view_ms = median_ms(lambda: make_view("bench", "score", "minimize", recs), 5)
            claim_ms = median_ms(lin.claim_trial, 5)
            size_mb = lin.path.stat().st_size / 1e6
        rows.append({"records": n, "file_MB": round(size_mb, 2), "append_ms_each": round(append_ms, 3),
                     "read_all_ms": round(read_ms, 1), "view_ms": round(view_ms, 1), "claim_ms": round(claim_ms, 1)})
    print(tabulate(rows, headers="keys", tablefmt="github"))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
