"""pytest hooks only: options, parametrization, fixtures, header, status words, live lines and summary.

This module loads into every pytest run of the environment, so it imports nothing heavy: the run state (Hydra
config, agent, lineages) is built only once a run has task items or autoresearch settings.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from . import hookspec
from .options import add_ini, settings

SESSION_KEY = pytest.StashKey["Any"]()
REPORT_KEY = pytest.StashKey[dict]()   # attributes copied onto the item's reports (they survive xdist)
CHECK_KEY = pytest.StashKey[str]()     # a plain run's failed reference gate or replay, failed after the test body
TRIAL_FIXTURE = "autoresearch_trial"
MARKER = "autoresearch"


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(hookspec)


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("autoresearch", "autoresearch: agent-driven research trials")
    # Defaults are None so that an unset option falls back to its ini key (options.py).
    g.addoption("--autoresearch-trials", type=int, default=None, metavar="N",
                help="run N agent-proposed trials per task module (0 or absent: run the recipe once as a test)")
    g.addoption("--autoresearch-agent", default=None, metavar="NAME",
                help="auto (claude when ANTHROPIC_API_KEY is set, else offline), offline, claude, or a plugin's agent")
    g.addoption("--autoresearch-lineage", default=None, metavar="DIR",
                help="where lineages live (default: .autoresearch/ under the rootdir), one folder per task")
    g.addoption("--autoresearch-override", action="append", default=[], metavar="KEY=VALUE",
                help="Hydra override of the run config, repeatable (e.g. budget.train_seconds=120)")
    g.addoption("--autoresearch-skip", action="store_true", default=False,
                help="skip the task tests (recipes and trials); run everything else")
    g.addoption("--autoresearch-update-reference", action="store_true", default=False,
                help="plain run: re-measure each task's recipe and rewrite its reference.json (the CI gate)")
    g.addoption("--autoresearch-replay", type=int, default=None, metavar="TRIAL",
                help="plain run: run this recorded trial's commit under the lineage's budget and compare")
    g.addoption("--autoresearch-mlflow", default=None, metavar="URI",
                help="log each trial as an MLflow run to this tracking URI or folder (needs the mlflow extra)")
    add_ini(parser)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"{MARKER}: a task test of pytest-autoresearch (a recipe run or a trial)")
    s = settings(config)
    config.pluginmanager.register(_LiveLines(config), "autoresearch-live-lines")
    if s.mlflow:
        from .mlflow_export import MlflowExporter, check_installed

        check_installed()
        config.pluginmanager.register(MlflowExporter(s.mlflow), "autoresearch-mlflow")
    if s.configured:
        _session(config)  # bad settings are a usage error before anything runs


def pytest_sessionstart(session: pytest.Session) -> None:
    sess = _existing(session.config)
    if sess is not None and sess.trials and not sess.is_worker:
        sess.check_agent_isolation()  # a usage error before anything runs
        from .plot import preload_in_background

        preload_in_background()  # the session's plot is drawn at its end


def _session(config: pytest.Config) -> Any:
    """The run state, built on first use."""
    sess = config.stash.get(SESSION_KEY, None)
    if sess is None:
        from . import masking
        from .session import AutoresearchSession

        masking.register_environment()
        sess = config.stash[SESSION_KEY] = AutoresearchSession(config)
    return sess


def _existing(config: pytest.Config) -> Any:
    return config.stash.get(SESSION_KEY, None)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # Only slot ids here: trial numbers, lineage reads and agent calls wait until a trial runs, so
    # collection is identical on every xdist worker.
    if TRIAL_FIXTURE not in metafunc.fixturenames or settings(metafunc.config).skip:
        return
    _session(metafunc.config).check_task_fixtures(metafunc)
    from .contract import check_fixture_origins

    check_fixture_origins(metafunc)
    n = settings(metafunc.config).trials
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
    from .lineage import AGENT_LABELS, LineageLocked
    from .masking import clean
    from .session import TrialResult
    from .trial import BaselineError
    from .vcs import RepoError

    sess = _session(request.config)
    problem: str | None = None
    try:
        task = sess.build_task(request)
        run = sess.task_run(task)
    except pytest.UsageError as e:
        problem = str(e)
    if problem is not None:  # outside ``except``: one message, no traceback, no chained repeat
        _exit_status(request, pytest.ExitCode.USAGE_ERROR)
        sess.refuse_task(request, problem)
    slot = getattr(request, "param", None)
    if slot is None:
        s = settings(request.config)
        if s.replay is not None:
            from .replay import ReplayError, run_replay

            try:
                rec, check = run_replay(run, s.replay, tmp_path)
            except ReplayError as e:
                problem = str(e)
            if problem is not None:
                pytest.fail(problem, pytrace=False)
        else:
            from .reference import gate_plain_run

            rec = run.plain_run(tmp_path)
            check = gate_plain_run(run, rec, update=s.update_reference,
                                   measure_again=lambda i: run.plain_run(tmp_path / f"repeat-{i}"))
        _attach(request, rec, "plain")
        request.node.user_properties.extend(check.properties)
        if check.status != "no_reference":
            sess.announce(check.message)
        if check.failed:
            request.node.stash[CHECK_KEY] = check.message
        return TrialResult(rec, plain=True)
    if sess.fatal:
        pytest.skip(f"not run: {sess.fatal}")
    if sess.stop_reason:
        pytest.skip(f"agent stopped proposing: {sess.stop_reason}")
    stop: str | None = None
    brief: str | None = None   # the stop line, where repeating the whole message would print it twice
    # Exit status when the tool, not the research, stops the run: a setup to fix is a usage error (4), a
    # lineage held or damaged elsewhere an interruption (2); a failed trial stays 1. Set at session end
    # (syrupy-style), nothing raised.
    status = pytest.ExitCode.USAGE_ERROR
    rec = None
    try:
        rec = run.run_trial(slot)
    except AgentStop as e:
        sess.stop_reason = clean(str(e))
    except AgentFatal as e:
        stop = sess.fatal = clean(f"agent {sess.agent_name} cannot work: {e}")
    except BaselineError as e:
        stop = clean(str(e))
        brief = f"task {task.name} has no legal baseline (see the error above)"
    except (LineageLocked, RepoError) as e:
        stop = sess.fatal = clean(str(e))
        status = pytest.ExitCode.INTERRUPTED
    # Failing outside the ``except`` blocks keeps pytest from printing the message twice, chained.
    if stop is not None:
        _exit_status(request, status)
        request.session.shouldstop = brief or stop.splitlines()[0][:300]
        pytest.fail(stop, pytrace=False)
    if rec is None:
        pytest.skip(f"agent stopped proposing: {sess.stop_reason}")
    _attach(request, rec, slot)
    request.config.hook.pytest_autoresearch_trial_recorded(config=request.config, record=rec)
    label = rec["label"]
    if label == "evaluator_error":
        pytest.fail(f"evaluator_error in trial {rec['trial']}: {rec['notes']}", pytrace=False)
    if label in AGENT_LABELS and label != "discard":
        pytest.xfail(f"{label}: {rec['notes']}"[:500])
    return TrialResult(rec)


def _brief(rec: dict[str, Any], slot: str) -> dict[str, Any]:
    keys = ("task", "trial", "specialist", "label", "score", "delta_pct", "train_s", "notes", "hypothesis", "kind",
            "metric", "gates")
    return {"slot": slot, **{k: rec.get(k) for k in keys}}


# JUnit XML property -> brief key: one property per value, so CI dashboards can chart them.
JUNIT_PROPERTIES = {"task": "task", "slot": "slot", "trial": "trial", "specialist": "specialist", "kind": "kind",
                    "label": "label", "score": "score", "delta": "delta_pct", "train_s": "train_s",
                    "hypothesis": "hypothesis", "notes": "notes"}


def _attach(request: pytest.FixtureRequest, rec: dict[str, Any], slot: str) -> None:
    """The record's brief rides on the item's reports (live lines, status words, the xdist controller); its
    values become JUnit properties."""
    brief = _brief(rec, slot)
    request.node.stash.setdefault(REPORT_KEY, {})["autoresearch"] = brief
    for prop, key in JUNIT_PROPERTIES.items():
        if brief.get(key) not in (None, ""):
            request.node.user_properties.append((prop, brief[key]))


def _exit_status(request: pytest.FixtureRequest, code: pytest.ExitCode) -> None:
    request.node.stash.setdefault(REPORT_KEY, {}).setdefault("autoresearch_exit", int(code))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Any:
    """A plain run whose recipe regressed against its reference (or whose replay differs) fails after the test's
    own assertions passed: the failure is the test's, not a fixture error."""
    result = yield
    failure = item.stash.get(CHECK_KEY, None)
    if failure:
        pytest.fail(failure, pytrace=False)
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    for name, value in item.stash.get(REPORT_KEY, {}).items():
        setattr(report, name, value)
    return report


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # tryfirst: the marker must be on the items before ``-m`` deselects by it.
    skip = pytest.mark.skip(reason="--autoresearch-skip") if settings(config).skip else None
    for item in items:
        if TRIAL_FIXTURE in getattr(item, "fixturenames", ()):
            item.add_marker(MARKER)
            if skip is not None:
                item.add_marker(skip)


