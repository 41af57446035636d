"""NanoChat-D12: pretrain karpathy/nanochat's depth-parametrized GPT and raise its CORE score.

The recipe (train.py, gpt.py) trains nanochat's GPT -- width 64 x depth, 128-dim heads, rotary, QK norm, ReLU^2
MLP, untied embeddings, no biases, logit soft-cap -- with Muon on the blocks' matrices and AdamW on the embedding
and lm_head, under a fixed wall-clock budget, and saves model.pt. A separate evaluator scores it: the recipe's own
gpt.py and tokenizer.py each run in a sandboxed model server that sees the checkout and the checkpoint only, and the
evaluator computes every loss from the log-probabilities the model returns; the recipe never sees the evaluation
items.

- full variant (CUDA): depth 12 on pretraining shards, bf16, torch.compile; score = CORE (DCLM, 22 tasks,
  centered accuracy, mean). Budget 90 min of training on one GPU.
- mini variant (2 CPU cores): the same code at depth 2 on an offline English corpus, 160 steps (~20-40 s); score =
  mini-CORE (the same centered-accuracy formula over 7 generated tasks: dyck completion, repeat-copy, operators,
  last-word cloze, continuation choice, context schema, word order), with held-out bits per byte alongside.
  The training data mixes in procedurally generated examples of the three symbolic formats (drawn with a
  different seed than the evaluation items); how much is the data specialist's call.

Higher is better. Legal trials keep the model causal (the evaluator perturbs later tokens of one row of randomly
chosen scoring batches and checks that nothing else moves), its answers normalized distributions, and the tokenizer
lossless. The horizon is nanochat's (explicit steps, or tokens = 20 x
parameters) under a fixed wall-clock cap: speed-ups (sys) make room for more steps or a bigger model.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from pytest_autoresearch import (Budget, Edit, Evaluator, MetricIsTrue, Objective, Specialist, Surface,
                                 Technique)

HERE = Path(__file__).resolve().parent

# Evaluator-owned names a recipe line may never mention (held-out data, the bundle, the harness' modules).
FORBIDDEN = (r"private", r"minicore", r"heldout", r"eval_bundle", r"eval_data", r"core\.yaml",
             r"NANOCHAT_EVAL_BUNDLE", r"_autoresearch", r"\.\./", r"sys\._getframe", r"gc\.get_objects")

MINI_OPTIONS = dict(val_fraction=0.1, eval_seed=20240611, train_seed=7, items_per_task=600, procedural_blocks=4000,
                    bpb_bytes=60_000, batch_tokens=8192, format=1)


def full_options() -> dict:
    return dict(eval_bundle=os.environ.get("NANOCHAT_EVAL_BUNDLE", "~/.cache/nanochat/eval_bundle"),
                data_dir=os.environ.get("NANOCHAT_DATA_DIR", "~/.cache/nanochat/base_data"),
                core_max_per_task=int(os.environ.get("NANOCHAT_CORE_MAX_PER_TASK", "-1")),
                bpb_tokens=2 ** 18,  # each token's 50,304 log-probabilities cross the model server's pipe
                batch_tokens=65536)


def _t(name: str, hypothesis: str, *edits: tuple[str, str, str], expected_delta: float | None = None) -> Technique:
    return Technique(name, hypothesis, tuple(Edit(p, s, r) for p, s, r in edits), expected_delta)


# The recipe is one folder at two scales: train.py, gpt.py, tokenizer.py and dataloader.py are shared, and
# scale_mini.py / scale_full.py declare what differs (sizes, data source, device settings).
RECIPE = HERE / "recipe"
MINI, FULL = "scale_mini.py", "scale_full.py"

# Techniques on the shared code: the same edit at both scales.
COMMON_CATALOG: dict[str, tuple[Technique, ...]] = {
    "arch": (
        _t("x0_residual", "Per-layer learnable mixing of the normalized input embedding back into the residual "
           "stream (nanochat's later x0_lambdas) gives every block direct token identity and trains faster.",
           ("gpt.py", '''        cos, sin = self._rotary(config.sequence_len, config.n_embd // config.n_head)
''', '''        self.x0_lambdas = nn.Parameter(torch.zeros(config.n_layer))
        cos, sin = self._rotary(config.sequence_len, config.n_embd // config.n_head)
'''),
           ("gpt.py", '''        for block in self.transformer.h:
            x = block(x, cos, sin)
''', '''        x0 = x
        for i, block in enumerate(self.transformer.h):
            x = block(x + self.x0_lambdas[i].to(x.dtype) * x0, cos, sin)
''')),
        _t("rope_base_100k", "A 10x larger rotary base (nanochat later moved to 100000) keeps long-range "
           "positions distinguishable.", ("gpt.py", "ROPE_BASE = 10000.0", "ROPE_BASE = 100000.0")),
        _t("no_qk_norm", "QK norm may slow early training of a tiny model; drop it.",
           ("gpt.py", "QK_NORM = True", "QK_NORM = False")),
    ),
    "opt": (
        _t("muon_weight_decay", "Decoupled weight decay on the Muon matrices too (nanochat later tuned it to be "
           "on) regularizes the blocks.",
           ("gpt.py", "    muon = Muon(matrices, lr=matrix_lr, momentum=muon_momentum)",
            "    muon = Muon(matrices, lr=matrix_lr, momentum=muon_momentum, weight_decay=weight_decay)"),
           ("train.py", "WEIGHT_DECAY = 0.0  # range: 0..0.2", "WEIGHT_DECAY = 0.05  # range: 0..0.2")),
        _t("embedding_beta2_995", "nanochat's later AdamW betas (0.8, 0.995) average embedding gradients over "
           "more steps.",
           ("train.py", "ADAM_BETA2 = 0.95  # range: 0.9..0.999", "ADAM_BETA2 = 0.995  # range: 0.9..0.999")),
        _t("muon_lr_x2", "Muon's matrix learning rate is conservative at this batch size; double it.",
           ("train.py", "MATRIX_LR = 0.02  # range: 0.002..0.1", "MATRIX_LR = 0.04  # range: 0.002..0.1")),
    ),
    "sched": (
        _t("long_warmdown", "A longer linear warmdown (half the run; nanochat later used 0.4-0.5) lands lower.",
           ("train.py", "WARMDOWN_RATIO = 0.2  # range: 0..0.8", "WARMDOWN_RATIO = 0.5  # range: 0..0.8")),
        _t("short_warmup", "A 5% warmup avoids the AdamW embedding blowing up in the first steps.",
           ("train.py", "WARMUP_RATIO = 0.0  # range: 0..0.3", "WARMUP_RATIO = 0.05  # range: 0..0.3")),
    ),
    "sys": (
        _t("manual_attention", "The explicit softmax attention path (reference kernel) instead of SDPA.",
           ("gpt.py", 'ATTENTION = "sdpa"  # options: sdpa|manual', 'ATTENTION = "manual"  # options: sdpa|manual')),
    ),
    "data": (),
}

MINI_CATALOG: dict[str, tuple[Technique, ...]] = {
    "arch": (
        _t("depth3", "One more layer (width 192, 2 heads of 96) is worth its slower steps. Measured at 600 items: "
           "+0.017 / +0.021 / +0.015 / +0.050 against the baseline on the same four seeds, +0.026 (160 steps in "
           "55 s: nearly the whole clock).",
           (MINI, "DEPTH = 2  # range: 2..4", "DEPTH = 3  # range: 2..4"), expected_delta=0.026),
        _t("short_context", "128-token rows: the tasks are short, attention is cheaper.",
           (MINI, "SEQUENCE_LEN = 256  # range: 64..512", "SEQUENCE_LEN = 128  # range: 64..512")),
    ),
    "data": (
        _t("more_procedural", "A larger share of procedural blocks lifts the three symbolic tasks more than it "
           "costs the text tasks.", (MINI, "procedural_fraction=0.3,", "procedural_fraction=0.45,")),
        _t("smaller_batch", "Half the batch doubles the number of optimizer steps in the same time.",
           (MINI, "TOTAL_BATCH_TOKENS = 2048  # range: 256..65536",
            "TOTAL_BATCH_TOKENS = 1024  # range: 256..65536"),
           (MINI, "DEVICE_BATCH_SIZE = 8  # range: 1..64", "DEVICE_BATCH_SIZE = 4  # range: 1..64")),
    ),
    "sched": (
        _t("fill_the_clock", "160 steps take about 20 s of the 60 s cap on 2 quiet cores: three times the steps "
           "use the whole clock (the schedule compresses to the cap where the machine is slower). Measured at 600 "
           "items: 0.199 / 0.202 / 0.212 / 0.210 against the baseline's 0.151 / 0.139 / 0.131 / 0.133 on the same "
           "four seeds, +0.067 (442 steps in 61 s).",
           (MINI, "NUM_ITERATIONS = 160  # range: 10..1000", "NUM_ITERATIONS = 480  # range: 10..1000"),
           expected_delta=0.067),
        _t("fast_momentum_warmup", "Reach Muon's final momentum within 50 steps: a CPU run has only 160.",
           ("train.py", "MUON_MOMENTUM_WARMUP_STEPS = 300  # range: 1..1000",
            "MUON_MOMENTUM_WARMUP_STEPS = 50  # range: 1..1000")),
    ),
}

FULL_CATALOG: dict[str, tuple[Technique, ...]] = {
    "sys": (
        _t("flash_sdpa", "Force the FlashAttention SDPA backend.",
           ("gpt.py", "        return F.scaled_dot_product_attention(q, k, v, is_causal=True)",
            "        from torch.nn.attention import SDPBackend, sdpa_kernel\n"
            "        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):\n"
            "            return F.scaled_dot_product_attention(q, k, v, is_causal=True)")),
        _t("no_compile", "Eager mode: no compile time at all.", (FULL, "COMPILE = True", "COMPILE = False")),
    ),
    "data": (_t("batch_1m", "A 1M-token batch (nanochat's later d12 default) with fewer, better steps.",
                (FULL, "TOTAL_BATCH_TOKENS = 524288  # range: 65536..2097152",
                 "TOTAL_BATCH_TOKENS = 1048576  # range: 65536..2097152")),),
    "arch": (_t("depth14", "Two more layers trade tokens for capacity under the same clock.",
                (FULL, "DEPTH = 12  # range: 8..16", "DEPTH = 14  # range: 8..16")),),
}

BRIEFS = {
    "arch": "You own the model: gpt.py's arch region (GPTConfig, attention, MLP, blocks, init, forward) and the "
            "sizing knobs in the arch regions of train.py (aspect ratio, head dim) and of the scale file (depth, "
            "context). Keep "
            "GPT(config)(idx) -> logits and the loss path; the evaluator rebuilds the model from the saved config.",
    "opt": "You own the optimizers: Muon (Newton-Schulz orthogonalized momentum) for block matrices and AdamW for "
           "embedding/lm_head in gpt.py's opt region, and learning rates, betas, weight decay, clipping in "
           "train.py's opt region.",
    "data": "You own what the model reads: batch size, tokens per step and the training mixture (the scale file's "
            "data region). In mini, procedural_fraction sets the share of dyck / repeat-copy / operator blocks mixed "
            "into the English text.",
    "sched": "You own the training schedule: warmup/warmdown shape, final LR fraction, Muon momentum ramp and the "
             "horizon (TARGET_PARAM_DATA_RATIO in train.py's sched region, NUM_ITERATIONS in the scale file's). "
             "The wall-clock cap "
             "(TIME_BUDGET_S) is fixed: a horizon past it is cut short, with the schedule compressed to fit.",
    "sys": "You own speed: the attention kernel path in gpt.py's sys region, matmul precision / autocast in "
           "train.py's sys region and compile / logging cadence in the scale file's. Faster steps mean more tokens in the fixed "
           "budget. The model must stay causal: the evaluator checks it.",
}
# Shared regions; "{scale}" is the variant's scale file, whose same-named region holds that scale's values.
REGIONS = {
    "arch": ("train.py::arch", "gpt.py::arch", "{scale}::arch"),
    "opt": ("train.py::opt", "gpt.py::opt"),
    "data": ("{scale}::data",),
    "sched": ("train.py::sched", "{scale}::sched"),
    "sys": ("train.py::sys", "gpt.py::sys", "{scale}::sys"),
}


def make_specialists(variant: str) -> list[Specialist]:
    extra = MINI_CATALOG if variant == "mini" else FULL_CATALOG
    scale = f"scale_{variant}.py"
    return [Specialist(name, Surface(regions=tuple(r.format(scale=scale) for r in REGIONS[name])), BRIEFS[name],
                       catalog=COMMON_CATALOG[name] + extra.get(name, ()))
            for name in ("arch", "opt", "data", "sched", "sys")]


@pytest.fixture
def baseline_recipe(autoresearch_variant: str) -> Path:
    return RECIPE  # one recipe; the variant picks its scale file


@pytest.fixture
def budget(autoresearch_variant: str) -> Budget:
    if autoresearch_variant == "mini":
        # 160 steps take ~20 s on 2 quiet cores (2-3x under load); the recipe caps its loop at 60 s and 90 s is
        # the hard kill.
        # Evaluation (7 x 600 items + 60 kB of bpb) takes ~20-40 s.
        return Budget(train_seconds=90, eval_seconds=180, seeds=(0,), threads=2, preload=("torch",))
    # nanochat's speedrun budget was 90 min on 8 GPUs; this recipe trains on one GPU for 90 min (TIME_BUDGET_S)
    # and the harness allows compile warm-up in prepare and a full CORE evaluation.
    return Budget(train_seconds=6000, eval_seconds=3600, seeds=(0,), prepare_seconds=1800, preload=("torch",))


@pytest.fixture
def legality() -> list:
    return [MetricIsTrue("causal", reason_metric="causal_max_leak"),
            MetricIsTrue("logprobs_normalized", reason_metric="logprobs_max_error"),
            MetricIsTrue("tokenizer_roundtrip")]


@pytest.fixture
def evaluator(autoresearch_variant: str) -> Evaluator:
    options = MINI_OPTIONS if autoresearch_variant == "mini" else full_options()
    # The corpus file holds the held-out documents too: never shown to a recipe process, whatever it binds.
    return Evaluator(script=HERE / "evaluator.py", options=options, forbidden=FORBIDDEN,
                     hidden=(HERE.parent / "corpus",))


@pytest.fixture
def objective(autoresearch_variant: str) -> Objective:
    if autoresearch_variant == "mini":
        # Deterministic per seed, yet chaotic: an edit that changes the data stream lands as far off as a new seed
        # (procedural_fraction 0.3 -> 0.375 moved seeds 0-2 by +0.026, -0.027, -0.011; +17% on seed 0 alone).
        # So re-runs train on fresh seeds and the bar is a t-test on that spread, min_delta its floor. Most of
        # the spread is which evaluation items a model happens to get right: 600 items per task measured a
        # seed sd of 0.009 where 200 measured 0.015. Five repeats give the t-test 4 degrees of freedom.
        return Objective("mini_core", "maximize", min_delta=0.01, baseline_repeats=5, confirm_keeps=True,
                         reseed_reruns=True)
    return Objective("core", "maximize")


@pytest.fixture
def specialists(autoresearch_variant: str) -> list[Specialist]:
    return make_specialists(autoresearch_variant)


def test_nanochat(autoresearch_trial):
    assert autoresearch_trial.legal, autoresearch_trial.describe()
