"""``autoresearch new <task>``: a new task folder that runs as it is (plain run and trials), to edit from there.

The scaffold is the README's least-squares example: ``test_<task>.py`` (fixtures + the trial test),
``recipe/train.py`` (marked regions the offline agent can tune) and ``evaluator.py`` (stage + evaluate).
"""
from __future__ import annotations

import re
from pathlib import Path

MODULE = '''\
"""{name}: least squares by gradient descent; minimize test MSE.

This docstring is the task brief every agent reads: say what the recipe does and what counts as better.
"""
from pathlib import Path

import pytest

from pytest_autoresearch import Budget, Evaluator, MetricAtLeast, Objective, Specialist, Surface

HERE = Path(__file__).parent


@pytest.fixture
def baseline_recipe(autoresearch_variant):  # "mini" (no CUDA) or "full": return a folder per variant if they differ
    return HERE / "recipe"


@pytest.fixture
def budget():
    # train_seconds bounds all seeds' training together; each seed trains in a process of its own.
    return Budget(train_seconds=30, eval_seconds=30, seeds=(0, 1), preload=("numpy",))


@pytest.fixture
def legality():
    return [MetricAtLeast("r2", 0.9)]  # a trial below it is a gate_miss; no gates: return []


@pytest.fixture
def evaluator():
    # options reach stage() and evaluate(); their environment is scrubbed, so resolve paths here.
    return Evaluator(HERE / "evaluator.py", options={{}}, forbidden=(r"private", r"y_test"))


@pytest.fixture
def objective():
    return Objective("mse", "minimize")


@pytest.fixture
def specialists():
    return [Specialist("opt", Surface(regions=("train.py::opt",)), "Tune the optimizer: steps and learning rate."),
            Specialist("model", Surface(regions=("train.py::model",)), "Change the model: regularization.")]


def test_{name}(autoresearch_trial):
    assert autoresearch_trial.legal, autoresearch_trial.describe()
'''

RECIPE = '''\
"""The recipe agents edit: only inside the marked regions their specialist owns."""
import numpy as np

# autoresearch: begin opt
steps = 200  # range: 1..5000
lr = 0.1  # range: 0.001..1
# autoresearch: end opt

# autoresearch: begin model
l2 = 0.0  # range: 0..1
# autoresearch: end model


def train(ctx):  # once per seed, in a sandbox of its own, timed; ctx.data_dir is stage()'s train_dir
    X, y = np.load(ctx.data_dir / "x.npy"), np.load(ctx.data_dir / "y.npy")
    w = np.random.default_rng(ctx.seed).normal(size=X.shape[1]) * 0.01
    for _ in range(steps):
        w -= lr * (X.T @ (X @ w - y) / len(y) + l2 * w)
    np.save(ctx.out_dir / "w.npy", w)


def predict(ctx):  # once per seed, timed; ctx.data_dir is test_dir (unlabeled inputs only)
    np.save(ctx.out_dir / "pred.npy", np.load(ctx.data_dir / "x_test.npy") @ np.load(ctx.out_dir / "w.npy"))
'''

EVALUATOR = '''\
"""Owned by the task, never seen by the recipe: stages the data and scores the recipe's outputs."""
import numpy as np


def stage(ctx):  # once per task: training data, unlabeled test inputs, and what only evaluate() reads
    rng = np.random.default_rng(0)
    w = rng.normal(size=4)
    X, Xt = rng.normal(size=(256, 4)), rng.normal(size=(64, 4))
    np.save(ctx.train_dir / "x.npy", X)
    np.save(ctx.train_dir / "y.npy", X @ w)
    np.save(ctx.test_dir / "x_test.npy", Xt)
    np.save(ctx.private_dir / "y_test.npy", Xt @ w + rng.normal(size=64) * 0.01)


def evaluate(ctx):  # own process, after the recipe; returns metrics
    y = np.load(ctx.private_dir / "y_test.npy")
    mse = [float(np.mean((np.load(ctx.output(s, "pred.npy")) - y) ** 2)) for s in ctx.seeds]
    return {{"mse": float(np.mean(mse)), "mse_per_seed": mse, "r2": 1.0 - float(np.mean(mse)) / float(np.var(y))}}
'''


class ScaffoldError(ValueError):
    """The task cannot be scaffolded there; the message says why."""


def new_task(name: str, tasks_dir: Path) -> list[Path]:
    """Write ``tasks_dir/<name>/`` (task module, recipe, evaluator) and return the files written."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ScaffoldError(f"task name {name!r} must be a Python identifier (it names test_{name}.py)")
    d = Path(tasks_dir) / name
    if d.exists():
        raise ScaffoldError(f"{d} already exists; pick another name or remove it")
    files = {d / f"test_{name}.py": MODULE.format(name=name), d / "recipe" / "train.py": RECIPE,
             d / "evaluator.py": EVALUATOR.format()}
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return list(files)
