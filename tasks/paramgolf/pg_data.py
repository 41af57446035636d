"""Evaluator-side data and scoring code for the Parameter Golf task (never imported by a recipe).

- The challenge's token shard format: a header of 256 little-endian int32 (magic 20240520, version 1,
  number of tokens, then zeros) followed by the tokens as little-endian uint16.
- SentencePiece byte accounting as the challenge does it: a target token's bytes are its piece's UTF-8 length
  (byte-fallback tokens: 1, control/unknown/unused: 0), plus 1 for a leading "▁" unless the previous token is
  a boundary (control/unknown/unused) token.
- Sliding-window scoring with the normalization check; a ``pytest_autoresearch.causality.CausalProbe`` rides along.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

SHARD_MAGIC = 20240520
SHARD_VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4


def write_shard(path: str | Path, tokens: Sequence[int] | np.ndarray) -> None:
    """Write tokens in the challenge's shard format (used by tests and data preparation)."""
    toks = np.asarray(tokens)
    if toks.size and (toks.min() < 0 or toks.max() > 65535):
        raise ValueError("shard tokens must fit in uint16")
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:3] = (SHARD_MAGIC, SHARD_VERSION, toks.size)
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(toks.astype("<u2").tobytes())


def read_shard(path: str | Path) -> np.ndarray:
    """Tokens of one shard as uint16; raises ValueError naming the file on any format mismatch."""
    path = Path(path)
    header = np.fromfile(path, dtype="<i4", count=HEADER_INTS)
    if header.size != HEADER_INTS:
        raise ValueError(f"{path}: shorter than the {HEADER_BYTES}-byte shard header")
    if int(header[0]) != SHARD_MAGIC or int(header[1]) != SHARD_VERSION:
        raise ValueError(f"{path}: bad shard header (magic {int(header[0])}, version {int(header[1])}; "
                         f"expected {SHARD_MAGIC}, {SHARD_VERSION})")
    n = int(header[2])
    expected = HEADER_BYTES + 2 * n
    if path.stat().st_size != expected:
        raise ValueError(f"{path}: header says {n} tokens ({expected} bytes) but the file has "
                         f"{path.stat().st_size} bytes")
    return np.fromfile(path, dtype="<u2", count=n, offset=HEADER_BYTES)


def read_shards(paths: Iterable[str | Path]) -> np.ndarray:
    arrays = [read_shard(p) for p in sorted(map(str, paths))]
    if not arrays:
        raise FileNotFoundError("no shard files given")
    return np.concatenate(arrays)


# --- SentencePiece byte accounting ------------------------------------------------------------------------

