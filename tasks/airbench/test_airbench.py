"""airbench: train an image classifier as fast as possible while keeping its mean test accuracy above a gate.

The recipe is an airbench96-style convnet (K. Jordan, "94% on CIFAR-10 in 3.29 seconds on a single GPU"):
a frozen patch-whitening 2x2 first conv, conv groups of conv + maxpool + BatchNorm + GELU with a residual,
Nesterov SGD in decoupled form with lookahead (an EMA of the weights), label smoothing, flip/translate/cutout
augmentation and test-time augmentation.

Score (minimize), per seed, measured by the harness on the recipe's processes: full: ``recipe_seconds``, the
wall-clock of train plus predict; mini: ``recipe_cpu_seconds``, their CPU seconds (one thread, so an idle core's
wall-clock, without the drift other load on a shared machine adds). Prediction (test-time augmentation) is
recipe code, so it is timed too: work moved from training into prediction still counts. Each seed trains in a
process of its own; its clock starts just before train.py is imported and stops when its process tree is gone
(torch is imported before it). Train-only and predict-only times are recorded for every trial. A trial that
would be a keep is re-run right after the best is re-run, and kept only if it still wins side by side.
Gate: ``acc_mean`` (test accuracy averaged over the seeds) >= the threshold, else the trial is a gate_miss;
each seed must also leave a valid ``predictions.npy`` (``outputs_valid``).

Variants: one recipe (``recipe/``: ``train.py`` shared, ``scale_<variant>.py`` the declared scale) at two scales:
- full: CIFAR-10 (50,000 train / 10,000 test, 3x32x32) on a GPU; 10 seeds; gate acc_mean >= 0.96.
- mini: scikit-learn's 8x8 digits (1,297 train / 500 test, 1x8x8) on one CPU thread; 4 seeds; gate
  acc_mean >= 0.978 (the baseline has about 0.4 points of margin).

Data the recipe sees (``ctx.data_dir``): in train, ``train_images.npy`` (uint8, N x C x H x W) and
``train_labels.npy`` (int64); in predict, ``test_images.npy`` (uint8, no labels) next to that seed's outputs.
``predict(ctx)`` must write ``ctx.out_dir/predictions.npy`` (int class index per test image).
"""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

from pytest_autoresearch import Budget, Evaluator, MetricAtLeast, MetricIsTrue, Objective

HERE = Path(__file__).resolve().parent
GATE = {"full": 0.96, "mini": 0.978}
CIFAR_ENV = "AUTORESEARCH_CIFAR10"
FORBIDDEN = {
    "full": (r"test_batch", r"private"),
    "mini": (r"load_digits", r"sklearn\.datasets", r"private"),
}


def _load_helper(name: str):
    """Import a sibling helper module by path (task folders are not packages)."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, HERE / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


# Imported before the train timer starts. The full recipe's compile knob needs torch._dynamo (seconds of
# import); the mini recipe avoids it (its optimizer is written out), so its processes start faster.
PRELOAD = {"full": ("torch", "torch._dynamo"), "mini": ("torch",)}


def budget_for(variant: str) -> Budget:
    if variant == "full":
        # The baseline should take ~25 s per seed on an H100 and ~50 s on an A100: 900 s for ten seeds leaves
        # headroom on either (override budget.train_seconds to tighten it on a fast GPU).
        return Budget(train_seconds=900.0, eval_seconds=120.0, seeds=tuple(range(10)), prepare_seconds=900.0,
                      predict_seconds=300.0, preload=PRELOAD["full"])
    # One thread: these convs are too small to gain from a second one (measured: equal times), and two
    # OpenMP threads slow down many-fold when the cores are shared (other trials, CI). Four seeds take
    # ~6-7 s on an idle 2-core machine and ~11 s under heavy load; doubling epochs or widths lands near
    # or over the 14 s limit.
    return Budget(train_seconds=14.0, eval_seconds=60.0, seeds=(0, 1, 2, 3), threads=1, predict_seconds=10.0,
                  preload=PRELOAD["mini"])


def evaluator_options(variant: str) -> dict:
    if variant != "full":
        return {}
    # The trial processes get a scrubbed HOME and environment, so paths are resolved here, in pytest's process.
    opts = {"download_dir": str(Path.home() / ".cache" / "pytest-autoresearch" / "cifar10")}
    if os.environ.get(CIFAR_ENV):
        opts["cifar_dir"] = str(Path(os.environ[CIFAR_ENV]).expanduser().resolve())
    return opts


RECIPE = HERE / "recipe"   # one recipe; its scale files (scale_mini.py, scale_full.py) are chosen by the variant


@pytest.fixture
def baseline_recipe(autoresearch_variant: str) -> Path:
    return RECIPE


@pytest.fixture
def budget(autoresearch_variant: str) -> Budget:
    return budget_for(autoresearch_variant)


@pytest.fixture
def legality(autoresearch_variant: str) -> list:
    return [MetricIsTrue("outputs_valid", reason_metric="outputs_error"),
            MetricAtLeast("acc_mean", GATE[autoresearch_variant])]


def hidden_for(variant: str) -> tuple[Path, ...]:
    """The mini held-out set is part of scikit-learn's bundled digits: recipe processes must not see that file."""
    if variant == "full":
        return ()
    spec = importlib.util.find_spec("sklearn")
    if spec is None or spec.origin is None:
        return ()
    return (Path(spec.origin).parent / "datasets" / "data",)


@pytest.fixture
def evaluator(autoresearch_variant: str) -> Evaluator:
    return Evaluator(script=HERE / "airbench_evaluator.py", options=evaluator_options(autoresearch_variant),
                     forbidden=FORBIDDEN[autoresearch_variant], hidden=hidden_for(autoresearch_variant))


@pytest.fixture
def objective(autoresearch_variant: str) -> Objective:
    if autoresearch_variant == "full":
        return Objective("recipe_seconds", "minimize", baseline_repeats=2, confirm_keeps=True, scale="relative")
    # On a shared CPU, wall-clock drifts with other load far more than the recipe changes; the mini recipe
    # runs on one thread, so its kernel-accounted CPU seconds (measured by the harness, like the wall clock)
    # are the wall-clock an idle core would show. Both are recorded; three baseline runs measure the noise.
    # CPU seconds still drift with the host's load over minutes, so candidates are screened against a
    # measurement of the best at most 4 trials old, and would-be keeps confirmed side by side.
    return Objective("recipe_cpu_seconds", "minimize", baseline_repeats=3, confirm_keeps=True, scale="relative",
                     refresh_best_every=4)


@pytest.fixture
def specialists(autoresearch_variant: str) -> list:
    return _load_helper("airbench_specialists").build_specialists(autoresearch_variant, GATE[autoresearch_variant])


def test_airbench(autoresearch_trial):
    assert autoresearch_trial.legal, autoresearch_trial.describe()
