"""The pure parts of the results tools: the gate's stated test, replay's comparison, the audit's region map."""
from __future__ import annotations

import math

import pytest

from pytest_autoresearch.audit import Surface, Touch, audit_records, touched
from pytest_autoresearch.html_report import render
from pytest_autoresearch.reference import Machine, ReferenceError, compare, load, save
from pytest_autoresearch.replay import compare as replay_compare
from pytest_autoresearch.task import Objective

CPU = Machine("cpu", "AMD EPYC", "mini")


def entry(score, per_seed, var=None, runs=2, **kw):
    return {"metric": kw.pop("metric", "acc"), "direction": kw.pop("direction", "maximize"), "score": score,
            "per_seed": {str(k): v for k, v in per_seed.items()}, "runs_count": runs,
            "noise": {"var": var, "scale": kw.pop("scale", "absolute")}, "machine": kw.pop("machine", vars(CPU)),
            **kw}


def test_gate_is_direction_aware_and_uses_the_measured_noise():
    obj = Objective("acc", "maximize")
    ref = [entry(0.90, {0: 0.90, 1: 0.90}, var=0.0001)]     # sd 0.01 per seed, 2 runs
    se = math.sqrt(0.0001 * 1.5 / 2)
    worse = compare(ref, {0: 0.85, 1: 0.85}, 0.85, obj, CPU)
    assert worse.status == "regression" and worse.gain == pytest.approx(-0.05) and worse.bar == pytest.approx(3 * se)
    assert compare(ref, {0: 0.88, 1: 0.88}, 0.88, obj, CPU).status == "pass"          # within 3 x se = 0.026
    assert compare(ref, {0: 0.99, 1: 0.99}, 0.99, obj, CPU).status == "pass"          # better never fails
    low = Objective("loss", "minimize")
    ref_low = [entry(1.0, {0: 1.0, 1: 1.0}, var=0.0, metric="loss", direction="minimize")]
    assert compare(ref_low, {0: 0.9, 1: 0.9}, 0.9, low, CPU).status == "pass"
    assert compare(ref_low, {0: 1.1, 1: 1.1}, 1.1, low, CPU).status == "regression"
    assert compare(ref_low, {0: 1.0 + 1e-13, 1: 1.0}, 1.0, low, CPU).status == "pass"   # float noise is not a loss
    # a relative scale compares log ratios; min_delta in the entry loosens the gate
    t = Objective("seconds", "minimize", scale="relative")
    ref_t = [entry(2.0, {0: 2.0}, var=0.0, metric="seconds", direction="minimize", scale="relative")]
    r = compare(ref_t, {0: 2.2}, 2.2, t, CPU)
    assert r.status == "regression" and r.gain == pytest.approx(-math.log(1.1))
    ref_t[0]["min_delta"] = 0.5
    assert compare(ref_t, {0: 2.2}, 2.2, t, CPU).status == "pass"


def test_other_machines_and_metrics_are_not_comparable(tmp_path):
    obj = Objective("acc", "maximize")
    gpu = entry(0.9, {0: 0.9}, machine={"kind": "cuda", "name": "NVIDIA A100", "variant": "full"})
    r = compare([gpu], {0: 0.1}, 0.1, obj, CPU)
    assert r.status == "not_comparable" and not r.failed and "kind 'cpu' here vs 'cuda' in the reference" in r.message
    other_cpu = entry(0.9, {0: 0.9}, machine={"kind": "cpu", "name": "Intel Xeon", "variant": "mini"})
    assert "name 'AMD EPYC' here vs 'Intel Xeon'" in compare([other_cpu], {0: 0.1}, 0.1, obj, CPU).message
    r = compare([entry(0.9, {0: 0.9}, metric="f1")], {0: 0.1}, 0.1, obj, CPU)
    assert r.status == "not_comparable" and "scores maximize f1" in r.message
    # save() replaces this machine's entry and keeps the others
    path = tmp_path / "reference.json"
    save(path, gpu)
    save(path, entry(0.8, {0: 0.8}))
    save(path, entry(0.85, {0: 0.85}))
    assert [e["score"] for e in load(path)] == [0.9, 0.85]
    path.write_text("{not json")
    with pytest.raises(ReferenceError, match="reference.json is not a readable reference file"):
        load(path)


