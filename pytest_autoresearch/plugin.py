"""pytest hooks only: options, parametrization, fixtures, header, live lines and summary."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from . import hookspec
from .lineage import AGENT_LABELS, Lineage

SESSION_KEY = pytest.StashKey["Any"]()
TRIAL_FIXTURE = "autoresearch_trial"


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(hookspec)


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("autoresearch", "autoresearch: agent-driven research trials")
    g.addoption("--autoresearch-trials", type=int, default=0, metavar="N",
                help="run N agent-proposed trials per task module (0 or absent: run the recipe once as a test)")
    g.addoption("--autoresearch-agent", default="auto", metavar="NAME",
                help="auto (claude when ANTHROPIC_API_KEY is set, else offline), offline, claude, or a plugin's agent")
    g.addoption("--autoresearch-lineage", default=None, metavar="DIR",
                help="where lineages live (default: .autoresearch/ under the rootdir), one folder per task")
    g.addoption("--autoresearch-override", action="append", default=[], metavar="KEY=VALUE",
                help="Hydra override of the run config, repeatable (e.g. budget.train_seconds=120)")


def pytest_configure(config: pytest.Config) -> None:
    from . import masking
    from .session import AutoresearchSession

    masking.register_environment()
    config.stash[SESSION_KEY] = AutoresearchSession(config)
    config.pluginmanager.register(_LiveLines(config), "autoresearch-live-lines")


def pytest_sessionstart(session: pytest.Session) -> None:
    sess = _session(session.config)
    if sess.trials and not sess.is_worker:
        sess.check_agent_isolation()  # a usage error before anything runs


def _session(config: pytest.Config) -> Any:
    return config.stash[SESSION_KEY]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # Only slot ids here: trial numbers, lineage reads and agent calls wait until a trial runs, so
    # collection is identical on every xdist worker.
    if TRIAL_FIXTURE not in metafunc.fixturenames:
        return
    n = _session(metafunc.config).trials
    if n > 0:
        width = max(2, len(str(n)))
        slots = [f"trial-{i:0{width}d}" for i in range(1, n + 1)]
        metafunc.parametrize(TRIAL_FIXTURE, slots, indirect=True, ids=slots)


@pytest.fixture(scope="session")
def autoresearch_variant(pytestconfig: pytest.Config) -> str:
    """``mini`` or ``full``: which variant of each task this run uses."""
    return _session(pytestconfig).variant


@pytest.fixture
def autoresearch_trial(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """Run one trial of the requesting task module (or, without --autoresearch-trials, its recipe once)."""
    from .agents.base import AgentFatal, AgentStop
    from .lineage import LineageLocked
    from .masking import clean
    from .session import TrialResult
    from .trial import BaselineError
    from .vcs import RepoError

    sess = _session(request.config)
    task = sess.build_task(request)
    run = sess.task_run(task)
    slot = getattr(request, "param", None)
    if slot is None:
        rec = run.plain_run(tmp_path)
        request.node.user_properties.append(("autoresearch", json.dumps(_brief(rec, "plain"))))
        return TrialResult(rec, plain=True)
    if sess.fatal:
        pytest.skip(f"not run: {sess.fatal}")
    if sess.stop_reason:
        pytest.skip(f"agent stopped proposing: {sess.stop_reason}")
    stop: str | None = None
    rec = None
    try:
        rec = run.run_trial(slot)
    except AgentStop as e:
        sess.stop_reason = clean(str(e))
    except AgentFatal as e:
        stop = sess.fatal = clean(f"agent {sess.agent_name} cannot work: {e}")
    except BaselineError as e:
        stop = clean(str(e))
    except (LineageLocked, RepoError) as e:
        stop = sess.fatal = clean(str(e))
    # Failing outside the ``except`` blocks keeps pytest from printing the message twice, chained.
    if stop is not None:
        request.session.shouldstop = stop.splitlines()[0][:300]
        pytest.fail(stop, pytrace=False)
    if rec is None:
        pytest.skip(f"agent stopped proposing: {sess.stop_reason}")
    request.node.user_properties.append(("autoresearch", json.dumps(_brief(rec, slot))))
    request.config.hook.pytest_autoresearch_trial_recorded(config=request.config, record=rec)
    label = rec["label"]
    if label == "evaluator_error":
        pytest.fail(f"evaluator_error in trial {rec['trial']}: {rec['notes']}", pytrace=False)
    if label in AGENT_LABELS and label != "discard":
        pytest.xfail(f"{label}: {rec['notes']}"[:500])
    return TrialResult(rec)


def _brief(rec: dict[str, Any], slot: str) -> dict[str, Any]:
    keys = ("task", "trial", "specialist", "label", "score", "delta_pct", "train_s", "notes", "hypothesis")
    return {"slot": slot, **{k: rec.get(k) for k in keys}}


# -- terminal output ----------------------------------------------------------------------------------
def _task_items(items: list[pytest.Item]) -> dict[str, Path]:
    from .task import task_name_for

    out: dict[str, Path] = {}
    for item in items:
        if TRIAL_FIXTURE in getattr(item, "fixturenames", ()):
            out.setdefault(task_name_for(Path(str(item.path))), Path(str(item.path)))
    return out


def _write_header(config: pytest.Config, name: str) -> None:
    sess = _session(config)
    tr = config.pluginmanager.get_plugin("terminalreporter")
    if name in sess.headers or tr is None:
        return
    sess.headers.add(name)
    lin = Lineage(sess.root / name / "lineage.jsonl")
    n = len(lin.records(quiet=True))
    agent = sess.agent.describe() if sess.trials else "none (plain run)"
    plan = (f"{sess.trials} trials (slots trial-01..), numbered from #{max(n, 1)}" if sess.trials
            else "plain run: the recipe once, nothing recorded")
    tr.write_line(f"autoresearch: task {name} | variant {sess.variant} ({sess.variant_reason()}) | "
                  f"device {sess.device} | agent {agent} | isolation: {sess.isolation().describe()} | "
                  f"lineage {lin.path.parent} ({n} trials) | {plan}")


def pytest_collection_finish(session: pytest.Session) -> None:
    sess = _session(session.config)
    if sess.is_worker:
        return
    for name in _task_items(session.items):
        _write_header(session.config, name)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node: Any, ids: list[str]) -> None:
    """Under xdist the controller collects nothing itself: name the tasks from a worker's item ids."""
    from .task import task_name_for

    config = node.config
    for nodeid in ids:
        if "[trial-" in nodeid:
            _write_header(config, task_name_for(Path(nodeid.split("::")[0])))


