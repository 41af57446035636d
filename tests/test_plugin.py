"""The plugin as a user meets it: header, plain run, resume, config errors, a new task, xdist, agent stops."""
from __future__ import annotations

import json

import pytest
from toytask import edit, write_toy_task


def test_header_names_task_variant_device_agent_lineage_and_trials(toy):
    write_toy_task(toy.root)
    proc = toy.run("tasks/toy", "--autoresearch-trials", "2", "--autoresearch-agent", "offline")
    head = [ln for ln in proc.stdout.splitlines() if ln.startswith("autoresearch: task toy")]
    assert len(head) == 1, proc.output
    for part in ("variant mini (auto: no CUDA)", "device cpu", "agent offline (seed 0", str(toy.root / ".autoresearch/toy"),
                 "(0 trials)", "2 trials (slots trial-01..), numbered from #1"):
        assert part in head[0]
    assert proc.stdout.index(head[0]) < proc.stdout.index("toy trial-01 #1")
    assert "autoresearch summary" in proc.stdout and "Δ vs baseline" in proc.stdout


def test_plain_run_measures_the_recipe_once_and_records_nothing(toy):
    write_toy_task(toy.root, gate=0.9)
    proc = toy.run("tasks/toy", "-v")
    assert proc.returncode == 0, proc.output
    assert "test_toy.py::test_toy PASSED" in proc.stdout and "toy: plain run baseline score=" in proc.stdout
    assert not (toy.root / ".autoresearch/toy/lineage.jsonl").exists()


def test_plain_run_fails_when_the_recipe_misses_its_gate(toy):
    write_toy_task(toy.root, gate=0.9999)
    proc = toy.run("tasks/toy")
    assert proc.returncode == 1 and "gate_miss" in proc.output


def test_second_run_resumes_numbering_and_parents_from_the_best(toy):
    write_toy_task(toy.root)
    first = toy.run("tasks/toy", "--autoresearch-trials", "3", "--autoresearch-agent", "offline")
    assert first.returncode == 0, first.output
    recs = toy.records()
    assert [r["trial"] for r in recs] == [0, 1, 2, 3]
    second = toy.run("tasks/toy", "--autoresearch-trials", "2", "--autoresearch-agent", "offline")
    assert "(4 trials)" in second.stdout and "numbered from #4" in second.stdout
    recs2 = toy.records()
    assert [r["trial"] for r in recs2] == [0, 1, 2, 3, 4, 5]
    assert recs2[4]["session"] != recs2[1]["session"]
    bests = [r for r in recs if r["label"] in ("baseline", "keep")]
    best_before = min(bests, key=lambda r: r["score"])
    assert recs2[4]["parent"] == best_before["trial"]
    assert sum(1 for r in recs2 if r["label"] == "baseline") == 1, "the baseline is measured once per task"


@pytest.mark.parametrize("override, message", [
    ("budget.trian_seconds=3", "budget.trian_seconds"),
    ("budget.train_seconds=fast", "budget.train_seconds=fast"),
    ("variant=huge", "variant='huge' is not one of"),
])
def test_bad_overrides_are_usage_errors_naming_the_key(toy, override, message):
    write_toy_task(toy.root)
    proc = toy.run("tasks/toy", "--autoresearch-trials", "1", "--autoresearch-override", override)
    assert proc.returncode == 4 and message in proc.stderr, proc.output


def test_override_changes_the_budget(toy):
    write_toy_task(toy.root, script=[{"edits": [edit("\nsleep_s = 0.0", "\nsleep_s = 5.0")]}])
    toy.run("tasks/toy", "--autoresearch-trials", "1", "--autoresearch-agent", "scripted",
            "--autoresearch-override", "budget.train_seconds=2", "--autoresearch-override", "budget.seeds=1")
    recs = toy.records()
    assert recs[0]["seeds"] == [0] and recs[1]["label"] == "budget_overrun"
    assert "exceeded the 2s limit" in recs[1]["notes"]


def test_unknown_agent_is_a_usage_error(toy):
    write_toy_task(toy.root)
    proc = toy.run("tasks/toy", "--autoresearch-trials", "1", "--autoresearch-agent", "nosuch")
    assert proc.returncode == 4 and "unknown agent 'nosuch'" in proc.output


