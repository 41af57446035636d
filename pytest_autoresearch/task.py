"""What a task module declares: plain values the plugin reads from its fixtures.

A task is a test module (``tasks/<name>/test_<name>.py``) whose fixtures return these objects. Nothing
here knows about any particular task.
"""
from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence

from .edits import Edit

Direction = Literal["minimize", "maximize"]


@dataclass(frozen=True)
class Budget:
    """Wall-clock limits and seeds for one trial.

    Each seed trains in a process (and sandbox) of its own. ``train_seconds`` bounds the timed part of all
    seeds together: each seed's clock runs from the moment the recipe's code is about to run until its process
    tree is gone. ``startup_seconds`` bounds each process's untimed interpreter start and ``preload`` imports;
    ``prepare_seconds`` the optional untimed ``prepare`` phase (compile warm-up, which gets no data).
    ``predict_seconds`` bounds the timed ``predict`` phases of all seeds (None: they share ``eval_seconds``
    with the evaluator); ``eval_seconds`` bounds the evaluator.
    """

    train_seconds: float
    eval_seconds: float
    seeds: tuple[int, ...] = (0,)
    prepare_seconds: float = 0.0
    startup_seconds: float = 120.0
    predict_seconds: float | None = None
    artifact_bytes: int | None = None
    code_counts: bool = False  # the artifact includes the recipe's code bytes (Parameter Golf's rule)
    threads: int | None = None
    preload: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.train_seconds <= 0 or self.eval_seconds <= 0:
            raise ValueError(f"Budget: train_seconds and eval_seconds must be > 0, got {self}")
        if not self.seeds:
            raise ValueError("Budget: seeds must name at least one seed")
        if self.predict_seconds is not None and self.predict_seconds <= 0:
            raise ValueError(f"Budget: predict_seconds must be > 0 or None, got {self.predict_seconds}")
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        object.__setattr__(self, "preload", tuple(self.preload))

    def with_overrides(self, overrides: Mapping[str, Any]) -> "Budget":
        """Apply config overrides (``budget.train_seconds=120``); ``None`` values keep the task default."""
        changes = {k: v for k, v in overrides.items() if v is not None}
        if "seeds" in changes:
            seeds = changes["seeds"]
            changes["seeds"] = tuple(range(seeds)) if isinstance(seeds, int) else tuple(seeds)
        return replace(self, **changes)


@dataclass(frozen=True)
class Objective:
    """The metric a trial is scored by, which way is better, and how sure a keep must be.

    A trial is kept when its mean per-seed gain over the best, on the same seeds, beats ``min_delta`` (metric
    units) and a one-sided t-test at the confidence of ``noise_sigmas`` normal deviations (Student's t for the
    noise estimate's degrees of freedom) on run-to-run noise, measured from re-runs of the same code:
    ``baseline_repeats`` > 1 re-runs the baseline, and with ``confirm_keeps`` a would-be keep is run again
    right after the best is re-run, and kept only if it still wins side by side; ``refresh_best_every=N``
    screens candidates against a measurement of the best at most N trials old (re-running it when needed), for
    timings on a machine whose speed drifts. ``scale="relative"`` compares
    log ratios (for timings, whose noise grows with the score); ``"absolute"`` metric differences.
    ``reseed_reruns=True`` is for training whose outcome is chaotic in its inputs (a small network trained for
    a few hundred steps): re-runs of the same code on the same seed agree exactly, yet any edit moves the score
    as far as a new seed would, so identical re-runs would measure no noise and let lucky edits through. The
    re-runs (baseline repeats, both confirmation runs) then train on fresh seeds (seed + 1000 k), each standing
    in for the budget's seed, so the noise measured is what a change that does nothing meets, and a confirmation
    is an independent replicate. ``replicate_near_misses=z`` (with ``confirm_keeps``): a candidate whose screen
    fell short of the bar by at most z standard errors of its gain also earns that side-by-side replicate, and is
    kept if the replicate passes the rule on its own, so a real win that drew an unlucky first measurement is not
    thrown away; every keep still rests on an independent replicate that passed (0 turns this off). See
    ``pytest_autoresearch.acceptance``.
    """

    metric: str
    direction: Direction
    min_delta: float = 0.0
    noise_sigmas: float = 2.0
    baseline_repeats: int = 1
    confirm_keeps: bool = False
    scale: Literal["absolute", "relative"] = "absolute"
    refresh_best_every: int = 0
    reseed_reruns: bool = False
    replicate_near_misses: float = 1.0

    def __post_init__(self) -> None:
        if self.direction not in ("minimize", "maximize"):
            raise ValueError(f"Objective.direction must be 'minimize' or 'maximize', got {self.direction!r}")
        if self.scale not in ("absolute", "relative"):
            raise ValueError(f"Objective.scale must be 'absolute' or 'relative', got {self.scale!r}")
        if self.baseline_repeats < 1:
            raise ValueError(f"Objective.baseline_repeats must be >= 1, got {self.baseline_repeats}")
        if not self.replicate_near_misses >= 0:
            raise ValueError(f"Objective.replicate_near_misses must be >= 0 (standard errors), got "
                             f"{self.replicate_near_misses}")

    def better(self, a: float, b: float) -> bool:
        """True when score ``a`` is strictly better than ``b``."""
        return a < b if self.direction == "minimize" else a > b

    def gain(self, score: float, reference: float) -> float:
        """How much better ``score`` is than ``reference``, positive when better (metric units)."""
        return reference - score if self.direction == "minimize" else score - reference


