"""Parameter Golf recipe, mini twin: the public baseline's code scaled to 2 CPU cores and an English corpus.

train(ctx) reads the training documents from ctx.data_dir/train.jsonl, trains under a wall-clock cap, and
writes the quantized, compressed artifact to ctx.out_dir/model.ptz. The evaluator scores that file alone.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

import model as M

# autoresearch: begin arch
num_layers = 4  # range: 1..12
model_dim = 64  # range: 16..512
num_heads = 4  # range: 1..16
num_kv_heads = 2  # range: 1..16
mlp_mult = 2.0  # range: 1.0..6.0
tie_embeddings = True
tied_embed_init_std = 0.005  # range: 0.001..0.05
rope_base = 10000.0  # range: 100.0..1000000.0
qk_gain_init = 1.5  # range: 0.5..6.0
# autoresearch: end arch

# autoresearch: begin opt
iterations = 250  # range: 20..2000
warmdown_frac = 0.25  # range: 0.0..0.8
matrix_lr = 0.04  # range: 0.005..0.2
scalar_lr = 0.04  # range: 0.005..0.2
tied_embed_lr = 0.05  # range: 0.005..0.5
embed_lr = 0.6  # range: 0.05..2.0
head_lr = 0.008  # range: 0.001..0.1
muon_momentum = 0.95  # range: 0.8..0.99
muon_momentum_warmup_start = 0.85  # range: 0.5..0.95
muon_momentum_warmup_steps = 60  # range: 0..500
muon_backend_steps = 5  # range: 1..10
beta1 = 0.9  # range: 0.5..0.99
beta2 = 0.95  # range: 0.9..0.999
adam_eps = 1e-8
# autoresearch: end opt

# autoresearch: begin reg
weight_decay = 0.0  # range: 0.0..0.2
grad_clip_norm = 0.0  # range: 0.0..2.0
ema_decay = 0.0  # range: 0.0..0.999
# autoresearch: end reg

# autoresearch: begin curr
train_seq_len = 128  # range: 32..1024
train_batch_seqs = 16  # range: 2..128
short_seq_len = 32  # range: 16..512
short_seq_frac = 0.0  # range: 0.0..0.8
sampling = "random"  # options: random|sequential
# autoresearch: end curr

# autoresearch: begin loss
logit_softcap = 30.0  # range: 5.0..100.0
label_smoothing = 0.0  # range: 0.0..0.1
z_loss = 0.0  # range: 0.0..0.001
# autoresearch: end loss

# autoresearch: begin eval
eval_seq_len = 128  # range: 32..2048
eval_stride = 128  # range: 16..2048
eval_temperature = 1.0  # range: 0.8..1.2
# autoresearch: end eval

# autoresearch: begin tok
bpe_merges = 0  # range: 0..512
bpe_sample_bytes = 300000  # range: 50000..2000000
# autoresearch: end tok

# autoresearch: begin quant
quant_bits = 8  # range: 4..8
clip_percentile = 99.99984  # range: 99.0..100.0
keep_float_max_numel = 1024  # range: 0..100000
keep_float_dtype = "float16"  # options: float16|bfloat16|float32
compressor = "zlib"  # options: zlib|lzma
# autoresearch: end quant

# Stop well inside the harness budget (60 s), leaving time to quantize and write the artifact.
MAX_WALLCLOCK_SECONDS = 40.0
ARTIFACT = "model.ptz"


def load_stream(data_dir: Path) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """All training documents as one token stream, each document preceded by BOS; plus the learned merges."""
    parts = []
    with open(data_dir / "train.jsonl", encoding="utf-8") as f:
        for line in f:
            parts.append(bytes([0]) + json.loads(line)["text"].encode("utf-8"))
    # Byte 0 does not occur in the text: it marks document starts and becomes BOS, which merges never touch.
    ids = np.frombuffer(b"".join(parts), dtype=np.uint8).astype(np.int64) + M.N_SPECIAL
    ids[ids == M.N_SPECIAL] = M.BOS_ID
    merges = M.learn_merges(ids[:bpe_sample_bytes], bpe_merges) if bpe_merges else []
    return M.Tokenizer(merges).apply_merges(ids), merges


def zeropower_newton_schulz(g: torch.Tensor, steps: int, eps: float = 1e-7) -> torch.Tensor:
    """Approximately orthogonalize a matrix update (the quintic Newton-Schulz iteration Muon uses)."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.to(torch.bfloat16 if g.is_cuda else torch.float32)
    x = x / (x.norm() + eps)
    tall = x.size(0) > x.size(1)
    if tall:
        x = x.T
    for _ in range(steps):
        s = x @ x.T
        x = a * x + (b * s + c * s @ s) @ x
    return (x.T if tall else x).to(g.dtype)


class Muon(torch.optim.Optimizer):
    """Momentum SGD whose matrix updates are orthogonalized; decoupled weight decay."""

    def __init__(self, params: list[torch.Tensor], lr: float, momentum: float, backend_steps: int,
                 weight_decay: float = 0.0) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, backend_steps=backend_steps,
                                      weight_decay=weight_decay))

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                buf = self.state[p].setdefault("momentum", torch.zeros_like(p.grad))
                buf.mul_(group["momentum"]).add_(p.grad)
                g = p.grad.add(buf, alpha=group["momentum"])  # Nesterov
                g = zeropower_newton_schulz(g, group["backend_steps"])
                g *= max(1.0, g.size(0) / g.size(1)) ** 0.5
                if group["weight_decay"]:
                    p.mul_(1.0 - group["lr"] * group["weight_decay"])
                p.add_(g, alpha=-group["lr"])


