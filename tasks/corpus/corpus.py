"""Loader for the offline public-domain English corpus (``english.jsonl.gz``; provenance in README.md).

Task folders are not packages. A task's evaluator imports this file by path::

    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "corpus"))
    import corpus
    train_docs, val_docs = corpus.split_documents(corpus.load_documents())

It uses only the standard library, so any process (stage, evaluator, test) can load it.
"""
from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

DEFAULT_PATH = Path(__file__).resolve().parent / "english.jsonl.gz"
KEYS = ("id", "title", "source", "text")


def load_documents(path: str | Path | None = None) -> list[dict]:
    """All documents, in file order: dicts with ``id``, ``title``, ``source`` and ``text`` (one chapter,
    book or scene each)."""
    path = Path(path) if path is not None else DEFAULT_PATH
    if not path.is_file():
        raise FileNotFoundError(f"corpus file {path} is missing; rebuild it with "
                                f"`python tasks/corpus/build_corpus.py` (needs PyPI access)")
    docs = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            doc = json.loads(line)
            missing = [k for k in KEYS if not isinstance(doc.get(k), str)]
            if missing:
                raise ValueError(f"{path} line {n}: missing or non-string key(s) {missing}")
            docs.append(doc)
    return docs


def is_validation(doc_id: str, val_fraction: float = 0.1) -> bool:
    """Whether a document belongs to the validation split: decided by a hash of its id alone, so the split
    does not depend on file order or on which other documents exist."""
    h = int.from_bytes(hashlib.sha256(doc_id.encode("utf-8")).digest()[:8], "big")
    return h / 2.0**64 < val_fraction


def split_documents(docs: list[dict], val_fraction: float = 0.1) -> tuple[list[dict], list[dict]]:
    """``(train_docs, val_docs)``, disjoint by document, deterministic, order preserved."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    train, val = [], []
    for d in docs:
        (val if is_validation(d["id"], val_fraction) else train).append(d)
    return train, val
