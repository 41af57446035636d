"""The plugin as a good pytest citizen: free in projects that do not use it, task tests selectable by marker,
skippable, turned off cleanly; ini settings; exit codes that tell a failed trial from a tool that could not run;
JUnit properties; status words; no borrowed task fixtures; trials mirrored into MLflow.

Every test runs real pytest subprocesses on throwaway projects (``ToyRun``)."""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from conftest import ToyRun
from toytask import edit, write_toy_task

PLAIN_TEST = "def test_arithmetic():\n    assert 1 + 1 == 2\n"
CPU = ("--autoresearch-override", "device=cpu")  # no torch import to pick a device: faster runs


def test_an_unrelated_project_loads_nothing_heavy(toy: ToyRun):
    (toy.root / "test_unrelated.py").write_text(PLAIN_TEST)
    (toy.root / "conftest.py").write_text(
        "import sys\n"
        "def pytest_unconfigure(config):\n"
        "    mods = sorted(m for m in sys.modules if m.split('.')[0] in ('pytest_autoresearch', 'torch'))\n"
        "    open('modules.txt', 'w').write('\\n'.join(mods))\n")
    proc = toy.run("-q")
    assert proc.returncode == 0 and "1 passed" in proc.stdout, proc.output
    assert "autoresearch" not in proc.output
    loaded = set((toy.root / "modules.txt").read_text().split())
    assert loaded == {"pytest_autoresearch", "pytest_autoresearch.plugin", "pytest_autoresearch.hookspec",
                      "pytest_autoresearch.options", "pytest_autoresearch.guard"}, \
        "the plugin built run state (config, lineage, torch) in a project with no task tests"


def _task_and_plain_test(root: Path) -> None:
    write_toy_task(root)
    (root / "tests").mkdir()
    (root / "tests" / "test_plain.py").write_text(PLAIN_TEST)


def test_task_tests_carry_a_marker_and_can_be_skipped(toy: ToyRun):
    _task_and_plain_test(toy.root)
    proc = toy.run("-m", "not autoresearch", "--strict-markers")
    assert proc.returncode == 0 and "1 passed, 1 deselected" in proc.stdout, proc.output
    assert "autoresearch: task toy" not in proc.stdout
    proc = toy.run("--autoresearch-skip")
    assert proc.returncode == 0 and "1 passed, 1 skipped" in proc.stdout, proc.output
    assert "SKIPPED [1] tasks/toy/test_toy.py:" in proc.stdout and "--autoresearch-skip" in proc.stdout
    assert not (toy.root / ".autoresearch").exists()


def test_with_the_plugin_off_task_tests_are_skipped_with_a_reason(toy: ToyRun):
    _task_and_plain_test(toy.root)
    proc = toy.run("-p", "no:autoresearch")
    assert proc.returncode == 0 and "1 passed, 1 skipped" in proc.stdout, proc.output
    assert "the autoresearch plugin is turned off (-p no:autoresearch)" in proc.stdout
    assert "not found" not in proc.output


INI = """\
[pytest]
autoresearch_trials = 2
autoresearch_agent = offline
autoresearch_lineage = lineages
autoresearch_variant = full
autoresearch_overrides =
    seed=7
    device=cpu
"""


def _task_header(proc) -> str:
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("autoresearch: task toy")]
    assert len(lines) == 1, proc.output
    return lines[0]


def test_ini_settings_apply_and_the_command_line_wins(toy: ToyRun):
    write_toy_task(toy.root)
    (toy.root / "pytest.ini").write_text(INI)
    proc = toy.run("--co")
    head = _task_header(proc)
    for part in ("variant full (set by config)", "agent offline (seed 7", f"lineage {toy.root / 'lineages' / 'toy'}",
                 "2 trials (slots trial-01..)"):
        assert part in head, head
    assert "test_toy[trial-02]" in proc.stdout
    assert "from pytest.ini: autoresearch_trials, autoresearch_agent, autoresearch_lineage" in proc.stdout
    proc = toy.run("--co", "--autoresearch-trials", "1", "--autoresearch-lineage", "elsewhere",
                   "--autoresearch-override", "seed=9", "--autoresearch-override", "variant=mini")
    head = _task_header(proc)
    for part in ("variant mini (set by config)", "agent offline (seed 9", f"lineage {toy.root / 'elsewhere' / 'toy'}",
                 "1 trials (slots trial-01..)"):
        assert part in head, head
    (toy.root / "pytest.ini").write_text(INI.replace("autoresearch_trials = 2", "autoresearch_trials = many"))
    proc = toy.run("--co")
    assert proc.returncode == 4 and "autoresearch_trials = 'many' in pytest.ini is not a whole number" in proc.stderr