def test_a_new_task_is_one_more_test_file_with_no_plugin_change(toy):
    write_toy_task(toy.root, name="toy")
    write_toy_task(toy.root, name="second", steps=5)
    proc = toy.run("tasks", "--autoresearch-trials", "1", "--autoresearch-agent", "offline")
    assert proc.returncode == 0, proc.output
    assert "autoresearch: task second" in proc.stdout and "autoresearch: task toy" in proc.stdout
    assert len(toy.records("second")) == 2 and len(toy.records("toy")) == 2
    assert toy.records("second")[0]["score"] != toy.records("toy")[0]["score"]


def test_agent_stop_skips_the_remaining_trials(toy):
    write_toy_task(toy.root, script=[{"edits": [edit("steps = 20", "steps = 40")]}, {"stop": "cost cap $0.10 reached"}])
    proc = toy.run("tasks/toy", "--autoresearch-trials", "4", "--autoresearch-agent", "scripted")
    assert proc.returncode == 0, proc.output
    assert "1 passed, 3 skipped" in proc.stdout and "cost cap $0.10 reached" in proc.stdout
    assert len(toy.records()) == 2


def test_agent_fatal_stops_the_run_with_a_nonzero_status(toy):
    write_toy_task(toy.root, script=[{"fatal": "authentication failed (HTTP 401)"}])
    proc = toy.run("tasks/toy", "--autoresearch-trials", "3", "--autoresearch-agent", "scripted")
    assert proc.returncode == pytest.ExitCode.USAGE_ERROR, "the tool could not run, not a failed trial"
    assert "agent scripted cannot work: authentication failed" in proc.stdout
    assert len(toy.records()) == 1, "no trial is burned after the agent cannot work"


def test_xdist_workers_share_one_lineage_with_unique_trial_numbers(toy):
    write_toy_task(toy.root)
    proc = toy.run("tasks/toy", "-n", "2", "--autoresearch-trials", "6", "--autoresearch-agent", "offline")
    assert proc.returncode == 0, proc.output
    recs = toy.records()
    assert sorted(r["trial"] for r in recs) == list(range(7))
    assert len({r["session"] for r in recs}) == 1, "one run is one session across workers"
    assert sum(1 for ln in proc.stdout.splitlines() if "toy trial-0" in ln) == 6
    assert "(0 trials)" in proc.stdout, "the header comes before the first trial, from the workers' collection"
    assert "| 6 / 7" in proc.stdout


def test_lineage_of_another_variant_is_refused(toy):
    write_toy_task(toy.root)
    toy.run("tasks/toy", "--autoresearch-trials", "1", "--autoresearch-override", "variant=full",
            "--autoresearch-override", "device=cpu")
    assert toy.records()[0]["variant"] == "full"
    proc = toy.run("tasks/toy", "--autoresearch-trials", "1")
    assert "holds variant 'full' but this run is 'mini'" in proc.output and proc.returncode != 0
    assert len(toy.records()) == 2


def test_plain_run_builds_no_agent(toy):
    write_toy_task(toy.root)
    # claude without a key would fail to build; a plain run must not need it.
    proc = toy.run("tasks/toy", "--autoresearch-agent", "claude")
    assert proc.returncode == 0, proc.output


def test_trial_recorded_hook_sees_each_record(toy):
    write_toy_task(toy.root)
    (toy.root / "conftest.py").write_text(
        "import json\n"
        "def pytest_autoresearch_trial_recorded(config, record):\n"
        "    with open('mirror.jsonl', 'a') as f:\n"
        "        f.write(json.dumps({'trial': record['trial'], 'label': record['label']}) + '\\n')\n")
    toy.run("tasks/toy", "--autoresearch-trials", "2", "--autoresearch-agent", "offline")
    mirrored = (toy.root / "mirror.jsonl").read_text().splitlines()
    assert [json.loads(m)["trial"] for m in mirrored] == [1, 2]


