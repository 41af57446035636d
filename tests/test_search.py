"""Search: the bandit's allocation, parent rules, the progress channel and early stopping."""
from __future__ import annotations

import random
from collections import Counter

from conftest import ToyRun
from toytask import edit, write_toy_task

from pytest_autoresearch.allocation import (Prior, catalog_priors, choose_parent, choose_specialist,
                                           merge_specialists, reward)
from pytest_autoresearch.edits import Edit, apply_edits, content_hash
from pytest_autoresearch.early_stop import interpolate, reference, rule, thin
from pytest_autoresearch.task import Specialist, Surface, Technique


def _record(trial: int, specialist: str, label: str, *, gain: float = 0.0, bar: float = 0.01, score: float = 1.0,
            cost: float = 10.0) -> dict:
    return {"trial": trial, "specialist": specialist, "label": label, "score": score, "train_s": cost,
            "eval_s": 0.0, "commit": f"c{trial}", "acceptance": {"gain": gain, "threshold": bar}}


def test_the_bandit_shifts_turns_toward_the_specialist_that_yields():
    names = ["opt", "arch", "data"]
    rng = random.Random(0)
    records = [_record(0, "baseline", "baseline")]
    for t in range(1, 61):
        turn = choose_specialist("bandit", names, records, t, seed=0, explore=0.5, min_turns=1)
        name = names[turn.index]
        if name == "opt":   # yields: half its trials clear the bar, the rest are near misses
            rec = _record(t, name, "keep" if rng.random() < 0.5 else "discard", gain=0.015, bar=0.01)
        elif name == "arch":  # legal, but never better
            rec = _record(t, name, "discard", gain=-0.02)
        else:                 # mostly illegal
            rec = _record(t, name, "crash" if rng.random() < 0.8 else "discard", gain=-0.01)
        rec["turn"] = turn.to_json()
        records.append(rec)
    turns = Counter(r["specialist"] for r in records[1:])
    assert [r["specialist"] for r in records[1:4]] == names, "every specialist gets its first turn in order"
    assert turns["opt"] > 2 * turns["arch"] and turns["opt"] > 2 * turns["data"], turns
    assert turns["arch"] >= 2 and turns["data"] >= 2, f"exploration keeps sampling the others: {turns}"
    why = records[-1]["turn"]
    assert why["rule"] == "bandit" and "UCB index" in why["why"] and set(why["arms"]) == set(names)
    assert why["arms"]["data"]["legal"] < 0.5 and why["arms"]["opt"]["yield"] > why["arms"]["arch"]["yield"]


def test_first_turns_go_by_catalog_prior_and_a_keep_earns_another_turn():
    files = {"train.py": "lr = 0.1\nwd = 0.0\nwidth = 64\n"}
    specs = [Specialist("arch", Surface(files=("train.py",)), "",
                        catalog=(Technique("wide", "", (Edit("train.py", "width = 64", "width = 96"),), -0.01),)),
             Specialist("opt", Surface(files=("train.py",)), "",
                        catalog=(Technique("hot", "", (Edit("train.py", "lr = 0.1", "lr = 0.3"),), -0.2),
                                 Technique("full-scale", "", (Edit("train.py", "lr = 0.02", "lr = 0.05"),), -0.9))),
             Specialist("reg", Surface(files=("train.py",)), "",
                        catalog=(Technique("wd", "", (Edit("train.py", "wd = 0.0", "wd = 0.1"),), 0.05),))]
    priors = catalog_priors(specs, files, "minimize", 2.0, set())
    # The technique written for another scale does not apply, so it does not count; a worse one counts as 0.
    assert {n: p.gain for n, p in priors.items()} == {"arch": 0.005, "opt": 0.1, "reg": 0.0}
    assert (priors["opt"].technique, priors["reg"].technique) == ("hot", None)
    tried = {content_hash(apply_edits(files, specs[1].catalog[0].edits))}
    assert catalog_priors(specs, files, "minimize", 2.0, tried)["opt"].gain == 0.0, "a measured one is no prior"

    names = [s.name for s in specs]
    records = [_record(0, "baseline", "baseline")]
    order = []
    for t in range(1, 4):
        turn = choose_specialist("bandit", names, records, t, seed=0, priors=priors, min_turns=1)
        order.append(names[turn.index])
        records.append(_record(t, names[turn.index], "discard", gain=-0.01))
    assert order == ["opt", "arch", "reg"], "untried arms go largest prior first, then in the task's order"
    first = choose_specialist("bandit", names, records[:1], 1, seed=0, priors=priors, min_turns=1)
    assert "catalog expects up to 10% from 'hot'" in first.why
    assert first.focus == "hot" and first.to_json()["focus"] == "hot", "the agent is told which technique"
    # Win-stay: a keep during the first turns gives its specialist the next one, a discard ends the run.
    records = [_record(0, "baseline", "baseline"), _record(1, "opt", "keep", gain=0.02)]
    turn = choose_specialist("bandit", names, records, 2, seed=0, priors=priors, min_turns=1)
    assert names[turn.index] == "opt" and turn.why.startswith("win-stay")
    records.append(_record(2, "opt", "discard", gain=-0.01))
    assert names[choose_specialist("bandit", names, records, 3, seed=0, priors=priors, min_turns=1).index] == "arch"


