"""After a real trial session: the progress plot and HTML report next to the lineage, read back; then show,
promote (with the reference re-measured), replay and audit on that lineage."""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from pytest_autoresearch.commands import main as command
from pytest_autoresearch.reference import load as load_reference
from toytask import edit, write_toy_task

pytest.importorskip("matplotlib")

SCRIPT = [  # round robin: odd trials opt, even trials arch
    {"edits": [edit("steps = 20", "steps = 80")], "hypothesis": "Train longer: 80 steps."},                  # keep
    {"edits": [edit("use_bias = False", "use_bias = True")], "hypothesis": "A bias flag."},                  # discard
    {"edits": [edit("steps = 80", "steps = 320")], "hypothesis": "Even longer: <b>320</b> steps & \"more\"."},  # keep
    {"edits": [edit("lr = 0.1", "lr = 0.2")], "hypothesis": "Arch reaching into the opt region."},           # refused
    {"edits": [edit("steps = 320", "steps = 1")], "hypothesis": "One step is enough."},                      # gate_miss
    {"edits": [edit("use_bias = False", "use_bias = 1 / 0")], "hypothesis": "Divide by zero."},              # crash
]
LABELS = ["baseline", "keep", "discard", "keep", "surface_violation", "gate_miss", "crash"]


def _png_pixels_near(png: Path, hex_colour: str, tol: int = 12) -> int:
    import numpy as np
    from PIL import Image

    want = np.array([int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)])
    px = np.asarray(Image.open(png).convert("RGB")).astype(int)
    return int((np.abs(px - want).max(axis=2) <= tol).sum())


def _report_data(page: str) -> dict:
    m = re.search(r'<script id="report-data" type="application/json">(.*?)</script>', page, re.S)
    assert m, "the report embeds its data"
    return json.loads(m.group(1))


