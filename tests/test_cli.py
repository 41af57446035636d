"""The Hydra app: one pytest job per config, sweepable with -m, each multirun job on its own lineage; the
project's conf/ groups, typed against the package's schema; a failed job makes the multirun fail."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from toytask import write_toy_task

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "pytest_autoresearch.cli"]
QUIET = "pytest_args=[-p,no:cacheprovider,-p,no:hypothesispytest,-q]"


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("ANTHROPIC_API_KEY", "PYTEST_ADDOPTS")}


def test_multirun_runs_every_job_and_exits_non_zero_naming_each_failed_one(tmp_path):
    write_toy_task(tmp_path, name="toy", seeds=(0,))
    write_toy_task(tmp_path, name="bad", gate=2.0, seeds=(0,))   # r2 >= 2 cannot hold: no legal baseline, pytest exits 4
    proc = subprocess.run([*CLI, "-m", "task=toy,bad,nosuch", "trials=1", "agent=offline", "hydra.sweep.dir=sweep",
                           QUIET], cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 4, out   # the highest status among the failed jobs
    assert "autoresearch: 2 of 3 jobs failed:" in out
    assert "#1 task=bad" in out and "pytest exited 4" in out
    assert "#2 task=nosuch" in out and "no task folder" in out
    # Every job ran, each on a lineage of its own under its job folder.
    toy = tmp_path / "sweep/0/.autoresearch/toy/lineage.jsonl"
    assert [json.loads(x)["label"] for x in toy.read_text().splitlines()][0] == "baseline"
    assert len(toy.read_text().splitlines()) == 2
    assert (tmp_path / "sweep/1/.autoresearch/bad/lineage.jsonl").is_file()
    results = {p.parent.name: json.loads(p.read_text()) for p in tmp_path.glob("sweep/*/job.json")}
    assert {k: v["exit"] for k, v in results.items()} == {"0": 0, "1": 4, "2": 2}
    assert results["0"]["overrides"][0] == "task=toy" and results["0"]["ended"] >= results["0"]["started"]


def test_single_run_errors_are_usage_errors_before_anything_runs(tmp_path):
    bad_key = subprocess.run([*CLI, "trails=3"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert bad_key.returncode == 2 and "Key 'trails' not in 'CliConf'" in bad_key.stderr
    no_task = subprocess.run([*CLI, "task=nosuch"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert no_task.returncode == 2 and "no task folder" in no_task.stdout + no_task.stderr
    assert not list(tmp_path.glob("**/lineage.jsonl"))


# -- the project's conf/, composed in this process ----------------------------------------------------------

def _compose(overrides: list[str], conf: Path = REPO / "conf"):
    """The job config `autoresearch` would run, with ``${hydra:...}`` resolved as in a job."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    import pytest_autoresearch.cli  # noqa: F401,E501  (importing it stores the CLI's schema)

    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose(config_name="autoresearch", overrides=overrides, return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        OmegaConf.set_readonly(cfg.hydra, False)
        OmegaConf.resolve(cfg)
        return cfg


def test_conf_groups_compose_into_the_pytest_command(tmp_path):
    from pytest_autoresearch.cli import pytest_command, run_overrides

    cfg = _compose([])
    assert (cfg.task, cfg.agent, cfg.task_path, cfg.trials) == ("airbench", "auto", "tasks/airbench", 20)
    assert run_overrides(cfg.run) == []   # the default search is the package's: nothing to pass on
    assert cfg.hydra.launcher._target_.endswith("BasicLauncher")
    for name in ("paramgolf", "nanochat"):
        assert _compose([f"task={name}"]).task_path == f"tasks/{name}"
    assert _compose(["task=paramgolf"]).trials == 50

    cfg = _compose(["task=paramgolf", "agent=claude", "search=tournament", "run.budget.seeds=3", "trials=4"])
    cmd = pytest_command(cfg, None, REPO)
    assert cmd[3:8] == ["tasks/paramgolf", "--autoresearch-trials", "4", "--autoresearch-agent", "claude"]
    passed = [cmd[i + 1] for i, a in enumerate(cmd) if a == "--autoresearch-override"]
    assert {"search.parent=tournament", "search.bandit_explore=1.0", "budget.seeds=3",
            "agent.model=claude-sonnet-5-5", "agent.max_cost_usd=50.0"} <= set(passed)
    # What the CLI passes on is a valid run config for the pytest plugin.
    from pytest_autoresearch.config import compose as run_compose

    assert run_compose(passed, agent="claude").search.parent == "tournament"

    # A task or agent without a file of its own runs with the defaults (a scaffolded task, a plugin's agent).
    cfg = _compose(["task=lsq", "agent=scripted"])
    assert (cfg.task, cfg.agent, cfg.task_path) == ("lsq", "scripted", None)
    write_toy_task(tmp_path, name="lsq")
    assert pytest_command(cfg, None, tmp_path)[3:8] == ["tasks/lsq", "--autoresearch-trials", "20",
                                                         "--autoresearch-agent", "scripted"]


def test_conf_presets_select_launchers_searches_and_sweeps():
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from pytest_autoresearch.cli import run_overrides

    assert _compose(["launcher=joblib"]).hydra.launcher.n_jobs == 2
    local = _compose(["launcher=submitit_local"]).hydra.launcher
    assert local._target_.endswith("submitit_launcher.LocalLauncher") and local.gpus_per_node == 0
    slurm = _compose(["launcher=submitit_slurm"]).hydra.launcher
    assert slurm._target_.endswith("submitit_launcher.SlurmLauncher") and slurm.gpus_per_node == 1
    assert run_overrides(_compose(["search=single_agent"]).run) == ["search.specialists=merged"]
    assert run_overrides(_compose(["search=no_lineage"]).run) == ["search.lineage_view=false"]
    assert "search.early_stop.enabled=true" in run_overrides(_compose(["search=early_stop"]).run)
    assert run_overrides(_compose(["search=round_robin"]).run) == ["schedule=round_robin"]
    params = _compose(["sweep=tasks_by_agents"]).hydra.sweeper.params
    assert dict(params) == {"task": "airbench,paramgolf,nanochat", "agent": "offline,claude"}


def test_a_wrong_key_or_type_in_conf_is_refused_naming_the_file(tmp_path):
    from hydra.errors import ConfigCompositionException

    conf = tmp_path / "conf"
    subprocess.run(["cp", "-r", str(REPO / "conf"), str(conf)], check=True)
    with pytest.raises(ConfigCompositionException, match="run.search.parnt"):
        _compose(["run.search.parnt=best"], conf)
    with pytest.raises(ConfigCompositionException, match="trials=many") as e:
        _compose(["trials=many"], conf)
    assert "could not be converted to Integer" in str(e.value.__cause__)
    (conf / "task" / "typo.yaml").write_text("# @package _global_\ntrails: 3\n")
    with pytest.raises(ConfigCompositionException, match="task/typo"):
        _compose(["task=typo"], conf)
    # The CLI finds the project's conf/ (or --config-dir) and says so with exit status 2.
    proc = subprocess.run([*CLI, "task=typo"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Key 'trails' not in 'CliConf'" in proc.stderr, proc.stderr


def test_hydra_values_round_trip_through_the_override_grammar():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from pytest_autoresearch.cli import hydra_value

    parser = OverridesParser.create()
    for value in ("plain", "a b", "it's", "x/y.z", "null", 3, 0.5, True, None, ["/opt/a b", "/x"], {"k": "v w"}):
        parsed = parser.parse_override(f"key={hydra_value(value)}").value()
        assert parsed == value, (value, hydra_value(value), parsed)
