"""The CI regression gate: a plain run compared with the task's committed reference (``reference.json``).

``tasks/<task>/reference.json`` holds one measured entry per kind of machine: the score, its per-seed scores
from every run, the run-to-run noise measured from those runs, the recipe's content hash and git commit, and
the machine (``cpu``/``cuda``, the device's name, the task variant). A plain run (``pytest tasks/<task>``)
compares the current recipe with the entry of its own machine kind. The stated test, on the objective's scale
(metric units, or log ratios for ``Objective(scale="relative")``), paired by seed::

    gain_i = how much better the current run is than the reference on seed i   (direction-aware)
    se     = sqrt(var_run * (1 + 1/R) / n)      var_run: per-seed run-to-run variance of the reference's R runs
    fail iff mean(gain_i) < -max(min_delta, sigmas * se, 1e-9 of the reference)   (the last: float noise)

``sigmas`` (default 3: a one-sided false alarm of about 0.1% per run) and ``min_delta`` are fields of the
entry, so a project can loosen its gate in the committed file. An entry measured on another kind of machine
(CPU vs GPU, another device name, another variant) is reported as not comparable; nothing fails.
``--autoresearch-update-reference`` re-measures the recipe (``max(2, Objective.baseline_repeats)`` runs, so
the noise is measured) and rewrites this machine's entry, keeping the others (like a snapshot update).
"""
from __future__ import annotations

import json
import math
import os
import platform
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from .acceptance import measured_noise, min_delta_on_scale, per_seed, scale_of, transform

FILE_NAME = "reference.json"
SCHEMA = 1
DEFAULT_SIGMAS = 3.0
TEST = ("fail iff mean paired per-seed gain vs the reference < -max(min_delta, sigmas * sqrt(var_run * (1 + 1/R) "
        "/ n), 1e-9 of the reference), on the objective's scale (log ratios when scale is relative)")


class ReferenceError(ValueError):
    """A reference file that cannot be read; the message names the file and what to do."""


@dataclass(frozen=True)
class Machine:
    """What kind of machine a score was measured on: scores from different kinds are not comparable."""

    kind: str      # cpu | cuda
    name: str      # the CPU model or GPU name
    variant: str   # the task variant (mini | full)

    def describe(self) -> str:
        return f"{self.kind} '{self.name}' ({self.variant})"

    def mismatch(self, other: "Machine") -> str | None:
        for key in ("kind", "name", "variant"):
            if getattr(self, key) != getattr(other, key):
                return f"{key} {getattr(other, key)!r} here vs {getattr(self, key)!r} in the reference"
        return None


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown cpu"


def this_machine(device: str, variant: str) -> Machine:
    """The machine a run measures on. On CUDA the GPU's name (torch is already imported by then)."""
    if device.startswith("cuda"):
        import torch

        index = int(device.split(":", 1)[1]) if ":" in device else 0
        return Machine("cuda", torch.cuda.get_device_name(index), variant)
    return Machine(device, cpu_name(), variant)


def recipe_commit(path: Path) -> tuple[str | None, bool]:
    """The project's git commit holding ``path`` and whether ``path`` has uncommitted changes (None outside git)."""
    try:
        import git

        repo = git.Repo(path, search_parent_directories=True)
        rel = os.path.relpath(Path(path).resolve(), repo.working_tree_dir)
        dirty = repo.is_dirty(path=rel) or any(u.startswith(rel.rstrip("/") + "/") for u in repo.untracked_files)
        return repo.head.commit.hexsha, bool(dirty)
    except Exception:  # noqa: BLE001 - no git, no repository, no commit yet: the hash still identifies the recipe
        return None, False


# -- the file ---------------------------------------------------------------------------------------------
def load(path: Path) -> list[dict[str, Any]]:
    """The entries of a reference file ([] when there is none)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as e:
        raise ReferenceError(f"{path} is not a readable reference file ({e}); fix it, delete it, or rewrite it "
                             f"with: pytest {Path(path).parent} --autoresearch-update-reference") from None
    entries = data.get("references") if isinstance(data, dict) and "references" in data else [data]
    if not isinstance(entries, list) or not all(isinstance(e, dict) and "score" in e for e in entries):
        raise ReferenceError(f"{path}: expected {{\"references\": [{{\"score\": ..., \"machine\": ...}}, ...]}}; "
                             f"rewrite it with: pytest {Path(path).parent} --autoresearch-update-reference")
    return entries


def entry_machine(entry: Mapping[str, Any]) -> Machine:
    m = entry.get("machine") or {}
    return Machine(str(m.get("kind", "?")), str(m.get("name", "?")), str(m.get("variant", "?")))


def save(path: Path, entry: dict[str, Any]) -> None:
    """Write ``entry``, replacing the entry of the same machine and keeping the others (atomic replace)."""
    mine = entry_machine(entry)
    try:
        others = [e for e in load(path) if entry_machine(e) != mine]
    except ReferenceError:
        others = []  # an unreadable file is being rewritten on purpose
    data = {"schema": SCHEMA, "test": TEST, "references": [*others, entry]}
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


# -- the comparison ---------------------------------------------------------------------------------------
@dataclass
class GateResult:
    """What a plain run's comparison with the reference found."""

    status: str   # pass | regression | not_comparable | no_reference | updated | error (replays: [not_]reproduced)
    message: str
    score: float | None = None
    reference: float | None = None
    gain: float | None = None        # mean paired gain on the objective's scale (positive: better)
    bar: float | None = None
    path: Path | None = None
    properties: list[tuple[str, Any]] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return self.status in ("regression", "error", "not_reproduced")


