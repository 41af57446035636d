"""The NanoChat GPT, parametrized by depth, with its Muon + AdamW optimizer.

Follows karpathy/nanochat's first public model (gpt.py): width = 64 * depth, head dim 128 (heads = ceil(width /
128)), rotary position embeddings, QK norm, ReLU^2 MLP, parameter-free RMSNorm (also right after the token
embedding), untied token embedding and lm_head, no biases, logit soft-capping at 15. Matrices in the transformer
blocks train with Muon; the embedding and lm_head train with AdamW at learning rates scaled by 1/sqrt(width/768).

Both scales of the recipe run this file (the same model code at every depth). The evaluator never
imports it: it starts ``serve_model`` (below, outside every specialist's region) in a sandboxed model server that sees
this folder and ``model.pt`` only, and asks it for next-token log-probabilities; ``load_model`` and
``GPT(config)(idx) -> logits`` are what that server relies on.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

IGNORE_INDEX = -1  # target id that carries no loss (padding)

# autoresearch: begin sys
ATTENTION = "sdpa"  # options: sdpa|manual


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal self-attention. q: (B, H, T, D); k, v: (B, Hkv, T, D) with H a multiple of Hkv."""
    if k.size(1) != q.size(1):
        rep = q.size(1) // k.size(1)
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    if ATTENTION == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    # Explicit softmax(QK^T / sqrt(D)) V with an upper-triangular mask: the reference path.
    t = q.size(2)
    scores = (q @ k.transpose(-2, -1)) * q.size(-1) ** -0.5
    future = torch.ones(t, t, dtype=torch.bool, device=q.device).triu(1)
    scores = scores.masked_fill(future, float("-inf"))
    return scores.softmax(-1).to(v.dtype) @ v
# autoresearch: end sys


# autoresearch: begin arch
ROPE_BASE = 10000.0  # range: 1000..1000000
LOGIT_SOFTCAP = 15.0  # range: 5..50
MLP_RATIO = 4  # range: 2..8
QK_NORM = True


@dataclass
class GPTConfig:
    sequence_len: int
    vocab_size: int
    n_layer: int
    n_head: int
    n_kv_head: int
    n_embd: int


