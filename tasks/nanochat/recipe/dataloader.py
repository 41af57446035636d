"""Training batches, from the source the scale declares (``DATA_SOURCE`` in scale_<variant>.py).

``mix`` (mini): two files the task stages into ``ctx.data_dir``:
- ``train_docs.jsonl``: {"id", "text"} per line, the training split of the offline English corpus;
- ``procedural_train.jsonl``: {"task", "text"} per line, blocks of dyck / repeat-copy / operator examples rendered
  like few-shot prompts (drawn with a public seed; the evaluator's items are excluded).
Every document starts with BOS; each source is shuffled per pass and packed into one token stream (nanochat's
original packing); every batch row is T + 1 consecutive tokens of one of the two streams.

``shards`` (full): pretraining shards staged into ``ctx.data_dir/shards``, read in file-name order and cycled:
- ``*.bin``: llm.c / modded-nanogpt token shards (256 int32 header: magic 20240520, version 1, token count; then
  uint16 GPT-2 ids, each document starting with ``<|endoftext|>``). Needs TOKENIZER = "gpt2".
- ``*.parquet``: nanochat's own text shards (a ``text`` column; needs pyarrow).
- ``*.jsonl`` / ``*.jsonl.gz``: one {"text": ...} per line.
Text is tokenized on the fly with BOS before each document (in the training loop's thread, as nanochat does;
``.bin`` shards skip that cost). Rows are B slices of T + 1 consecutive tokens of the packed stream (nanochat's
original loader).
"""
from __future__ import annotations

import gzip
import json
import random
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch


def make_loader(ctx: Any, tok: Any, batch_size: int, seq_len: int, device: str, source: str = "shards",
                **kwargs: Any) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless (inputs, targets) batches of shape (batch_size, seq_len) on ``device`` from ``source``."""
    if source == "mix":
        return mix_batches(ctx, tok, batch_size, seq_len, device, **kwargs)
    if source == "shards":
        return shard_batches(ctx, tok, batch_size, seq_len, device)
    raise ValueError(f"unknown DATA_SOURCE {source!r} (mix or shards)")


# -- mix: the offline corpus and procedural blocks -------------------------------------------------------------

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


def mix_batches(ctx: Any, tok: Any, batch_size: int, seq_len: int, device: str, procedural_fraction: float = 0.3,
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


# -- shards: pretraining token or text shards ------------------------------------------------------------

BIN_MAGIC, BIN_HEADER_INTS = 20240520, 256


def shard_paths(data_dir: Path) -> list[Path]:
    folder = Path(data_dir) / "shards"
    paths = sorted(p for p in folder.iterdir() if p.name.endswith((".bin", ".parquet", ".jsonl", ".jsonl.gz")))
    if not paths:
        raise FileNotFoundError(f"no training shards in {folder}; the task's stage() links them from data_dir")
    return paths


def read_bin(path: Path) -> np.ndarray:
    header = np.fromfile(path, dtype=np.int32, count=BIN_HEADER_INTS)
    if header.size < 3 or header[0] != BIN_MAGIC:
        raise ValueError(f"{path}: not a .bin token shard (magic {header[:1]} != {BIN_MAGIC})")
    return np.memmap(path, dtype=np.uint16, mode="r", offset=BIN_HEADER_INTS * 4, shape=(int(header[2]),))


def iter_texts(path: Path, batch: int = 256) -> Iterator[list[str]]:
    if path.name.endswith(".parquet"):
        try:
            import pyarrow.parquet as pq
        except ImportError as e:
            raise ImportError(f"{path}: parquet shards need pyarrow (pip install pyarrow)") from e
        pf = pq.ParquetFile(path)
        for rg in range(pf.num_row_groups):
            texts = pf.read_row_group(rg, columns=["text"]).column("text").to_pylist()
            for i in range(0, len(texts), batch):
                yield texts[i:i + batch]
        return
    opener = gzip.open if path.name.endswith(".gz") else open
    texts: list[str] = []
    with opener(path, "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                texts.append(json.loads(line)["text"])
                if len(texts) == batch:
                    yield texts
                    texts = []
    if texts:
        yield texts


def token_chunks(paths: list[Path], tok: Any) -> Iterator[np.ndarray]:
    """The packed token stream, one chunk at a time, cycling over the shards forever."""
    while True:
        for path in paths:
            if path.name.endswith(".bin"):
                if tok.name != "gpt2":
                    raise ValueError(f"{path.name} holds GPT-2 token ids; set TOKENIZER = 'gpt2' in the scale file")
                tokens = read_bin(path)
                for s in range(0, len(tokens), 1 << 22):
                    yield np.asarray(tokens[s:s + (1 << 22)], dtype=np.int64)
                continue
            for texts in iter_texts(path):
                encoded = tok.encode_batch(texts) if hasattr(tok, "encode_batch") else [tok.encode(t) for t in texts]
                yield np.concatenate([np.array([tok.bos_id, *ids], dtype=np.int64) for ids in encoded])


def shard_batches(ctx: Any, tok: Any, batch_size: int, seq_len: int,
                  device: str) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless (inputs, targets) batches of shape (batch_size, seq_len) on ``device``."""
    need = batch_size * seq_len + 1
    buf = np.empty(0, dtype=np.int64)
    pin = device == "cuda"
    for chunk in token_chunks(shard_paths(ctx.data_dir), tok):
        buf = np.concatenate([buf, chunk])
        while len(buf) >= need:
            t = torch.from_numpy(buf[:need].copy())
            buf = buf[need - 1:]
            if pin:
                t = t.pin_memory()
            yield (t[:-1].view(batch_size, seq_len).to(device, non_blocking=True),
                   t[1:].view(batch_size, seq_len).to(device, non_blocking=True))
