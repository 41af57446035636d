"""One recipe at two scales: the shared code and a declared scale per variant (``scale_<variant>.py``), and
``autoresearch recheck``, which runs a trial found at one scale at the other and links the two records.

The toy task's two scales differ in its step count only ("full" is tiny here: it stands in for a GPU scale)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from toytask import edit, read_lineage, write_toy_task

SCALE = '''"""The toy's {variant} scale."""
# autoresearch: begin opt
steps = {steps}  # range: 1..2000
# autoresearch: end opt
'''

USE_SCALE = '''

def use_scale(variant):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).with_name(f"scale_{variant}.py")
    spec = importlib.util.spec_from_file_location(f"scale_{variant}", path)
    scale = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(scale)
    globals().update({k: v for k, v in vars(scale).items() if not k.startswith("_")})


def train(ctx):
    use_scale(ctx.variant)
'''


# A stand-in for a compile warm-up: slow while the cache (kept across trials) is cold, fast once it is filled.
PREPARE = """

def prepare(ctx):
    use_scale(ctx.variant)
    marker = ctx.cache_dir / "compiled"
    if not marker.exists():
        time.sleep(1.5)
        marker.write_text("warm")
"""


def write_two_scale_toy(root: Path, script: list | None = None, prepare: bool = False) -> Path:
    d = write_toy_task(root, name="toy", seeds=(0,), script=script, prepare_seconds=30 if prepare else 0)
    train = (d / "recipe" / "train.py").read_text()
    train = train.replace("steps = 20  # range: 1..2000\n", "").replace("\n\ndef train(ctx):\n", USE_SCALE, 1)
    train = train.replace("def predict(ctx):\n", "def predict(ctx):\n    use_scale(ctx.variant)\n")
    # What a recipe reports about its own speed (the GPU check reads it).
    train = train.replace("    np.save(ctx.out_dir / \"w.npy\", w)\n",
                          "    np.save(ctx.out_dir / \"w.npy\", w)\n    ctx.log(steps=steps, tokens_per_s=1000.0 * steps)\n")
    if prepare:
        train += PREPARE
    (d / "recipe" / "train.py").write_text(train)
    (d / "recipe" / "scale_mini.py").write_text(SCALE.format(variant="mini", steps=20))
    (d / "recipe" / "scale_full.py").write_text(SCALE.format(variant="full", steps=60))
    module = (d / "test_toy.py").read_text()
    start = module.index("@pytest.fixture\ndef specialists")
    end = module.index("def test_toy")
    module = module[:start] + '''@pytest.fixture
def specialists(autoresearch_variant):
    return [Specialist("opt", Surface(regions=("train.py::opt", f"scale_{autoresearch_variant}.py::opt")), "Knobs.")]


