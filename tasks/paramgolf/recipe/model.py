"""Model, tokenizer and artifact format of the Parameter Golf recipe.

The evaluator runs this file in sandboxed model servers that see the trial's checkout and ``model.ptz``
alone, each calling ``load_artifact(path)``; it scores what that returns and nothing else. Every file in the
recipe folder counts toward the artifact's bytes, this one included.

What the evaluator needs from ``load_artifact``: an object with integer ``vocab_size``, ``eval_seq_len``,
``eval_stride``, ``tokenizer`` (``encode(str) -> list[int]``, ``pieces: list[bytes]``, ``bos_id``; ``None``
where the data comes pre-tokenized; served by a process of its own) and
``log_probs(x: LongTensor[B, T]) -> FloatTensor[B, T, vocab_size]``, the log-probability of every next token
at every position, each row depending only on ``x[b, :t + 1]`` (not on later tokens, not on other rows).
"""
from __future__ import annotations

import io
import lzma
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

# byte260 layout: ids 0..3 are specials (pad, bos, eos, unk), 4..259 the 256 byte values, 260.. learned merges.
N_SPECIAL = 4
BOS_ID = 1
LZMA_PRESET = 9 | lzma.PRESET_EXTREME


# autoresearch: begin tok
def merge_pair(ids: np.ndarray, a: int, b: int, new: int) -> np.ndarray:
    """Replace each left-to-right, non-overlapping occurrence of the pair (a, b) by ``new``."""
    if ids.size < 2:
        return ids
    idx = np.flatnonzero((ids[:-1] == a) & (ids[1:] == b))
    if idx.size == 0:
        return ids
    if a == b:  # runs like "aaa" pair up from the left; drop hits overlapping the previous kept one
        keep, last = np.ones(idx.size, dtype=bool), -2
        for j, i in enumerate(idx.tolist()):
            if i == last + 1:
                keep[j] = False
            else:
                last = i
        idx = idx[keep]
    out = ids.copy()
    out[idx] = new
    drop = np.zeros(ids.size, dtype=bool)
    drop[idx + 1] = True
    return out[~drop]


def learn_merges(ids: np.ndarray, n_merges: int) -> list[tuple[int, int]]:
    """Greedy byte-pair merges learned on a token array (pairs touching special tokens are never merged)."""
    merges: list[tuple[int, int]] = []
    ids = ids.astype(np.int64)
    for rank in range(n_merges):
        vocab = N_SPECIAL + 256 + rank
        ok = (ids[:-1] >= N_SPECIAL) & (ids[1:] >= N_SPECIAL)
        codes = ids[:-1][ok] * vocab + ids[1:][ok]
        if codes.size == 0:
            break
        counts = np.bincount(codes, minlength=vocab * vocab)
        best = int(counts.argmax())
        if counts[best] < 2:
            break
        a, b = divmod(best, vocab)
        merges.append((a, b))
        ids = merge_pair(ids, a, b, vocab)
    return merges


class Tokenizer:
    """Byte-level tokenizer with optional BPE merges. Lossless: the pieces of ``encode(text)`` concatenate to
    exactly ``text.encode('utf-8')``, which is what lets the evaluator count bytes exactly."""

    def __init__(self, merges: list[tuple[int, int]] | None = None) -> None:
        self.merges = [(int(a), int(b)) for a, b in (merges or [])]
        self.pieces: list[bytes] = [b""] * N_SPECIAL + [bytes([i]) for i in range(256)]
        for a, b in self.merges:
            self.pieces.append(self.pieces[a] + self.pieces[b])
        self.bos_id = BOS_ID

    @property
    def vocab_size(self) -> int:
        return len(self.pieces)

    def apply_merges(self, ids: np.ndarray) -> np.ndarray:
        for rank, (a, b) in enumerate(self.merges):
            ids = merge_pair(ids, a, b, N_SPECIAL + 256 + rank)
        return ids

    def encode_bytes(self, data: bytes) -> np.ndarray:
        return self.apply_merges(np.frombuffer(data, dtype=np.uint8).astype(np.int64) + N_SPECIAL)

    def encode(self, text: str) -> list[int]:
        return self.encode_bytes(text.encode("utf-8")).tolist()

    def decode(self, ids: list[int]) -> str:
        return b"".join(self.pieces[i] for i in ids).decode("utf-8", errors="replace")