def test_by_default_a_prior_is_one_pseudo_turn_so_arms_with_nothing_promised_wait():
    # Five specialists on a cost, at a 10% keep bar: only arch's and opt's catalogs promise anything.
    names = ["loss", "reg", "aug", "arch", "opt"]
    techniques = {"arch": [("narrow", 0.12), ("narrower", 0.06)], "opt": [("epochs", 0.09)]}

    def priors(records: list) -> dict:
        tried = {(r.get("turn") or {}).get("focus") for r in records}
        return {n: max([Prior(g, t) for t, g in techniques.get(n, []) if t not in tried] or [Prior(0.0)])
                for n in names}

    records = [_record(0, "baseline", "baseline")]
    for t in range(1, 7):
        turn = choose_specialist("bandit", names, records, t, seed=0, explore=0.5, bar=0.1,
                                 priors=lambda: priors(records))
        name = names[turn.index]
        if t == 1:
            assert name == "arch" and turn.focus == "narrow", turn.why
            assert "prior 0.600" in turn.why and turn.arms["loss"]["prior_reward"] == 0.0
        # arch's line pays: every trial of it clears the bar; nothing else moves the cost.
        rec = _record(t, name, "keep", gain=0.12, bar=0.1) if name == "arch" else _record(t, name, "discard")
        rec["turn"] = turn.to_json()
        records.append(rec)
    turns = Counter(r["specialist"] for r in records[1:])
    assert turns["arch"] >= 3 and turns["arch"] > max(turns[n] for n in names if n != "arch"), turns
    assert sum(turns[n] for n in ("loss", "reg", "aug")) <= 2, f"nothing promised, so they wait: {turns}"


def test_a_prior_the_measurements_do_not_bear_out_fades():
    names = ["promised", "quiet"]
    priors = {"promised": Prior(0.3, "big"), "quiet": Prior(0.0)}
    records = [_record(0, "baseline", "baseline")]
    picks = []
    for t in range(1, 6):
        turn = choose_specialist("bandit", names, records, t, seed=0, explore=0.5, bar=0.1, priors=priors)
        picks.append(names[turn.index])
        records.append(_record(t, names[turn.index], "discard", gain=-0.05))  # nothing ever pays
    # Twice the bar promised counts as one turn at reward 1; measured zeros outweigh it, then the other plays.
    assert picks[:3] == ["promised"] * 3 and "quiet" in picks[3:], picks


def test_yield_counts_cost_and_leaves_agent_side_failures_out():
    assert reward(_record(1, "a", "crash")) == 0.0
    assert reward(_record(1, "a", "discard", gain=0.005, bar=0.01)) == 0.25  # halfway to the bar
    assert reward(_record(1, "a", "keep", gain=0.05, bar=0.01)) == 1.0       # capped at twice the bar
    names = ["cheap", "dear"]
    records = [_record(0, "baseline", "baseline")]
    for t in range(1, 9):
        name = names[(t - 1) % 2]
        records.append(_record(t, name, "keep", gain=0.02, bar=0.01, cost=5.0 if name == "cheap" else 40.0))
    turn = choose_specialist("bandit", names, records, 9, seed=0, explore=0.0)
    assert names[turn.index] == "cheap", turn.arms
    # An API outage says nothing about the idea: those trials do not count against "dear".
    outage = [dict(_record(10 + i, "dear", "preflight_crash"), agent_error=True) for i in range(20)]
    assert choose_specialist("bandit", names, records + outage, 40, seed=0).arms["dear"]["turns"] == 4


