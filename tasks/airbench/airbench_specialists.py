"""The airbench task's specialists: one per marked region, each with a brief and a catalog.

A specialist owns its region of the shared ``train.py`` (code and the knobs both scales share) and, where the
scale file has one, the same-named region of ``scale_<variant>.py`` (the knobs whose values depend on the scale).
Catalog edits are SEARCH/REPLACE blocks written against ``recipe/``; ``test_airbench_data.py`` checks that each
applies exactly once, stays inside its specialist's surface and compiles.
"""
from __future__ import annotations

from pytest_autoresearch.edits import Edit
from pytest_autoresearch.task import Specialist, Surface, Technique

TRAIN = "train.py"
SCALED = ("arch", "opt", "aug")  # regions the scale files mark too


FULL, MINI = "scale_full.py", "scale_mini.py"


def scale_file(variant: str) -> str:
    return f"scale_{variant}.py"

_COMMON = (
    "Objective: minimize {metric} (harness-measured {clock} of train(ctx) plus predict(ctx) per seed, "
    "importing train.py included; prediction is timed like training), subject to the gate: mean test "
    "accuracy over the budget's seeds >= {gate}. Most speedups cost accuracy: the baseline passes the gate "
    "with a small margin, so trade carefully and prefer changes that buy accuracy back. Only text between "
    "'# autoresearch: begin {region}' and '# autoresearch: end {region}' in train.py (shared by the CPU and GPU "
    "scales of this recipe){scaled} is yours; the data "
    "handling, train()/predict()/prepare() and the evaluator are fixed."
)


def _t(name: str, hypothesis: str, search: str, replace: str, expected: float | None = None,
       path: str = TRAIN) -> Technique:
    return Technique(name, hypothesis, (Edit(path, search, replace),), expected)


def _flip_alternating() -> Technique:
    return _t(
        "alternating_flip",
        "Alternating flip (airbench paper, sec. 3.6): flip a random half of the images in epoch 0, then flip every "
        "image relative to that choice on odd epochs, so each image is seen in both orientations every two "
        "epochs instead of at random. The paper reports higher accuracy at the same epochs, which buys room to "
        "cut epochs.",
        "        mask = torch.rand(n, device=x.device) < 0.5\n",
        "        if epoch == 0 or getattr(augment, 'flip0', None) is None or len(augment.flip0) != n:\n"
        "            augment.flip0 = torch.rand(n, device=x.device) < 0.5\n"
        "        mask = augment.flip0 ^ bool(epoch % 2)\n",
    )