def make_optimizers(model: M.GPT) -> tuple[list[torch.optim.Optimizer], Muon]:
    named = list(model.blocks.named_parameters())
    matrices = [p for n, p in named if p.ndim == 2 and not any(c in n for c in M.CONTROL_NAMES)]
    scalars = [p for n, p in named if p.ndim < 2 or any(c in n for c in M.CONTROL_NAMES)]
    scalars.append(model.skip_weights)
    adam = dict(betas=(beta1, beta2), eps=adam_eps)
    tok_lr = tied_embed_lr if tie_embeddings else embed_lr
    opts: list[torch.optim.Optimizer] = [
        torch.optim.Adam([{"params": [model.tok_emb.weight], "lr": tok_lr, "base_lr": tok_lr}], **adam),
        torch.optim.Adam([{"params": scalars, "lr": scalar_lr, "base_lr": scalar_lr}], **adam),
    ]
    muon = Muon(matrices, lr=matrix_lr, momentum=muon_momentum, backend_steps=muon_backend_steps,
                weight_decay=weight_decay)
    muon.param_groups[0]["base_lr"] = matrix_lr
    opts.append(muon)
    if model.lm_head is not None:
        opts.append(torch.optim.Adam([{"params": [model.lm_head.weight], "lr": head_lr, "base_lr": head_lr}], **adam))
    return opts, muon


def lr_scale(progress: float) -> float:
    """1 until the warmdown, then linear to 0; ``progress`` is the larger of step and time fractions."""
    if warmdown_frac <= 0 or progress < 1.0 - warmdown_frac:
        return 1.0
    return max(0.0, (1.0 - progress) / warmdown_frac)


def batches(stream: np.ndarray, rng: np.random.Generator) -> Callable[[float], tuple[torch.Tensor, torch.Tensor]]:
    """A function of training progress returning (inputs, targets): short sequences first when the curriculum
    says so, the same number of tokens per step either way."""
    pos = 0
    tokens = torch.from_numpy(stream)

    def get(progress: float) -> tuple[torch.Tensor, torch.Tensor]:
        nonlocal pos
        seq = short_seq_len if progress < short_seq_frac else train_seq_len
        n = train_batch_seqs * train_seq_len // seq
        if sampling == "random":
            starts = rng.integers(0, len(stream) - seq - 1, size=n)
        else:
            if pos + n * seq + 1 > len(stream):
                pos = 0
            starts = pos + np.arange(n) * seq
            pos += n * seq
        idx = torch.from_numpy(starts)[:, None] + torch.arange(seq + 1)[None]
        chunk = tokens[idx]
        return chunk[:, :-1], chunk[:, 1:]
    return get


def train(ctx: Any) -> None:
    t0 = time.perf_counter()
    torch.manual_seed(ctx.seed)
    rng = np.random.default_rng(ctx.seed)
    stream, merges = load_stream(Path(ctx.data_dir))
    vocab = M.N_SPECIAL + 256 + len(merges)
    config = dict(vocab_size=vocab, num_layers=num_layers, model_dim=model_dim, num_heads=num_heads,
                  num_kv_heads=num_kv_heads, mlp_mult=mlp_mult, tie_embeddings=tie_embeddings,
                  tied_embed_init_std=tied_embed_init_std, logit_softcap=logit_softcap, rope_base=rope_base,
                  qk_gain_init=qk_gain_init)
    model = M.GPT(**config)
    opts, muon = make_optimizers(model)
    ema = {n: p.detach().clone() for n, p in model.state_dict().items()} if ema_decay > 0 else None
    next_batch = batches(stream, rng)

    step, loss_sum, t_train = 0, 0.0, time.perf_counter()
    while step < iterations:
        elapsed = time.perf_counter() - t0
        if elapsed >= MAX_WALLCLOCK_SECONDS:
            break
        progress = max(step / iterations, elapsed / MAX_WALLCLOCK_SECONDS)
        x, y = next_batch(progress)
        loss = M.training_loss(model(x), y, label_smoothing, z_loss)
        loss.backward()
        frac = min(step / muon_momentum_warmup_steps, 1.0) if muon_momentum_warmup_steps else 1.0
        muon.param_groups[0]["momentum"] = (1 - frac) * muon_momentum_warmup_start + frac * muon_momentum
        scale = lr_scale(progress)
        for opt in opts:
            for group in opt.param_groups:
                group["lr"] = group["base_lr"] * scale
        if grad_clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip_norm)
        for opt in opts:
            opt.step()
            opt.zero_grad(set_to_none=True)
        if ema is not None:
            with torch.no_grad():
                for n, p in model.state_dict().items():
                    ema[n].lerp_(p, 1.0 - ema_decay)
        loss_sum += float(loss.detach())
        step += 1
        if step % 50 == 0:
            print(f"step {step} loss {loss_sum / 50:.4f} t {time.perf_counter() - t0:.1f}s", flush=True)
            ctx.report(step, loss_sum / 50)  # the training curve, for early stopping
            loss_sum = 0.0
    train_s = time.perf_counter() - t_train
    if ema is not None:
        model.load_state_dict(ema)

    config.update(tokenizer="byte260", eval=dict(seq_len=eval_seq_len, stride=eval_stride,
                                                  temperature=eval_temperature))
    quant = dict(bits=quant_bits, clip_percentile=clip_percentile, keep_float_max_numel=keep_float_max_numel,
                 keep_float_dtype=keep_float_dtype, compressor=compressor)
    size = M.save_artifact(Path(ctx.out_dir) / ARTIFACT, model, config, quant, merges)
    ctx.log(steps=step, train_tokens=step * train_batch_seqs * train_seq_len, train_loop_s=round(train_s, 2),
            step_ms=round(1000 * train_s / max(step, 1), 1), model_bytes=size, vocab_size=vocab,
            params=sum(p.numel() for p in model.parameters()))
