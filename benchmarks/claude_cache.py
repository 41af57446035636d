"""How much of the Claude agent's input is read from the prompt cache: a real trial run against the loopback
Messages API (``tests/fake_anthropic.py``, which caches prefixes at the request's breakpoints the way the API
does, with its 20-block lookback, minimum cacheable length and lifetimes), driven by its scripted researcher.

    python benchmarks/claude_cache.py [--task tasks/airbench] [--trials 10] [--min-cache-tokens 1024]
                                      [--save-request /tmp/request.json] [--out benchmarks/results/claude_cache.json]

The run is ``pytest --autoresearch-agent claude --autoresearch-trials N`` on the task (its ``mini`` variant on a
CPU machine, with ``budget.train_seconds=120`` so that a busy machine cannot fail the baseline), in a fresh
lineage. Each session lists the files, views one, edits a constant, runs ``smoke_test``
and submits. The table has one row per session (trial): API calls, uncached input tokens, tokens written to and
read from the cache, and the read share of all input tokens; the last row sums them. A cache is per model, so
a specialist on another model (airbench's ``arch`` runs on Opus) writes its own copy of the shared prefix.
Target: a read share of at least 60 %.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tabulate import tabulate

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from fake_anthropic import FakeAnthropic, researcher  # noqa: E402

TARGET = 0.60
KEYS = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens", "output_tokens")


def sessions(requests: list[dict[str, Any]], usages: list[dict[str, Any]]) -> list[list[int]]:
    """Request indices grouped by session: a session's first request has a single (user) message."""
    out: list[list[int]] = []
    for i, body in enumerate(requests[:len(usages)]):
        if len(body.get("messages") or []) == 1 or not out:
            out.append([])
        out[-1].append(i)
    return out


def share(u: dict[str, int]) -> float:
    total = u["input_tokens"] + u["cache_creation_input_tokens"] + u["cache_read_input_tokens"]
    return u["cache_read_input_tokens"] / total if total else 0.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", default="tasks/airbench")
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--min-cache-tokens", type=int, default=1024,
                    help="the model's minimum cacheable prefix (1024 for Sonnet; 4096 for Opus 4.5 and Haiku 4.5)")
    ap.add_argument("--override", action="append", default=[], help="extra --autoresearch-override KEY=VALUE")
    ap.add_argument("--save-request", default=None, help="write the first request of the second session here")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "claude_cache.json"))
    args = ap.parse_args()

    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp, FakeAnthropic(responder=researcher(seed=0),
                                                             min_cache_tokens=args.min_cache_tokens) as fake:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "PYTEST_"))}
        env.update(ANTHROPIC_API_KEY="sk-ant-benchmark-not-a-real-key", ANTHROPIC_BASE_URL=fake.url,
                   NO_PROXY="127.0.0.1,localhost", PYTHONPATH=os.pathsep.join(
                       [str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])))
        # It counts tokens, not seconds: a loose time limit keeps a busy machine from failing the baseline.
        overrides = [x for o in ["budget.train_seconds=120", *args.override] for x in ("--autoresearch-override", o)]
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:hypothesispytest",
               "--autoresearch-trials", str(args.trials), "--autoresearch-agent", "claude",
               "--autoresearch-lineage", str(Path(tmp) / "lineage"), *overrides, str(ROOT / args.task)]
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        requests, usages = list(fake.requests), list(fake.usages)
        lineage = Path(tmp) / "lineage" / Path(args.task).name / "lineage.jsonl"
        records = [json.loads(x) for x in lineage.read_text().splitlines() if x.strip()] if lineage.exists() else []
    if proc.returncode not in (0, 1) or not usages:
        print(proc.stdout[-4000:] + proc.stderr[-4000:])
        print(f"the run failed (exit status {proc.returncode})")
        return 1

    trials = [r for r in records if r.get("trial", 0) > 0 and (r.get("agent") or {}).get("name") == "claude"
              and any((r.get("usage") or {}).get(k) for k in KEYS)]
    rows, total = [], {k: 0 for k in KEYS}
    first_calls = {k: 0 for k in KEYS}
    for n, idx in enumerate(sessions(requests, usages)):
        u = {k: sum(int(usages[i].get(k) or 0) for i in idx) for k in KEYS}
        for k in KEYS:
            total[k] += u[k]
            first_calls[k] += int(usages[idx[0]].get(k) or 0)
        rec = trials[n] if n < len(trials) else {}
        rows.append({"trial": rec.get("trial", "?"), "specialist": rec.get("specialist", "?"),
                     "model": requests[idx[0]].get("model", "?"), "label": rec.get("label", "?"),
                     "calls": len(idx), "input": u["input_tokens"],
                     "cache write": u["cache_creation_input_tokens"], "cache read": u["cache_read_input_tokens"],
                     "read share": f"{100 * share(u):.1f}%"})
    rows.append({"trial": "all", "specialist": "", "model": "", "label": "", "calls": len(usages),
                 "input": total["input_tokens"],
                 "cache write": total["cache_creation_input_tokens"], "cache read": total["cache_read_input_tokens"],
                 "read share": f"{100 * share(total):.1f}%"})
    print(tabulate(rows, headers="keys", tablefmt="github"))
    overall, first = share(total), share(first_calls)
    print(f"\ncache-read share of all input tokens: {100 * overall:.1f}% (target >= {100 * TARGET:.0f}%: "
          f"{'met' if overall >= TARGET else 'NOT met'}); of the sessions' first calls alone: {100 * first:.1f}%")
    print(f"{len(trials)} trials, {len(usages)} API calls, task {args.task}, min cacheable prefix "
          f"{args.min_cache_tokens} tokens, {time.monotonic() - started:.0f}s")

    starts = [i for i, body in enumerate(requests) if len(body.get("messages") or []) == 1]
    if args.save_request and starts:
        body = requests[starts[1] if len(starts) > 1 else starts[0]]
        Path(args.save_request).write_text(json.dumps(body, indent=2, ensure_ascii=False))
        print(f"request of a session's first call written to {args.save_request}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"task": args.task, "trials": len(trials), "calls": len(usages),
                               "min_cache_tokens": args.min_cache_tokens, "target": TARGET,
                               "read_share": round(overall, 4), "first_call_read_share": round(first, 4),
                               "totals": total, "sessions": rows[:-1]}, indent=2))
    return 0 if overall >= TARGET else 2


if __name__ == "__main__":
    sys.exit(main())
