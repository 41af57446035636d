"""NanoChat pretraining recipe: nanochat's GPT and base_train loop, one recipe at two scales.

Muon for the blocks' matrices, AdamW for embedding and lm_head, bf16 autocast and torch.compile on CUDA, a horizon
of explicit steps or tokens = ratio x parameters (data:params), capped by the scale's wall-clock budget. Writes
``model.pt`` into ``ctx.out_dir``; the task's evaluator scores it (CORE at full scale, mini-CORE at mini).

The scale is declared apart: ``scale_full.py`` (depth 12, sequence 2048, 524,288 tokens per step on pretraining
shards, one GPU) and ``scale_mini.py`` (depth 2 on the offline English corpus, 160 steps on two CPU cores) hold the
sizes, the data source and the device settings; prepare() and train() bind ctx.variant's first (use_scale).
Everything else here, in gpt.py, tokenizer.py and dataloader.py is shared by both scales, so a change kept at one
scale is the same code at the other (``autoresearch recheck`` runs it there).
"""
from __future__ import annotations

import contextlib
import importlib.util
import time
from pathlib import Path
from typing import Any

import torch

import dataloader
import gpt
import tokenizer



def use_scale(variant: str) -> None:
    """Bind ``scale_<variant>.py`` next to this file (TIME_BUDGET_S, TOKENIZER, DATA_SOURCE, DEPTH, SEQUENCE_LEN,
    batch sizes, horizon, compile) to this module's names: the recipe's only per-variant part."""
    path = Path(__file__).with_name(f"scale_{variant}.py")
    if not path.is_file():
        raise FileNotFoundError(f"this recipe declares no '{variant}' scale ({path.name} is missing)")
    spec = importlib.util.spec_from_file_location(f"scale_{variant}", path)
    scale = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(scale)
    globals().update({k: v for k, v in vars(scale).items() if not k.startswith("_")})


# autoresearch: begin arch
ASPECT_RATIO = 64  # range: 32..128
HEAD_DIM = 128  # range: 32..128
# autoresearch: end arch

# autoresearch: begin opt
EMBEDDING_LR = 0.2  # range: 0.01..1.0
UNEMBEDDING_LR = 0.004  # range: 0.0005..0.05
MATRIX_LR = 0.02  # range: 0.002..0.1
WEIGHT_DECAY = 0.0  # range: 0..0.2
ADAM_BETA1 = 0.8  # range: 0.5..0.95
ADAM_BETA2 = 0.95  # range: 0.9..0.999
GRAD_CLIP = 1.0  # range: 0..5
# autoresearch: end opt

# autoresearch: begin sched
TARGET_PARAM_DATA_RATIO = 20.0  # range: 1..40
WARMUP_RATIO = 0.0  # range: 0..0.3
WARMDOWN_RATIO = 0.2  # range: 0..0.8
FINAL_LR_FRAC = 0.0  # range: 0..0.5
MUON_MOMENTUM_START = 0.85  # range: 0.5..0.95
MUON_MOMENTUM_END = 0.95  # range: 0.8..0.99
MUON_MOMENTUM_WARMUP_STEPS = 300  # range: 1..1000


def lr_multiplier(progress: float) -> float:
    """Learning-rate factor at a point of the run (0 = start, 1 = end): warmup, constant, linear warmdown."""
    if WARMUP_RATIO > 0 and progress < WARMUP_RATIO:
        return (progress + 1e-3) / WARMUP_RATIO
    if progress <= 1.0 - WARMDOWN_RATIO:
        return 1.0
    frac = (1.0 - progress) / max(WARMDOWN_RATIO, 1e-9)
    return frac + (1.0 - frac) * FINAL_LR_FRAC


def muon_momentum(step: int) -> float:
    frac = min(step / MUON_MOMENTUM_WARMUP_STEPS, 1.0)
    return (1 - frac) * MUON_MOMENTUM_START + frac * MUON_MOMENTUM_END
# autoresearch: end sched

# autoresearch: begin sys
MATMUL_PRECISION = "high"  # options: highest|high|medium
AUTOCAST_BF16 = True  # on CUDA only
# autoresearch: end sys


PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "4090": 165e12}


def _peak_flops(device: str) -> float | None:
    if device != "cuda":
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_FLOPS.items() if k in name), None)


def build_model(ctx: Any, vocab_size: int) -> gpt.GPT:
    torch.set_float32_matmul_precision(MATMUL_PRECISION)
    cfg = gpt.config_for_depth(DEPTH, vocab_size, SEQUENCE_LEN, ASPECT_RATIO, HEAD_DIM)
    model = gpt.GPT(cfg).to(ctx.device)
    model.init_weights()
    return model


