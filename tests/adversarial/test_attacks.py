"""Every attack in ``attacks.py``, run as a real trial through pytest in a subprocess, one session per group.

Each attack gets its own test: the label the harness gave is one the attack may get; it is not a keep and
the best is still the baseline; the lineage grew by exactly its one record; no process it started is alive;
the API key the session carried appears nowhere (lineage, logs, outputs, git history); and whatever it tried
to reach, its probe file says it found nothing.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from attacks import ALL, Attack  # noqa: E402
from sessions import GROUPS, Session, run_group  # noqa: E402


@pytest.fixture(scope="module")
def sessions(tmp_path_factory: pytest.TempPathFactory, sandbox: Any) -> dict[str, Session]:
    from concurrent.futures import ThreadPoolExecutor

    # The groups are independent sessions (own vault, lineage, listener): run them side by side.
    roots = {g: tmp_path_factory.mktemp(f"vault-{g}") for g in GROUPS}
    with ThreadPoolExecutor(len(GROUPS)) as pool:
        futures = {g: pool.submit(run_group, g, roots[g]) for g in GROUPS}
        return {g: f.result() for g, f in futures.items()}

@pytest.mark.parametrize("attack", ALL, ids=[f"{a.mechanism}-{a.name}" for a in ALL])
def test_attack_is_labelled_and_changes_nothing(sessions: dict[str, Session], attack: Attack) -> None:
    s = sessions[attack.group]
    trial = s.trial_of(attack)
    assert trial in s.records, f"no record for {attack.name}:\n{s.output[-3000:]}"
    v = s.verdict(attack)
    rec = s.records[trial]
    assert v["labelled_right"], (rec["label"], rec["notes"][:1500])
    assert v["score_unchanged"] and v["best_is_baseline"], "the attack was kept, or the best is no longer the baseline"
    assert v["lineage_unchanged"], "the lineage changed other than by this trial's record"
    assert v["orphans"] == 0, f"processes of the attack are still alive: {s.evidence[trial]['procs']}"
    assert v["leaks"] == 0, f"the API key reached {s.evidence[trial]['key_hits']}"
    for probe in attack.probes:
        assert s.probe_files(trial, probe), f"the attack left no {probe} probe: it did not run as written"
    assert v["reached"] == [], f"{attack.name} reached {v['reached']}"


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_session_survives_every_attack(sessions: dict[str, Session], group: str) -> None:
    s = sessions[group]
    out = s.output
    assert "INTERNALERROR" not in out and s.proc.returncode in (0, 1), out[-3000:]
    assert s.n_lines == len(s.attacks) + 1 == len(s.records), "a record was lost, forged or repeated"
    assert sorted(s.records) == list(range(len(s.attacks) + 1))
    assert 999 not in s.records
    assert s.key not in out, "the API key reached the terminal"
    assert s.listener.connections == 0, "a sandboxed process reached a loopback server"
    assert not (s.root / "tmp" / "leak").exists()


def test_control_characters_never_reach_the_record(sessions: dict[str, Session]) -> None:
    s = sessions["mse"]
    for name in ("control_characters_in_notes", "forged_record_in_hypothesis"):
        rec = s.records[[a.name for a in s.attacks].index(name) + 1]
        text = rec["notes"] + rec["hypothesis"]
        assert not any(c in text for c in "\x1b\r\x08\u202e"), repr(text[:300])
    crashed = s.records[[a.name for a in s.attacks].index("control_characters_in_notes") + 1]
    assert "ALL TESTS PASSED" in crashed["notes"]


def test_key_shaped_text_is_masked(sessions: dict[str, Session]) -> None:
    s = sessions["mse"]
    rec = s.records[[a.name for a in s.attacks].index("key_shaped_text_in_an_exception") + 1]
    assert "[secret]" in rec["notes"] and "AAAAAAAAAAAAAAAAAAAA" not in rec["notes"]
    assert "AAAAAAAAAAAAAAAAAAAA" not in (s.proc.stdout + s.proc.stderr)


def test_the_log_flood_was_capped(sessions: dict[str, Session]) -> None:
    s = sessions["res"]
    trial = [a.name for a in s.attacks].index("flood_the_log") + 1
    logs = list((s.lineage / "trials" / f"{trial:05d}" / "phases").glob("train-seed-*/train.log"))
    assert logs and all(p.stat().st_size < (1 << 20) + (100 << 10) for p in logs), [p.stat().st_size for p in logs]


def test_the_progress_flood_left_a_small_record(sessions: dict[str, Session]) -> None:
    from pytest_autoresearch.early_stop import MAX_KEPT

    s = sessions["res"]
    rec = s.records[[a.name for a in s.attacks].index("flood_the_progress_channel") + 1]
    curves = rec["metrics"]["curve_per_seed"]
    assert curves and all(2 <= len(c) <= MAX_KEPT for c in curves.values()), {k: len(c) for k, c in curves.items()}
    assert all(c[-1][0] < 200000 for c in curves.values()), "points past the harness' cap were kept"
