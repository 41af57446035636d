"""Parameter Golf recipe: the public baseline's code (GPT with U-net skips, Muon + Adam, int8 + zlib artifact), one
recipe at two scales.

train(ctx) reads the training tokens, trains until the iteration count or the wall-clock cap, and writes the
quantized, compressed artifact to ctx.out_dir/model.ptz; the evaluator scores that file alone. prepare(ctx) warms
the torch.compile caches on random tokens (untimed, CUDA only).

The scale is declared apart: ``scale_full.py`` (the public baseline: 9 layers, width 512, 8 heads / 4 KV heads,
sequence 1024, 524,288 tokens per step, FineWeb sp1024 token shards, 600 s) and ``scale_mini.py`` (4 layers of
width 64 on the byte-level English corpus with optional learned merges, ~25 s on 2 CPU cores) hold the sizes, the
data format and the clock; train() and prepare() bind ctx.variant's first (use_scale). Everything else here and in
model.py is shared by both scales, so a change kept at one scale is the same code at the other (``autoresearch
recheck`` runs it there).
"""
from __future__ import annotations

import glob
import importlib.util
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import model as M


def use_scale(variant: str) -> None:
    """Bind ``scale_<variant>.py`` next to this file (sizes, TOKENIZER, the clock, iterations, batch tokens,
    evaluation context) to this module's names: the recipe's only per-variant part."""
    path = Path(__file__).with_name(f"scale_{variant}.py")
    if not path.is_file():
        raise FileNotFoundError(f"this recipe declares no '{variant}' scale ({path.name} is missing)")
    spec = importlib.util.spec_from_file_location(f"scale_{variant}", path)
    scale = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(scale)
    globals().update({k: v for k, v in vars(scale).items() if not k.startswith("_")})


# autoresearch: begin arch
mlp_mult = 2.0  # range: 1.0..6.0
tie_embeddings = True
tied_embed_init_std = 0.005  # range: 0.001..0.05
rope_base = 10000.0  # range: 100.0..1000000.0
qk_gain_init = 1.5  # range: 0.5..6.0
# autoresearch: end arch

# autoresearch: begin opt
matrix_lr = 0.04  # range: 0.005..0.2
scalar_lr = 0.04  # range: 0.005..0.2
tied_embed_lr = 0.05  # range: 0.005..0.5
embed_lr = 0.6  # range: 0.05..2.0
head_lr = 0.008  # range: 0.001..0.1
muon_momentum = 0.95  # range: 0.8..0.99
muon_momentum_warmup_start = 0.85  # range: 0.5..0.95
muon_backend_steps = 5  # range: 1..10
beta1 = 0.9  # range: 0.5..0.99
beta2 = 0.95  # range: 0.9..0.999
adam_eps = 1e-8
# autoresearch: end opt

# autoresearch: begin reg
weight_decay = 0.0  # range: 0.0..0.2
grad_clip_norm = 0.0  # range: 0.0..2.0
ema_decay = 0.0  # range: 0.0..0.9999
# autoresearch: end reg

# autoresearch: begin curr
short_seq_frac = 0.0  # range: 0.0..0.8
# autoresearch: end curr

# autoresearch: begin loss
logit_softcap = 30.0  # range: 5.0..100.0
label_smoothing = 0.0  # range: 0.0..0.1
z_loss = 0.0  # range: 0.0..0.001
# autoresearch: end loss

# autoresearch: begin eval
eval_temperature = 1.0  # range: 0.8..1.2
# autoresearch: end eval

# autoresearch: begin quant
quant_bits = 8  # range: 4..8
clip_percentile = 99.99984  # range: 99.0..100.0
keep_float_dtype = "float16"  # options: float16|bfloat16|float32
compressor = "zlib"  # options: zlib|lzma
# autoresearch: end quant

ARTIFACT = "model.ptz"
SHARD_MAGIC, SHARD_VERSION, HEADER_INTS = 20240520, 1, 256


# ---- training tokens: the scale's TOKENIZER says which format ctx.data_dir holds ----

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