def piece_byte_luts(pieces: Sequence[tuple[str, str]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Byte-accounting tables from a piece table of ``(piece, kind)``; kind is one of normal, byte, control,
    unknown, unused. Returns (base_bytes, has_leading_space, is_boundary), one entry per token id."""
    n = len(pieces)
    base = np.zeros(n, dtype=np.int64)
    space = np.zeros(n, dtype=bool)
    boundary = np.ones(n, dtype=bool)
    for i, (piece, kind) in enumerate(pieces):
        if kind in ("control", "unknown", "unused"):
            continue
        boundary[i] = False
        if kind == "byte":
            base[i] = 1
            continue
        if piece.startswith("\u2581"):
            space[i] = True
            piece = piece[1:]
        base[i] = len(piece.encode("utf-8"))
    return base, space, boundary


def sentencepiece_pieces(model_file: str | Path) -> list[tuple[str, str]]:
    """The piece table of a SentencePiece model (needs the ``sentencepiece`` package: full variant only)."""
    import sentencepiece as spm  # imported here: the mini variant does not need it

    sp = spm.SentencePieceProcessor(model_file=str(model_file))
    out = []
    for i in range(int(sp.vocab_size())):
        kind = ("control" if sp.is_control(i) else "unknown" if sp.is_unknown(i) else
                "unused" if sp.is_unused(i) else "byte" if sp.is_byte(i) else "normal")
        out.append((sp.id_to_piece(i), kind))
    return out


def target_bytes(stream: np.ndarray, luts: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    """Bytes each token of ``stream`` contributes when predicted (entry 0 is 0: the first token is never a
    target)."""
    base, space, boundary = luts
    out = np.zeros(stream.size, dtype=np.int64)
    prev, tgt = stream[:-1], stream[1:]
    out[1:] = base[tgt] + (space[tgt] & ~boundary[prev])
    return out


def bits_per_byte(nll_nats_sum: float, n_bytes: int) -> float:
    """Total cross-entropy (nats) over the scored tokens -> bits per UTF-8 byte of the text they encode."""
    if n_bytes <= 0:
        raise ValueError("no bytes were scored")
    return nll_nats_sum / math.log(2.0) / n_bytes


# --- scoring ------------------------------------------------------------------------------------------------

class RecipeFault(ValueError):
    """The recipe's model answered something unusable: the harness labels the trial ``crash``."""

    recipe_fault = True


def windows(n_tokens: int, seq_len: int, stride: int) -> list[tuple[int, int, int]]:
    """Evaluation windows over a stream of ``n_tokens``: (start, end, first_scored).

    A window feeds tokens [start, end) and predicts tokens start + 1 .. end; only targets with index >=
    first_scored count, so every token after the first is scored exactly once. Every window but a too-short
    stream's is ``seq_len`` long. stride == seq_len scores disjoint spans; a smaller stride gives each scored
    token more context (sliding window) at seq_len / stride times the compute."""
    if seq_len < 1 or not 1 <= stride <= seq_len:
        raise ValueError(f"need 1 <= eval_stride ({stride}) <= eval_seq_len ({seq_len})")
    out, done = [], 0  # done: index of the last scored target
    last = n_tokens - 1
    while done < last:
        end_t = min(done + (seq_len if done == 0 else stride), last)  # last target of this window
        start = max(0, end_t - seq_len)
        out.append((start, end_t, done + 1))
        done = end_t
    return out


def scoring_batches(n_tokens: int, seq_len: int, stride: int, batch_size: int) -> list[list[tuple[int, int, int]]]:
    """The windows grouped into batches of one length, at most ``batch_size`` each, in the order they are sent."""
    groups: dict[int, list[tuple[int, int, int]]] = {}
    for w in windows(n_tokens, seq_len, stride):
        groups.setdefault(w[1] - w[0], []).append(w)
    return [ws[i:i + batch_size] for ws in groups.values() for i in range(0, len(ws), batch_size)]


def as_log_probs(out: Any, shape: tuple[int, int, int], torch_mod: Any, device: str = "cpu") -> Any:
    """A model's answer as a float32 tensor on ``device``, or RecipeFault when it is not a (B, T, V) float array."""
    torch = torch_mod
    if isinstance(out, np.ndarray) and out.dtype.kind == "f":
        with warnings.catch_warnings():
            # Arrays read from the model server's pipe are read-only; they are only read here.
            warnings.simplefilter("ignore", UserWarning)
            out = torch.from_numpy(out)
    if not isinstance(out, torch.Tensor) or not out.is_floating_point():
        raise RecipeFault(f"log_probs must return a float array of shape {shape}, got {type(out).__name__}"
                          + (f" of {out.dtype}" if hasattr(out, "dtype") else ""))
    if tuple(out.shape) != shape:
        raise RecipeFault(f"log_probs returned shape {tuple(out.shape)} for an input of {shape[:2]}; expected "
                          f"{shape} (batch, positions, vocab_size)")
    return out.to(device=device, dtype=torch.float32)


def score_stream(log_probs: Callable[[np.ndarray], Any], stream: np.ndarray, seq_len: int, stride: int,
                 batch_size: int, vocab_size: int, torch_mod: Any, device: str = "cpu", norm_tol: float = 1e-3,
                 probe: Any = None) -> dict:
    """Sum of next-token NLL over every token of ``stream`` but the first, with the normalization check.

    ``log_probs(x: int64[B, T]) -> float[B, T, V]`` is the artifact's scoring function (a model server's, or a
    plain function in tests). ``probe`` sees every batch and its answer and checks the ones it chose."""
    torch = torch_mod
    nll, n_tok, worst = 0.0, 0, 0.0
    for i, chunk in enumerate(scoring_batches(stream.size, seq_len, stride, batch_size)):
        length = chunk[0][1] - chunk[0][0]
        starts = np.array([s for s, _, _ in chunk], dtype=np.int64)
        seqs = stream[starts[:, None] + np.arange(length + 1)[None]].astype(np.int64)
        x = np.ascontiguousarray(seqs[:, :-1])
        lp = as_log_probs(log_probs(x), (len(chunk), length, vocab_size), torch, device)
        if probe is not None:
            probe.check(i, x, lp)
        lse = torch.logsumexp(lp, dim=-1)
        worst = max(worst, float(torch.nan_to_num(lse, nan=math.inf).abs().max()))
        tgt = torch.from_numpy(seqs[:, 1:]).to(device)
        tgt_lp = lp.gather(-1, tgt[..., None]).squeeze(-1)
        first = np.array([f for _, _, f in chunk])[:, None]
        mask = torch.from_numpy(starts[:, None] + 1 + np.arange(length)[None] >= first).to(device)
        nll -= float(tgt_lp[mask].double().sum())
        n_tok += int(mask.sum())
    if n_tok != stream.size - 1:
        raise AssertionError(f"scored {n_tok} tokens, expected {stream.size - 1}")
    normalized = worst <= norm_tol
    return {"nll_sum": nll, "tokens": n_tok, "val_loss": nll / max(n_tok, 1), "normalized": normalized,
            "normalization_reason": "" if normalized else
            f"log-probabilities do not sum to 1 at some position: |logsumexp| reached {worst:.3g} "
            f"(tolerance {norm_tol:g}); the model must output a normalized next-token distribution"}
