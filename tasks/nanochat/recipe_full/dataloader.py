"""Training batches for the full variant: pretraining shards staged (as symlinks) into ``ctx.data_dir/shards``.

Shard formats, read in file-name order and cycled:
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
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

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
                    raise ValueError(f"{path.name} holds GPT-2 token ids; set TOKENIZER = 'gpt2' in train.py")
                tokens = read_bin(path)
                for s in range(0, len(tokens), 1 << 22):
                    yield np.asarray(tokens[s:s + (1 << 22)], dtype=np.int64)
                continue
            for texts in iter_texts(path):
                encoded = tok.encode_batch(texts) if hasattr(tok, "encode_batch") else [tok.encode(t) for t in texts]
                yield np.concatenate([np.array([tok.bos_id, *ids], dtype=np.int64) for ids in encoded])


def make_loader(ctx: Any, tok: Any, batch_size: int, seq_len: int, device: str,
                **_: Any) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
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