class _LiveLines:
    """One live line per trial. Registered per config because logreport hooks get no config argument;
    under xdist this runs on the controller, from the workers' reports."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config

    @pytest.hookimpl(trylast=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        props = dict(report.user_properties)
        # Printed with the teardown report, so the line follows pytest's own progress mark for the item.
        if "autoresearch" not in props or report.when != "teardown":
            return
        sess = _session(self.config)
        if report.nodeid in sess.records:
            return
        rec = json.loads(props["autoresearch"])
        sess.records[report.nodeid] = rec
        tr = self.config.pluginmanager.get_plugin("terminalreporter")
        if tr is None or sess.is_worker:
            return
        from .report import live_line

        _write_header(self.config, rec["task"])
        if rec["slot"] == "plain":
            line = f"{rec['task']}: plain run {rec['label']} score={rec['score']}" + (
                f" ({rec['notes']})" if rec.get("notes") else "")
        else:
            line = live_line(f"{rec['task']} {rec['slot']}", rec)
        tr.ensure_newline()
        tr.write_line(line)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    import time

    from .report import task_summary

    sess = _session(config)
    tasks = sorted(sess.headers)
    if not tasks or not sess.trials:
        return
    terminalreporter.section("autoresearch summary")
    for name in tasks:
        lin = Lineage(sess.root / name / "lineage.jsonl")
        records = lin.records(quiet=True)
        base = next((r for r in records if r.get("trial") == 0), {})
        this_run = {r["trial"] for r in sess.records.values() if r.get("task") == name}
        run = sess.runs.get(name)
        objective = run.task.objective if run is not None else _recorded_objective(base)
        terminalreporter.write_line(task_summary(name, records, base.get("direction", "minimize"),
                                                 base.get("metric", "score"), this_run,
                                                 time.monotonic() - sess.started, objective))
        terminalreporter.write_line(f"lineage: {lin.path}   history: git -C {lin.path.parent / 'repo'} log --all")
    if sess.stop_reason:
        terminalreporter.write_line(f"agent stopped proposing: {sess.stop_reason}")
    if sess.fatal:
        terminalreporter.write_line(f"run stopped: {sess.fatal}", red=True)


def _recorded_objective(base: dict[str, Any]) -> Any:
    """The objective as the baseline record keeps it (an xdist controller has no task objects)."""
    from .task import Objective

    o = base.get("objective")
    if not isinstance(o, dict):
        return None
    try:
        return Objective(**o)
    except (TypeError, ValueError):
        return None