def _delta_pct(score: float | None, ref: float | None) -> float | None:
    if not isinstance(score, (int, float)) or not isinstance(ref, (int, float)) or not ref:
        return None
    return 100.0 * (score - ref) / abs(ref)


def compare(entries: Sequence[Mapping[str, Any]], current: Mapping[int, float], score: float, objective: Any,
            machine: Machine, where: str = FILE_NAME) -> GateResult:
    """The gate's verdict for the current run (per-seed scores ``current``) against ``entries``."""
    if not entries:
        return GateResult("no_reference", f"no reference in {where}", score=score)
    entry = next((e for e in entries if entry_machine(e) == machine), None)
    if entry is None:
        have = "; ".join(entry_machine(e).describe() for e in entries)
        why = entry_machine(entries[0]).mismatch(machine) if len(entries) == 1 else "no entry for this machine"
        return GateResult("not_comparable", f"not comparable: {where} was measured on {have}; this run is on "
                          f"{machine.describe()} ({why}). Nothing is compared; add this machine's entry with "
                          f"--autoresearch-update-reference", score=score, reference=entry_score(entries[0]))
    ref = entry_score(entry)
    if entry.get("metric") not in (None, objective.metric) or entry.get("direction") not in (None, objective.direction):
        return GateResult("not_comparable", f"not comparable: {where} scores {entry.get('direction')} "
                          f"{entry.get('metric')}, the task now {objective.direction} {objective.metric}; rewrite it "
                          f"with --autoresearch-update-reference", score=score, reference=ref)
    ref_seeds = {int(k): float(v) for k, v in (entry.get("per_seed") or {}).items()}
    scale = entry.get("scale") or scale_of(objective)
    seeds = sorted(set(ref_seeds) & set(current))
    cur_vals = [current[s] for s in seeds] if seeds else [score]
    ref_vals = [ref_seeds[s] for s in seeds] if seeds else [ref]
    c, r = transform(cur_vals, scale), transform(ref_vals, scale)
    if c is None or r is None:  # a relative scale needs positive scores
        scale, c, r = "absolute", cur_vals, ref_vals
    sign = 1.0 if objective.direction == "minimize" else -1.0
    gains = [sign * (b - a) for a, b in zip(c, r)]
    gain = sum(gains) / len(gains)
    noise = entry.get("noise") or {}
    var = noise.get("var") if scale == noise.get("scale", scale) else None
    runs = max(int(entry.get("runs_count") or len(entry.get("runs") or []) or 1), 1)
    se = math.sqrt(float(var) * (1.0 + 1.0 / runs) / len(gains)) if isinstance(var, (int, float)) else 0.0
    md_raw = entry.get("min_delta", getattr(objective, "min_delta", 0.0)) or 0.0
    md = min_delta_on_scale(_Obj(float(md_raw), scale), ref)   # metric units, on the scale compared
    sigmas = float(entry.get("sigmas", DEFAULT_SIGMAS))
    bar = max(md, sigmas * se, float_floor(ref, scale))
    d = _delta_pct(score, ref)
    unit = " (log ratio)" if scale == "relative" else ""
    numbers = (f"{objective.metric} {score:.6g} vs reference {ref:.6g}" + (f" ({d:+.2f}%)" if d is not None else "")
               + f"; paired gain {gain:+.4g}{unit} over {len(gains)} seed(s), bar {bar:.4g} = max(min_delta "
               f"{md:.3g}, {sigmas:g} x se {se:.3g})")
    result = GateResult("pass", f"within the reference: {numbers}", score=score, reference=ref, gain=gain, bar=bar)
    if gain < -bar:
        result.status = "regression"
        result.message = (f"regression against {where}: {numbers}: worse by more than the measured noise. Fix the "
                          f"recipe, or if the change is intended, rewrite the reference with "
                          f"--autoresearch-update-reference")
    return result


def float_floor(ref: float | None, scale: str) -> float:
    """The smallest bar: floating-point noise (a deterministic score re-computed in another order), 1e-9 of the
    reference. Without it, a noiseless score would fail on a difference in its last bits."""
    if scale == "relative":
        return 1e-9
    return 1e-9 * abs(ref) if isinstance(ref, (int, float)) else 0.0


