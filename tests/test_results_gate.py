"""The CI regression gate, end to end: a plain run against the task's committed reference.json."""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

from toytask import write_toy_task


def _props(xml: Path) -> dict[str, str]:
    case = ET.parse(xml).getroot().find(".//testcase")
    return {p.get("name"): p.get("value") for p in case.iter("property")}


def test_gate_passes_on_the_reference_fails_on_a_slowed_recipe_and_skips_other_machines(toy, tmp_path):
    task = write_toy_task(tmp_path, sleep_s=0.2, seeds=(0,))
    module = task / "test_toy.py"   # score the recipe's wall-clock: a slower recipe is a regression
    module.write_text(module.read_text().replace('Objective("mse", "minimize",',
                                                 'Objective("train_seconds", "minimize", scale="relative",'))
    ref_path = task / "reference.json"

    r = toy.run("tasks/toy", "--autoresearch-update-reference")
    assert r.returncode == 0, r.output
    assert "toy: wrote tasks/toy/reference.json: train_seconds" in r.output and "1 seed(s) x 2 runs" in r.output
    data = json.loads(ref_path.read_text())
    entry = data["references"][0]
    assert "fail iff mean paired per-seed gain" in data["test"]
    assert entry["runs_count"] == 2 and len(entry["runs"]) == 2 and entry["noise"]["dof"] == 1
    assert entry["machine"]["kind"] == "cpu" and entry["machine"]["variant"] == "mini"
    assert 0.2 < entry["score"] < 2.0 and entry["recipe_hash"]
    # A project loosens its gate in the committed file: here a tolerance of 0.3 s on top of the measured noise.
    entry["min_delta"] = 0.3
    ref_path.write_text(json.dumps(data))

    r = toy.run("tasks/toy", "--junitxml", str(tmp_path / "pass.xml"))
    assert r.returncode == 0, r.output
    assert "toy: within the reference: train_seconds" in r.output
    props = _props(tmp_path / "pass.xml")
    assert props["reference_status"] == "pass" and float(props["reference"]) == entry["score"]
    assert abs(float(props["score"]) - float(props["reference"]) - float(props["reference_delta"])) < 1e-9
    assert "delta" in props and float(props["reference_bar"]) > 0

    train = task / "recipe" / "train.py"
    train.write_text(train.read_text().replace("sleep_s = 0.2", "sleep_s = 1.2"))   # deliberately slowed
    other = dict(entry, machine={"kind": "cpu", "name": "Another CPU 9000", "variant": "mini"})
    ref_path.write_text(json.dumps({"schema": 1, "references": [other]}))
    r = toy.run("tasks/toy", "--junitxml", str(tmp_path / "other.xml"))
    assert r.returncode == 0, r.output              # another machine's score is not compared
    assert "not comparable: tasks/toy/reference.json was measured on cpu 'Another CPU 9000' (mini)" in r.output
    assert _props(tmp_path / "other.xml")["reference_status"] == "not_comparable"

    ref_path.write_text(json.dumps(data))
    r = toy.run("tasks/toy", "--junitxml", str(tmp_path / "fail.xml"))
    assert r.returncode == 1, r.output
    assert "FAILED tasks/toy/test_toy.py::test_toy" in r.output
    assert "toy: regression against tasks/toy/reference.json: train_seconds" in r.output
    props = _props(tmp_path / "fail.xml")
    assert props["reference_status"] == "regression" and float(props["delta"]) > 100   # over twice as slow
    assert float(props["reference_gain"]) < -float(props["reference_bar"])
    case = ET.parse(tmp_path / "fail.xml").getroot().find(".//testcase")
    assert case.find("failure") is not None and case.find("error") is None   # the test failed; no fixture error