''' + module[end:]
    (d / "test_toy.py").write_text(module)
    return d


def _env() -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if k not in ("ANTHROPIC_API_KEY", "PYTEST_ADDOPTS")}
    return e


def test_a_mini_win_in_shared_code_is_rechecked_at_full_and_linked(tmp_path):
    write_two_scale_toy(tmp_path, script=[
        {"edits": [edit("lr = 0.1", "lr = 0.3")], "hypothesis": "a larger step size"},          # shared code
        {"edits": [edit("steps = 20", "steps = 40", path="scale_mini.py")], "hypothesis": "more steps at mini",
         "parent": 0},                                                                          # the scale's own
    ])
    env = dict(_env(), TOY_SCRIPT=str(tmp_path / "script.json"))
    quiet = ["-p", "no:cacheprovider", "-p", "no:hypothesispytest", "-q"]
    mini = subprocess.run([sys.executable, "-m", "pytest", *quiet, "tasks/toy", "--autoresearch-trials", "2",
                           "--autoresearch-agent", "scripted", "--autoresearch-override", "variant=mini",
                           "--autoresearch-override", "schedule=round_robin"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert mini.returncode == 0, mini.stdout + mini.stderr
    source = read_lineage(tmp_path / ".autoresearch/toy/lineage.jsonl")
    assert [(r["trial"], r["variant"]) for r in source] == [(0, "mini"), (1, "mini"), (2, "mini")]
    assert all(r["label"] in ("baseline", "keep", "discard") for r in source), source

    cli = [sys.executable, "-m", "pytest_autoresearch.cli", "recheck", "toy"]
    proc = subprocess.run([*cli, "1", "--variant", "full", "--", *quiet], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "recheck: toy trial 1 (mini) at the full scale: train.py" in out
    target = read_lineage(tmp_path / ".autoresearch-full/toy/lineage.jsonl")
    assert [(r["trial"], r["variant"], r["label"] in ("keep", "discard")) for r in target] == [
        (0, "full", False), (1, "full", True)]
    base, rechecked = target
    assert rechecked["agent"]["name"] == "recheck" and rechecked["parent"] == 0
    assert json.loads(rechecked["agent_notes"])["rechecks"] == {
        "lineage": str(tmp_path / ".autoresearch/toy"), "trial": 1, "variant": "mini", "commit": source[1]["commit"]}
    # The shared change, and nothing else, ran on the full scale's baseline: the full step count stays.
    assert "+lr = 0.3" in rechecked["diff"] and "scale_" not in rechecked["diff"]
    full_files = subprocess.run(["git", "-C", str(tmp_path / ".autoresearch-full/toy/repo"), "show",
                                 f"{rechecked['commit']}:scale_full.py"], capture_output=True, text=True).stdout
    assert "steps = 60" in full_files
    # The two scales really differ: the same recipe scores differently at each (60 steps vs 20).
    assert base["score"] != source[0]["score"]
    (link,) = [json.loads(x) for x in (tmp_path / ".autoresearch/toy/rechecks.jsonl").read_text().splitlines()]
    assert (link["trial"], link["variant"], link["target_variant"], link["target_trial"]) == (1, "mini", "full", 1)
    assert link["files"] == ["train.py"] and link["label"] == rechecked["label"]
    assert link["score"] == rechecked["score"] and link["target_baseline_score"] == base["score"]

    # A win made of the mini scale's own values has nothing to run at full: said, nothing recorded.
    scale_only = subprocess.run([*cli, "2", "--variant", "full"], cwd=tmp_path, env=env, capture_output=True,
                                text=True, timeout=120)
    assert scale_only.returncode == 0 and "changed only scale_mini.py" in scale_only.stdout
    assert len(read_lineage(tmp_path / ".autoresearch-full/toy/lineage.jsonl")) == 2
    # Mistakes are usage errors that say what to do.
    same = subprocess.run([*cli, "1", "--variant", "mini"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert same.returncode == 2 and "already ran at the mini scale" in same.stderr
    missing = subprocess.run([*cli, "9"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "has no trial 9" in missing.stderr


def test_gpu_check_runs_baseline_and_trials_and_reports_speed_compile_and_score(tmp_path):
    """benchmarks/gpu_check.py at a tiny scale on the CPU: the toy's 'full' scale, baseline + 2 offline trials."""
    write_two_scale_toy(tmp_path, prepare=True)
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"),
                           "--tasks", "toy", "--tasks-dir", str(tmp_path / "tasks"), "--variant", "full",
                           "--trials", "2", "--work", str(tmp_path / "work"), "--out", str(out)],
                          cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no CUDA device here" in proc.stdout and "| task" in proc.stdout and "compile cold s" in proc.stdout
    report = json.loads(out.read_text())
    (toy,) = report["tasks"]
    trials = toy["trials"]
    assert [t["trial"] for t in trials] == [0, 1, 2] and trials[0]["label"] == "baseline"
    assert all(t["variant"] == "full" and t["metric"] == "mse" for t in trials)
    assert isinstance(trials[0]["score"], float) and trials[0]["train_s"] > 0
    assert trials[0]["tokens_per_s"] == 60_000.0   # the full scale's 60 steps, as the recipe logged them
    # The first trial compiles into a cold cache; the next ones find it warm.
    assert toy["compile_cold_s"] > 1.4 and toy["compile_warm_s"] is not None
    assert toy["compile_warm_s"] < toy["compile_cold_s"] - 1.0, toy