@dataclass(frozen=True)
class _Obj:
    min_delta: float
    scale: str


def entry_score(entry: Mapping[str, Any]) -> float | None:
    s = entry.get("score")
    return float(s) if isinstance(s, (int, float)) else None


# -- measuring ----------------------------------------------------------------------------------------------
def measure_entry(task: Any, runs: Sequence[Mapping[str, Any]], machine: Machine) -> dict[str, Any]:
    """A reference entry from ``runs`` (records of plain runs of the same recipe)."""
    from .edits import content_hash
    from .vcs import read_recipe

    obj = task.objective
    per_run = [per_seed(r) for r in runs]
    seeds = sorted(set.intersection(*(set(p) for p in per_run))) if per_run else []
    scores = [float(r["score"]) for r in runs]
    if seeds and seeds != [-1]:
        lists = [[p[s] for s in seeds] for p in per_run]
        probe = {"trial": "reference", "metrics": {"score_runs": lists}}
        means = {str(s): sum(col) / len(col) for s, col in zip(seeds, zip(*lists))}
    else:
        lists = [[v] for v in scores]
        probe = {"trial": "reference", "metrics": {"score_repeats": scores}}
        means = {}
    noise = measured_noise([probe], obj)
    texts = {}
    for rel, data in read_recipe(task.baseline_recipe).items():
        try:
            texts[rel] = data.decode("utf-8")
        except UnicodeDecodeError:
            continue
    commit, dirty = recipe_commit(task.baseline_recipe)
    return {
        "task": task.name, "metric": obj.metric, "direction": obj.direction, "scale": scale_of(obj),
        "score": sum(scores) / len(scores), "per_seed": means, "seeds": seeds if seeds != [-1] else [],
        "runs": lists, "runs_count": len(runs),
        "noise": {"var": noise.var, "sd": math.sqrt(noise.var) if noise.var is not None else None,
                  "dof": noise.dof, "scale": scale_of(obj)},
        "min_delta": obj.min_delta, "sigmas": DEFAULT_SIGMAS,
        "recipe_hash": content_hash(texts), "commit": commit, "dirty": dirty,
        "machine": asdict(machine), "budget": json.loads(json.dumps(asdict(task.budget), default=str)),
        "measured": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def gate_plain_run(run: Any, rec: Mapping[str, Any], *, update: bool,
                   measure_again: Callable[[int], Mapping[str, Any]]) -> GateResult:
    """Compare a legal plain run with the task's reference, or (``update``) re-measure and rewrite it.

    ``measure_again(i)`` runs the recipe once more (the i-th extra run) and returns its record."""
    task = run.task
    path = task.module_path.parent / FILE_NAME
    shown = _shown(path)
    machine = this_machine(run.device, task.variant)
    if rec.get("label") != "baseline" or not isinstance(rec.get("score"), (int, float)):
        return GateResult("error" if update else "no_reference",
                          f"{shown} not {'written' if update else 'compared'}: the recipe run is "
                          f"{rec.get('label')}", path=path)
    if update:
        runs = [rec]
        for i in range(1, max(2, task.objective.baseline_repeats)):
            again = measure_again(i)
            if again.get("label") != "baseline" or not isinstance(again.get("score"), (int, float)):
                return GateResult("error", f"{shown} not written: run {i + 1} of the recipe was "
                                  f"{again.get('label')}: {again.get('notes')}", path=path)
            runs.append(again)
        entry = measure_entry(task, runs, machine)
        save(path, entry)
        sd = entry["noise"]["sd"]
        noise = (f"run-to-run sd per seed {sd:.3g}{' (log ratio)' if entry['scale'] == 'relative' else ''}"
                 if sd is not None else "noise not measured")
        res = GateResult("updated", f"{task.name}: wrote {shown}: {task.objective.metric} {entry['score']:.6g} "
                         f"({len(entry['seeds']) or 1} seed(s) x {len(runs)} runs, {noise}) on "
                         f"{machine.describe()}", score=entry["score"], reference=entry["score"], path=path)
    else:
        try:
            entries = load(path)
        except ReferenceError as e:
            return GateResult("error", str(e), score=rec["score"], path=path)
        res = compare(entries, per_seed(rec), float(rec["score"]), task.objective, machine, shown)
        res.path = path
        if res.status != "no_reference":
            res.message = f"{task.name}: {res.message}"
    props: list[tuple[str, Any]] = [("reference_status", res.status)]
    if res.reference is not None:
        props.append(("reference", res.reference))
    d = _delta_pct(res.score, res.reference)
    if d is not None and res.status in ("pass", "regression"):
        props += [("delta", round(d, 4)), ("reference_delta", res.score - res.reference)]  # type: ignore[operator]
    if res.gain is not None:
        props += [("reference_gain", res.gain), ("reference_bar", res.bar)]
    res.properties = props
    return res


def _shown(path: Path) -> str:
    from .task import display_path

    return display_path(path)