def prepare(ctx: Any) -> None:
    """Untimed: compile the training step once on random tokens so train() finds the compile cache warm."""
    use_scale(ctx.variant)
    if not COMPILE:
        return
    vocab_size = tokenizer.VOCAB_SIZES[TOKENIZER]  # prepare sees no data, so no tokenizer files either
    model = build_model(ctx, vocab_size)
    step_model = torch.compile(model, dynamic=False)
    x = torch.randint(0, vocab_size, (DEVICE_BATCH_SIZE, SEQUENCE_LEN), device=ctx.device)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if ctx.device == "cuda" and AUTOCAST_BF16
                else contextlib.nullcontext())
    with autocast:
        loss = step_model(x, x)
    loss.backward()


def train(ctx: Any) -> None:
    t0 = time.perf_counter()
    use_scale(ctx.variant)
    torch.manual_seed(ctx.seed)
    device = ctx.device
    # The task stages what a tokenizer needs (gpt2's vocabulary) next to the training data.
    tok = tokenizer.get_tokenizer(TOKENIZER, cache_dir=ctx.data_dir)
    model = build_model(ctx, tok.vocab_size)
    num_params = sum(p.numel() for p in model.parameters())
    # TOTAL_BATCH_TOKENS per optimizer step, in micro-batches of at most DEVICE_BATCH_SIZE rows
    rows = max(1, min(DEVICE_BATCH_SIZE, TOTAL_BATCH_TOKENS // SEQUENCE_LEN))
    grad_accum = max(1, TOTAL_BATCH_TOKENS // (rows * SEQUENCE_LEN))
    tokens_per_step = rows * SEQUENCE_LEN * grad_accum
    # nanochat's horizon: explicit steps if given, else tokens = ratio x parameters
    num_iterations = NUM_ITERATIONS if NUM_ITERATIONS > 0 else \
        max(1, int(TARGET_PARAM_DATA_RATIO * num_params) // tokens_per_step)
    optimizers = gpt.setup_optimizers(model, embedding_lr=EMBEDDING_LR, unembedding_lr=UNEMBEDDING_LR,
                                      matrix_lr=MATRIX_LR, weight_decay=WEIGHT_DECAY,
                                      adam_betas=(ADAM_BETA1, ADAM_BETA2), muon_momentum=MUON_MOMENTUM_START)
    muon = optimizers[-1]
    step_model = torch.compile(model, dynamic=False) if COMPILE else model
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" and AUTOCAST_BF16
                else contextlib.nullcontext())
    loader = dataloader.make_loader(ctx, tok, rows, SEQUENCE_LEN, device, source=DATA_SOURCE, **LOADER_KWARGS)
    ctx.log(num_params=num_params, num_iterations=num_iterations, tokens_per_step=tokens_per_step,
            grad_accum=grad_accum, setup_s=round(time.perf_counter() - t0, 2))

    step, loss_ema, t_loop = 0, None, time.perf_counter()
    while True:
        # Progress is the larger of steps done and time spent: the schedule always ends by the time budget.
        progress = max(step / num_iterations, (time.perf_counter() - t0) / TIME_BUDGET_S)
        if progress >= 1.0:
            break
        lrm = lr_multiplier(progress)
        for opt in optimizers:
            for group in opt.param_groups:
                group["lr"] = group["initial_lr"] * lrm
        for group in muon.param_groups:
            group["momentum"] = muon_momentum(step)
        for _ in range(grad_accum):
            x, y = next(loader)
            with autocast:
                loss = step_model(x, y)
            (loss / grad_accum).backward()
        if GRAD_CLIP > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        for opt in optimizers:
            opt.step()
        model.zero_grad(set_to_none=True)
        step += 1
        if step % LOG_EVERY == 0:
            value = loss.item()
            loss_ema = value if loss_ema is None else 0.8 * loss_ema + 0.2 * value
            print(f"step {step} loss {value:.4f} lrm {lrm:.3f} t {time.perf_counter() - t0:.1f}s", flush=True)
            ctx.report(step, value)  # the training curve, for early stopping

    if device == "cuda":
        torch.cuda.synchronize()
    loop_s = time.perf_counter() - t_loop
    tokens = step * tokens_per_step
    tok_per_s = tokens / max(loop_s, 1e-9)
    peak = _peak_flops(device)
    gpt.save_checkpoint(ctx.out_dir / "model.pt", model,
                        {"tokenizer": TOKENIZER, "steps": step, "tokens": tokens, "seed": ctx.seed})
    ctx.log(steps=step, tokens=tokens, tokens_per_s=round(tok_per_s, 1), loop_s=round(loop_s, 2),
            train_loss_ema=loss_ema, tokens_per_param=round(tokens / num_params, 3),
            mfu=round(model.estimate_flops() * tok_per_s / peak, 4) if peak else None)