def _exit_case(root: Path, kind: str) -> tuple[str, ...]:
    """Write a toy project that ends in ``kind``; return the pytest arguments that run it."""
    trials = ("--autoresearch-trials", "2", "--autoresearch-agent", "scripted", *CPU)
    if kind == "failed_recipe":       # a finding: the recipe misses its gate
        write_toy_task(root, gate=0.9999, seeds=(0,))
        return ("tasks/toy", *CPU)
    if kind == "agent_fatal":         # the tool: the agent cannot work (credentials, model)
        write_toy_task(root, seeds=(0,), script=[{"fatal": "authentication failed (HTTP 401)"}])
        return ("tasks/toy", *trials)
    if kind == "illegal_baseline":    # the tool: the task's own recipe fails its checks
        write_toy_task(root, seeds=(0,), train_extra="raise RuntimeError('recipe broken')",
                       script=[{"edits": [edit("steps = 20", "steps = 40")]}])
        return ("tasks/toy", *trials)
    if kind == "task_unbuildable":    # the tool: a task fixture returns the wrong thing
        d = write_toy_task(root, seeds=(0,))
        module = d / "test_toy.py"
        module.write_text(module.read_text().replace("return Objective(", "return 'mse' or Objective("))
        return ("tasks/toy", *CPU)
    if kind == "lineage_locked":      # the tool: another process holds the lineage
        write_toy_task(root, seeds=(0,), script=[{"edits": [edit("steps = 20", "steps = 40")]}])
        return ("tasks/toy", *trials, "--autoresearch-override", "lineage.lock_timeout_s=0.5")
    raise AssertionError(kind)


@pytest.mark.parametrize("kind, status, message", [
    ("failed_recipe", pytest.ExitCode.TESTS_FAILED, "gate_miss"),
    ("agent_fatal", pytest.ExitCode.USAGE_ERROR, "agent scripted cannot work: authentication failed"),
    ("illegal_baseline", pytest.ExitCode.USAGE_ERROR, "task toy has no legal baseline"),
    ("task_unbuildable", pytest.ExitCode.USAGE_ERROR, "fixture 'objective' must return"),
    ("lineage_locked", pytest.ExitCode.INTERRUPTED, "was not released within"),
])
def test_exit_status_tells_a_finding_from_a_tool_that_could_not_run(toy: ToyRun, kind, status, message):
    args = _exit_case(toy.root, kind)
    if kind == "lineage_locked":
        from pytest_autoresearch.lineage import HeldLock

        with HeldLock(toy.root / ".autoresearch" / "toy" / "baseline.lock", 5, what="a hung session"):
            proc = toy.run(*args)
    else:
        proc = toy.run(*args)
    assert proc.returncode == status, proc.output[-3000:]
    assert message in proc.output and "INTERNALERROR" not in proc.output


def test_a_conftest_fixture_cannot_stand_in_for_a_task_fixture(toy: ToyRun):
    d = write_toy_task(toy.root)
    module = d / "test_toy.py"
    text, n = re.subn(r"@pytest\.fixture\ndef budget\(\):\n(?:    .*\n|                  .*\n)+", "", module.read_text())
    assert n == 1 and "def budget" not in text
    module.write_text(text)
    (toy.root / "conftest.py").write_text(
        "import pytest\nfrom pytest_autoresearch import Budget\n\n\n"
        "@pytest.fixture\ndef budget():\n    return Budget(train_seconds=30, eval_seconds=30, seeds=(0,))\n")
    proc = toy.run("tasks/toy", *CPU)
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, proc.output[-3000:]
    assert "tasks/toy/test_toy.py: the task module does not define the task fixture 'budget' (found in " \
           "conftest.py:" in proc.output, proc.output[-3000:]
    assert "toy: plain run" not in proc.output, "the recipe ran with a borrowed budget"


