"""The search loop's peers, as agents any user could register: random search and Optuna TPE.

Load with ``-p search_peers`` (this folder on ``PYTHONPATH``), then ``--autoresearch-agent random`` or
``--autoresearch-agent tpe``. Both search the recipe's *annotated knobs*: assignments in a specialist's marked
regions that carry a ``# range: lo..hi`` or ``# options: a | b`` comment, and booleans. A numeric knob without
a range is searched within x1/2..x2 of its value in the parent it is first seen in. Neither peer uses the
task's catalog of techniques or the lineage's notes: they see scores only.

- ``random``: every trial re-samples all knobs of the proposing specialist's surface on top of the parent
  (the current best), uniformly (log-uniformly where the range spans a decade or more of positive values).
- ``tpe``: one Optuna TPE study per session over every knob of the surface it is given (run it with
  ``search.specialists=merged`` for one study over the whole recipe); each finished trial's score is told
  back from the lineage before the next is asked, illegal trials as failures. ``agent.local=true`` searches
  each positive number within x1/2..x2 of its baseline value (inside its range) instead of its whole range:
  sampled jointly over a whole range, most draws break a shape or the gate.
"""
from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from typing import Any, Mapping

from pytest_autoresearch.agents.base import AgentStop, NoProposal, Proposal, ProposalRequest
from pytest_autoresearch.agents.offline import ASSIGN_RE, OPTION_RE, RANGE_RE, _fmt
from pytest_autoresearch.edits import Edit, split_regions


@dataclass(frozen=True)
class Knob:
    path: str
    region: str
    name: str
    kind: str                    # "float" | "int" | "bool" | "option"
    lo: float = 0.0
    hi: float = 0.0
    options: tuple[str, ...] = ()
    value: float | None = None   # a numeric knob's value where it was found

    @property
    def key(self) -> str:
        return f"{self.path}:{self.region}:{self.name}"

    @property
    def log(self) -> bool:
        return self.kind in ("float", "int") and self.lo > 0 and self.hi / self.lo >= 10


def find_knobs(files: Mapping[str, str], surface: Any) -> list[Knob]:
    """The annotated knobs in the surface's regions (whole owned files included)."""
    out: list[Knob] = []
    regions = surface.region_map()
    for path in sorted(files):
        if not path.endswith(".py"):
            continue
        owned = surface.owns_file(path)
        for region, chunk in split_regions(files[path]):
            if not owned and region not in regions.get(path, ()):
                continue
            for line in chunk.splitlines():
                k = _knob(path, region or "file", line)
                if k is not None:
                    out.append(k)
    return out


def _knob(path: str, region: str, line: str) -> Knob | None:
    m = OPTION_RE.match(line)
    if m:
        return Knob(path, region, m["name"], "option", options=tuple(o.strip() for o in m["opts"].split("|")))
    m = ASSIGN_RE.match(line)
    if not m:
        return None
    value = m["value"]
    if value in ("True", "False"):
        return Knob(path, region, m["name"], "bool")
    is_int = re.fullmatch(r"[-+]?\d+", value) is not None
    rng = RANGE_RE.search(m["tail"] or "")
    v = float(value)
    if rng:
        lo, hi = float(rng["lo"]), float(rng["hi"])
    elif v > 0:
        lo, hi = v / 2, v * 2
    elif v < 0:
        lo, hi = v * 2, v / 2
    else:
        return None
    return Knob(path, region, m["name"], "int" if is_int else "float", lo, hi, value=v)


def near(k: Knob) -> Knob:
    """``k`` searched within x1/2..x2 of its value (inside its range): the offline agent's step sizes."""
    if k.kind not in ("int", "float") or not k.value or k.value < 0:
        return k
    lo, hi = max(k.lo, k.value / 2), min(k.hi, k.value * 2)
    if k.kind == "int" and math.floor(hi) < math.ceil(lo):
        return k
    return Knob(k.path, k.region, k.name, k.kind, lo, hi, value=k.value)


def set_knobs(files: Mapping[str, str], values: Mapping[str, Any], knobs: list[Knob]) -> list[Edit]:
    """Edits that set each knob (by key) to its value: one whole-region replacement per touched region."""
    by_key = {k.key: k for k in knobs}
    edits: list[Edit] = []
    for path in sorted({by_key[key].path for key in values}):
        text = files[path]
        for region, chunk in split_regions(text):
            lines = chunk.splitlines(keepends=True)
            changed = False
            for i, line in enumerate(lines):
                body = line.rstrip("\n")
                k = _knob(path, region or "file", body)
                if k is None or k.key not in values:
                    continue
                new = _render(body, k, values[k.key])
                if new != body:
                    lines[i] = new + line[len(body):]
                    changed = True
            if changed and text.count(chunk) == 1:
                edits.append(Edit(path, chunk, "".join(lines)))
    return edits


def _render(body: str, k: Knob, value: Any) -> str:
    if k.kind == "option":
        m = OPTION_RE.match(body)
        return f"{m['head']}{m['q']}{value}{m['q']}{m['tail']}"
    m = ASSIGN_RE.match(body)
    if k.kind == "bool":
        text = "True" if value else "False"
    else:  # the offline agent's number format: ints as ints, floats to 4 significant digits
        text = _fmt(float(value), "0" if k.kind == "int" else "0.0")
    return f"{m['head']}{text}{m['tail']}"


