"""Parameter Golf: train the best language model whose artifact fits a byte cap, scored by bits per byte.

Score: validation bits per byte (lower is better) of the ARTIFACT: the model is rebuilt from the quantized,
compressed file the recipe wrote (``model.ptz``, via ``model.load_artifact``) in sandboxed model servers that see
only the recipe's code and that file, and scored on the held-out validation split, which the recipe never sees.
bpb = total cross-entropy in nats / ln 2 / UTF-8 bytes of the text scored, so tokenizers are compared fairly.

Rules (each enforced by the evaluator; a violation is labelled, never scored):
- Artifact bytes = every file in the recipe folder + the compressed model, at most the byte cap
  (full: 16,000,000 as in the public challenge; mini: scaled so the baseline fits with little slack).
  Over the cap -> size_blocked. Bigger models must pay for themselves with better quantization/compression.
- Training has a wall-clock budget (the recipe also stops itself at MAX_WALLCLOCK_SECONDS) -> budget_overrun.
- Causality: the log-probabilities at a position may depend only on earlier tokens of the same sequence.
  Random scoring batches get a twin with later tokens (or other rows) replaced, answered by a second model
  server; nothing the change may not reach may move -> gate_miss.
- The model must output a normalized next-token distribution (log-probs whose logsumexp is 0) -> gate_miss.
- mini: the tokenizer must be lossless (its pieces concatenate back to the exact bytes) -> gate_miss.
- The recipe gets only the training split (ctx.data_dir); never try to read validation data.

Recipe layout: one recipe (``recipe/``) at two scales. ``train.py`` (hyperparameters in marked regions, training
loop, ``train(ctx)`` saves ``ctx.out_dir/model.ptz``) and ``model.py`` (the GPT, tokenizer, quantization,
``load_artifact``) are shared; ``scale_mini.py`` / ``scale_full.py`` declare what the scale decides (sizes, data
format, clock, evaluation context), in regions named like train.py's.
mini: byte-level tokenizer (byte260: 4 specials + 256 bytes, optional learned BPE merges) on a public-domain
English corpus, ~25 s of training on 2 CPU cores. full: the public baseline on FineWeb sp1024 shards.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from pytest_autoresearch import (ArtifactBytesAtMost, Budget, Edit, Evaluator, MetricIsTrue, Objective, Specialist,
                                 Surface, Technique)

HERE = Path(__file__).resolve().parent
RECIPE = HERE / "recipe"

# mini cap: the baseline's artifact (model ~137 kB + recipe files ~35 kB: both scales' files count) plus ~4% slack,
# so one more layer or a wider model does not fit without a better quantization or compression.
MINI_ARTIFACT_BYTES = 178_300
FULL_ARTIFACT_BYTES = 16_000_000
MINI_VAL_BYTES = 100_000

# Text an agent may not add to the recipe: routes to validation data or to the evaluator's files.
FORBIDDEN = (r"private", r"val\.jsonl", r"fineweb_val", r"byte_luts", r"english\.jsonl", r"tasks/corpus",
             r"import corpus", r"pg_data", r"evaluator\.py", r"\.autoresearch", r"PARAMGOLF_")


def full_data_options() -> dict:
    return {"data_path": os.environ.get("PARAMGOLF_DATA_PATH", ""),
            "tokenizer_path": os.environ.get("PARAMGOLF_TOKENIZER_PATH", "")}


@pytest.fixture
def baseline_recipe(autoresearch_variant: str) -> Path:
    if autoresearch_variant == "full":
        opts = full_data_options()
        if not Path(opts["data_path"] or "/nonexistent").is_dir() or not Path(opts["tokenizer_path"] or "/-").is_file():
            pytest.skip("paramgolf full variant: set PARAMGOLF_DATA_PATH (fineweb10B_sp1024 shards) and "
                        "PARAMGOLF_TOKENIZER_PATH (fineweb_1024_bpe.model); see tasks/paramgolf/README.md")
    return RECIPE  # one recipe; the variant picks its scale file


@pytest.fixture
def budget(autoresearch_variant: str) -> Budget:
    if autoresearch_variant == "full":
        # 600 s training loop (the public rule) + compile, data and artifact writing; eval has its own limit.
        return Budget(train_seconds=720, eval_seconds=600, prepare_seconds=900, seeds=(0,),
                      artifact_bytes=FULL_ARTIFACT_BYTES, preload=("torch",))
    return Budget(train_seconds=60, eval_seconds=60, seeds=(0,), threads=2, artifact_bytes=MINI_ARTIFACT_BYTES,
                  preload=("torch",))


def legality_checks() -> list:
    return [
        ArtifactBytesAtMost("artifact_bytes"),
        MetricIsTrue("causal", reason_metric="causal_reason"),
        MetricIsTrue("normalized", reason_metric="normalized_reason"),
        MetricIsTrue("exact_bytes", reason_metric="exact_bytes_reason"),
    ]


@pytest.fixture
def legality() -> list:
    return legality_checks()


@pytest.fixture
def evaluator(autoresearch_variant: str) -> Evaluator:
    # mini scores a fixed 100 kB prefix of the validation documents: a few seconds on 2 cores.
    options = full_data_options() if autoresearch_variant == "full" else {"val_fraction": 0.1,
                                                                          "val_max_bytes": MINI_VAL_BYTES}
    return Evaluator(script=HERE / "evaluator.py", options=options, forbidden=FORBIDDEN)


@pytest.fixture
def objective(autoresearch_variant: str) -> Objective:
    # Training is not bit-reproducible (multi-threaded CPU kernels, CUDA atomics): the same recipe and seed
    # scored 2.688, 2.691 and 2.696 in three mini runs. So the noise is measured, not assumed: the baseline
    # runs three times, and a would-be keep is re-run beside the best; min_delta is the floor under that bar.
    # Three runs of one seed are 2 degrees of freedom (the t quantile of the bar is 4.5); two runs would be 1,
    # whose quantile (14) would keep nothing until confirmations, which need keeps, added more.
    return Objective("val_bpb", "minimize", min_delta=0.005 if autoresearch_variant == "mini" else 0.002,
                     baseline_repeats=3, confirm_keeps=True)


def _set(path: str, old: str, new: str) -> Edit:
    return Edit(path, old, new)


def _specialists(variant: str) -> list[Specialist]:
    mini = variant == "mini"
    T, Mo, S = "train.py", "model.py", f"scale_{variant}.py"  # S: this scale's values (sizes, clock, context)
    arch = Specialist("arch", Surface(regions=(f"{T}::arch", f"{Mo}::arch", f"{S}::arch")),
                      "Model shape and blocks: depth, width, heads/KV heads, MLP width and activation, RoPE, "
                      "qk-gain, U-net skips. Every parameter costs artifact bytes: stay under the cap.",
                      catalog=(
                          Technique("leaky-relu-squared", "LeakyReLU(0.5)^2 keeps gradient for negative inputs and "
                                    "beat ReLU^2 in public records.",
                                    (_set(Mo, 'activation = "relu2"', 'activation = "leaky_relu2"'),), -0.005),
                          Technique("one-kv-head", "A single KV head frees bytes at little quality cost.",
                                    (_set(S, "num_kv_heads = 2", "num_kv_heads = 1") if mini else
                                     _set(S, "num_kv_heads = 4", "num_kv_heads = 2"),), 0.002),
                          Technique("deeper-narrower", "More, narrower layers at a similar byte count.",
                                    ((_set(S, "num_layers = 4", "num_layers = 6"),
                                      _set(S, "model_dim = 64", "model_dim = 48")) if mini else
                                     (_set(S, "num_layers = 9", "num_layers = 11"),
                                      _set(S, "model_dim = 512", "model_dim = 448"))), -0.005),
                      ))
    opt = Specialist("opt", Surface(regions=(f"{T}::opt", f"{S}::opt")),
                     "Optimizers and schedule: Muon for block matrices, Adam for embeddings and scalars, learning "
                     "rates, momentum warmup, warmdown, iteration count (training must fit its wall-clock budget).",
                     catalog=(
                         Technique("higher-lrs", "Tiny models under a short budget tolerate larger steps.",
                                   (_set(T, "matrix_lr = 0.04", "matrix_lr = 0.06"),
                                    _set(T, "scalar_lr = 0.04", "scalar_lr = 0.06")), -0.01),
                         Technique("muon-momentum-0.99", "Public records raised Muon momentum to 0.99 with a "
                                   "warmup from 0.92.",
                                   (_set(T, "muon_momentum = 0.95", "muon_momentum = 0.99"),
                                    _set(T, "muon_momentum_warmup_start = 0.85", "muon_momentum_warmup_start = 0.92")),
                                   -0.003),
                         Technique("longer-warmdown", "A longer linear warmdown lands in a flatter minimum.",
                                   (_set(S, "warmdown_iters = 62", "warmdown_iters = 125") if mini else
                                    _set(S, "warmdown_iters = 1200", "warmdown_iters = 3000"),), -0.005),
                     ))
    quant = Specialist("quant", Surface(regions=(f"{T}::quant", f"{Mo}::quant", f"{S}::quant")),
                       "Export: bits per weight, clipping, which tensors stay float, compressor. The score is "
                       "measured after this round trip, and the compressed size counts against the cap.",
                       catalog=(
                           Technique("int6-lzma", "6-bit weights compress far better under lzma, freeing bytes "
                                     "for parameters at a small round-trip loss.",
                                     (_set(T, "quant_bits = 8", "quant_bits = 6"),
                                      _set(T, 'compressor = "zlib"', 'compressor = "lzma"')), 0.01),
                           Technique("tighter-clip", "Clipping outliers at the 99.99th percentile lowers the "
                                     "rounding error of the bulk.",
                                     (_set(T, "clip_percentile = 99.99984", "clip_percentile = 99.99"),), -0.001),
                       ))
    reg = Specialist("reg", Surface(regions=(f"{T}::reg",)),
                     "Regularization and averaging: decoupled weight decay on Muon matrices, gradient clipping, "
                     "EMA of the weights that are exported.",
                     catalog=(
                         Technique("muon-wd", "Weight decay keeps weights small: better quantization and "
                                   "compression, as in public records.",
                                   (_set(T, "weight_decay = 0.0", "weight_decay = 0.04"),), -0.003),
                         Technique("ema", "An EMA of the weights smooths the end of training.",
                                   (_set(T, "ema_decay = 0.0", "ema_decay = 0.9" if mini else "ema_decay = 0.997"),),
                                   -0.003),
                     ))
    loss = Specialist("loss", Surface(regions=(f"{T}::loss", f"{Mo}::loss")),
                      "Training objective: logit soft-cap, z-loss, label smoothing. Evaluation always uses the "
                      "model's own normalized distribution.",
                      catalog=(
                          Technique("z-loss", "A small z-loss keeps logits bounded and training stable.",
                                    (_set(T, "z_loss = 0.0", "z_loss = 0.0001"),), -0.001),
                          Technique("softcap-15", "A tighter logit soft-cap regularizes confident predictions.",
                                    (_set(T, "logit_softcap = 30.0", "logit_softcap = 15.0"),), -0.002),
                      ))
    evl = Specialist("eval", Surface(regions=(f"{T}::eval", f"{Mo}::eval", f"{S}::eval")),
                     "Evaluation context: window length, sliding-window stride (more context per scored token at "
                     "more eval compute, within the eval budget), temperature. Must stay causal and normalized.",
                     catalog=(
                         Technique("sliding-window", "Scoring only the last half of overlapping windows gives every "
                                   "token more context.",
                                   (_set(S, "eval_stride = 128", "eval_stride = 64") if mini else
                                    _set(S, "eval_stride = 1024", "eval_stride = 256"),), -0.02),
                         Technique("temperature", "A slightly lower temperature sharpens an under-confident model.",
                                   (_set(T, "eval_temperature = 1.0", "eval_temperature = 0.95"),), -0.002),
                     ))
    curr = Specialist("curr", Surface(regions=(f"{T}::curr", f"{S}::curr")),
                      "Data curriculum: sequence length, batch size, short-sequence warmup, sampling order.",
                      catalog=(
                          Technique("short-seq-warmup", "Short sequences early make early steps cheaper and more "
                                    "numerous.", (_set(T, "short_seq_frac = 0.0", "short_seq_frac = 0.3"),), -0.003),
                          Technique("smaller-batch" if mini else "longer-context",
                                    "More, smaller steps help when the budget is short." if mini else
                                    "Training at 2048 context teaches longer-range structure.",
                                    (_set(S, "train_batch_tokens = 2048", "train_batch_tokens = 1536"),
                                     _set(S, "micro_batch_tokens = 2048", "micro_batch_tokens = 1536")) if mini else
                                    (_set(S, "train_seq_len = 1024", "train_seq_len = 2048"),), -0.003),
                      ))
    out = [arch, opt, quant, reg, loss, evl, curr]
    if mini:
        out.append(Specialist("tok", Surface(regions=(f"{S}::tok", f"{Mo}::tok")),
                              "Tokenizer: byte-level with learned BPE merges (lossless; bpb counts exact bytes). "
                              "More merges shorten sequences but grow the embedding, which costs bytes.",
                              catalog=(
                                  Technique("bpe-64", "64 merges of frequent byte pairs shorten sequences by ~20%.",
                                            (_set(S, "bpe_merges = 0", "bpe_merges = 64"),), -0.02),
                              )))
    # full: the shards are pre-tokenized with the fixed sp1024 vocabulary, so there is no tokenizer surface.
    return out


@pytest.fixture
def specialists(autoresearch_variant: str) -> list[Specialist]:
    return _specialists(autoresearch_variant)


def test_paramgolf(autoresearch_trial):
    assert autoresearch_trial.legal, autoresearch_trial.describe()