@pytest.hookimpl(tryfirst=True)
def pytest_report_teststatus(report: pytest.TestReport, config: pytest.Config) -> Any:
    """Trials read as their label in ``-v`` and ``-rA`` (``KEEP``, ``DISCARD``, ``GATE_MISS``, ...), and a keep
    as ``K`` in the progress line. pytest's categories stay, so counts and the exit status do not change."""
    brief = getattr(report, "autoresearch", None)
    if not brief or report.when == "teardown" or (report.when == "setup" and report.passed):
        return None
    label = str(brief.get("label"))
    if brief.get("slot") == "plain" and label == "baseline":
        return None
    word = label.upper()
    if report.passed:
        return "passed", "K" if label == "keep" else ".", (word, {"green": True, "bold": label == "keep"})
    if report.skipped and hasattr(report, "wasxfail"):
        return "xfailed", "x", (word, {"yellow": True})
    if report.failed:
        if report.when == "call":
            return "failed", "F", (word, {"red": True})
        return "error", "E", (word, {"red": True})
    return None


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    sess = _existing(session.config)
    if sess is not None and sess.exit_code is not None and exitstatus in (0, 1, 2):
        session.exitstatus = sess.exit_code


# -- terminal output ----------------------------------------------------------------------------------
def _task_items(items: list[pytest.Item], config: pytest.Config) -> dict[str, Path]:
    paths = [Path(str(i.path)) for i in items if TRIAL_FIXTURE in getattr(i, "fixturenames", ())]
    if not paths or settings(config).skip:
        return {}
    from .task import task_name_for

    out: dict[str, Path] = {}
    for path in paths:
        out.setdefault(task_name_for(path), path)
    return out