def test_a_turn_being_measured_counts_as_its_specialists_turn():
    names = ["opt", "arch"]
    records = [_record(0, "baseline", "baseline"), _record(1, "opt", "discard", gain=0.005, bar=0.01)]
    # Dealing first turns: the one being measured is dealt, so the next goes to the other.
    assert names[choose_specialist("bandit", names, records[:1], 2, seed=0, min_turns=1).index] == "opt"
    assert names[choose_specialist("bandit", names, records[:1], 2, seed=0, min_turns=1,
                                   in_flight=["opt"]).index] == "arch"
    # UCB: arch's untried arm wins on exploration (0.59 against 0.13 + 0.42), until its first trial is in flight
    # (0.52 against 0.13 + 0.52).
    alone = choose_specialist("bandit", names, records, 2, seed=0, explore=0.5)
    assert names[alone.index] == "arch" and alone.arms["arch"]["bonus"] > alone.arms["opt"]["bonus"]
    busy = choose_specialist("bandit", names, records, 3, seed=0, explore=0.5, in_flight=["arch"])
    assert names[busy.index] == "opt" and busy.arms["arch"] == {**busy.arms["arch"], "turns": 0, "in_flight": 1}
    assert busy.arms["arch"]["yield"] is None   # nothing measured yet: no yield invented for it


def test_round_robin_and_random_are_still_there():
    names = ["a", "b", "c"]
    assert [choose_specialist("round_robin", names, [], t, 0).index for t in range(1, 7)] == [0, 1, 2, 0, 1, 2]
    draws = [choose_specialist("random", names, [], t, 0).index for t in range(1, 40)]
    assert set(draws) == {0, 1, 2} and draws == [choose_specialist("random", names, [], t, 0).index
                                                  for t in range(1, 40)]


def test_parent_rules():
    recs = [_record(0, "baseline", "baseline", score=1.0), _record(1, "opt", "keep", score=0.8),
            _record(2, "arch", "discard", score=0.85), _record(3, "arch", "crash", score=None),
            _record(4, "opt", "discard", score=0.9)]
    best = recs[1]
    assert choose_parent("best", recs, "minimize", best, "opt", 5, 0)[0] is best
    picks = Counter(choose_parent("tournament", recs, "minimize", best, "opt", t, 0, k=3)[0]["trial"]
                    for t in range(300))
    assert set(picks) == {1, 2, 4} and picks[1] > picks[2] > picks[4], picks  # rank-weighted, legal only
    parent, why = choose_parent("own_line", recs, "minimize", best, "arch", 5, 0)
    assert parent["trial"] == 2 and "arch" in why
    assert choose_parent("own_line", recs, "minimize", best, "opt", 5, 0)[0] is best


def test_merged_specialist_owns_every_surface():
    a = Specialist("a", Surface(regions=("train.py::opt",)), "A.")
    b = Specialist("b", Surface(regions=("train.py::arch",), files=("extra/*.py",)), "B.")
    m = merge_specialists([a, b])
    assert m.surface.regions == ("train.py::opt", "train.py::arch") and m.surface.files == ("extra/*.py",)
    assert "A." in m.brief and "B." in m.brief


def test_the_stop_rule_on_curves():
    ref = [[0, 4.0], [10, 2.0], [20, 1.0]]
    assert interpolate(ref, 15) == 1.5 and interpolate(ref, 25) is None
    mon = rule(ref, margin=0.1, min_fraction=0.25, patience=2, best_trial=3)
    assert mon(2, 100.0) is None, "too early to judge"
    assert mon(10, 2.1) is None and mon(12, 1.85) is None, "within the margin"
    assert mon(14, 2.5) is None, "behind once: patience"
    why = mon(16, 2.0)
    assert why and "step 16" in why and "trial 3" in why
    assert len(thin([[i, 1.0] for i in range(1000)], 50)) == 50
    assert reference({"metrics": {"curve_per_seed": {"1": [[0, 1], [5, 0.5]]}}}, 7) == [[0.0, 1.0], [5.0, 0.5]]


