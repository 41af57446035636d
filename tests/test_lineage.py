"""The JSONL store: one write per record, torn and corrupt lines, queries, unique numbers under concurrency."""
from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path

import pytest

from pytest_autoresearch.lineage import (REQUIRED_KEYS, Lineage, LineageWarning, ancestors, best,
                                         failures, make_view, recent, top_k)


def rec(trial: int, label: str = "discard", score: float | None = 1.0, parent: int | None = 0, **kw) -> dict:
    r = {k: None for k in REQUIRED_KEYS}
    r.update(schema=1, task="t", trial=trial, label=label, score=score, parent=parent, metrics={}, specialist="opt",
             hypothesis=f"h{trial}", notes="")
    r.update(kw)
    return r


def test_append_writes_one_line_per_record_and_reads_back(tmp_path: Path):
    lin = Lineage(tmp_path / "lineage.jsonl")
    lin.append(rec(0, "baseline", parent=None, hypothesis="naïve ünïcode"))
    lin.append(rec(1))
    raw = (tmp_path / "lineage.jsonl").read_bytes()
    assert raw.count(b"\n") == 2 and "naïve".encode() in raw
    assert [r["trial"] for r in lin.records()] == [0, 1]


def test_append_refuses_a_record_missing_contract_keys(tmp_path: Path):
    with pytest.raises(ValueError, match="lacks keys"):
        Lineage(tmp_path / "l.jsonl").append({"trial": 3})


def test_torn_last_line_is_skipped_and_the_next_append_stays_readable(tmp_path: Path):
    lin = Lineage(tmp_path / "lineage.jsonl")
    lin.append(rec(0, "baseline", parent=None))
    with open(lin.path, "ab") as f:
        f.write(b'{"schema": 1, "trial": 1, "lab')  # a writer killed mid-record
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a line being written right now is no reason to warn
        assert [r["trial"] for r in lin.records()] == [0]
    lin.append(rec(2))
    with pytest.warns(LineageWarning, match=r"lineage.jsonl:2: skipping corrupt"):
        assert [r["trial"] for r in lin.records()] == [0, 2]


def test_corrupt_middle_line_is_skipped_with_its_line_number(tmp_path: Path):
    p = tmp_path / "lineage.jsonl"
    p.write_text(json.dumps(rec(0, "baseline")) + "\nnot json at all\n" + json.dumps(rec(1)) + "\n[1, 2]\n")
    with pytest.warns(LineageWarning) as w:
        got = Lineage(p).records()
    assert [r["trial"] for r in got] == [0, 1]
    assert [str(x.message).split(": skipping")[0].rsplit(":", 1)[1] for x in w] == ["2", "4"]


def test_claim_continues_numbering_after_existing_records(tmp_path: Path):
    lin = Lineage(tmp_path / "lineage.jsonl")
    lin.append(rec(0, "baseline"))
    lin.append(rec(7))
    assert lin.claim_trial() == 8 and lin.claim_trial() == 9


def _claim_many(path: str, n: int, q) -> None:
    lin = Lineage(Path(path))
    for _ in range(n):
        t = lin.claim_trial()
        lin.append(rec(t))
        q.put(t)


def test_concurrent_claims_and_appends_never_collide(tmp_path: Path):
    path = tmp_path / "lineage.jsonl"
    q = mp.get_context("fork").Queue()
    procs = [mp.get_context("fork").Process(target=_claim_many, args=(str(path), 15, q)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    claimed = sorted(q.get() for _ in range(45))
    assert claimed == list(range(1, 46))
    assert sorted(r["trial"] for r in Lineage(path).records()) == claimed


def test_queries_best_topk_ancestors_recent_failures():
    rs = [rec(0, "baseline", 10.0, None), rec(1, "keep", 9.0, 0), rec(2, "gate_miss", 5.0, 1, notes="acc low"),
          rec(3, "keep", 8.5, 1), rec(4, "discard", 8.7, 3), rec(5, "crash", None, 3, notes="boom")]
    assert best(rs, "minimize")["trial"] == 3
    assert best(rs, "maximize")["trial"] == 0, "only baseline/keep can be best; a gate miss never is"
    assert [r["trial"] for r in top_k(rs, "minimize", 2)] == [3, 1]
    assert [r["trial"] for r in ancestors(rs, 3)] == [1, 0]
    assert [r["trial"] for r in recent(rs, 2)] == [4, 5]
    assert [r["trial"] for r in failures(rs, 5)] == [2, 5]
    view = make_view("t", "loss", "minimize", rs, top=2, n_recent=3, n_failures=1)
    text = view.render()
    assert "Current best: trial 3" in text and "notes: boom" in text and "acc low" not in text


def _hold_claim(path: str, trial: int, ready, done) -> None:
    Lineage(Path(path)).claim_code({"trial": trial, "specialist": "opt", "content_hash": "c1", "code_hash": "k1",
                                    "hypothesis": "lr 0.2"})
    ready.set()
    done.wait(60)


def test_code_in_flight_is_claimed_by_one_trial_across_processes_until_recorded_or_its_process_dies(tmp_path):
    path = tmp_path / "lineage.jsonl"
    lin = Lineage(path)
    lin.append(rec(0, "baseline"))
    ctx = mp.get_context("fork")
    ready, done = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_claim, args=(str(path), 1, ready, done))
    holder.start()
    try:
        assert ready.wait(30)
        flying = lin.in_flight()
        assert [(c["trial"], c["pid"], c["hypothesis"]) for c in flying] == [(1, holder.pid, "lr 0.2")]
        # The same code, by its text or by its syntax tree, is taken; other code is not.
        assert lin.claim_code({"trial": 2, "content_hash": "c1", "code_hash": "other"})["trial"] == 1
        assert lin.claim_code({"trial": 3, "content_hash": "other", "code_hash": "k1"})["trial"] == 1
        assert lin.claim_code({"trial": 4, "content_hash": "c4", "code_hash": "k4"}) is None
        assert sorted(c["trial"] for c in lin.in_flight()) == [1, 4]
        assert "trial 1 [opt] parent=None: lr 0.2" in make_view("t", "loss", "minimize", lin.records(),
                                                                  in_flight=lin.in_flight()).render()
        lin.release_code(4)
        assert [c["trial"] for c in lin.in_flight()] == [1]
    finally:
        done.set()
        holder.join(30)
    # Its process is gone without recording trial 1 (killed): the claim is stale and the code free again.
    assert lin.in_flight() == []
    assert lin.claim_code({"trial": 5, "content_hash": "c1", "code_hash": "k1"}) is None
    # A recorded trial's claim is over even while its process lives.
    lin.append(rec(5))
    assert lin.in_flight() == [] and not list((tmp_path / "in_flight").glob("*.json"))