def _header_line(sess: Any, name: str) -> str:
    from .lineage import Lineage

    sess.headers.add(name)
    lin = Lineage(sess.root / name / "lineage.jsonl")
    n = len(lin.records(quiet=True))
    agent = sess.agent.describe() if sess.trials else "none (plain run)"
    plan = (f"{sess.trials} trials (slots trial-01..), numbered from #{max(n, 1)}" if sess.trials
            else "plain run: the recipe once, nothing recorded")
    return (f"autoresearch: task {name} | variant {sess.variant} ({sess.variant_reason()}) | "
            f"device {sess.device} | agent {agent} | isolation: {sess.isolation().describe()} | "
            f"lineage {lin.path.parent} ({n} trials) | {plan}")


def _write_header(config: pytest.Config, name: str) -> None:
    """For tasks the collection-finish header could not name (an xdist controller collects nothing)."""
    sess = _session(config)
    tr = config.pluginmanager.get_plugin("terminalreporter")
    if name in sess.headers or tr is None:
        return
    tr.write_line(_header_line(sess, name))


def pytest_report_header(config: pytest.Config) -> list[str]:
    """Where a research run's settings came from; silent in runs that did not ask for autoresearch."""
    sess = _existing(config)
    if sess is None or not sess.trials:
        return []
    s = settings(config)
    from_ini = [k for k in ("autoresearch_trials", "autoresearch_agent", "autoresearch_lineage",
                            "autoresearch_variant", "autoresearch_overrides", "autoresearch_mlflow")
                if config.getini(k)]
    line = (f"autoresearch: {s.trials} trials per task module, agent {sess.agent_name}, lineages under {sess.root}"
            f", config overrides {list(s.overrides) or 'none'}")
    if from_ini:
        line += f"; from {config.inipath.name if config.inipath else 'ini'}: {', '.join(from_ini)}"
    if s.mlflow:
        line += f"; MLflow {s.mlflow}"
    return [line]