def config_for_depth(depth: int, vocab_size: int, sequence_len: int, aspect_ratio: int = 64,
                     head_dim: int = 128) -> GPTConfig:
    """nanochat's sizing rule: width = aspect_ratio * depth, heads = ceil(width / head_dim)."""
    width = depth * aspect_ratio
    n_head = max(1, -(-width // head_dim))
    if width % n_head:
        raise ValueError(f"width {width} (depth {depth} x aspect {aspect_ratio}) does not split into {n_head} heads")
    return GPTConfig(sequence_len=sequence_len, vocab_size=vocab_size, n_layer=depth, n_head=n_head,
                     n_kv_head=n_head, n_embd=width)


def norm(x: torch.Tensor) -> torch.Tensor:
    return F.rms_norm(x, (x.size(-1),))


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (i, i + D/2) of x: (B, T, H, D) by position-dependent angles."""
    d = x.size(-1) // 2
    x1, x2 = x[..., :d], x[..., d:]
    return torch.cat([x1 * cos + x2 * sin, x2 * cos - x1 * sin], -1).to(x.dtype)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head, self.n_kv_head = config.n_head, config.n_kv_head
        self.head_dim = config.n_embd // config.n_head
        self.c_q = nn.Linear(config.n_embd, self.n_head * self.head_dim, bias=False)
        self.c_k = nn.Linear(config.n_embd, self.n_kv_head * self.head_dim, bias=False)
        self.c_v = nn.Linear(config.n_embd, self.n_kv_head * self.head_dim, bias=False)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q = self.c_q(x).view(b, t, self.n_head, self.head_dim)
        k = self.c_k(x).view(b, t, self.n_kv_head, self.head_dim)
        v = self.c_v(x).view(b, t, self.n_kv_head, self.head_dim)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if QK_NORM:
            q, k = norm(q), norm(k)
        y = causal_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.c_proj(y.transpose(1, 2).reshape(b, t, c))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, MLP_RATIO * config.n_embd, bias=False)
        self.c_proj = nn.Linear(MLP_RATIO * config.n_embd, config.n_embd, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.relu(self.c_fc(x)).square())


class Block(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.attn = CausalSelfAttention(config)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(norm(x), cos, sin)
        return x + self.mlp(norm(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict({
            "wte": nn.Embedding(config.vocab_size, config.n_embd),
            "h": nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
        })
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        cos, sin = self._rotary(config.sequence_len, config.n_embd // config.n_head)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    @property
    def max_seq_len(self) -> int:
        return self.config.sequence_len

    @staticmethod
    def _rotary(seq_len: int, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
        inv_freq = 1.0 / (ROPE_BASE ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        freqs = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)
        return freqs.cos()[None, :, None, :], freqs.sin()[None, :, None, :]

    @torch.no_grad()
    def init_weights(self) -> None:
        """nanochat's first init: linear std 1/sqrt(fan_in) * min(1, sqrt(fan_out/fan_in)), embeddings N(0, 1),
        and zeros for lm_head and both residual projections, so every block starts as the identity."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                fan_out, fan_in = m.weight.shape
                nn.init.normal_(m.weight, std=fan_in ** -0.5 * min(1.0, math.sqrt(fan_out / fan_in)))
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=1.0)
        nn.init.zeros_(self.lm_head.weight)
        for block in self.transformer.h:
            nn.init.zeros_(block.attn.c_proj.weight)
            nn.init.zeros_(block.mlp.c_proj.weight)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                loss_reduction: str = "mean") -> torch.Tensor:
        """Logits (B, T, vocab) when ``targets`` is None, else the cross-entropy (targets -1 are ignored)."""
        t = idx.size(1)
        if t > self.cos.size(1):
            raise ValueError(f"sequence of {t} tokens is longer than the model's sequence_len {self.cos.size(1)}")
        x = norm(self.transformer.wte(idx))
        cos, sin = self.cos[:, :t].to(x.dtype), self.sin[:, :t].to(x.dtype)
        for block in self.transformer.h:
            x = block(x, cos, sin)
        logits = self.lm_head(norm(x)).float()
        logits = LOGIT_SOFTCAP * torch.tanh(logits / LOGIT_SOFTCAP)
        if targets is None:
            return logits
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE_INDEX,
                               reduction=loss_reduction)

    def estimate_flops(self) -> float:
        """Training FLOPs per token: 6 per non-embedding parameter plus attention (PaLM appendix B)."""
        n = sum(p.numel() for p in self.parameters()) - self.transformer.wte.weight.numel()
        cfg = self.config
        return 6 * n + 12 * cfg.n_layer * cfg.n_head * (cfg.n_embd // cfg.n_head) * cfg.sequence_len
# autoresearch: end arch


# autoresearch: begin opt
NS_STEPS = 5  # range: 3..8
NS_COEFFS = (3.4445, -4.7750, 2.0315)
NESTEROV = True


def orthogonalize(g: torch.Tensor, steps: int) -> torch.Tensor:
    """Quintic Newton-Schulz iteration towards the nearest semi-orthogonal matrix (Muon's update direction)."""
    a, b, c = NS_COEFFS
    x = g.bfloat16() if g.is_cuda else g.float()
    tall = x.size(-2) > x.size(-1)
    if tall:
        x = x.mT
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    for _ in range(steps):
        s = x @ x.mT
        x = a * x + (b * s + c * s @ s) @ x
    return (x.mT if tall else x).to(g.dtype)


class Muon(torch.optim.Optimizer):
    """MomentUm Orthogonalized by Newton-Schulz, for 2-D weight matrices.

    SGD momentum (optionally Nesterov), then the update is replaced by its orthogonalization and scaled by
    sqrt(max(1, rows / cols)) so that tall and wide matrices move at the same RMS rate.
    """

    def __init__(self, params: Any, lr: float = 0.02, momentum: float = 0.95, nesterov: bool = NESTEROV,
                 ns_steps: int = NS_STEPS, weight_decay: float = 0.0) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps,
                                      weight_decay=weight_decay))

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - group["momentum"])
                g = p.grad.lerp(buf, group["momentum"]) if group["nesterov"] else buf
                update = orthogonalize(g, group["ns_steps"])
                if group["weight_decay"]:
                    p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(update, alpha=-group["lr"] * max(1.0, p.size(-2) / p.size(-1)) ** 0.5)