def _catalog_full() -> dict[str, tuple[Technique, ...]]:
    return {
        "arch": (
            _t("compile", "torch.compile fuses the BatchNorm/GELU/residual elementwise work into the convs' "
               "neighbours; prepare() warms the compile cache untimed, so the timed run pays only cache loads. "
               "Expect 15-25% fewer seconds per seed at unchanged accuracy.",
               "COMPILE = False\n", "COMPILE = True\n", -3.0, FULL),
            _t("narrower_group2", "The second conv group (15x15 maps) carries the most FLOPs; 512->384 channels "
               "cuts about a fifth of the compute for a small accuracy loss.",
               "WIDTH2 = 512  # range: 64..768\n", "WIDTH2 = 384  # range: 64..768\n", -2.0, FULL),
            _t("float16_autocast", "float16 keeps 3 more mantissa bits than bfloat16 (the reference airbench "
               "trains in fp16): slightly better accuracy per epoch at the same speed, room to cut epochs.",
               'AMP_DTYPE = "bfloat16"  # options: bfloat16|float16|float32\n',
               'AMP_DTYPE = "float16"  # options: bfloat16|float16|float32\n', None, FULL),
        ),
        "opt": (
            _t("epochs_31", "The June-2024 airbench96 reaches 96.01% mean accuracy in 31 epochs (n=400); 33 is "
               "margin. Two fewer epochs is ~6% less time if accuracy holds.",
               "EPOCHS = 33.0  # range: 5..60\n", "EPOCHS = 31.0  # range: 5..60\n", -1.5, FULL),
            _t("epochs_30_lr_up", "Shorter schedule with a 10% higher peak learning rate to cover the same "
               "distance: ~9% less time.",
               "EPOCHS = 33.0  # range: 5..60\nBATCH_SIZE = 1024  # range: 128..2048\nLR = 9.0  # range: 1..30\n",
               "EPOCHS = 30.0  # range: 5..60\nBATCH_SIZE = 1024  # range: 128..2048\nLR = 10.0  # range: 1..30\n",
               -2.0, FULL),
        ),
        "aug": (
            _flip_alternating(),
            _t("translate_3", "Translate by up to 3 pixels instead of 4: milder augmentation fits faster in a "
               "short schedule (airbench94 uses 2).",
               "TRANSLATE = 4  # range: 0..6\n", "TRANSLATE = 3  # range: 0..6\n", None, FULL),
        ),
        "loss": (
            _t("label_smoothing_0.15", "Less label smoothing sharpens the targets, which can speed fitting in a "
               "short schedule; 0.2 may over-regularize once lookahead and TTA are in place.",
               "LABEL_SMOOTHING = 0.2  # range: 0..0.4\n", "LABEL_SMOOTHING = 0.15  # range: 0..0.4\n"),
        ),
        "reg": (
            _t("weight_decay_0.0153", "The pre-June-2024 airbench96 used weight decay 0.0153: stronger decay "
               "keeps the effective learning rate of the BN-normalized convs higher late in training.",
               "WEIGHT_DECAY = 0.012  # range: 0..0.05\n", "WEIGHT_DECAY = 0.0153  # range: 0..0.05\n"),
            _t("weight_decay_0.01", "Slightly less decay: less regularization may converge faster in fewer epochs.",
               "WEIGHT_DECAY = 0.012  # range: 0..0.05\n", "WEIGHT_DECAY = 0.01  # range: 0..0.05\n"),
        ),
    }


def _catalog_mini() -> dict[str, tuple[Technique, ...]]:
    return {
        "arch": (
            # Expectations measured on 2 CPU cores (paired gains over the 1.72 s baseline, tasks/airbench/README.md):
            # at this size the time goes to the 8x8 maps of the first group, not to the FLOPs of the second.
            _t("narrower_group1", "The first group convolves the full 8x8 maps, the largest activations of the "
               "network: on CPU its width sets the step time. Halving it (32 -> 16 channels) measured 10-20% less "
               "time, still above the accuracy gate.",
               "WIDTH1 = 32  # range: 4..256\n", "WIDTH1 = 16  # range: 4..256\n", -0.25, MINI),
            _t("narrower_group2", "48 channels in the second group instead of 64: fewer FLOPs, but on 2x2 and 4x4 maps "
               "they are a small share of the step; measured about 0.5% less time.",
               "WIDTH2 = 64  # range: 4..512\n", "WIDTH2 = 48  # range: 4..512\n", -0.01, MINI),
        ),
        "opt": (
            _t("epochs_7", "One epoch fewer: ~12% less time; the baseline has a little accuracy margin to spend.",
               "EPOCHS = 8.0  # range: 2..40\n", "EPOCHS = 7.0  # range: 2..40\n", -0.15, MINI),
            _t("epochs_7_lr_up", "One epoch fewer with a higher peak learning rate to cover the same distance: "
               "~12% less time if accuracy holds.",
               "EPOCHS = 8.0  # range: 2..40\nBATCH_SIZE = 128  # range: 16..1024\nLR = 30.0  # range: 1..60\n",
               "EPOCHS = 7.0  # range: 2..40\nBATCH_SIZE = 128  # range: 16..1024\nLR = 36.0  # range: 1..60\n",
               -0.15, MINI),
            _t("no_lookahead", "Lookahead's EMA pulls cost a little time every few steps and may not help a "
               "schedule this short.",
               "LOOKAHEAD = True\n", "LOOKAHEAD = False\n", -0.02),
        ),
        "aug": (
            _t("flip_on", "Random horizontal flips (the CIFAR recipe's default) double the effective data.",
               "FLIP = False\n", "FLIP = True\n", None, MINI),
            _t("cutout_off", "Cutout slows fitting; with only 8 epochs, plain translate may reach the gate "
               "sooner, allowing fewer epochs.",
               "CUTOUT = 3  # range: 0..6\n", "CUTOUT = 0  # range: 0..6\n", None, MINI),
        ),
        "loss": (
            _t("label_smoothing_0.1", "Less label smoothing sharpens the targets, which can speed fitting in a "
               "short schedule.",
               "LABEL_SMOOTHING = 0.2  # range: 0..0.4\n", "LABEL_SMOOTHING = 0.1  # range: 0..0.4\n"),
        ),
        "reg": (
            _t("weight_decay_0.02", "Stronger decay keeps the effective learning rate of the BN-normalized convs "
               "high late in training.",
               "WEIGHT_DECAY = 0.012  # range: 0..0.05\n", "WEIGHT_DECAY = 0.02  # range: 0..0.05\n"),
            _t("weight_decay_0.006", "Less decay: less regularization may converge faster in a short schedule.",
               "WEIGHT_DECAY = 0.012  # range: 0..0.05\n", "WEIGHT_DECAY = 0.006  # range: 0..0.05\n"),
        ),
    }


