"""Phase processes: the harness' clock and CPU accounting, the budget kill of the whole process tree, the
environment a recipe gets, the capped log, and the same recipe run with process-level isolation."""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from pytest_autoresearch.runner import Phase, run_phase, scrubbed_env
from pytest_autoresearch.sandbox import Bind, Limits, Sandbox, detect


def _run(tmp_path: Path, recipe: str, sandbox: Sandbox, limit: float = 20.0):
    src, out, cache = tmp_path / "src", tmp_path / "out" / "seed-0", tmp_path / "cache"
    for d in (src, out, cache):
        d.mkdir(parents=True, exist_ok=True)
    (src / "train.py").write_text(recipe)
    phase = Phase("train", dict(seeds=[0], seed=0, device="cpu", variant="mini", threads=1, preload=[]),
                  work_dir=tmp_path / "w", limit_s=limit, timed=True, threads=1,
                  binds={"recipe": Bind(src), "out": Bind(out, "rw"), "cache": Bind(cache, "overlay")},
                  env=scrubbed_env(cache, tmp_path / "home", 1))
    return run_phase(phase, sandbox)


@pytest.fixture
def process_level() -> Sandbox:
    return Sandbox(detect("off"), Limits(log_bytes=1 << 20))


@pytest.fixture(params=["bwrap", "process"])
def any_isolation(request: pytest.FixtureRequest, sandbox: Sandbox, process_level: Sandbox) -> Sandbox:
    return sandbox if request.param == "bwrap" else process_level


def test_module_level_work_is_timed(tmp_path: Path, any_isolation: Sandbox):
    r = _run(tmp_path, "import time\ntime.sleep(0.6)\ndef train(ctx):\n    pass\n", any_isolation)
    assert r.ok and r.seconds >= 0.6, "moving work to import time must not hide it from the clock"


def test_a_recipe_cannot_stop_the_clock_by_patching_time(tmp_path: Path, any_isolation: Sandbox):
    recipe = ("import time\n_real = time.sleep\ntime.perf_counter = lambda: 0.0\ntime.monotonic = lambda: 0.0\n"
              "def train(ctx):\n    _real(0.5)\n")
    r = _run(tmp_path, recipe, any_isolation)
    assert r.ok and r.seconds >= 0.5


def test_overrun_kills_every_process_of_the_phase(tmp_path: Path, sandbox: Sandbox):
    # A grandchild in its own session, never waited for, that would write a file 3 s later.
    recipe = ("import os, time\n"
              "def train(ctx):\n"
              "    if os.fork() == 0:\n"
              "        os.setsid()\n"
              "        if os.fork() == 0:\n"
              "            time.sleep(3)\n"
              "            open(ctx.out_dir / 'late', 'w').close()\n"
              "        os._exit(0)\n"
              "    time.sleep(60)\n")
    t = time.monotonic()
    r = _run(tmp_path, recipe, sandbox, limit=1.0)
    assert r.timed_out == "train" and time.monotonic() - t < 15
    time.sleep(3.5)
    assert not (tmp_path / "out" / "seed-0" / "late").exists(), "a process of the phase outlived the budget kill"


def test_a_detached_process_cannot_train_after_the_clock_stops(tmp_path: Path, sandbox: Sandbox):
    recipe = ("import os, time\n"
              "def train(ctx):\n"
              "    if os.fork() == 0:\n"
              "        os.setsid()\n"
              "        if os.fork() == 0:\n"
              "            time.sleep(2)\n"
              "            open(ctx.out_dir / 'late', 'w').close()\n"
              "        os._exit(0)\n")
    r = _run(tmp_path, recipe, sandbox)
    assert r.ok and r.seconds < 2
    time.sleep(2.5)
    assert not (tmp_path / "out" / "seed-0" / "late").exists(), "the phase ended but one of its processes lived on"


def test_environment_has_no_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, any_isolation: Sandbox):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-supersecret")
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws_secret")
    recipe = "import os, json\ndef train(ctx):\n    (ctx.out_dir / 'env.json').write_text(json.dumps(dict(os.environ)))\n"
    r = _run(tmp_path, recipe, any_isolation)
    assert r.ok, r.log_tail()
    seen = (tmp_path / "out" / "seed-0" / "env.json").read_text()
    for secret in ("sk-ant-supersecret", "hf_secret", "aws_secret", "ANTHROPIC", "HF_TOKEN"):
        assert secret not in seen
    assert '"OMP_NUM_THREADS": "1"' in seen and "TORCHINDUCTOR_CACHE_DIR" in seen
    assert os.environ["ANTHROPIC_API_KEY"] == "sk-ant-supersecret"


