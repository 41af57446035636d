"""Tokenizers the recipe can train with, by name (stored in the checkpoint so the evaluator uses the same one).

- ``bytes``: UTF-8 bytes (ids 0..255) plus a BOS id 256; vocabulary padded to 320. Needs nothing, works offline.
- ``gpt2``: OpenAI's GPT-2 BPE through ``tiktoken`` (``pip install tiktoken``); recipe processes have no network,
  so the task's stage() caches the 50257-token vocabulary in ``data_dir/tiktoken``, which ``get_tokenizer`` reads
  when given ``cache_dir=data_dir``. BOS is ``<|endoftext|>`` (50256), the document separator of the pre-tokenized
  FineWeb ``.bin`` shards; vocabulary padded to 50304.

The evaluator runs the tokenizer the checkpoint names in a sandboxed model server of its own, through the factory
``serve_<name>`` below (encode, decode, token_bytes, bos_id).

nanochat itself trains a 65536-token byte-level BPE (rustbpe, GPT-4 split pattern) on its own shards; these are
the documented substitutes (see the task README). Both scales of the recipe use this file.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol


class Tokenizer(Protocol):
    name: str
    vocab_size: int  # embedding rows (padded); every id the tokenizer emits is below it
    bos_id: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...

    def token_bytes(self, i: int) -> bytes: ...  # the text bytes of one token (b"" for BOS)


class ByteTokenizer:
    name = "bytes"
    vocab_size = 320
    bos_id = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    def token_bytes(self, i: int) -> bytes:
        return bytes([i]) if i < 256 else b""


class TiktokenTokenizer:
    """A tiktoken encoding (``gpt2`` by default); special tokens in the text are encoded as plain text."""

    def __init__(self, encoding: str = "gpt2", cache_dir: Path | None = None) -> None:
        try:
            import tiktoken
        except ImportError as e:
            raise ImportError("tokenizer 'gpt2' needs tiktoken: pip install tiktoken (or train with TOKENIZER = "
                              "'bytes' on text shards)") from e
        if cache_dir is not None and "TIKTOKEN_CACHE_DIR" not in os.environ:
            os.environ["TIKTOKEN_CACHE_DIR"] = str(Path(cache_dir) / "tiktoken")
        self._enc = tiktoken.get_encoding(encoding)
        self.name = encoding
        self.bos_id = self._enc.eot_token
        self.vocab_size = -(-self._enc.n_vocab // 64) * 64

    def encode(self, text: str) -> list[int]:
        return self._enc.encode_ordinary(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self._enc.encode_ordinary_batch(texts)

    def decode(self, ids: list[int]) -> str:
        return self._enc.decode(list(ids))

    def token_bytes(self, i: int) -> bytes:
        return b"" if i == self.bos_id else self._enc.decode_single_token_bytes(i)


# Embedding rows per tokenizer, known without loading it (prepare() builds the model with no data at hand).
VOCAB_SIZES = {"bytes": ByteTokenizer.vocab_size, "gpt2": 50304}


def get_tokenizer(name: str, cache_dir: Path | None = None) -> Tokenizer:
    if name == "bytes":
        return ByteTokenizer()
    if name == "gpt2":
        return TiktokenTokenizer("gpt2", cache_dir)
    raise ValueError(f"unknown tokenizer {name!r}: use 'bytes' or 'gpt2'")


def serve_bytes(device: str = "cpu") -> ByteTokenizer:
    """The evaluator's tokenizer server for checkpoints trained with ``bytes``."""
    return ByteTokenizer()


def serve_gpt2(device: str = "cpu", data_dir: str | None = None) -> TiktokenTokenizer:
    """The evaluator's tokenizer server for ``gpt2`` checkpoints: the vocabulary comes from the staged
    ``data_dir/tiktoken`` (the server has no network)."""
    return TiktokenTokenizer("gpt2", Path(data_dir) if data_dir else None)
