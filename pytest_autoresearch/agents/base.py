"""The interface every agent implements, and what it is given."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Protocol

from ..edits import Edit

if TYPE_CHECKING:
    from ..lineage import LineageView
    from ..task import Specialist, Task


@dataclass(frozen=True)
class SmokeResult:
    """What a quick run of proposed code found: ``ok``, a one-paragraph ``report`` for the agent (on a crash,
    the deepest frame in the recipe's own files and a short masked traceback tail), and its wall seconds."""

    ok: bool
    report: str
    seconds: float = 0.0


class Workbench(Protocol):
    """What the harness lends an agent while it proposes: the files of recorded trials, and a smoke test that
    runs proposed code for a few steps on a slice of the training data, in the trial sandbox."""

    def files_of(self, trial: int) -> Mapping[str, str]:
        """The recipe files of a recorded trial (``KeyError`` when it has none)."""
        ...

    def smoke(self, files: Mapping[str, str], *, seconds: float, steps: int, rows: int) -> SmokeResult: ...


@dataclass(frozen=True)
class ProposalRequest:
    """Everything an agent may read to propose one trial.

    ``files`` are the parent trial's recipe files (path relative to the recipe folder -> text); ``view`` is the
    lineage as the agent is allowed to see it; ``seed`` makes a proposal reproducible; ``bench``, when the
    harness lends one, reads other trials' files and smoke-tests proposed code. ``focus`` names the catalog
    technique the schedule gave this turn for (its expected gain was the largest prior), when it did: a
    suggestion the agent may take or not.
    """

    task: "Task"
    specialist: "Specialist"
    trial: int
    parent: int
    files: Mapping[str, str]
    view: "LineageView"
    seed: int
    bench: Workbench | None = None
    focus: str | None = None


@dataclass
class Proposal:
    """One trial's hypothesis and code edit.

    ``parent`` may name another trial to branch from (default: the request's parent, the current best);
    ``refused_edits`` counts edits the agent attempted outside its surface and was told so;
    ``usage`` carries token counts and ``cost_usd``.
    """

    hypothesis: str
    expected_delta: float | None
    edits: list[Edit]
    parent: int | None = None
    kind: str = ""            # "path:region:knob:direction", so later proposals can learn per knob
    step: float | None = None  # size of a numeric step (x2 = 2.0), so a failure backs off the size too
    refused_edits: int = 0
    usage: dict[str, Any] = field(default_factory=dict)
    model: str | None = None
    notes: str = ""


class NoProposal(Exception):
    """The agent ended without a valid submission; recorded as ``preflight_crash`` with this reason."""

    def __init__(self, reason: str, usage: Mapping[str, Any] | None = None, model: str | None = None,
                 agent_side: bool = False) -> None:
        super().__init__(reason)
        self.usage = dict(usage or {})
        self.model = model
        # The agent's service failed (an API outage), not the idea: recorded as ``agent_error`` and kept out of
        # what measures a specialist's yield.
        self.agent_side = agent_side


class AgentStop(Exception):
    """The agent will propose no more this session (a cost or token cap); remaining trials are skipped."""


class AgentFatal(Exception):
    """The agent cannot work at all (bad credentials); the run stops with a non-zero exit status."""


class Proposer(Protocol):
    """An agent. ``name`` is recorded in every record's ``agent`` key.

    Optional: ``prior(request) -> allocation.Prior | None``, the gain the agent predicts from its best next move
    for ``request.specialist`` on the best's files. The bandit uses it as that specialist's prior in place of
    the catalog's (the offline agent has one; an agent without it gets the catalog prior).
    """

    name: str

    def propose(self, request: ProposalRequest) -> Proposal: ...

    def describe(self) -> str:
        """One line for the run header: name and model(s)."""
        ...