def test_replay_comparison():
    obj = Objective("mse", "minimize")
    recorded = {"trial": 3, "label": "keep", "score": 1.0, "seeds": [0, 1], "metrics": {"score_per_seed": [1.0, 1.0]}}
    noise = [{"trial": 0, "metrics": {"score_runs": [[1.0, 2.0], [1.02, 1.98]]}}]   # var 0.0002
    same = replay_compare(recorded, {"label": "keep", "score": 1.01, "seeds": [0, 1],
                                     "metrics": {"score_per_seed": [1.01, 1.01]}}, noise, obj)
    assert same.status == "reproduced" and same.bar == pytest.approx(3 * math.sqrt(2 * 0.0002 / 2))
    off = replay_compare(recorded, {"label": "keep", "score": 1.2, "seeds": [0, 1],
                                    "metrics": {"score_per_seed": [1.2, 1.2]}}, noise, obj)
    assert off.status == "not_reproduced" and off.failed and "NOT reproduced: mse 1.2 now vs 1 recorded" in off.message
    crashed = replay_compare(recorded, {"label": "crash", "score": None}, noise, obj)
    assert crashed.status == "not_reproduced" and "recorded keep, replayed crash" in crashed.message
    # The report says it in its replays section, the failed one marked so it is not read past.
    base = {"trial": 0, "label": "baseline", "score": 2.0, "parent": None, "specialist": "baseline"}
    page = render([base, {**recorded, "parent": 0, "specialist": "opt"}], task="t", metric="mse",
                  direction="minimize", replays=[
                      {"trial": 3, "reproduced": True, "replayed": "T1", "score": 1.01, "recorded_score": 1.0},
                      {"trial": 3, "reproduced": False, "replayed": "T2", "score": 1.2, "recorded_score": 1.0}])
    assert '<li class="reproduced">trial 3 reproduced at T1: 1.01 vs 1 recorded' in page
    assert '<li class="not-reproduced">trial 3 <strong>NOT reproduced</strong> at T2: 1.2 vs 1 recorded' in page


RECIPE = "x = 1\n# autoresearch: begin opt\nlr = 0.1\n# autoresearch: end opt\n# autoresearch: begin arch\nw = 8\n" \
         "# autoresearch: end arch\ny = 2\n"


def test_audit_tells_regions_and_flags_edits_outside_the_surface():
    changed = RECIPE.replace("lr = 0.1", "lr = 0.2").replace("y = 2", "y = 3")
    got = touched({"train.py": RECIPE}, {"train.py": changed, "extra.py": "z = 1\n"})
    assert got == [Touch("extra.py", None, "created"), Touch("train.py", None, "line 8"),
                   Touch("train.py", "opt", "line 3")]
    surfaces = {"opt": Surface((), {"train.py": ("opt",)}), "data": Surface(("extra.py",), {})}
    files = {"c0": {"train.py": RECIPE}, "c1": {"train.py": RECIPE.replace("lr = 0.1", "lr = 0.3")},
             "c2": {"train.py": RECIPE.replace("w = 8", "w = 16")}, "c3": {"train.py": RECIPE, "extra.py": "a\n"}}
    records = [{"trial": 0, "commit": "c0", "label": "baseline", "specialist": "baseline"},
               {"trial": 1, "commit": "c1", "parent": 0, "label": "keep", "specialist": "opt"},
               {"trial": 2, "commit": "c2", "parent": 0, "label": "discard", "specialist": "opt"},
               {"trial": 3, "commit": "c3", "parent": 0, "label": "discard", "specialist": "data"},
               {"trial": 4, "commit": None, "parent": 0, "label": "surface_violation", "specialist": "opt",
                "diff": "diff --git a/x.py b/x.py\nnew file mode 100644\n--- /dev/null\n+++ b/x.py\n"
                        "@@ -0,0 +1 @@\n+a\n"}]
    out = {a.trial: a for a in audit_records(records, surfaces, files.__getitem__)}
    assert out[1].verdict == "in surface" and out[3].verdict == "in surface"
    assert out[2].verdict == "out of surface" and "train.py::arch line 6" in out[2].note
    assert out[4].verdict == "refused" and out[4].source == "diff"
    assert out[4].touches == [Touch("x.py", "?", "created", False)]   # from the diff: a file outside the surface