def test_baseline_repeats_measure_run_to_run_noise(toy):
    write_toy_task(toy.root, repeats=3)
    proc = toy.run("tasks/toy", "--autoresearch-trials", "1", "--autoresearch-agent", "offline")
    base = toy.records()[0]
    reps = base["metrics"]["score_repeats"]
    assert len(reps) == 3 and base["score"] == pytest.approx(sum(reps) / 3)
    assert len(base["metrics"]["score_runs"]) == 3, "each repeat's per-seed scores are kept: they measure noise"
    assert "keep bar now" in proc.stdout and "(2 seeds, paired)" in proc.stdout


def test_confirmation_reruns_a_would_be_keep_beside_the_best(toy):
    # A real gain survives the side-by-side re-run; a lucky timing would not.
    write_toy_task(toy.root, confirm=True, script=[{"edits": [edit("steps = 20", "steps = 200")]}])
    toy.run("tasks/toy", "--autoresearch-trials", "1", "--autoresearch-agent", "scripted")
    r = toy.records()[1]
    assert r["label"] == "keep"
    conf = r["metrics"]["confirm"]
    assert conf["best_trial"] == 0 and len(conf["runs"]) == 2
    assert conf["best_rerun"] == pytest.approx(toy.records()[0]["score"], rel=1e-6), "the toy is deterministic"
    assert r["score"] == pytest.approx(sum(conf["runs"]) / 2)


def test_confirmation_discards_a_lucky_first_run(toy):
    # The edit trains well only the first time it runs, like a timing fluke: its prepare() counts runs in the
    # task's compile cache (the one folder that persists between runs) and train reads the count.
    lucky = ("import os as _os\n_runs = _os.path.join(_os.path.dirname(_os.environ['XDG_CACHE_HOME']), 'runs')\n"
             "steps = 200 if _os.path.exists(_runs) and open(_runs).read() == '1' else 20\n"
             "def prepare(ctx):\n"
             "    n = int(open(_runs).read()) if _os.path.exists(_runs) else 0\n"
             "    open(_runs, 'w').write(str(n + 1))")
    write_toy_task(toy.root, confirm=True, prepare_seconds=30,
                   script=[{"edits": [edit("steps = 20  # range: 1..2000", lucky)]}])
    toy.run("tasks/toy", "--autoresearch-trials", "1", "--autoresearch-agent", "scripted")
    r = toy.records()[1]
    assert r["label"] == "discard" and r["notes"].startswith("not confirmed side by side: paired gain +0"), r
    assert r["acceptance"]["gain"] == 0.0 and not r["acceptance"]["keep"], "the record says why, in numbers"
    first, again = r["metrics"]["confirm"]["runs"]
    assert first < again


def test_isolation_is_in_the_header_and_claude_refuses_to_run_unsandboxed(toy):
    write_toy_task(toy.root)
    broken = ("--autoresearch-override", "sandbox.bwrap=/bin/false")
    r = toy.run("tasks/toy", "--autoresearch-trials", "1", *broken)
    assert r.returncode == 0 and "isolation: process-level (bwrap failed its probe" in r.output, r.output[-2000:]
    r = toy.run("tasks/toy", "--autoresearch-trials", "1", "--autoresearch-agent", "claude", *broken,
                env={"ANTHROPIC_API_KEY": "sk-ant-test-0000000000000000"})
    assert r.returncode == 4 and "cannot be sandboxed here" in r.output and "sandbox.mode=off" in r.output, \
        r.output[-2000:]
    assert len(toy.records()) == 2, "the refused run recorded nothing"
    r = toy.run("tasks/toy", "--autoresearch-trials", "1", "--autoresearch-agent", "claude", *broken,
                "--autoresearch-override", "sandbox.mode=off", "--autoresearch-override", "agent.base_url=http://127.0.0.1:9",
                "--autoresearch-override", "agent.max_retries=0",
                env={"ANTHROPIC_API_KEY": "sk-ant-test-0000000000000000"})
    assert "cannot be sandboxed here" not in r.output and "isolation: process-level (sandbox.mode=off)" in r.output
    assert toy.records()[-1]["agent"]["name"] == "claude", "with the sandbox turned off explicitly, claude runs"