# The toy recipe reports a curve whose level scales with ``steps`` (a stand-in for a worse run), slowly.
CURVE = ("for i in range(30):\n        ctx.report(i, steps / (i + 1.0))\n        time.sleep(0.04)")


def test_early_stopping_stops_a_planted_hopeless_curve(toy: ToyRun):
    script = [{"edits": [edit("steps = 20  # range: 1..2000", "steps = 200  # range: 1..2000")],
               "hypothesis": "ten times the loss all along"},
              {"edits": [edit("use_bias = False", "use_bias = True")], "hypothesis": "same curve"}]
    write_toy_task(toy.root, script=script, train_extra=CURVE, seeds=(0,))
    r = toy.run("tasks/toy", "--autoresearch-trials", "2", "--autoresearch-agent", "scripted",
                "--autoresearch-override", "search.early_stop.enabled=true", "--autoresearch-override", "schedule=bandit")
    assert r.returncode == 0, r.output[-3000:]
    base, hopeless, fine = toy.records()
    assert len(base["metrics"]["curve_per_seed"]["0"]) == 30, "the baseline's whole curve is recorded"
    assert hopeless["label"] == "discard" and hopeless["early_stop"]["best_trial"] == 0, hopeless
    assert "stopped early" in hopeless["notes"] and hopeless["score"] is None
    kept = hopeless["metrics"]["curve_per_seed"]["0"]
    assert 8 <= len(kept) < 30, "judged from a quarter of the way, then stopped well before the end"
    assert fine.get("early_stop") is None and len(fine["metrics"]["curve_per_seed"]["0"]) == 30
    assert fine["label"] in ("keep", "discard") and fine["score"] is not None
    assert hopeless["turn"]["rule"] == "bandit" and fine["parent_rule"]["rule"] == "best"


def test_candidates_are_screened_against_a_fresh_measurement_of_the_best(toy: ToyRun):
    script = [{"edits": [edit("steps = 20  # range: 1..2000", "steps = 200  # range: 1..2000")]},
              {"edits": [edit("use_bias = False", "use_bias = True")]},
              {"edits": [edit("lr = 0.1", "lr = 0.05")]},
              {"edits": [edit("use_bias = False", "use_bias = True")]}]
    d = write_toy_task(toy.root, script=script, seeds=(0,), repeats=2, confirm=True)
    module = d / "test_toy.py"
    module.write_text(module.read_text().replace("confirm_keeps=True)", "confirm_keeps=True, refresh_best_every=1)"))
    r = toy.run("tasks/toy", "--autoresearch-trials", "4", "--autoresearch-agent", "scripted")
    assert r.returncode == 0, r.output[-3000:]
    recs = {x["trial"]: x for x in toy.records()}
    assert recs[1]["label"] == "keep" and recs[1]["acceptance"]["best_trial"] == 0
    assert "best_rerun" not in recs[2]["metrics"], "the best (trial 1) was measured 1 trial ago: fresh enough"
    rerun = recs[3]["metrics"]["best_rerun"]
    assert rerun["best_trial"] == 1 and rerun["per_seed"]["0"] == recs[1]["metrics"]["score_per_seed"][0]
    assert recs[3]["acceptance"]["best_trial"] == 1
    assert "best_rerun" not in recs[4]["metrics"], "trial 3's re-run of the best serves the next trial"


def test_the_progress_pipe_takes_only_well_formed_points_and_caps_them():
    import os
    import threading

    from pytest_autoresearch.runner import _Progress

    r, w = os.pipe()
    seen: list[tuple[float, float]] = []
    p = _Progress(r, b"P 0 5.0\nP 1 4.", lambda s, v: seen.append((s, v)) or None)
    junk = b"0\nnot a point\nP 2 nan\nP x 1\nP 3 3.0 extra\n" + b"Z" * 300_000 + b"\nP 4 2.0\n"
    writer = threading.Thread(target=lambda: (os.write(w, junk), os.close(w)))  # more than a pipe holds
    writer.start()
    while p.open:
        p.pump(0.05)
    writer.join()
    os.close(r)
    assert p.curve == [[0.0, 5.0], [1.0, 4.0], [4.0, 2.0]] and seen == [(0.0, 5.0), (1.0, 4.0), (4.0, 2.0)]
    assert not p.open and len(p.buf) <= _Progress.MAX_LINE