_REGION_RE = re.compile(r"^(?P<path>[^:]+)::(?P<name>[\w.-]+)$")


@dataclass(frozen=True)
class Surface:
    """What a specialist may change.

    ``files`` are glob patterns (relative to the recipe folder) of files it may rewrite or create whole;
    ``regions`` are ``"path::name"`` entries naming marked regions::

        # autoresearch: begin opt
        lr = 0.2
        # autoresearch: end opt

    Text outside a specialist's regions, the marker lines themselves included, must stay byte-identical.
    """

    files: tuple[str, ...] = ()
    regions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "files", tuple(self.files))
        object.__setattr__(self, "regions", tuple(self.regions))
        for r in self.regions:
            if not _REGION_RE.match(r):
                raise ValueError(f"Surface region {r!r} must look like 'path/to/file.py::name'")

    def region_map(self) -> dict[str, tuple[str, ...]]:
        out: dict[str, list[str]] = {}
        for r in self.regions:
            m = _REGION_RE.match(r)
            assert m is not None
            out.setdefault(m["path"], []).append(m["name"])
        return {k: tuple(v) for k, v in out.items()}

    def owns_file(self, path: str) -> bool:
        return any(fnmatch.fnmatchcase(path, pat) for pat in self.files)

    def touches(self, path: str) -> bool:
        return self.owns_file(path) or path in self.region_map()

    def describe(self) -> str:
        parts = [f"whole file {p}" for p in self.files]
        parts += [f"region '{n}' of {p}" for p, names in self.region_map().items() for n in names]
        return "; ".join(parts) or "(nothing)"


@dataclass(frozen=True)
class Technique:
    """A known technique a task offers its specialists (used by the offline agent's catalog)."""

    name: str
    hypothesis: str
    edits: tuple[Edit, ...]
    expected_delta: float | None = None


@dataclass(frozen=True)
class Specialist:
    """A named agent role that owns one surface of the recipe."""

    name: str
    surface: Surface
    brief: str
    catalog: tuple[Technique, ...] = ()
    model: str | None = None

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z][\w-]*", self.name):
            raise ValueError(f"Specialist name {self.name!r} must be an identifier")
        object.__setattr__(self, "catalog", tuple(self.catalog))


@dataclass(frozen=True)
class Evaluator:
    """The task-owned side of a trial: data staging and scoring, run in processes of their own.

    ``script`` is a Python file outside the recipe folder defining::

        def stage(ctx) -> None        # write training data to ctx.train_dir (the train phase sees it),
                                      # unlabeled test inputs to ctx.test_dir (the predict phase sees it),
                                      # and labels / validation data to ctx.private_dir (only evaluate sees it)
        def evaluate(ctx) -> dict     # metrics from the recipe's outputs and the private data

    ``options`` reach both (and key the staged-data cache); ``forbidden`` are regular expressions that must
    not appear in any text an agent adds to the recipe (an early, readable refusal: the sandbox is what stops
    a recipe from reaching evaluator data). ``hidden`` names files or folders the recipe's sandboxes must
    never show, e.g. the copy of a public dataset inside an installed package that the held-out set came from.
    """

    script: Path
    function: str = "evaluate"
    options: Mapping[str, Any] = field(default_factory=dict)
    forbidden: tuple[str, ...] = ()
    hidden: tuple[Path, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "script", Path(self.script).resolve())
        object.__setattr__(self, "forbidden", tuple(self.forbidden))
        object.__setattr__(self, "hidden", tuple(Path(h) for h in self.hidden))
        if not self.script.is_file():
            raise ValueError(f"Evaluator script {self.script} does not exist")