def setup_optimizers(model: GPT, *, embedding_lr: float, unembedding_lr: float, matrix_lr: float,
                     weight_decay: float, adam_betas: tuple[float, float], muon_momentum: float,
                     scalar_lr: float = 0.5) -> list[torch.optim.Optimizer]:
    """AdamW for the embedding, lm_head and any non-matrix parameter; Muon for the blocks' matrices."""
    lr_scale = (model.config.n_embd / 768) ** -0.5  # AdamW learning rates were tuned at width 768
    block_params = list(model.transformer.h.parameters())
    matrices = [p for p in block_params if p.ndim == 2]
    others = [p for p in block_params if p.ndim != 2]
    groups = [dict(params=list(model.lm_head.parameters()), lr=unembedding_lr * lr_scale),
              dict(params=list(model.transformer.wte.parameters()), lr=embedding_lr * lr_scale)]
    if others:
        groups.append(dict(params=others, lr=scalar_lr))
    covered = {id(p) for g in groups for p in g["params"]} | {id(p) for p in matrices}
    leftover = [p for p in model.parameters() if id(p) not in covered]
    if leftover:
        groups.append(dict(params=leftover, lr=scalar_lr))
    adamw = torch.optim.AdamW(groups, betas=adam_betas, eps=1e-10, weight_decay=weight_decay,
                              fused=next(model.parameters()).is_cuda)
    muon = Muon(matrices, lr=matrix_lr, momentum=muon_momentum)
    optimizers: list[torch.optim.Optimizer] = [adamw, muon]
    for opt in optimizers:
        for group in opt.param_groups:
            group["initial_lr"] = group["lr"]
    return optimizers
# autoresearch: end opt


def save_checkpoint(path: Path, model: GPT, meta: dict[str, Any]) -> None:
    """Write what ``load_model`` needs: the config, the weights (fp32) and meta (tokenizer name, steps, ...)."""
    state = {k: v.detach().float().cpu() if v.is_floating_point() else v.cpu() for k, v in model.state_dict().items()}
    torch.save({"config": asdict(model.config), "state_dict": state, "meta": dict(meta)}, path)


def load_model(path: Path, device: str = "cpu") -> tuple[GPT, dict[str, Any]]:
    """Rebuild the trained model from ``save_checkpoint``'s file, in eval mode on ``device``."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    model = GPT(GPTConfig(**ckpt["config"]))
    model.load_state_dict(ckpt["state_dict"])
    return model.to(device).eval(), dict(ckpt.get("meta") or {})


class ServedModel:
    """What the evaluator's model server exposes: next-token log-probabilities at the positions it asks for.

    Never a loss: the evaluator gathers each target's log-probability itself and checks that every returned row
    is a normalized distribution over the whole vocabulary.
    """

    def __init__(self, path: Path, device: str = "cpu") -> None:
        self.model, self.meta = load_model(path, device)
        self.device = device
        self.vocab_size = int(self.model.config.vocab_size)
        self.max_seq_len = int(self.model.max_seq_len)
        self.tokenizer = str(self.meta.get("tokenizer", "bytes"))

    @torch.no_grad()
    def log_probs(self, idx: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """log_softmax of the logits at positions ``(rows[i], cols[i])`` of the batch ``idx`` (B, T): (N, vocab)."""
        autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if self.device.startswith("cuda")
                    else contextlib.nullcontext())
        with autocast:
            logits = self.model(idx.long())
        return F.log_softmax(logits[rows.long(), cols.long()].float(), -1).cpu()


def serve_model(path: str, device: str = "cpu") -> ServedModel:
    """The model server's factory: the trained model of ``save_checkpoint``'s file, ready to be asked."""
    return ServedModel(Path(path), device)