def test_session_reports_then_show_promote_replay_audit(toy, tmp_path, capsys, monkeypatch):
    # The commands' own pytest runs (promote's re-measure, replay) start from here, without unneeded plugins.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTEST_ADDOPTS", "-p no:cacheprovider -p no:hypothesispytest")
    task_dir = write_toy_task(tmp_path, script=SCRIPT, gate=0.5, seeds=(0,))
    r = toy.run("tasks/toy", "--autoresearch-trials", str(len(SCRIPT)), "--autoresearch-agent", "scripted")
    assert r.returncode == 0, r.output
    lin = tmp_path / ".autoresearch" / "toy"
    records = toy.records()
    assert [x["label"] for x in records] == LABELS, [(x["trial"], x["label"], x["notes"]) for x in records]

    # -- the plot, read back: what was drawn (PNG text chunk) and each specialist's colour in the pixels
    png, page_path = lin / "progress.png", lin / "report.html"
    assert f"report: {page_path}   plot: {png}" in r.output
    from PIL import Image

    img = Image.open(png)
    assert img.size == (1100, 520)
    drawn = json.loads(img.text["Description"])
    assert drawn["trials"] == 7 and drawn["labels"] == {
        "baseline": 1, "keep": 2, "discard": 1, "gate_miss": 1, "crash": 1, "surface_violation": 1}
    assert drawn["unscored"] == 2 and drawn["off_scale"] == 1   # crash + refused on the band; 1 step's mse off scale
    assert [t for t, _ in drawn["running_best"]] == [0, 1, 3]
    assert drawn["best"] == pytest.approx(records[3]["score"])
    for name in ("opt", "arch"):
        assert _png_pixels_near(png, drawn["specialists"][name]) > 30, name

    # -- the HTML report, read back
    page = page_path.read_text(encoding="utf-8")
    assert "http://" not in page and "https://" not in page and 'src="data:image/png;base64,' in page  # self-contained
    data = _report_data(page)
    assert data["path"] == [0, 1, 3] and len(data["trials"]) == 7
    assert data["summary"]["best_trial"] == 3 and data["summary"]["keeps"] == 2
    assert data["summary"]["labels"] == {"keep": 2, "discard": 1, "surface_violation": 1, "gate_miss": 1, "crash": 1}
    assert "&lt;b&gt;320&lt;/b&gt;" in page and "<b>320</b>" not in page   # agent text is escaped
    step3 = re.search(r'<li class="step" data-trial="3">.*?</li>', page, re.S).group(0)
    assert '<span class="del">-steps = 80  # range: 1..2000</span>' in step3     # each step's own diff
    assert '<span class="add">+steps = 320  # range: 1..2000</span>' in step3
    d = 100 * (records[3]["score"] - records[1]["score"]) / records[1]["score"]
    assert f"Δ vs parent {d:+.2f}%" in step3 and d < 0

    # -- show
    assert command(["show", "toy", "3", "--lineage", str(tmp_path / ".autoresearch")]) == 0
    shown = capsys.readouterr().out
    assert "trial 3 [opt] keep" in shown and "ancestry         trial 3 <- trial 1 <- trial 0" in shown
    assert "+steps = 320" in shown and "mse_per_seed" in shown

    # -- audit: the refused attempt is listed; a planted out-of-surface record is flagged
    lines = (lin / "lineage.jsonl").read_text().splitlines()
    planted = [json.loads(x) for x in lines]
    planted[2]["specialist"] = "opt"          # trial 2 edited the arch region; now it claims to be opt's
    (lin / "lineage.jsonl").write_text("".join(json.dumps(x) + "\n" for x in planted))
    assert command(["audit", "toy", "--lineage", str(tmp_path / ".autoresearch")]) == 1
    out = capsys.readouterr().out
    assert re.search(r"\|\s+2 \| opt\s+\| discard\s+\| out of surface\s+\| train.py::arch line 15 \(surface of 'opt'",
                     out), out
    assert re.search(r"\|\s+4 \| arch\s+\| surface_violation\s+\| refused\s+\| train.py::opt line 8", out), out
    assert "FLAGGED: 1 out-of-surface edit(s) ran" in out
    (lin / "lineage.jsonl").write_text("".join(x + "\n" for x in lines))

    # -- promote best with a committed reference: the expected diff, then the reference re-measured for this
    # machine (an entry of another machine stays as it was)
    recipe = task_dir / "recipe" / "train.py"
    before = recipe.read_text()
    gpu = {"task": "toy", "metric": "mse", "direction": "minimize", "score": 0.5, "per_seed": {"0": 0.5},
           "machine": {"kind": "cuda", "name": "NVIDIA H100 80GB HBM3", "variant": "full"}}
    (task_dir / "reference.json").write_text(json.dumps({"schema": 1, "references": [gpu]}))
    assert command(["promote", "toy", "best", "--lineage", str(tmp_path / ".autoresearch")]) == 0
    out = capsys.readouterr().out
    assert "-steps = 20  # range: 1..2000\n+steps = 320  # range: 1..2000\n" in out
    assert recipe.read_text() == before.replace("steps = 20", "steps = 320")
    git_file = subprocess.run(["git", "-C", str(lin / "repo"), "show", "trial-3:train.py"], capture_output=True,
                              text=True, check=True).stdout
    assert recipe.read_text() == git_file
    entries = load_reference(task_dir / "reference.json")
    assert entries[0] == gpu and len(entries) == 2
    assert entries[1]["machine"]["kind"] == "cpu" and entries[1]["runs_count"] == 2
    assert entries[1]["score"] == pytest.approx(records[3]["score"])
    assert entries[1]["recipe_hash"] == records[3]["content_hash"]
    promo = [json.loads(x) for x in (lin / "promotions.jsonl").read_text().splitlines()]
    assert promo[-1]["trial"] == 3 and promo[-1]["files"] == ["train.py"] and promo[-1]["reference"]["updated"]
    # The session's report, rewritten by promote: it already shows the promotion.
    assert f"autoresearch promote: report: {page_path}" in out
    assert re.search(r'<section id="promotions">.*trial 3 \(0\.000107692\) promoted to',
                     page_path.read_text(encoding="utf-8"), re.S)
    # The folder now holds trial 3's code (recorded), so promoting again is allowed; changes of one's own are not.
    recipe.write_text(recipe.read_text() + "# my own edit\n")
    assert command(["promote", "toy", "1", "--lineage", str(tmp_path / ".autoresearch"), "--no-remeasure"]) == 2
    assert "holds code that no trial" in capsys.readouterr().err

    # -- replay: the best reproduces (a replay that does not is tested on compare() in test_results_units.py)
    assert command(["replay", "toy", "3", "--lineage", str(tmp_path / ".autoresearch")]) == 0
    assert "trial 3 reproduced" in capsys.readouterr().out
    replays = [json.loads(x) for x in (lin / "replays.jsonl").read_text().splitlines()]
    assert len(replays) == 1 and replays[0]["reproduced"] and replays[0]["budget"] == "the lineage's budget"
    assert replays[0]["score"] == records[3]["score"]
    page = page_path.read_text(encoding="utf-8")
    assert re.search(r'<section id="replays"><h2>Replays</h2><ul><li class="reproduced">trial 3 reproduced at '
                     r'[^<]*: 0\.000107692 vs 0\.000107692 recorded', page), page[page.find('id="replays"'):][:400]
    assert _report_data(page)["replays"][0]["reproduced"] is True

    # -- the report written again shows the promotion
    assert command(["report", "toy", "--lineage", str(tmp_path / ".autoresearch")]) == 0
    page = page_path.read_text(encoding="utf-8")
    assert re.search(r'<section id="promotions">.*trial 3 \(0\.000107692\) promoted to', page, re.S)
    assert _report_data(page)["promotions"][0]["trial"] == 3
