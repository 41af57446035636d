"""A tiny real task written into a temp dir: numpy least squares, so a trial takes well under a second.

Tests write it, break it on purpose (a crash, a slow recipe, a strict gate, ...) and run pytest on it.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RECIPE = '''\
"""Toy recipe: fit y = X w by gradient descent."""
import time

import numpy as np

# autoresearch: begin opt
steps = {steps}  # range: 1..2000
lr = 0.1
sleep_s = {sleep_s}
predict_sleep_s = 0.0
pad = 0
# autoresearch: end opt

# autoresearch: begin arch
use_bias = False
# autoresearch: end arch


def train(ctx):
    {train_extra}
    X = np.load(ctx.data_dir / "x.npy")
    y = np.load(ctx.data_dir / "y.npy")
    rng = np.random.default_rng(ctx.seed)
    w = rng.normal(size=X.shape[1]) * 0.01
    for _ in range(steps):
        w -= lr * X.T @ (X @ w - y) / len(y)
    time.sleep(sleep_s)
    np.save(ctx.out_dir / "w.npy", w)
    if pad:
        np.save(ctx.out_dir / "extra.npy", np.zeros(pad))


def predict(ctx):
    time.sleep(predict_sleep_s)
    w = np.load(ctx.out_dir / "w.npy")
    np.save(ctx.out_dir / "pred.npy", np.load(ctx.data_dir / "x_test.npy") @ w)
'''

EVALUATOR = '''\
import json

import numpy as np


def stage(ctx):
    rng = np.random.default_rng(0)
    w = rng.normal(size=4)
    X, Xt = rng.normal(size=(256, 4)), rng.normal(size=(64, 4))
    np.save(ctx.train_dir / "x.npy", X)
    np.save(ctx.train_dir / "y.npy", X @ w)
    np.save(ctx.test_dir / "x_test.npy", Xt)
    np.save(ctx.private_dir / "y_test.npy", Xt @ w + rng.normal(size=64) * 0.01)


def evaluate(ctx):
    if ctx.options.get("explode"):
        raise RuntimeError("evaluator bug on purpose")
    if "EVAL_SLOW" in (ctx.workspace / "train.py").read_text():  # a test's marker: a slow evaluation
        import time
        time.sleep(30)
    y = np.load(ctx.private_dir / "y_test.npy")
    mse = [float(np.mean((np.load(ctx.output(s, "pred.npy")) - y) ** 2)) for s in ctx.seeds]
    size = sum(f.stat().st_size for s in ctx.seeds for f in ctx.seed_dir(s).glob("*.npy") if f.name != "pred.npy")
    return {{"mse": float(np.mean(mse)), "mse_per_seed": mse, "r2": 1.0 - float(np.mean(mse)) / float(np.var(y)),
            "artifact_bytes": size}}
'''

MODULE = '''\
"""Toy task: least squares by gradient descent; minimize test MSE."""
from pathlib import Path

import pytest

from pytest_autoresearch import (ArtifactBytesAtMost, Budget, Edit, Evaluator, MetricAtLeast, Objective,
                                 Specialist, Surface, Technique)

HERE = Path(__file__).parent


@pytest.fixture
def baseline_recipe():
    return HERE / "recipe"


@pytest.fixture
def budget():
    return Budget(train_seconds={train_seconds}, eval_seconds={eval_seconds}, seeds={seeds},
                  artifact_bytes={artifact_bytes}, prepare_seconds={prepare_seconds})


@pytest.fixture
def legality():
    return [MetricAtLeast("r2", {gate}), ArtifactBytesAtMost()]


@pytest.fixture
def evaluator():
    return Evaluator(HERE / "evaluator.py", options={options}, forbidden=(r"y_test", r"private"))


@pytest.fixture
def objective():
    return Objective("mse", "minimize", baseline_repeats={repeats}, confirm_keeps={confirm})


@pytest.fixture
def specialists():
    return [
        Specialist("opt", Surface(regions=("train.py::opt",)), "Optimizer knobs.",
                   catalog=(Technique("more-steps", "Train longer.",
                                      (Edit("train.py", "steps = {steps}", "steps = {more_steps}"),)),)),
        Specialist("arch", Surface(regions=("train.py::arch",)), "Model knobs."),
    ]


def test_{name}(autoresearch_trial):
    assert autoresearch_trial.legal, autoresearch_trial.describe()
'''

SCRIPTED_CONFTEST = '''\
import json
import os
from pathlib import Path

from pytest_autoresearch.agents.base import AgentFatal, AgentStop, NoProposal, Proposal
from pytest_autoresearch.edits import Edit


class Scripted:
    """Replays proposals from the JSON file named by $TOY_SCRIPT: a list, one entry per trial (cycled)."""

    name = "scripted"

    def __init__(self, cfg, *, seed):
        self.script = json.loads(Path(os.environ["TOY_SCRIPT"]).read_text())

    def describe(self):
        return "scripted (tests)"

    def propose(self, request):
        step = self.script[(request.trial - 1) % len(self.script)]
        if os.environ.get("TOY_SEEN"):  # what the proposer was shown of the trials measured beside it
            with open(os.environ["TOY_SEEN"], "a") as f:
                f.write(json.dumps({"trial": request.trial, "in_flight": [c["trial"] for c in request.view.in_flight],
                                    "hypotheses": [c["hypothesis"] for c in request.view.in_flight]}) + "\\n")
        if step.get("no_proposal"):
            raise NoProposal(step["no_proposal"])
        if step.get("stop"):
            raise AgentStop(step["stop"])
        if step.get("fatal"):
            raise AgentFatal(step["fatal"])
        edits = [Edit(**e) if isinstance(e.get("replace"), str) else e for e in step["edits"]]
        return Proposal(hypothesis=step.get("hypothesis", "scripted"), expected_delta=None, edits=edits,
                        parent=step.get("parent"), kind=step.get("kind", ""))


def pytest_autoresearch_register_agents(registry):
    registry["scripted"] = Scripted
'''


def write_toy_task(root: Path, name: str = "toy", *, steps: int = 20, sleep_s: float = 0.0, train_extra: str = "pass",
                   train_seconds: float = 30, eval_seconds: float = 30, seeds: tuple = (0, 1),
                   artifact_bytes: int | None = None, gate: float = 0.0, options: dict[str, Any] | None = None,
                   script: list[dict[str, Any]] | None = None, repeats: int = 1,
                   confirm: bool = False, prepare_seconds: float = 0.0) -> Path:
    """Write ``tasks/<name>/`` (module, recipe, evaluator) under ``root``; return the task folder."""
    d = root / "tasks" / name
    (d / "recipe").mkdir(parents=True, exist_ok=True)
    (d / "recipe" / "train.py").write_text(RECIPE.format(steps=steps, sleep_s=sleep_s, train_extra=train_extra))
    (d / "evaluator.py").write_text(EVALUATOR.format())
    (d / f"test_{name}.py").write_text(MODULE.format(
        name=name, train_seconds=train_seconds, eval_seconds=eval_seconds, seeds=tuple(seeds),
        artifact_bytes=artifact_bytes, gate=gate, repeats=repeats, prepare_seconds=prepare_seconds, confirm=confirm, options=repr(options or {}), steps=steps, more_steps=steps * 4))
    if script is not None:
        (root / "conftest.py").write_text(SCRIPTED_CONFTEST)
        (root / "script.json").write_text(json.dumps(script))
    return d


def read_lineage(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def edit(search: str, replace: str, path: str = "train.py") -> dict[str, Any]:
    return {"path": path, "search": search, "replace": replace}