def pytest_report_collectionfinish(config: pytest.Config, start_path: Path, items: list[pytest.Item]) -> list[str]:
    """One line per task, after pytest's "collected N items", before the first trial."""
    tasks = _task_items(items, config)
    if not tasks or getattr(config, "workerinput", None) is not None:
        return []
    sess = _session(config)
    return [_header_line(sess, name) for name in tasks if name not in sess.headers]


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
        code = getattr(report, "autoresearch_exit", None)
        if code is not None and _session(self.config).exit_code is None:
            _session(self.config).exit_code = pytest.ExitCode(code)
        rec = getattr(report, "autoresearch", None)
        # Printed with the teardown report, so the line follows pytest's own progress mark for the item.
        if rec is None or report.when != "teardown":
            return
        sess = _session(self.config)
        if report.nodeid in sess.records:
            return
        sess.records[report.nodeid] = rec
        tr = self.config.pluginmanager.get_plugin("terminalreporter")
        if tr is None or sess.is_worker:
            return
        from .report import live_line, plain_line

        _write_header(self.config, rec["task"])
        if rec["slot"] == "plain":
            line = plain_line(rec)
        else:
            line = live_line(f"{rec['task']} {rec['slot']}", rec)
        tr.ensure_newline()
        tr.write_line(line)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    sess = _existing(config)
    if sess is None or not sess.headers or not sess.trials:
        return
    import time

    from .lineage import Lineage, recorded_objective
    from .report import task_summary

    tasks = sorted(sess.headers)
    terminalreporter.section("autoresearch summary")
    for name in tasks:
        lin = Lineage(sess.root / name / "lineage.jsonl")
        records = lin.records(quiet=True)
        base = next((r for r in records if r.get("trial") == 0), {})
        this_run = {r["trial"] for r in sess.records.values() if r.get("task") == name}
        run = sess.runs.get(name)
        objective = run.task.objective if run is not None else recorded_objective(records)
        terminalreporter.write_line(task_summary(name, records, base.get("direction", "minimize"),
                                                 base.get("metric", "score"), this_run,
                                                 time.monotonic() - sess.started, objective))
        terminalreporter.write_line(f"lineage: {lin.path}   history: git -C {lin.path.parent / 'repo'} log --all")
        from .html_report import session_reports

        terminalreporter.write_line(session_reports(lin.path.parent, records, objective=objective))
    if sess.stop_reason:
        terminalreporter.write_line(f"agent stopped proposing: {sess.stop_reason}")
    if sess.fatal:
        terminalreporter.write_line(f"run stopped: {sess.fatal}", red=True)