# autoresearch: end tok


# autoresearch: begin arch
CONTROL_NAMES = ("attn_scale", "mlp_scale", "resid_mix", "q_gain", "skip_weights")


class CastedLinear(nn.Linear):
    """Weights stay fp32 for the optimizer; the matmul runs in the activations' dtype (bf16 under autocast)."""

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight.to(x.dtype))


def rms_norm(x: Tensor) -> Tensor:
    return F.rms_norm(x, (x.size(-1),))


class Rotary(nn.Module):
    def __init__(self, head_dim: int, base: float) -> None:
        super().__init__()
        self.register_buffer("inv_freq", 1.0 / base ** (torch.arange(0, head_dim, 2).float() / head_dim),
                             persistent=False)
        self._cache: tuple[int, torch.device, Tensor, Tensor] | None = None

    def forward(self, seq_len: int, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        if self._cache is None or self._cache[0] != seq_len or self._cache[1] != device:
            freqs = torch.outer(torch.arange(seq_len, device=device, dtype=torch.float32), self.inv_freq.to(device))
            self._cache = (seq_len, device, freqs.cos()[None, None], freqs.sin()[None, None])
        return self._cache[2].to(dtype), self._cache[3].to(dtype)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    h = x.size(-1) // 2
    x1, x2 = x[..., :h], x[..., h:]
    return torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin), -1)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, num_kv_heads: int, rope_base: float, qk_gain_init: float) -> None:
        super().__init__()
        if dim % num_heads or num_heads % num_kv_heads or (dim // num_heads) % 2:
            raise ValueError(f"model_dim={dim} must split into num_heads={num_heads} even-sized heads, and "
                             f"num_heads must be a multiple of num_kv_heads={num_kv_heads}")
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, dim // num_heads
        kv_dim = num_kv_heads * self.head_dim
        self.c_q = CastedLinear(dim, dim, bias=False)
        self.c_k = CastedLinear(dim, kv_dim, bias=False)
        self.c_v = CastedLinear(dim, kv_dim, bias=False)
        self.proj = CastedLinear(dim, dim, bias=False)
        self.proj.zero_init = True
        self.q_gain = nn.Parameter(torch.full((num_heads,), float(qk_gain_init)))
        self.rotary = Rotary(self.head_dim, rope_base)

    def forward(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        q = self.c_q(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.c_k(x).view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.c_v(x).view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
        cos, sin = self.rotary(t, x.device, q.dtype)
        q = apply_rotary(rms_norm(q), cos, sin) * self.q_gain.to(q.dtype)[None, :, None, None]
        k = apply_rotary(rms_norm(k), cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           enable_gqa=self.num_kv_heads != self.num_heads)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


activation = "relu2"  # options: relu2|leaky_relu2|gelu|silu


class MLP(nn.Module):
    def __init__(self, dim: int, mlp_mult: float) -> None:
        super().__init__()
        hidden = int(mlp_mult * dim)
        self.fc = CastedLinear(dim, hidden, bias=False)
        self.proj = CastedLinear(hidden, dim, bias=False)
        self.proj.zero_init = True

    def forward(self, x: Tensor) -> Tensor:
        h = self.fc(x)
        if activation == "relu2":
            h = torch.relu(h).square()
        elif activation == "leaky_relu2":
            h = F.leaky_relu(h, 0.5).square()
        elif activation == "gelu":
            h = F.gelu(h)
        else:
            h = F.silu(h)
        return self.proj(h)


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, num_kv_heads: int, mlp_mult: float, rope_base: float,
                 qk_gain_init: float) -> None:
        super().__init__()
        self.attn = Attention(dim, num_heads, num_kv_heads, rope_base, qk_gain_init)
        self.mlp = MLP(dim, mlp_mult)
        self.attn_scale = nn.Parameter(torch.ones(dim))
        self.mlp_scale = nn.Parameter(torch.ones(dim))
        # Learned mix of the running residual and the (normalized) input embedding.
        self.resid_mix = nn.Parameter(torch.stack((torch.ones(dim), torch.zeros(dim))))

    def forward(self, x: Tensor, x0: Tensor) -> Tensor:
        mix = self.resid_mix.to(x.dtype)
        x = mix[0] * x + mix[1] * x0
        x = x + self.attn_scale.to(x.dtype) * self.attn(rms_norm(x))
        return x + self.mlp_scale.to(x.dtype) * self.mlp(rms_norm(x))


class GPT(nn.Module):
    """Decoder-only transformer; the first half of the blocks feed U-net style skips into the second half."""

    def __init__(self, vocab_size: int, num_layers: int, model_dim: int, num_heads: int, num_kv_heads: int,
                 mlp_mult: float, tie_embeddings: bool = True, tied_embed_init_std: float = 0.005,
                 logit_softcap: float = 30.0, rope_base: float = 10000.0, qk_gain_init: float = 1.5) -> None:
        super().__init__()
        self.vocab_size, self.tie_embeddings, self.logit_softcap = vocab_size, tie_embeddings, logit_softcap
        self.tok_emb = nn.Embedding(vocab_size, model_dim)
        self.n_enc = num_layers // 2
        self.n_dec = num_layers - self.n_enc
        self.skip_weights = nn.Parameter(torch.ones(min(self.n_enc, self.n_dec), model_dim))
        self.blocks = nn.ModuleList(Block(model_dim, num_heads, num_kv_heads, mlp_mult, rope_base, qk_gain_init)
                                    for _ in range(num_layers))
        self.lm_head = None if tie_embeddings else CastedLinear(model_dim, vocab_size, bias=False)
        if tie_embeddings:
            nn.init.normal_(self.tok_emb.weight, std=tied_embed_init_std)
        for m in self.modules():
            if getattr(m, "zero_init", False):
                nn.init.zeros_(m.weight)

    def forward(self, input_ids: Tensor) -> Tensor:
        """Soft-capped logits, shape (B, T, V)."""
        x = x0 = rms_norm(self.tok_emb(input_ids))
        skips = []
        for block in self.blocks[: self.n_enc]:
            x = block(x, x0)
            skips.append(x)
        for i, block in enumerate(self.blocks[self.n_enc:]):
            if skips:
                x = x + self.skip_weights[i].to(x.dtype) * skips.pop()
            x = block(x, x0)
        x = rms_norm(x)
        logits = F.linear(x, self.tok_emb.weight.to(x.dtype)) if self.lm_head is None else self.lm_head(x)
        return self.logit_softcap * torch.tanh(logits / self.logit_softcap)
# autoresearch: end arch


# autoresearch: begin loss
def training_loss(logits: Tensor, targets: Tensor, label_smoothing: float = 0.0, z_loss: float = 0.0) -> Tensor:
    """Mean next-token cross-entropy in nats, with optional label smoothing and z-loss."""
    logits = logits.float().reshape(-1, logits.size(-1))
    loss = F.cross_entropy(logits, targets.reshape(-1), label_smoothing=label_smoothing)
    if z_loss:
        loss = loss + z_loss * torch.logsumexp(logits, -1).square().mean()
    return loss
# autoresearch: end loss


# autoresearch: begin eval
def log_probs(model: GPT, input_ids: Tensor, temperature: float = 1.0) -> Tensor:
    """Normalized next-token log-probabilities, fp32, shape (B, T, V)."""
    return F.log_softmax(model(input_ids).float() / temperature, -1)
# autoresearch: end eval


# autoresearch: begin quant
def quantize_tensor(t: Tensor, bits: int, clip_q: float) -> tuple[Tensor, Tensor]:
    """Symmetric integer quantization: one scale per row for matrices, one per tensor otherwise."""
    qmax = 2 ** (bits - 1) - 1
    t32 = t.float()
    if t32.ndim == 2:
        clip = torch.quantile(t32.abs(), clip_q, 1) if clip_q < 1.0 else t32.abs().amax(1)
        scale = (clip / qmax).clamp_min(1e-8)
        q = torch.round(t32.clamp(-clip[:, None], clip[:, None]) / scale[:, None])
        return q.clamp(-qmax, qmax).to(torch.int8), scale.to(torch.float16)
    clip = float(torch.quantile(t32.abs().flatten(), clip_q)) if t32.numel() else 0.0
    scale = torch.tensor(clip / qmax if clip > 0 else 1.0)
    q = torch.round(t32.clamp(-clip, clip) / scale)
    return q.clamp(-qmax, qmax).to(torch.int8), scale


def quantize_state_dict(state: dict[str, Tensor], bits: int = 8, clip_percentile: float = 99.99984,
                        keep_float_max_numel: int = 65536, keep_float_dtype: str = "float16") -> dict[str, Any]:
    """Large float tensors -> int8 payload plus scales; small and control tensors kept as float."""
    quantized, scales, kept = {}, {}, {}
    for name, t in state.items():
        t = t.detach().cpu().contiguous()
        if not t.is_floating_point():
            kept[name] = t
        elif any(c in name for c in CONTROL_NAMES):
            kept[name] = t.float()
        elif t.numel() <= keep_float_max_numel:
            kept[name] = t.to(getattr(torch, keep_float_dtype))
        else:
            quantized[name], scales[name] = quantize_tensor(t, bits, clip_percentile / 100.0)
    return {"quantized": quantized, "scales": scales, "kept": kept}


def dequantize_state_dict(obj: dict[str, Any]) -> dict[str, Tensor]:
    out = {name: t.float() for name, t in obj["kept"].items()}
    for name, q in obj["quantized"].items():
        s = obj["scales"][name].float()
        out[name] = q.float() * (s[:, None] if s.ndim else s)
    return out


def compress(raw: bytes, compressor: str) -> bytes:
    if compressor == "lzma":
        return b"L" + lzma.compress(raw, preset=LZMA_PRESET)
    return b"Z" + zlib.compress(raw, 9)


def decompress(blob: bytes) -> bytes:
    kind, body = blob[:1], blob[1:]
    if kind == b"L":
        return lzma.decompress(body)
    if kind == b"Z":
        return zlib.decompress(body)
    raise ValueError(f"unknown artifact compression tag {kind!r}")
# autoresearch: end quant


def save_artifact(path: Path, model: GPT, config: dict[str, Any], quant: dict[str, Any],
                  merges: list[tuple[int, int]] | None = None) -> int:
    """Quantize and compress the model; write it to ``path``; return its size in bytes."""
    payload = {"config": config, "merges": [list(m) for m in merges or []],
               "weights": quantize_state_dict(model.state_dict(), bits=quant["bits"],
                                              clip_percentile=quant["clip_percentile"],
                                              keep_float_max_numel=quant["keep_float_max_numel"],
                                              keep_float_dtype=quant["keep_float_dtype"])}
    buf = io.BytesIO()
    torch.save(payload, buf)
    blob = compress(buf.getvalue(), quant["compressor"])
    Path(path).write_bytes(blob)
    return len(blob)


class Artifact:
    """A model rebuilt from its artifact file alone: what the evaluator scores."""

    def __init__(self, model: GPT, tokenizer: Tokenizer | None, eval_cfg: dict[str, Any]) -> None:
        self.model, self.tokenizer = model.eval(), tokenizer
        self.vocab_size = model.vocab_size
        self.eval_seq_len = int(eval_cfg["seq_len"])
        self.eval_stride = int(eval_cfg["stride"])
        self.temperature = float(eval_cfg.get("temperature", 1.0))

    @torch.no_grad()
    def log_probs(self, x: Tensor) -> Tensor:
        return log_probs(self.model, x, self.temperature)


def load_artifact(path: str | Path, device: str = "cpu") -> Artifact:
    payload = torch.load(io.BytesIO(decompress(Path(path).read_bytes())), map_location="cpu", weights_only=True)
    cfg = dict(payload["config"])
    eval_cfg = cfg.pop("eval")
    uses_text = cfg.pop("tokenizer", "byte260") == "byte260"
    model = GPT(**cfg)
    model.load_state_dict(dequantize_state_dict(payload["weights"]), strict=True)
    tokenizer = Tokenizer([tuple(m) for m in payload["merges"]]) if uses_text else None
    return Artifact(model.to(device), tokenizer, eval_cfg)