@pytest.fixture(scope="module")
def research(tmp_path_factory: pytest.TempPathFactory):
    """One research run: a keep, then a gate miss; JUnit XML, -v -rA, and MLflow into a local store."""
    toy = ToyRun(tmp_path_factory.mktemp("research"))
    write_toy_task(toy.root, gate=0.5, seeds=(0,), script=[
        {"edits": [edit("steps = 20", "steps = 200")], "hypothesis": "train longer", "kind": "tune"},
        {"edits": [edit("use_bias = False", "use_bias = False\nsteps = 1")], "hypothesis": "barely train"},
    ])
    proc = toy.run("tasks/toy", "--autoresearch-trials", "2", "--autoresearch-agent", "scripted", "-v", "-rA",
                   "--junitxml", "junit.xml", "--autoresearch-mlflow", "mlruns", *CPU)
    return toy, proc, {r["trial"]: r for r in toy.records()}


def test_trials_read_as_their_labels_in_verbose_and_summary_output(research):
    _, proc, recs = research
    assert [recs[1]["label"], recs[2]["label"]] == ["keep", "gate_miss"], proc.output[-3000:]
    assert re.search(r"test_toy\[trial-01\] KEEP", proc.stdout) and re.search(r"test_toy\[trial-02\] GATE_MISS",
                                                                               proc.stdout), proc.stdout
    assert "KEEP tasks/toy/test_toy.py::test_toy[trial-01]" in proc.stdout
    assert "GATE_MISS tasks/toy/test_toy.py::test_toy[trial-02] - gate_miss" in proc.stdout
    assert "1 passed, 1 xfailed" in proc.stdout and proc.returncode == 0


def test_junit_xml_has_one_property_per_value(research):
    toy, _, recs = research
    cases = {c.get("name"): c for c in ET.parse(toy.root / "junit.xml").getroot().iter("testcase")}
    for trial in (1, 2):
        props = {p.get("name"): p.get("value") for p in cases[f"test_toy[trial-0{trial}]"].iter("property")}
        r = recs[trial]
        assert props["trial"] == str(trial) and props["label"] == r["label"] and props["task"] == "toy"
        assert props["specialist"] == r["specialist"] and props["slot"] == f"trial-0{trial}"
        assert float(props["score"]) == pytest.approx(r["score"]) and float(props["delta"]) == pytest.approx(
            r["delta_pct"])
        assert "autoresearch" not in props, "values are separate properties, not one JSON string"
        assert props.get("kind") == r.get("kind", "") or (not r.get("kind") and "kind" not in props)


def test_each_trial_is_an_mlflow_run(research, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.tracking import MlflowClient  # the dev extra installs mlflow-skinny

    toy, _, recs = research
    client = MlflowClient(tracking_uri=(toy.root / "mlruns").as_uri())
    exp = client.get_experiment_by_name("toy")
    assert exp is not None, "no experiment for the task"
    runs = {int(r.data.tags["trial"]): r for r in client.search_runs([exp.experiment_id])}
    assert sorted(runs) == [1, 2], "one run per trial (the baseline is not a trial)"
    for trial, run in runs.items():
        r = recs[trial]
        assert run.info.status == "FINISHED" and run.info.run_name == f"trial {trial}"
        assert run.data.params["specialist"] == r["specialist"] and run.data.params["parent"] == str(r["parent"])
        assert run.data.tags["label"] == r["label"]
        assert run.data.metrics["score"] == pytest.approx(r["score"])
        assert run.data.metrics["train_seconds"] == pytest.approx(r["train_s"])
        assert run.data.metrics["eval/r2"] == pytest.approx(r["metrics"]["r2"])
        diff = Path(client.download_artifacts(run.info.run_id, "diff.patch", str(toy.root / f"dl{trial}")))
        assert diff.read_text() == r["diff"] and "steps" in r["diff"]
    assert runs[1].data.params["kind"] == "tune"
