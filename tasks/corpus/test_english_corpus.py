"""The committed English corpus loads, has its provenance fields, and splits by document without overlap."""
from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import corpus  # noqa: E402


def test_corpus_loads_with_fields_and_size() -> None:
    docs = corpus.load_documents()
    assert len(docs) > 300
    assert corpus.DEFAULT_PATH.stat().st_size < 1_200_000
    assert sum(len(d["text"]) for d in docs) > 2_000_000
    assert all(d["source"] and d["title"] and d["text"].strip() for d in docs)
    assert len({d["id"] for d in docs}) == len(docs)


def test_split_is_disjoint_deterministic_and_order_free() -> None:
    docs = corpus.load_documents()
    train, val = corpus.split_documents(docs, 0.1)
    assert {d["id"] for d in train}.isdisjoint({d["id"] for d in val})
    assert len(train) + len(val) == len(docs)
    assert 0.05 < len(val) / len(docs) < 0.15
    # Reversing the input or dropping documents does not move any document across the split.
    _, val_rev = corpus.split_documents(list(reversed(docs)), 0.1)
    assert {d["id"] for d in val_rev} == {d["id"] for d in val}
    _, val_half = corpus.split_documents(docs[::2], 0.1)
    assert {d["id"] for d in val_half} == {d["id"] for d in docs[::2] if d in val}


def test_load_rejects_a_malformed_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl.gz"
    bad.write_bytes(gzip.compress((json.dumps({"id": "a", "title": "t", "text": "x"}) + "\n").encode()))
    with pytest.raises(ValueError, match="source"):
        corpus.load_documents(bad)
