"""Trial processes: the harness' timer, the budget kill of the whole process group, the scrubbed environment."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from pytest_autoresearch.runner import run_phase, scrubbed_env


def _ctx(tmp_path: Path, recipe: str) -> dict:
    ws = tmp_path / "ws"
    ws.mkdir(exist_ok=True)
    (ws / "train.py").write_text(recipe)
    for d in ("out", "pub", "priv"):
        (tmp_path / d).mkdir(exist_ok=True)
    return dict(seeds=[0], outputs_dir=str(tmp_path / "out"), public_dir=str(tmp_path / "pub"),
                private_dir=str(tmp_path / "priv"), cache_dir=str(tmp_path / "cache"), device="cpu", variant="mini",
                workspace=str(ws), preload=[], threads=1)


def _run(tmp_path: Path, recipe: str, limit: float = 20.0):
    env = scrubbed_env(tmp_path / "cache", tmp_path / "home", 1)
    return run_phase("train", _ctx(tmp_path, recipe), limit_s=limit, work_dir=tmp_path / "w", env=env)


def test_module_level_work_is_timed(tmp_path: Path):
    r = _run(tmp_path, "import time\ntime.sleep(0.6)\ndef train(ctx):\n    pass\n")
    assert r.ok and r.seconds >= 0.6, "moving work to import time must not hide it from the clock"


def test_a_recipe_cannot_stop_the_clock_by_patching_time(tmp_path: Path):
    recipe = ("import time\n_real = time.sleep\ntime.perf_counter = lambda: 0.0\ntime.monotonic = lambda: 0.0\n"
              "def train(ctx):\n    _real(0.5)\n")
    r = _run(tmp_path, recipe)
    assert r.ok and r.seconds >= 0.5


def test_overrun_kills_the_whole_process_group(tmp_path: Path):
    marker = tmp_path / "child_alive"
    child = tmp_path / "child.py"
    child.write_text(f"import time\ntime.sleep(3)\nopen({str(marker)!r}, 'w').close()\n")
    recipe = ("import subprocess, sys, time\n"
              "def train(ctx):\n"
              f"    subprocess.Popen([sys.executable, {str(child)!r}])\n"
              "    time.sleep(60)\n")
    t = time.monotonic()
    r = _run(tmp_path, recipe, limit=1.0)
    assert r.timed_out == "train" and time.monotonic() - t < 15
    time.sleep(3.5)
    assert not marker.exists(), "a child the recipe started outlived the budget kill"


def test_environment_has_no_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-supersecret")
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws_secret")
    recipe = "import os, json\ndef train(ctx):\n    (ctx.out_dir / 'env.json').write_text(json.dumps(dict(os.environ)))\n"
    r = _run(tmp_path, recipe)
    assert r.ok, r.log_tail()
    seen = (tmp_path / "out" / "seed-0" / "env.json").read_text()
    for secret in ("sk-ant-supersecret", "hf_secret", "aws_secret", "ANTHROPIC", "HF_TOKEN"):
        assert secret not in seen
    assert '"OMP_NUM_THREADS": "1"' in seen and "TORCHINDUCTOR_CACHE_DIR" in seen
    assert os.environ["ANTHROPIC_API_KEY"] == "sk-ant-supersecret"


def test_crash_reports_the_deepest_recipe_frame(tmp_path: Path):
    r = _run(tmp_path, "def helper():\n    raise KeyError('lr')\n\ndef train(ctx):\n    helper()\n")
    assert r.rc == 1 and r.error["in_recipe"] and r.deepest_error() == "train.py:2: KeyError: 'lr'"


def test_cpu_seconds_count_only_the_timed_phase(tmp_path: Path):
    # Busy work at import time (untimed preload would not count; recipe import does), then idle sleeping.
    recipe = ("import time\n_t = time.process_time()\nwhile time.process_time() - _t < 0.4:\n    pass\n"
              "def train(ctx):\n    time.sleep(0.8)\n")
    r = _run(tmp_path, recipe)
    assert r.ok and 0.35 <= r.cpu_s < 0.8, r.cpu_s
    assert r.seconds >= 1.2, "wall seconds include the sleep; CPU seconds do not"