class TokenArray:
    """byte260: the whole training stream in memory; each batch row a window drawn at random or read in order
    (``sampling``)."""

    def __init__(self, stream: np.ndarray, rng: np.random.Generator, sampling: str) -> None:
        self.stream, self.tokens, self.rng, self.sampling, self.pos = stream, torch.from_numpy(stream), rng, sampling, 0

    def batch(self, rows: int, seq: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.sampling == "random":
            starts = self.rng.integers(0, len(self.stream) - seq - 1, size=rows)
        else:
            if self.pos + rows * seq + 1 > len(self.stream):
                self.pos = 0
            starts = self.pos + np.arange(rows) * seq
            self.pos += rows * seq
        chunk = self.tokens[torch.from_numpy(starts)[:, None] + torch.arange(seq + 1)[None]]
        return chunk[:, :-1], chunk[:, 1:]


def read_shard(path: str | Path) -> np.ndarray:
    """One token shard: 256 little-endian int32 (magic, version, token count, ...) then uint16 tokens."""
    header = np.fromfile(path, dtype="<i4", count=HEADER_INTS)
    if header.size != HEADER_INTS or int(header[0]) != SHARD_MAGIC or int(header[1]) != SHARD_VERSION:
        raise ValueError(f"{path}: not a token shard (bad header)")
    n = int(header[2])
    if Path(path).stat().st_size != 4 * HEADER_INTS + 2 * n:
        raise ValueError(f"{path}: size does not match the {n} tokens its header declares")
    return np.fromfile(path, dtype="<u2", count=n, offset=4 * HEADER_INTS)


class TokenStream:
    """sp1024: reads the shards in order, wrapping around; deterministic, no sampling. Consecutive rows of a
    batch continue each other."""

    def __init__(self, pattern: str) -> None:
        self.files = sorted(glob.glob(pattern))
        if not self.files:
            raise FileNotFoundError(f"no training shards match {pattern}")
        self.idx, self.pos = 0, 0
        self.tokens = read_shard(self.files[0])

    def take(self, n: int) -> torch.Tensor:
        out, need = [], n
        while need > 0:
            if self.pos >= self.tokens.size:
                self.idx = (self.idx + 1) % len(self.files)
                self.tokens, self.pos = read_shard(self.files[self.idx]), 0
            k = min(need, self.tokens.size - self.pos)
            out.append(self.tokens[self.pos:self.pos + k])
            self.pos += k
            need -= k
        return torch.from_numpy(np.concatenate(out).astype(np.int64))

    def batch(self, rows: int, seq: int) -> tuple[torch.Tensor, torch.Tensor]:
        chunk = self.take(rows * seq + 1)
        return chunk[:-1].view(rows, seq), chunk[1:].view(rows, seq)


def training_tokens(ctx: Any) -> tuple[Any, int, list[tuple[int, int]]]:
    """The batch source, the vocabulary size and the learned merges (byte260 only)."""
    if TOKENIZER == "byte260":
        stream, merges = load_stream(Path(ctx.data_dir))
        return TokenArray(stream, np.random.default_rng(ctx.seed), sampling), M.N_SPECIAL + 256 + len(merges), merges
    return TokenStream(str(Path(ctx.data_dir) / "fineweb_train_*.bin")), vocab_size, []


def model_config(vocab: int) -> dict[str, Any]:
    return dict(vocab_size=vocab, num_layers=num_layers, model_dim=model_dim, num_heads=num_heads,
                num_kv_heads=num_kv_heads, mlp_mult=mlp_mult, tie_embeddings=tie_embeddings,
                tied_embed_init_std=tied_embed_init_std, logit_softcap=logit_softcap, rope_base=rope_base,
                qk_gain_init=qk_gain_init)


def build(device: str, vocab: int) -> tuple[M.GPT, Any]:
    model = M.GPT(**model_config(vocab)).to(device)
    fwd = torch.compile(model, dynamic=False, fullgraph=True) if device == "cuda" else model
    return model, fwd


def setup_device(ctx: Any) -> str:
    if ctx.device == "cuda" and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        return "cuda"
    return "cpu"


def prepare(ctx: Any) -> None:
    """Untimed: compile forward/backward for the shapes training will use, filling the persistent caches."""
    use_scale(ctx.variant)
    device = setup_device(ctx)
    if device != "cuda" or TOKENIZER != "sp1024":  # byte260's vocabulary depends on the data: nothing to warm
        return
    model, fwd = build(device, vocab_size)
    for seq in sorted({train_seq_len, short_seq_len if short_seq_frac > 0 else train_seq_len}):
        x = torch.randint(0, vocab_size, (micro_batch_tokens // seq, seq), device=device)
        for _ in range(2):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = M.training_loss(fwd(x), x, label_smoothing, z_loss)
            loss.backward()
    torch.cuda.synchronize()


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


def lr_scale(step: int, elapsed: float) -> float:
    """Linear warmdown over the last ``warmdown_iters`` steps, or over the time they are expected to take
    when the wall-clock cap comes first (as in the public baseline)."""
    if warmdown_iters <= 0:
        return 1.0
    by_iter = (iterations - step) / warmdown_iters
    step_s = elapsed / max(step, 1)
    by_time = max(MAX_WALLCLOCK_SECONDS - elapsed, 0.0) / max(warmdown_iters * step_s, 1e-9)
    return max(0.0, min(1.0, by_iter, by_time))


def train(ctx: Any) -> None:
    t0 = time.perf_counter()
    use_scale(ctx.variant)
    device = setup_device(ctx)
    torch.manual_seed(ctx.seed)
    source, vocab, merges = training_tokens(ctx)
    model, fwd = build(device, vocab)
    opts, muon = make_optimizers(model)
    ema = {n: p.detach().clone() for n, p in model.state_dict().items()} if ema_decay > 0 else None
    accum = max(1, train_batch_tokens // micro_batch_tokens)
    use_amp = device == "cuda"

    step, since_log, t_loop = 0, 0, time.perf_counter()
    loss_sum = torch.zeros((), device=device)  # summed on the device: no host sync per micro-batch
    while step < iterations:
        elapsed = time.perf_counter() - t0
        if elapsed >= MAX_WALLCLOCK_SECONDS:
            break
        progress = max(step / iterations, elapsed / MAX_WALLCLOCK_SECONDS)
        seq = short_seq_len if progress < short_seq_frac else train_seq_len
        for _ in range(accum):  # the same tokens per step with short sequences: more rows
            x, y = source.batch(micro_batch_tokens // seq, seq)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
                loss = M.training_loss(fwd(x), y, label_smoothing, z_loss)
            (loss / accum).backward()
            loss_sum += loss.detach() / accum
        frac = min(step / muon_momentum_warmup_steps, 1.0) if muon_momentum_warmup_steps else 1.0
        muon.param_groups[0]["momentum"] = (1 - frac) * muon_momentum_warmup_start + frac * muon_momentum
        scale = lr_scale(step, elapsed)
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
        step += 1
        since_log += 1
        if step % LOG_EVERY == 0 or step <= LOG_FIRST_STEPS:
            print(f"step {step} loss {float(loss_sum) / since_log:.4f} t {time.perf_counter() - t0:.1f}s", flush=True)
            ctx.report(step, float(loss_sum) / since_log)  # the training curve, for early stopping
            loss_sum.zero_()
            since_log = 0
    if device == "cuda":
        torch.cuda.synchronize()
    loop_s = time.perf_counter() - t_loop
    if ema is not None:
        model.load_state_dict(ema)

    config = model_config(vocab)
    config.update(tokenizer=TOKENIZER, eval=dict(seq_len=eval_seq_len, stride=eval_stride,
                                                  temperature=eval_temperature))
    quant = dict(bits=quant_bits, clip_percentile=clip_percentile, keep_float_max_numel=keep_float_max_numel,
                 keep_float_dtype=keep_float_dtype, compressor=compressor)
    size = M.save_artifact(Path(ctx.out_dir) / ARTIFACT, model, config, quant, merges)
    tokens = step * accum * micro_batch_tokens
    ctx.log(steps=step, train_tokens=tokens, train_loop_s=round(loop_s, 2), step_ms=round(1000 * loop_s / max(step, 1), 1),
            tokens_per_s=round(tokens / max(loop_s, 1e-9)), model_bytes=size, vocab_size=vocab,
            params=sum(p.numel() for p in model.parameters()))