def sample(k: Knob, rng: random.Random) -> Any:
    if k.kind == "bool":
        return rng.random() < 0.5
    if k.kind == "option":
        return rng.choice(k.options)
    if k.log:
        v = math.exp(rng.uniform(math.log(k.lo), math.log(k.hi)))
    else:
        v = rng.uniform(k.lo, k.hi)
    return int(round(v)) if k.kind == "int" else v


class RandomSearch:
    name = "random"
    model = None

    def __init__(self, cfg: Mapping[str, Any], *, seed: int) -> None:
        self.seed = seed

    def describe(self) -> str:
        return f"random search over annotated knobs (seed {self.seed})"

    def propose(self, request: ProposalRequest) -> Proposal:
        knobs = find_knobs(request.files, request.specialist.surface)
        if not knobs:
            raise NoProposal(f"random: no annotated knob in the surface of {request.specialist.name}")
        rng = random.Random(f"{self.seed}:{request.task.name}:{request.trial}")
        values = {k.key: sample(k, rng) for k in knobs}
        edits = set_knobs(request.files, values, knobs)
        if not edits:
            raise NoProposal("random: the draw equals the parent")
        shown = ", ".join(f"{k.name}={_short(values[k.key])}" for k in knobs)
        return Proposal(f"Random draw of {request.specialist.name}'s knobs: {shown}", None, edits,
                        kind=f"random:{request.specialist.name}")


class TPESearch:
    name = "tpe"
    model = None

    def __init__(self, cfg: Mapping[str, Any], *, seed: int) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.seed = seed
        self.optuna = optuna
        self.study: Any = None
        self.pending: dict[int, Any] = {}   # harness trial -> optuna trial
        self.space: dict[str, Any] = {}
        self.local = str(dict(cfg or {}).get("local", False)).lower() in ("true", "1")

    def describe(self) -> str:
        return f"Optuna TPE over annotated knobs{' near the baseline' if self.local else ''} (seed {self.seed})"

    def _tell(self, request: ProposalRequest) -> None:
        from optuna.trial import TrialState

        by_trial = {r["trial"]: r for r in request.view.records}
        for t in sorted(self.pending):
            rec = by_trial.get(t)
            if rec is None or rec.get("label") is None:
                continue
            ot = self.pending.pop(t)
            if rec.get("label") in ("keep", "discard") and isinstance(rec.get("score"), (int, float)):
                self.study.tell(ot, float(rec["score"]))
            else:
                self.study.tell(ot, state=TrialState.FAIL)

    def propose(self, request: ProposalRequest) -> Proposal:
        if self.study is None:
            sampler = self.optuna.samplers.TPESampler(seed=self.seed, n_startup_trials=5)
            self.study = self.optuna.create_study(direction=request.view.direction, sampler=sampler)
        self._tell(request)
        knobs = find_knobs(request.files, request.specialist.surface)
        for k in knobs:  # a knob's range is fixed the first time it is seen (a no-range knob's, from its value)
            self.space.setdefault(k.key, near(k) if self.local else k)
        knobs = [self.space[k.key] for k in knobs]
        if not knobs:
            raise NoProposal(f"tpe: no annotated knob in the surface of {request.specialist.name}")
        ot = self.study.ask()
        values = {}
        for k in knobs:
            if k.kind == "bool":
                values[k.key] = ot.suggest_categorical(k.key, [False, True])
            elif k.kind == "option":
                values[k.key] = ot.suggest_categorical(k.key, list(k.options))
            elif k.kind == "int":
                values[k.key] = ot.suggest_int(k.key, int(math.ceil(k.lo)), int(math.floor(k.hi)), log=k.log)
            else:
                values[k.key] = ot.suggest_float(k.key, k.lo, k.hi, log=k.log)
        edits = set_knobs(request.files, values, knobs)
        if not edits:
            self.study.tell(ot, state=self.optuna.trial.TrialState.PRUNED)
            raise NoProposal("tpe: the suggestion equals the parent")
        self.pending[request.trial] = ot
        shown = ", ".join(f"{k.name}={_short(values[k.key])}" for k in knobs)
        return Proposal(f"TPE suggestion {ot.number}: {shown}", None, edits, kind="tpe")


def _short(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


class BaselineOnly:
    """Proposes nothing: a session with it measures the task's baseline and stops."""

    name = "baseline_only"
    model = None

    def __init__(self, cfg: Mapping[str, Any], *, seed: int) -> None:
        pass

    def describe(self) -> str:
        return "baseline only (proposes nothing)"

    def propose(self, request: ProposalRequest) -> Proposal:
        raise AgentStop("baseline measured; this agent proposes nothing")


def pytest_autoresearch_register_agents(registry: dict[str, Any]) -> None:
    registry["random"] = RandomSearch
    registry["tpe"] = TPESearch
    registry["baseline_only"] = BaselineOnly