_BRIEFS = {
    "arch": (
        "You own the network: widths of the conv groups, the whitening first layer (kernel, eps, how many "
        "images estimate it), the residual, and the numeric/compile settings ({cuda}). Time per step scales "
        "roughly with width squared; the whitening layer is cheap and frozen."
    ),
    "opt": (
        "You own the optimization: epochs, batch size, the decoupled learning rate (per 1024 examples of a "
        "summed loss, independent of momentum), Nesterov momentum, the BatchNorm-bias LR multiplier, warmup, "
        "the lookahead EMA (every/decay/power), how long the whitening bias trains, the optimizer (NesterovSGD, "
        "torch.optim.SGD's rule written out: torch.optim would import torch's compiler stack inside the timer) "
        "and the training loop fit() itself. Epochs are the most direct lever on time; the learning-rate "
        "schedule decides how much accuracy each epoch buys."
    ),
    "aug": (
        "You own data augmentation (augment(images, epoch): flip, translate, cutout on the whole training set "
        "once per epoch) and test-time augmentation (tta_logits: mirror and one-pixel shifts, run in "
        "predict(), which is timed like training). {flip}"
    ),
    "loss": (
        "You own the training loss (loss_fn: cross-entropy with label smoothing, summed over the batch) and "
        "the logit scale (the temperature of the softmax head). The learning rate is calibrated for a summed "
        "loss: switching to a mean changes the step size by the batch size."
    ),
    "reg": (
        "You own regularization: weight decay (decoupled: per 1024 examples, applied to all trainable "
        "parameters), BatchNorm running-statistics momentum, and dropout before the head."
    ),
}


def build_specialists(variant: str, gate: float) -> list[Specialist]:
    """The five specialists for ``variant`` ("mini" or "full"), their briefs naming the gate."""
    catalog = _catalog_mini() if variant == "mini" else _catalog_full()
    extra = {
        "cuda": "fixed to float32 / no compile in the CPU mini variant" if variant == "mini"
        else "AMP dtype, channels_last, torch.compile; prepare() warms the compile cache outside the timer",
        "flip": "Digits are not mirror-symmetric: flips (FLIP, TTA_MIRROR) are off for a reason." if variant == "mini"
        else "CIFAR-10 is mirror-symmetric: flips are on.",
    }
    out = []
    for name in ("arch", "opt", "aug", "loss", "reg"):
        clock = (("CPU seconds (one thread)", "recipe_cpu_seconds") if variant == "mini"
                 else ("wall-clock", "recipe_seconds"))
        scaled = name in SCALED
        brief = _BRIEFS[name].format(**extra) + " " + _COMMON.format(
            gate=gate, region=name, clock=clock[0], metric=clock[1],
            scaled=f" and in {scale_file(variant)} (this scale's values)" if scaled else "")
        regions = (f"{TRAIN}::{name}",) + ((f"{scale_file(variant)}::{name}",) if scaled else ())
        out.append(Specialist(name, Surface(regions=regions), brief, catalog=catalog[name]))
    return out