@dataclass(frozen=True)
class Task:
    """Everything the harness needs about one task, gathered from the module's fixtures."""

    name: str
    module_path: Path
    baseline_recipe: Path
    budget: Budget
    legality: tuple[Any, ...]
    evaluator: Evaluator
    objective: Objective
    specialists: tuple[Specialist, ...]
    variant: str = "mini"
    brief: str = ""

    def __post_init__(self) -> None:
        if not self.baseline_recipe.is_dir():
            raise ValueError(f"task {self.name}: baseline_recipe {self.baseline_recipe} is not a folder")
        if not (self.baseline_recipe / "train.py").is_file():
            raise ValueError(f"task {self.name}: {self.baseline_recipe}/train.py (with train(ctx)) is missing")
        if not self.specialists:
            raise ValueError(f"task {self.name}: the specialists fixture returned no specialists")
        names = [s.name for s in self.specialists]
        if len(set(names)) != len(names):
            raise ValueError(f"task {self.name}: specialist names repeat: {names}")
        self._check_regions()
        try:
            self.evaluator.script.relative_to(self.baseline_recipe.resolve())
        except ValueError:
            pass
        else:
            raise ValueError(f"task {self.name}: the evaluator script must live outside the recipe folder")

    def _check_regions(self) -> None:
        """Every region a specialist names must be marked in the baseline recipe: caught here, when the task is
        built, instead of as a failure of each trial that specialist gets."""
        from .edits import MARK_RE, split_regions

        for s in self.specialists:
            for rel, names in s.surface.region_map().items():
                f = self.baseline_recipe / rel
                if not f.is_file():
                    files = sorted(p.relative_to(self.baseline_recipe).as_posix()
                                   for p in self.baseline_recipe.rglob("*.py") if "__pycache__" not in p.parts)
                    raise ValueError(f"specialist '{s.name}' names region '{rel}::{names[0]}', but the recipe folder "
                                     f"{display_path(self.baseline_recipe)} has no file {rel} (its files: "
                                     f"{', '.join(files) or 'none'})")
                text = f.read_text(encoding="utf-8", errors="replace")
                chunks = split_regions(text)
                have = [n for n, _ in chunks[:-1] if n is not None]
                open_at = {m["name"]: i for i, line in enumerate(text.splitlines(), 1)
                           if (m := MARK_RE.match(line)) and m["kind"] == "begin"}
                for n in names:
                    if n in have:
                        continue
                    where = f"{display_path(f)}"
                    if chunks[-1][0] == n:
                        raise ValueError(f"specialist '{s.name}' names region '{rel}::{n}': {where}:{open_at[n]} "
                                         f"opens it but no '# autoresearch: end {n}' line closes it")
                    raise ValueError(
                        f"specialist '{s.name}' names region '{rel}::{n}', but {where} marks no region '{n}'; "
                        f"the regions it marks: {', '.join(have) or 'none'}. Name one of them in the Surface, or "
                        f"mark the lines with '# autoresearch: begin {n}' and '# autoresearch: end {n}'")

    def specialist(self, name: str) -> Specialist:
        for s in self.specialists:
            if s.name == name:
                return s
        raise KeyError(f"task {self.name} has no specialist {name!r} (has {[s.name for s in self.specialists]})")


def display_path(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it (shorter messages), else absolute."""
    p = Path(path).resolve()
    try:
        return p.relative_to(Path.cwd()).as_posix()
    except ValueError:
        return str(p)


def task_name_for(module_path: Path) -> str:
    """``tasks/airbench/test_airbench.py`` -> ``airbench``."""
    stem = module_path.stem
    return stem[len("test_"):] if stem.startswith("test_") else stem


FIXTURES: Sequence[str] = ("baseline_recipe", "budget", "legality", "evaluator", "objective", "specialists")
Check = Callable[..., Any]
