"""results.tsv files of other loops, in karpathy/autoresearch's layout and the trajectory layout, as lineage views
that the plot, the report and show work on."""
from __future__ import annotations

import json
import re

import pytest

from pytest_autoresearch.commands import main as command
from pytest_autoresearch.results_import import ResultsFormatError, read_tsv

# karpathy/autoresearch program.md: commit, val_bpb, memory_gb, status, description (tab-separated);
# a crash logs 0.000000 and 0.0.
KARPATHY = """commit\tval_bpb\tmemory_gb\tstatus\tdescription
a1b2c3d\t0.997900\t44.0\tkeep\tbaseline
b2c3d4e\t0.993200\t44.2\tkeep\tincrease LR to 0.04
c3d4e5f\t1.005000\t44.0\tdiscard\tswitch to GeLU activation
d4e5f6a\t0.000000\t0.0\tcrash\tdouble model width (OOM)
e5f6a7b\t0.990100\t44.3\tkeep\twarmdown 0.5 -> 0.6
"""

TRAJECTORY = """trial\tspecialist\tparent\tlabel\tscore\tacc_mean\thypothesis\tnotes
0\tbaseline\t\tbaseline\t26.356\t0.9605\tThe public airbench96 recipe.\t
1\topt\t0\tgate_miss\t25.10\t0.9581\tFewer epochs: 31.\tacc_mean 0.9581 < 0.96
2\tarch\t0\tkeep\t25.90\t0.9611\tCompile the model.\t
3\taug\t2\tbudget_overrun\t\t\tTranslate by 6 pixels.\ttrain (seed 3): exceeded the limit
4\topt\t2\tkeep\t25.146\t0.9602\tLookahead every 4 steps.\t
"""


def test_karpathy_layout(tmp_path):
    f = tmp_path / "results.tsv"
    f.write_text(KARPATHY)
    recs = read_tsv(f)
    assert [r["label"] for r in recs] == ["baseline", "keep", "discard", "crash", "keep"]
    assert [r["score"] for r in recs] == [0.9979, 0.9932, 1.005, None, 0.9901]   # a crash's 0.000000 is no score
    assert [r["parent"] for r in recs] == [None, 0, 1, 1, 1]     # the branch advances on keep only
    assert recs[1]["metrics"] == {"val_bpb": 0.9932, "memory_gb": 44.2} and recs[1]["commit"] == "b2c3d4e"
    assert recs[4]["delta_pct"] == pytest.approx(100 * (0.9901 - 0.9932) / 0.9932) and recs[4]["best_before"] == 1
    assert recs[3]["notes"] == "double model width (OOM)" and recs[0]["imported"]["layout"] == "karpathy"
    assert {r["metric"] for r in recs} == {"val_bpb"} and {r["direction"] for r in recs} == {"minimize"}


def test_trajectory_layout_and_errors(tmp_path):
    f = tmp_path / "airbench.tsv"
    f.write_text(TRAJECTORY)
    recs = read_tsv(f, task="airbench-paper")
    assert [(r["trial"], r["specialist"], r["parent"], r["label"]) for r in recs] == [
        (0, "baseline", None, "baseline"), (1, "opt", 0, "gate_miss"), (2, "arch", 0, "keep"),
        (3, "aug", 2, "budget_overrun"), (4, "opt", 2, "keep")]
    assert recs[3]["score"] is None and recs[1]["metrics"]["acc_mean"] == 0.9581
    assert recs[1]["notes"] == "acc_mean 0.9581 < 0.96" and recs[4]["hypothesis"] == "Lookahead every 4 steps."
    bad = tmp_path / "bad.tsv"
    bad.write_text("trial\tlabel\tscore\n0\tbaseline\t1.0\n1\tmaybe\t2.0\n")
    with pytest.raises(ResultsFormatError, match=r"bad.tsv:3: status 'maybe' is not a label"):
        read_tsv(bad)
    bad.write_text("a,b,c\n1,2,3\n")
    with pytest.raises(ResultsFormatError, match="matches no layout: karpathy/autoresearch's is"):
        read_tsv(bad)
    with pytest.raises(ResultsFormatError, match="reads as the trajectory layout, not karpathy"):
        read_tsv(f, "karpathy")


def test_import_command_writes_a_view_that_plot_report_and_show_read(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    f = tmp_path / "results.tsv"
    f.write_text(KARPATHY)
    views = tmp_path / "views"
    assert command(["import", str(f), "--lineage", str(views)]) == 0
    out = capsys.readouterr().out
    assert "5 runs of" in out and "(karpathy layout)" in out
    folder = views / "imported-results"
    from PIL import Image

    drawn = json.loads(Image.open(folder / "progress.png").text["Description"])
    assert drawn["labels"] == {"baseline": 1, "keep": 2, "discard": 1, "crash": 1} and drawn["unscored"] == 1
    assert [t for t, _ in drawn["running_best"]] == [0, 1, 4]
    page = (folder / "report.html").read_text(encoding="utf-8")
    data = json.loads(re.search(r'<script id="report-data" type="application/json">(.*?)</script>', page, re.S)[1])
    assert data["path"] == [0, 1, 4] and data["metric"] == "val_bpb" and len(data["trials"]) == 5
    assert data["trials"][3]["imported"]["row"] == 5
    assert command(["show", "imported-results", "best", "--lineage", str(views)]) == 0
    shown = capsys.readouterr().out
    assert "trial 4 [agent] keep  val_bpb=0.9901" in shown and "ancestry         trial 4 <- trial 1 <- trial 0" in shown
    assert command(["promote", "imported-results", "best", "--lineage", str(views)]) == 2
    assert "was imported from" in capsys.readouterr().err
