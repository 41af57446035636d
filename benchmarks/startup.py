"""What the plugin costs a project that does not use it: ``pytest --co`` on a small unrelated project (generated
in a temp dir) with the plugin loaded, as its entry points load it into every pytest run, and with it turned
off; medians over interleaved repeats. CPU seconds (user + system of the pytest process) are the figure to
read on a shared machine: other load stretches the wall clock, not them.

    python benchmarks/startup.py [--repeats 20] [--out benchmarks/results/startup.json]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tabulate import tabulate

CONFIGS = {
    "plugin off (-p no:autoresearch -p no:autoresearch_guard)": ["-p", "no:autoresearch", "-p", "no:autoresearch_guard"],
    "-p no:autoresearch (the guard alone)": ["-p", "no:autoresearch"],
    "default (plugin loaded)": [],
}
BASELINE = next(iter(CONFIGS))


def write_project(root: Path, modules: int = 10, tests: int = 10) -> int:
    """An ordinary project: test modules with plain and parametrized tests, a conftest fixture, a pyproject."""
    (root / "pyproject.toml").write_text('[tool.pytest.ini_options]\ntestpaths = ["tests"]\n')
    t = root / "tests"
    t.mkdir()
    (t / "conftest.py").write_text("import pytest\n\n\n@pytest.fixture\ndef numbers():\n    return [1, 2, 3]\n")
    for m in range(modules):
        body = ["import pytest\n"]
        for i in range(tests - 1):
            body.append(f"def test_{i}(numbers):\n    assert sum(numbers) == 6\n")
        body.append("@pytest.mark.parametrize('x', [1, 2, 3])\ndef test_param(x):\n    assert x > 0\n")
        (t / f"test_mod{m}.py").write_text("\n\n".join(body))
    return modules * (tests - 1 + 3)


def run_once(root: Path, flags: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one ``pytest --co``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "--co", "-q", "-p", "no:cacheprovider", *flags],
                          cwd=root, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"pytest {' '.join(flags)} failed:\n{proc.stdout}{proc.stderr}")
    return elapsed, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--out", default="benchmarks/results/startup.json")
    args = ap.parse_args()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    times: dict[str, list[float]] = {name: [] for name in CONFIGS}
    cpu: dict[str, list[float]] = {name: [] for name in CONFIGS}
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        n_tests = write_project(root)
        for flags in CONFIGS.values():  # warm the OS caches and the bytecode of every configuration
            run_once(root, flags, env)
        for _ in range(args.repeats):  # interleaved, so drift in machine load hits every configuration alike
            for name, flags in CONFIGS.items():
                wall, used = run_once(root, flags, env)
                times[name].append(wall)
                cpu[name].append(used)
    base, base_cpu = statistics.median(times[BASELINE]), statistics.median(cpu[BASELINE])
    rows = []
    for name, ts in times.items():
        med, med_cpu = statistics.median(ts), statistics.median(cpu[name])
        rows.append({"configuration": name, "CPU median (ms)": round(1000 * med_cpu, 1),
                     "CPU vs plugin off (ms)": round(1000 * (med_cpu - base_cpu), 1),
                     "wall median (ms)": round(1000 * med, 1), "wall vs plugin off (ms)": round(1000 * (med - base), 1),
                     "wall p25..p75 (ms)": f"{1000 * _q(ts, 0.25):.0f}..{1000 * _q(ts, 0.75):.0f}"})
    print(f"pytest --co -q on an unrelated project ({n_tests} tests), {args.repeats} interleaved repeats")
    print(tabulate(rows, headers="keys", tablefmt="github"))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"repeats": args.repeats, "tests": n_tests, "wall_s": times, "cpu_s": cpu, "rows": rows},
                                         indent=2))
    print(f"wrote {args.out}")


def _q(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


if __name__ == "__main__":
    main()
