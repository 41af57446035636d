"""Training batches for the mini variant: held-in English documents mixed with procedural task blocks.

Reads two files the task stages into ``ctx.data_dir``:
- ``train_docs.jsonl``: {"id", "text"} per line, the training split of the offline English corpus;
- ``procedural_train.jsonl``: {"task", "text"} per line, blocks of dyck / repeat-copy / operator examples rendered
  like few-shot prompts (drawn with a public seed; the evaluator's items are excluded).
Every document starts with BOS; each source is shuffled per pass and packed into one token stream (nanochat's
original packing); every batch row is T + 1 consecutive tokens of one of the two streams.
"""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Iterator

import torch


def _read_texts(path: Path) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the task's stage() writes it into the recipe's data_dir")
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f if line.strip()]


class _Stream:
    """An endless token stream over documents (BOS before each), reshuffled every pass."""

    def __init__(self, docs: list[list[int]], rng: random.Random, shuffle: bool) -> None:
        self.docs, self.rng, self.shuffle = docs, rng, shuffle
        self.order: list[int] = []
        self.buf: list[int] = []

    def take(self, n: int) -> list[int]:
        """The next ``n`` tokens; the last one is also the first of the next take (it is only a target here)."""
        while len(self.buf) < n:
            if not self.order:
                self.order = list(range(len(self.docs)))
                if self.shuffle:
                    self.rng.shuffle(self.order)
            self.buf.extend(self.docs[self.order.pop()])
        out = self.buf[:n]
        del self.buf[:n - 1]
        return out


def make_loader(ctx: Any, tok: Any, batch_size: int, seq_len: int, device: str, procedural_fraction: float = 0.3,
                shuffle: bool = True) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless (inputs, targets) batches of shape (batch_size, seq_len).

    Each row of T + 1 tokens comes from the procedural stream with probability ``procedural_fraction`` and from
    the English text stream otherwise, so the share of procedural tokens is that fraction on average.
    """
    docs = [[tok.bos_id] + tok.encode(t) for t in _read_texts(Path(ctx.data_dir) / "train_docs.jsonl")]
    blocks = [[tok.bos_id] + tok.encode(t) for t in _read_texts(Path(ctx.data_dir) / "procedural_train.jsonl")]
    rng = random.Random(ctx.seed)
    text, proc = _Stream(docs, rng, shuffle), _Stream(blocks, rng, shuffle)
    while True:
        rows = [(proc if rng.random() < procedural_fraction else text).take(seq_len + 1) for _ in range(batch_size)]
        chunk = torch.tensor(rows, dtype=torch.long)
        yield chunk[:, :-1].to(device, non_blocking=True), chunk[:, 1:].to(device, non_blocking=True)