def test_crash_reports_the_deepest_recipe_frame(tmp_path: Path, any_isolation: Sandbox):
    r = _run(tmp_path, "import json\ndef helper():\n    json.loads('{')\n\ndef train(ctx):\n    helper()\n",
             any_isolation)
    assert r.rc == 1 and r.error["in_recipe"]
    assert r.deepest_error().startswith("train.py:3: JSONDecodeError"), "the recipe's frame, not json's"


def test_cpu_seconds_count_the_whole_process_tree(tmp_path: Path, sandbox: Sandbox):
    # Busy work at import time counts (recipe code); so does a detached grandchild's, never waited for.
    recipe = ("import os, time\n"
              "def burn(s):\n"
              "    t = time.process_time()\n"
              "    while time.process_time() - t < s:\n"
              "        pass\n"
              "burn(0.3)\n"
              "def train(ctx):\n"
              "    if os.fork() == 0:\n"
              "        os.setsid()\n"
              "        if os.fork() == 0:\n"
              "            burn(0.6)\n"
              "        os._exit(0)\n"
              "    time.sleep(1.2)\n")
    r = _run(tmp_path, recipe, sandbox)
    assert r.ok and 0.8 <= r.cpu_s < 1.3, r.cpu_s
    assert r.seconds >= 1.2, "wall seconds include the sleep"


def test_the_log_keeps_its_head_and_tail_and_the_harness_stays_flat(tmp_path: Path, sandbox: Sandbox):
    import resource

    recipe = ("import sys\n"
              "def train(ctx):\n"
              "    line = 'x' * 1023 + '\\n'\n"
              "    for _ in range(200 * 1024):\n"
              "        sys.stdout.write(line)\n"
              "    print('the last line')\n")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    r = _run(tmp_path, recipe, Sandbox(sandbox.isolation, Limits(log_bytes=1 << 20)))
    grew_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert r.ok
    size = r.log_path.stat().st_size
    assert (1 << 20) <= size < (1 << 20) + 200_000, size
    text = r.log_path.read_text()
    assert "bytes of output dropped" in text and text.rstrip().endswith("the last line")
    assert grew_mb < 50, f"200 MB of output grew the harness by {grew_mb:.0f} MB"


def test_status_and_ctx_name_only_sandbox_paths(tmp_path: Path, sandbox: Sandbox):
    recipe = ("import json, sys\n"
              "def train(ctx):\n"
              "    raw = open('/run/autoresearch/ctx.json').read()\n"
              "    (ctx.out_dir / 'ctx.json').write_text(raw)\n")
    r = _run(tmp_path, recipe, sandbox)
    assert r.ok, r.log_tail()
    seen = json.loads((tmp_path / "out" / "seed-0" / "ctx.json").read_text())
    assert str(tmp_path) not in json.dumps(seen), "the phase's context names host paths"
    assert seen["dirs"]["out"] == "/out" and seen["dirs"]["recipe"] == "/recipe"


def test_known_secrets_are_masked_in_the_log(tmp_path: Path, sandbox: Sandbox):
    from pytest_autoresearch import masking

    secret = "tok-" + os.urandom(12).hex()
    masking.register(secret)
    recipe = (f"import sys\ndef train(ctx):\n    print('before {secret} after')\n    sys.stdout.write('{secret}'[:9])\n"
              f"    sys.stdout.flush()\n    sys.stdout.write('{secret}'[9:] + '\\n')\n")
    r = _run(tmp_path, recipe, sandbox)
    text = r.log_path.read_text()
    assert r.ok and secret not in text and text.count("[secret]") == 2, text


def test_stream_masker_finds_secrets_split_across_chunks():
    from pytest_autoresearch import masking

    secret = "k3y-" + os.urandom(10).hex()
    masking.register(secret)
    m = masking.StreamMasker()
    data = f"a {secret} b {secret}".encode()
    out = b"".join(m.feed(data[i:i + 1]) for i in range(len(data))) + m.flush()
    assert out == b"a [secret] b [secret]"


def test_a_python_environment_under_tmp_is_visible_in_the_sandbox(tmp_path: Path, sandbox: Sandbox):
    # A venv in /tmp (tmp_path is there) would be hidden by the sandbox's fresh /tmp if bound before it.
    import venv

    env = tmp_path / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=False, symlinks=True).create(env)
    probe = ("from pytest_autoresearch.sandbox import detect\n"
             "iso = detect('bwrap')\nprint('sandboxed' if iso.sandboxed else iso.reason)\n")
    out = subprocess.run([str(env / "bin" / "python"), "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "sandboxed", out.stdout + out.stderr
