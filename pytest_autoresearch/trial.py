"""One trial, start to finish: propose -> preflight -> commit -> recipe -> evaluator -> legality -> record.

``TaskRun`` holds what one task needs across the trials of a session; ``run_trial`` is the whole loop body
and ``execute`` runs one commit's recipe: ``prepare``, then ``train`` and ``predict`` once per seed, each in a
sandbox of its own, then the evaluator on a clean checkout and the validated outputs.
"""
from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
import math
import os
import shutil
import socket
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from . import early_stop, masking
from .agents.base import AgentFatal, AgentStop, NoProposal, Proposal, ProposalRequest
from .agents.workbench import TrialWorkbench, crash_note
from .edits import (EditError, SurfaceViolation, apply_edits, check_compiles, check_forbidden, check_surface,
                    code_hash, content_hash)
from .integrity import check_outputs, digest, freeze, rmtree
from .legality import run_checks
from .acceptance import Verdict, bar_fraction, decide, measured_noise, per_seed, runs_behind, scale_of, transform
from .allocation import Prior, catalog_priors, choose_parent, choose_specialist, merge_specialists
from .lineage import SCHEMA, HeldLock, Lineage, LineageLocked, Record, best, make_view, pid_alive
from .runner import Phase, PhaseResult, run_phase, scrubbed_env
from .sandbox import Bind, Limits, Sandbox, detect, sandbox_to_json
from .task import Task, display_path
from .vcs import RepoError, TaskRepo, read_recipe

STAGE_LAYOUT = 2  # bump when the staged-data layout changes, so old stagings are redone
RESEED_STRIDE = 1000  # re-run k of seed s trains on seed s + RESEED_STRIDE * k (Objective.reseed_reruns)
MEASURED_LABELS = ("baseline", "keep", "discard", "gate_miss")  # a re-run of the same code would only redraw noise


class BaselineError(RuntimeError):
    """Trial 0 is not a legal baseline, so no trial can be compared with it."""


class HarnessError(RuntimeError):
    pass


@dataclass
class Outcome:
    """What running a workspace produced, before it is compared with the best."""

    label: str | None                # a failure label, or None when the trial is legal
    notes: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    score: float | None = None
    train_s: float | None = None
    eval_s: float | None = None
    prepare_s: float | None = None
    startup_s: float | None = None
    verdict: Verdict | None = None   # set when a side-by-side confirmation decided the trial
    where: dict[str, Any] | None = None  # the worker that ran it (workers.py): host, slot, pid, devices


@dataclass(frozen=True)
class Staged:
    """The task's staged data: what ``train`` may read, what ``predict`` may read, what only the evaluator reads."""

    train: Path
    test: Path
    private: Path


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def recipe_functions(path: Path) -> tuple[set[str], str | None]:
    """Top-level function names of ``train.py``, or the syntax error that stops it from loading."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        return set(), f"{path.name} cannot be read: {e.strerror}"
    try:
        tree = ast.parse(text, filename=path.name)
    except SyntaxError as e:
        line = (e.text or "").strip()
        return set(), f"{path.name}:{e.lineno}: SyntaxError: {e.msg}" + (f": {line[:120]}" if line else "")
    return {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}, None


def default_memory_bytes(device: str) -> int | None:
    """90% of physical memory per recipe process on CPU; no address-space limit on CUDA (drivers map huge ranges)."""
    if device.startswith("cuda"):
        return None
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * 0.9)
    except (ValueError, OSError, AttributeError):
        return None


def build_sandbox(task: Task, cfg: Any, device: str, root: Path) -> Sandbox:
    """The sandbox every recipe process of ``task`` runs in (raises SandboxUnavailable for mode=bwrap)."""
    sc = cfg.sandbox
    limits = Limits(memory_bytes=sc.memory_bytes if sc.memory_bytes is not None else default_memory_bytes(device),
                    max_procs=sc.max_procs, open_files=sc.open_files, file_bytes=sc.file_bytes,
                    tmp_bytes=sc.tmp_bytes, log_bytes=sc.log_bytes)
    protected = [Path(root).resolve(), task.module_path.resolve().parent, task.evaluator.script.parent]
    return Sandbox(detect(str(sc.mode), sc.bwrap), limits, device=device, protected=protected,
                   hidden=task.evaluator.hidden, extra_ro=[Path(p) for p in sc.extra_ro_binds])


class TaskRun:
    """One task's lineage, repository, staged data, sandbox and agent, for one pytest session."""

    def __init__(self, task: Task, *, root: Path, session_id: str, agent: Any, agent_name: str, device: str,
                 cfg: Any) -> None:
        self.task, self.session_id, self.agent, self.agent_name = task, session_id, agent, agent_name
        self.device, self.cfg = device, cfg
        self.dir = Path(root) / task.name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.lineage = Lineage(self.dir / "lineage.jsonl", lock_timeout_s=float(cfg.lineage.lock_timeout_s))
        self.cache_dir = self.dir / "cache"
        self.sandbox = build_sandbox(task, cfg, device, Path(root))
        self._repo: TaskRepo | None = None
        self._staged: Staged | None = None
        self._fingerprint: str | None = None
        self._clean_stale()

    @property
    def repo(self) -> TaskRepo:
        if self._repo is None:
            self._repo = TaskRepo(self.dir / "repo", lock_timeout_s=float(self.cfg.lineage.lock_timeout_s))
        return self._repo

    def _lock(self, name: str, what: str) -> HeldLock:
        """A lock another worker may hold while ``what``; waiting past the lineage lock timeout is an error."""
        path = self.dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return HeldLock(path, float(self.cfg.lineage.lock_timeout_s), what=what)

    def commit_of(self, rec: Record) -> str:
        """A recorded trial's commit (rebuilt from the lineage if the repository lost it)."""
        return self.repo.commit_for(rec, self.lineage.get, self.task.baseline_recipe, content_hash)

    # -- leftovers of killed sessions ------------------------------------------------------------------
    def _clean_stale(self) -> None:
        """Remove exports and outputs of trials whose process is gone (a session killed mid-trial)."""
        trials = self.dir / "trials"
        if not trials.is_dir():
            shutil.rmtree(self.dir / "worktrees", ignore_errors=True)  # an older layout
            return
        host = socket.gethostname()
        for d in trials.iterdir():
            owner = d / "owner.json"
            try:
                o = json.loads(owner.read_text())
            except (OSError, ValueError):
                continue
            if o.get("host") != host or pid_alive(int(o.get("pid", 0))):
                continue
            for sub in ("src", "eval-src", "confirm", "confirm-best"):
                rmtree(d / sub)
            if not self.cfg.lineage.keep_outputs:
                rmtree(d / "out")
            owner.unlink(missing_ok=True)
        shutil.rmtree(self.dir / "worktrees", ignore_errors=True)

    # -- data staging (task code, once per task and options) -------------------------------------------
    def staged(self) -> Staged:
        if self._staged:
            return self._staged
        ev = self.task.evaluator
        key = json.dumps({"script": str(ev.script), "options": dict(ev.options), "variant": self.task.variant,
                          "layout": STAGE_LAYOUT}, sort_keys=True, default=str)
        d = self.dir / "data" / hashlib.sha1(key.encode()).hexdigest()[:12]
        st = Staged(d / "train", d / "test", d / "private")
        done = d / "staged.ok"
        with self._lock(f"data/{d.name}.lock", "staging the task's data"):
            if not done.exists():
                rmtree(d)
                for p in (st.train, st.test, st.private):
                    p.mkdir(parents=True)
                ctx = dict(seeds=list(self.task.budget.seeds), outputs_dir=None, workspace=None,
                           train_dir=str(st.train), test_dir=str(st.test), private_dir=str(st.private),
                           device=self.device, variant=self.task.variant, threads=self.task.budget.threads,
                           evaluator_script=str(ev.script), function=ev.function, options=dict(ev.options),
                           artifact_bytes=self.task.budget.artifact_bytes)
                r = run_phase(Phase("stage", ctx, work_dir=d / "logs", limit_s=3600, env=self._task_env()), None)
                if not r.ok:
                    raise HarnessError(f"task {self.task.name}: staging data with {ev.script} failed "
                                       f"({r.timed_out or r.deepest_error()}); log: {r.log_path}\n{r.log_tail(15)}")
                done.write_text(key)
        self._staged = st
        self._fingerprint = self._take_fingerprint()
        return st

    def _fingerprint_paths(self) -> list[Path]:
        ev = self.task.evaluator.script
        helpers = sorted(p for p in ev.parent.glob("*.py") if p != ev)
        assert self._staged is not None
        return [ev, *helpers, self._staged.private]

    def _take_fingerprint(self) -> str:
        return digest(self._fingerprint_paths())

    def _evaluator_changed(self) -> str | None:
        """Why the evaluator or its private data differ from when the session started, or None."""
        if self._fingerprint is None or self._take_fingerprint() == self._fingerprint:
            return None
        return (f"the evaluator ({self.task.evaluator.script.parent}) or its private data changed since this "
                f"session started; scores after the change would not be comparable with earlier ones. Restart the "
                f"session (and re-measure the baseline if the change was intended)")

    def _task_env(self) -> dict[str, str]:
        home = self.dir / "home"
        home.mkdir(parents=True, exist_ok=True)
        return scrubbed_env(self.cache_dir, home, self.task.budget.threads)

    # -- running one commit ----------------------------------------------------------------------------
    def execute(self, materialize: Callable[[Path], None], trial_dir: Path, stop_against: Record | None = None,
                seeds: Sequence[int] | None = None) -> Outcome:
        """Run the recipe ``materialize`` writes, then the evaluator; label what went wrong, if anything.
        With ``stop_against`` (the best, when early stopping is on), a train phase whose reported curve falls
        clearly behind that record's curve is stopped, and the trial is a ``discard`` (``early_stop.py``).
        ``seeds``: train on these instead of the budget's (a re-run on fresh seeds, ``rerun_seeds``); the
        scores come back in the budget seeds' order, one per seed."""
        b = self.task.budget
        if seeds is not None:
            b = replace(b, seeds=tuple(seeds))
        st = self.staged()
        for sub in ("src", "eval-src", "out", "eval", "phases"):
            rmtree(trial_dir / sub)
        trial_dir.mkdir(parents=True, exist_ok=True)
        src, out = trial_dir / "src", trial_dir / "out"
        materialize(src)
        out.mkdir()
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        fns, syntax = recipe_functions(src / "train.py")
        if syntax:
            return Outcome("crash", syntax)
        if "train" not in fns:
            return Outcome("crash", "train.py defines no top-level train(ctx) function")
        base_ctx = dict(seeds=list(b.seeds), device=self.device, variant=self.task.variant, threads=b.threads,
                        preload=list(b.preload), recipe_options={})
        process_env = None if self.sandbox.sandboxed else self._task_env()

        def phase(name: str, seed: int | None, data: Path | None, limit: float, cache: str,
                  monitor: Callable[[float, float], str | None] | None = None) -> PhaseResult:
            binds = {"recipe": Bind(src, "ro"), "cache": Bind(self.cache_dir, cache)}
            if data is not None:
                binds["data"] = Bind(data, "ro")
            if seed is not None:
                (out / f"seed-{seed}").mkdir(exist_ok=True)
                binds["out"] = Bind(out / f"seed-{seed}", "rw")
            tag = name if seed is None else f"{name}-seed-{seed}"
            return run_phase(Phase(name, dict(base_ctx, seed=seed), work_dir=trial_dir / "phases" / tag,
                                   limit_s=limit, startup_s=b.startup_seconds, timed=name != "prepare", binds=binds,
                                   threads=b.threads, env=process_env, monitor=monitor,
                                   progress=name == "train"), self.sandbox)

        res = Outcome(label=None, train_s=0.0, startup_s=0.0)

        def failed(r: PhaseResult, what: str, limit: float, spent: float) -> Outcome | None:
            if r.timed_out == "startup":
                f = Outcome("budget_overrun", f"startup: interpreter + preload took over {b.startup_seconds:g}s "
                                              f"({what})")
            elif r.timed_out:
                f = Outcome("budget_overrun", f"{what}: exceeded the {limit:g}s limit (killed after "
                                              f"{spent:.1f}s in all)")
            elif r.rc != 0:
                f = Outcome("crash", crash_note(r, what))
            else:
                return None
            f.train_s, f.prepare_s, f.startup_s, f.eval_s = res.train_s, res.prepare_s, res.startup_s, res.eval_s
            return f

        if "prepare" in fns and b.prepare_seconds > 0:
            r = phase("prepare", None, None, b.prepare_seconds, "rw")
            res.prepare_s = r.wall_s
            if (f := failed(r, "prepare", b.prepare_seconds, r.wall_s)) is not None:
                return f
        walls: list[float] = []
        cpus: list[float | None] = []
        curves: dict[str, list[list[float]]] = {}
        es = self.cfg.search.early_stop
        for seed in b.seeds:
            left = b.train_seconds - sum(walls)
            ref = early_stop.reference(stop_against, seed) if stop_against is not None else None
            monitor = early_stop.rule(ref, margin=float(es.margin), min_fraction=float(es.min_fraction),
                                      patience=int(es.patience), best_trial=stop_against.get("trial")
                                      ) if ref and stop_against is not None else None
            r = phase("train", seed, st.train, max(left, 0.0), "overlay", monitor=monitor)
            walls.append(r.seconds)
            cpus.append(r.cpu_s)
            if r.curve:
                curves[str(seed)] = early_stop.thin(r.curve)
            res.train_s, res.startup_s = sum(walls), (res.startup_s or 0.0) + (r.wall_s - r.seconds)
            if r.stopped:
                return Outcome("discard", r.stopped, train_s=res.train_s, prepare_s=res.prepare_s,
                               startup_s=res.startup_s,
                               metrics={"curve_per_seed": curves, "early_stop": {
                                   "seed": seed, "step": r.curve[-1][0], "loss": r.curve[-1][1],
                                   "best_trial": stop_against.get("trial") if stop_against else None,
                                   "reason": r.stopped}})
            if (f := failed(r, f"train (seed {seed})", b.train_seconds, sum(walls))) is not None:
                return f
        p_budget = b.predict_seconds if b.predict_seconds is not None else b.eval_seconds
        p_walls: list[float] = []
        p_cpus: list[float | None] = []
        p_spawn = 0.0
        if "predict" in fns:
            for seed in b.seeds:
                r = phase("predict", seed, st.test, max(p_budget - sum(p_walls), 0.0), "overlay")
                p_walls.append(r.seconds)
                p_cpus.append(r.cpu_s)
                p_spawn += r.wall_s
                res.eval_s = p_spawn
                what = "predict" if b.predict_seconds is not None else "eval (predict)"
                if (f := failed(r, f"{what} (seed {seed})", p_budget, sum(p_walls))) is not None:
                    return f
        bad = check_outputs(out)
        if bad:
            return Outcome("gate_miss", bad, train_s=res.train_s, eval_s=res.eval_s, prepare_s=res.prepare_s,
                           startup_s=res.startup_s)
        freeze(out)
        changed = self._evaluator_changed()
        if changed:
            return Outcome("evaluator_error", changed, train_s=res.train_s, prepare_s=res.prepare_s)
        eval_src = trial_dir / "eval-src"
        materialize(eval_src)
        code_bytes = sum(f.stat().st_size for f in eval_src.rglob("*") if f.is_file())
        ev = self.task.evaluator
        ectx = dict(seeds=list(b.seeds), outputs_dir=str(out), workspace=str(eval_src), train_dir=str(st.train),
                    test_dir=str(st.test), private_dir=str(st.private), device=self.device,
                    variant=self.task.variant, threads=b.threads, evaluator_script=str(ev.script),
                    function=ev.function, options=dict(ev.options), artifact_bytes=b.artifact_bytes,
                    code_bytes=code_bytes, sandbox=sandbox_to_json(self.sandbox))
        eval_left = b.eval_seconds - (p_spawn if b.predict_seconds is None else 0.0)
        r = run_phase(Phase("evaluate", ectx, work_dir=trial_dir / "eval", limit_s=max(eval_left, 1.0),
                            env=self._task_env()), None)
        eval_s = r.wall_s + (p_spawn if b.predict_seconds is None else 0.0)
        res.eval_s = eval_s
        common = dict(train_s=res.train_s, eval_s=eval_s, prepare_s=res.prepare_s, startup_s=res.startup_s)
        if r.timed_out:
            limit = "predict + evaluate" if b.predict_seconds is None and "predict" in fns else "evaluate"
            return Outcome("budget_overrun", f"eval: exceeded {b.eval_seconds:g}s limit ({limit})", **common)
        if r.rc != 0:
            in_recipe = bool(r.error and r.error.get("in_recipe"))
            return Outcome("crash" if in_recipe else "evaluator_error",
                           f"evaluate: {r.deepest_error()} (log: {r.log_path})" + _traceback_tail(r), **common)
        metrics = dict(r.result or {})
        n = len(b.seeds)
        if curves:
            metrics["curve_per_seed"] = curves
        metrics.update(train_seconds=res.train_s / n, train_seconds_total=res.train_s, eval_seconds=eval_s,
                       prepare_seconds=res.prepare_s or 0.0, startup_seconds=res.startup_s,
                       train_seconds_per_seed=walls)
        if all(c is not None for c in cpus):
            total = float(sum(c for c in cpus if c is not None))
            metrics.update(train_cpu_seconds=total / n, train_cpu_seconds_total=total,
                           train_cpu_seconds_per_seed=cpus)
        if p_walls:
            metrics.update(predict_seconds=sum(p_walls) / n, predict_seconds_per_seed=p_walls)
            if all(c is not None for c in p_cpus):
                metrics["predict_cpu_seconds"] = float(sum(c for c in p_cpus if c is not None)) / n
        # Everything the recipe's code spent once it could see data (train + predict, per seed): work moved
        # from training into prediction still counts.
        rec_walls = [w + (p_walls[i] if p_walls else 0.0) for i, w in enumerate(walls)]
        metrics.update(recipe_seconds=sum(rec_walls) / n, recipe_seconds_per_seed=rec_walls)
        if "train_cpu_seconds_per_seed" in metrics and (not p_walls or "predict_cpu_seconds" in metrics):
            rec_cpus = [float(c or 0.0) + (float(p_cpus[i] or 0.0) if p_walls else 0.0) for i, c in enumerate(cpus)]
            metrics.update(recipe_cpu_seconds=sum(rec_cpus) / n, recipe_cpu_seconds_per_seed=rec_cpus)
        res.metrics = metrics
        obj = self.task.objective
        score = metrics.get(obj.metric)
        if not isinstance(score, (int, float)) or isinstance(score, bool) or not math.isfinite(score):
            return Outcome("evaluator_error", f"the evaluator reported no finite '{obj.metric}' "
                           f"(got {score!r}; metrics: {sorted(metrics)})", metrics=metrics, **common)
        res.score = float(score)
        per_seed = metrics.get(f"{obj.metric}_per_seed")
        if isinstance(per_seed, list):
            metrics["score_per_seed"] = per_seed
        verdict = run_checks(tuple(self.task.legality), metrics, b)
        if verdict is not None:
            res.label, res.notes = verdict
        return res

    def _export(self, commit: str) -> Callable[[Path], None]:
        return lambda dest: self.repo.export(commit, dest)

    # -- the baseline ----------------------------------------------------------------------------------
    # Where the baseline says what it does; the session points it at the terminal.
    say: Callable[[str], None] = staticmethod(lambda line: None)
    # Set when trials run on workers (workers.py): recipes run there, everything else here.
    dispatcher: Any = None

    def run_recipe(self, commit: str, trial_dir: Path, stop_against: Record | None = None,
                   seeds: Sequence[int] | None = None) -> Outcome:
        """``execute`` on ``commit``: here, or on this trial's worker when trials are dispatched."""
        if self.dispatcher is not None:
            return self.dispatcher.run_recipe(commit, trial_dir, stop_against, seeds=seeds)
        return self.execute(self._export(commit), trial_dir, stop_against=stop_against, seeds=seeds)

    def rerun_seeds(self, k: int) -> tuple[int, ...] | None:
        """The seeds of the ``k``-th re-run of some code (k >= 1): the budget's own (None), or with
        ``Objective.reseed_reruns`` fresh ones, seed + 1000 k, which stand in for the budget's seed by seed."""
        if k < 1 or not getattr(self.task.objective, "reseed_reruns", False):
            return None
        return tuple(int(s) + RESEED_STRIDE * k for s in self.task.budget.seeds)

    def ensure_baseline(self) -> Record:
        """Trial 0: the baseline recipe, committed and measured once per task (the first worker does it).

        A failed baseline is measured again once what it depends on changed (recipe, evaluator, task module,
        gates, budget): the new trial-0 record is appended after the failed one, which stays in the lineage."""
        unchanged = ""
        with self._lock("baseline.lock", "measuring the baseline"):
            rec = self.lineage.get(0)
            if rec is None:
                rec = self._run_baseline()
            elif rec.get("label") != "baseline":
                changed = self._baseline_changes(rec)
                if changed:
                    self.say(f"autoresearch: task {self.task.name}: re-measuring the baseline: trial 0 was "
                             f"{rec.get('label')} (measured {rec.get('started')}), and since then "
                             f"{' and '.join(changed)} changed. The failed record stays in the lineage.")
                    rec = self._run_baseline(remeasure={"after_label": rec.get("label"), "changed": changed,
                                                        "previous_started": rec.get("started"),
                                                        "previous_commit": rec.get("commit")})
                else:
                    unchanged = (f" Nothing of it changed since trial 0 was measured ({rec.get('started')}), so "
                                 f"the recorded failure stands.")
        if rec.get("label") != "baseline":
            raise BaselineError(
                f"task {self.task.name}: the baseline recipe is not a legal starting point: trial 0 is labelled "
                f"{rec.get('label')}: {rec.get('notes')}\nThe starting recipe must pass its own legality checks "
                f"within the budget. Fix the recipe ({display_path(self.task.baseline_recipe)}), the evaluator, "
                f"the gates or the budget and run again: the baseline is re-measured once one of them changed."
                f"{unchanged} Lineage: {display_path(self.lineage.path)}")
        return rec

    def _baseline_inputs(self) -> dict[str, Any]:
        """Fingerprints of what a baseline measurement depends on (recorded with trial 0)."""
        ev = self.task.evaluator
        module = self.task.module_path.resolve()
        h = hashlib.sha256(json.dumps({"options": dict(ev.options), "function": ev.function}, sort_keys=True,
                                      default=str).encode())
        for f in sorted(p for p in ev.script.parent.glob("*.py") if p.resolve() != module):
            h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
        return {"recipe": _recipe_hash(self.task.baseline_recipe), "evaluator": h.hexdigest()[:16],
                "task module": hashlib.sha256(module.read_bytes()).hexdigest()[:16],
                "gates": [str(getattr(c, "name", c)) for c in self.task.legality],
                "budget": json.loads(json.dumps(dataclasses.asdict(self.task.budget), default=str))}

    def _baseline_changes(self, rec: Record) -> list[str]:
        """What changed since a failed trial 0 was measured (older records only know the recipe's hash)."""
        if rec.get("label") == "harness_error":
            return ["the harness (its last measurement ended in a harness_error)"]
        then = rec.get("baseline_inputs") or {"recipe": rec.get("content_hash")}
        now = self._baseline_inputs()
        what = {"recipe": f"the recipe ({display_path(self.task.baseline_recipe)})",
                "evaluator": f"the evaluator ({display_path(self.task.evaluator.script)}, its folder's helpers or "
                             f"its options)",
                "task module": f"the task module ({display_path(self.task.module_path)})",
                "gates": "the gates", "budget": "the budget"}
        return [what[k] for k in now if then.get(k) is not None and then[k] != now[k]]

    def _baseline_syntax_error(self) -> str | None:
        """A syntax error in the task's recipe folder, named by its own path (a run only sees a copy)."""
        for f in sorted(self.task.baseline_recipe.rglob("*.py")):
            if "__pycache__" not in f.parts:
                _, err = recipe_functions(f)
                if err:
                    return f"{display_path(f.parent)}/{err}"
        return None

    def _run_baseline(self, remeasure: dict[str, Any] | None = None) -> Record:
        started = _now()
        message = f"trial 0 [baseline] {self.task.name} ({self.task.variant})"
        if remeasure:
            commit = self.repo.replace_baseline(self.task.baseline_recipe, f"{message}, re-measured")
        else:
            commit = self.repo.commit_baseline(self.task.baseline_recipe, message)
        rec = self._record(0, started=started, specialist="baseline", parent=None,
                           proposal=Proposal("The baseline recipe, measured as the starting point.", None, []),
                           commit=commit, diff="")
        files = self.repo.files_at(commit)
        rec["content_hash"], rec["code_hash"] = content_hash(files), code_hash(files)
        rec["baseline_inputs"] = self._baseline_inputs()
        if remeasure:
            rec["remeasured"] = remeasure
        self._own(0)
        try:
            outcome = self._measure_baseline(commit)
        except Exception as e:
            self._finish(rec, Outcome("harness_error", f"{type(e).__name__}: {e}"), label="harness_error")
            raise
        finally:
            self._cleanup(0)
        return self._finish(rec, outcome, label=outcome.label or "baseline")

    def _measure_baseline(self, commit: str) -> Outcome:
        """Run the baseline ``objective.baseline_repeats`` times; its score is the mean, the spread is noise."""
        syntax = self._baseline_syntax_error()
        if syntax:
            return Outcome("crash", syntax)
        runs: list[Outcome] = []
        ran_on: list[list[int]] = []
        for i in range(self.task.objective.baseline_repeats):
            seeds = self.rerun_seeds(i)
            outcome = self.run_recipe(commit, self._trial_dir(0) / f"run-{i}" if i else self._trial_dir(0),
                                      seeds=seeds)
            if outcome.label is not None:
                return outcome
            runs.append(outcome)
            ran_on.append(list(seeds or self.task.budget.seeds))
        first = runs[0]
        if len(runs) > 1:
            scores = [o.score for o in runs if o.score is not None]
            first.metrics["score_repeats"] = scores
            first.score = sum(scores) / len(scores)
            first.metrics[self.task.objective.metric] = first.score
            per = [o.metrics.get("score_per_seed") for o in runs]
            if all(isinstance(p, list) and len(p) == len(per[0]) for p in per):
                # Each run's per-seed scores: re-runs of the same code are what measures run-to-run noise.
                first.metrics["score_runs"] = per
                first.metrics["score_per_seed"] = [sum(col) / len(col) for col in zip(*per)]
                if getattr(self.task.objective, "reseed_reruns", False):
                    first.metrics["score_runs_seeds"] = ran_on
            for i in range(1, len(runs)):
                self._cleanup_dir(self._trial_dir(0) / f"run-{i}")
        return first

    # -- a trial ---------------------------------------------------------------------------------------
    def run_trial(self, slot: str) -> Record:
        """Trial ``slot``: run here, or (with workers) with the next slots' trials in flight meanwhile."""
        if self.dispatcher is not None:
            return self.dispatcher.result(slot)
        return self.trial_now(slot)

    def trial_now(self, slot: str) -> Record:
        self.ensure_baseline()
        trial = self.lineage.claim_trial()
        self._own(trial)
        started = _now()
        records = self.lineage.records()
        flying = self.lineage.in_flight(records)   # trials measured beside this one (workers): not recorded yet
        lc = self.cfg.lineage
        full = make_view(self.task.name, self.task.objective.metric, self.task.objective.direction, records,
                         top=lc.top_k, n_recent=lc.recent, n_failures=lc.failures, objective=self.task.objective,
                         in_flight=flying)
        assert full.best is not None  # ensure_baseline guarantees one
        sc = self.cfg.search
        specs = self.specialists

        def priors() -> dict[str, Any]:  # read from git only when the bandit decides
            files = self.repo.files_at(self.commit_of(full.best))
            out = catalog_priors(specs, files, self.task.objective.direction, float(full.best.get("score") or 0.0),
                                 {r.get("content_hash") for r in [*records, *flying]} - {None})
            predict = getattr(self.agent, "prior", None)
            if callable(predict):  # an agent that can predict its own moves knows more than the catalog alone
                view = full if sc.lineage_view else make_view(  # what the agent is shown, nothing more
                    self.task.name, self.task.objective.metric, self.task.objective.direction, [full.best], top=0,
                    n_recent=0, n_failures=0, objective=self.task.objective)
                for spec in specs:
                    try:
                        p = predict(ProposalRequest(task=self.task, specialist=spec, trial=trial,
                                                    parent=full.best["trial"], files=files, view=view,
                                                    seed=int(self.cfg.seed)))
                    except Exception as e:  # noqa: BLE001 - a plugin agent's bug costs its prior, not the session
                        p = Prior(out[spec.name].gain, out[spec.name].technique,
                                  f"the agent's prior failed ({type(e).__name__}: {e}); the catalog's stands")
                    if p is not None:
                        out[spec.name] = p
            return out

        turn = choose_specialist(str(self.cfg.schedule), [x.name for x in specs], records, trial,
                                 int(self.cfg.seed), explore=float(sc.bandit_explore),
                                 min_turns=int(sc.bandit_min_turns), priors=priors,
                                 bar=bar_fraction(self.task.objective, records, full.best),
                                 in_flight=[str(c.get("specialist")) for c in flying])
        spec = specs[turn.index]
        parent, parent_why = choose_parent(str(sc.parent), records, self.task.objective.direction, full.best,
                                           spec.name, trial, int(self.cfg.seed), k=int(sc.parent_k))
        # The lineage-view ablation: the agent sees the parent it builds on and nothing of the history.
        view = full if sc.lineage_view else make_view(
            self.task.name, self.task.objective.metric, self.task.objective.direction, [parent], top=0,
            n_recent=0, n_failures=0, objective=self.task.objective)
        rec = self._record(trial, started=started, specialist=spec.name, parent=parent["trial"],
                           proposal=Proposal("", None, []), commit=None, diff="", slot=slot)
        rec["turn"] = turn.to_json()
        rec["parent_rule"] = {"rule": str(sc.parent), "why": parent_why}
        try:
            return self._run_trial(trial, rec, spec, parent, view, turn.focus)
        except (BaselineError, AgentStop, AgentFatal, KeyboardInterrupt, RepoError, LineageLocked):
            raise  # not a trial outcome: nothing ran, so nothing is recorded
        except Exception as e:
            if rec.get("label") is None:
                rec["notes"] = f"{type(e).__name__}: {e}"
                if rec.get("commit") is None:
                    try:  # keep "one commit per trial" when we can; the record matters more
                        self._commit_unchanged(rec, parent, f"harness_error: {rec['notes']}")
                    except Exception:  # noqa: BLE001
                        pass
                self._finish(rec, Outcome("harness_error", rec["notes"]), label="harness_error")
            raise
        finally:
            self._cleanup(trial)

    def _run_trial(self, trial: int, rec: Record, spec: Any, parent: Record, view: Any,
                   focus: str | None = None) -> Record:
        parent_commit = self.commit_of(parent)
        files = self.repo.files_at(parent_commit)
        request = ProposalRequest(task=self.task, specialist=spec, trial=trial, parent=parent["trial"],
                                  files=files, view=view, seed=int(self.cfg.seed), bench=TrialWorkbench(self),
                                  focus=focus)
        try:
            proposal = self.agent.propose(request)
        except NoProposal as e:
            rec.update(usage=e.usage, agent={"name": self.agent_name, "model": e.model})
            if e.agent_side:
                rec["agent_error"] = True
            self._commit_unchanged(rec, parent, f"no proposal: {e}")
            return self._finish(rec, Outcome("preflight_crash", f"no valid submission: {e}"), label="preflight_crash")
        self._apply_proposal_meta(rec, proposal)
        if proposal.parent is not None and proposal.parent != parent["trial"]:
            named = self.lineage.get(proposal.parent) if isinstance(proposal.parent, int) else None
            if named is None or not named.get("commit") or named.get("label") not in ("baseline", "keep", "discard"):
                why = f"parent trial {proposal.parent!r} is not a legal recorded trial"
                self._commit_unchanged(rec, parent, f"preflight_crash: {why}")
                return self._finish(rec, Outcome("preflight_crash", why), label="preflight_crash")
            parent = named
            rec["parent"] = parent["trial"]
            parent_commit = self.commit_of(parent)
            files = self.repo.files_at(parent_commit)
        try:
            after = apply_edits(files, proposal.edits)
        except EditError as e:
            self._commit_unchanged(rec, parent, f"preflight_crash: edit does not apply: {e}")
            return self._finish(rec, Outcome("preflight_crash", f"edit does not apply: {e}"), label="preflight_crash")
        message = masking.clean(f"trial {trial} [{spec.name}] {proposal.hypothesis}\n\nparent: trial {parent['trial']}")
        changed = {p for p in set(files) | set(after) if files.get(p) != after.get(p)}
        rec["content_hash"], rec["code_hash"] = content_hash(after), code_hash(after)
        label = None
        try:
            if not changed:
                raise EditError("the edit changes nothing")
            check_surface(files, after, spec.surface, spec.name)
            check_forbidden(files, after, self.task.evaluator.forbidden)
            check_compiles(after, changed)
            self._check_size(after)
            self._claim_unmeasured(rec)
        except SurfaceViolation as e:
            label, notes = "surface_violation", str(e)
        except EditError as e:
            label, notes = "preflight_crash", str(e)
        except _SizeBlocked as e:
            label, notes = "size_blocked", str(e)
        # Even a refused edit is committed, so the attempt can be read in git like any other trial.
        rec["commit"] = self.repo.commit_trial(trial, parent_commit, after, message)
        rec["diff"] = self.repo.diff(parent_commit, rec["commit"])
        if label is not None:
            return self._finish(rec, Outcome(label, notes), label=label)
        stop_against = None
        if self.cfg.search.early_stop.enabled:
            stop_against = best(self.lineage.records(quiet=True), self.task.objective.direction)
        outcome = self.run_recipe(rec["commit"], self._trial_dir(trial), stop_against=stop_against)
        if outcome.metrics.get("early_stop"):
            rec["early_stop"] = outcome.metrics.pop("early_stop")
        label = outcome.label
        if label is None and self.task.objective.confirm_keeps:
            label = self._confirm(trial, rec["commit"], outcome)
        return self._finish(rec, outcome, label=label)

    def _claim_unmeasured(self, rec: Record) -> None:
        """Refuse code the lineage already scored, or that a trial beside this one is measuring now; else claim
        it for this trial until its record is written. A second measurement of the same code is a second draw of
        its noise, not a new trial: k submissions of a no-op would get about k chances at a lucky keep. Same code
        is the same ``content_hash`` or ``code_hash`` (other comments or layout). Code whose earlier run failed for
        a reason a re-run can change (crash, budget_overrun, ...) may run again."""
        text, code = rec["content_hash"], rec["code_hash"]
        # Records and claims read as one state: a trial's record lands before its claim goes, under this lock.
        with self.lineage.lock:
            records = self.lineage.records(quiet=True)
            for r in records:
                if r.get("label") not in MEASURED_LABELS:
                    continue
                exact = r.get("content_hash") == text
                if exact or r.get("code_hash") == code:
                    score = r.get("score")
                    measured = f"{r['label']}" + (f", {self.task.objective.metric} {score:.6g}"
                                                  if isinstance(score, (int, float)) else "")
                    how = "exactly" if exact else "up to comments and layout"
                    raise EditError(f"it reproduces trial {r['trial']}'s code {how}, which was already measured "
                                    f"({measured}); the same code measured again is not a new trial: propose a "
                                    f"change to it")
            held = self.lineage.claim_code({
                "trial": rec["trial"], "specialist": rec.get("specialist"), "parent": rec.get("parent"),
                "hypothesis": rec.get("hypothesis"), "kind": rec.get("kind"), "content_hash": text,
                "code_hash": code, "started": rec.get("started"), "session": self.session_id}, records)
        if held is not None:
            raise EditError(f"it reproduces the code trial {held['trial']} [{held.get('specialist')}] is measuring "
                            f"right now; the same code measured twice is not a new trial: propose a change that "
                            f"trial is not making")

    def _confirm(self, trial: int, commit: str, outcome: Outcome) -> str | None:
        """A would-be keep is measured again right after the best is re-measured, so both see the same
        machine; it stays a keep candidate (None) only if the side-by-side re-runs still pass the keep rule.
        Its score becomes the mean of its two runs, and both pairs of re-runs join the noise estimate.

        A near miss (``Objective.replicate_near_misses``) earns the same replicate: the keep then rests on the
        replicate alone, an independent test at the rule's confidence, so screening more candidates in does not
        let more noise through; it only stops one unlucky first measurement from discarding a real win."""
        obj = self.task.objective
        records = self.lineage.records(quiet=True)
        b = best(records, obj.direction)
        if b is None or outcome.score is None:
            return None
        first = self._per_seed(outcome)
        ref, ref_runs = self._fresh_best(trial, b, records, outcome)
        pooled = measured_noise(records, obj)
        screen = decide(first, ref, obj, pooled, b["trial"], ref_runs)
        near = not screen.keep and _near_miss(screen, obj.replicate_near_misses)
        if not screen.keep and not near:
            outcome.verdict = screen
            return "discard"
        # With reseed_reruns both re-runs train on the same fresh seeds: an independent paired replicate.
        fresh = self.rerun_seeds(max(obj.baseline_repeats, 1) + trial)
        try:
            again_best = self.run_recipe(self.commit_of(b), self._trial_dir(trial) / "confirm-best", seeds=fresh)
            again = self.run_recipe(commit, self._trial_dir(trial) / "confirm", seeds=fresh)
        finally:
            for sub in ("confirm-best", "confirm"):
                self._cleanup_dir(self._trial_dir(trial) / sub)
        if again.label is not None or again.score is None or again_best.score is None:
            outcome.verdict = replace(screen, keep=False)  # the record keeps the screen's numbers
            outcome.notes = f"not confirmed: the re-run was {again.label or 'unscored'} ({again.notes})"
            return "discard"
        second, best_again, best_first = self._per_seed(again), self._per_seed(again_best), _single_run(b)
        seeds = sorted(first)
        pinned = fresh is not None and _ignores_seed(first, second, best_first, best_again, seeds,
                                                     tolerance=0.01 * math.sqrt(pooled.var or 0.0), scale=scale_of(obj))
        confirm = {"runs": [outcome.score, again.score], "best_trial": b["trial"], "best_rerun": again_best.score,
                   "seeds": seeds,
                   "runs_per_seed": [[first[s] for s in seeds], [second.get(s) for s in seeds]],
                   "best_runs_per_seed": [[best_first.get(s) for s in seeds], [best_again.get(s) for s in seeds]]}
        if fresh is not None:
            confirm["rerun_seeds"] = list(fresh)
        if near:
            confirm["near_miss"] = {"gain": screen.gain, "threshold": screen.threshold, "se": screen.se,
                                    "within_se": obj.replicate_near_misses}
        if pinned:
            # Its two runs are one draw twice: no replicate, and no run-to-run variance to pool (acceptance).
            confirm["seed_ignored"] = True
            outcome.metrics["confirm"] = confirm
            outcome.verdict = replace(screen, keep=False)
            outcome.notes = (f"not confirmed: on fresh seeds {list(fresh)} it reproduced its first run's score on "
                             f"every seed exactly while the best's re-run moved, so it does not train on the seed "
                             f"it is given (a pinned seed) and a fresh-seed replicate cannot confirm it; draw every "
                             f"random number from ctx.seed")
            return "discard"
        outcome.score = (outcome.score + again.score) / 2
        outcome.metrics[obj.metric] = outcome.score
        if isinstance(outcome.metrics.get("score_per_seed"), list):
            outcome.metrics["score_per_seed"] = [(first[s] + second[s]) / 2 for s in seeds]
        outcome.metrics["confirm"] = confirm
        noise = measured_noise([*records, {"trial": trial, "metrics": {"confirm": confirm}}], obj)
        outcome.verdict = decide(second, best_again, obj, noise, b["trial"])
        missed = (f"a near miss at the screen ({screen.describe()}), so replicated side by side; " if near else "")
        if not outcome.verdict.keep:
            outcome.notes = f"{missed}not confirmed side by side: {outcome.verdict.describe()}"
            return "discard"
        if near:
            outcome.notes = f"{missed}the replicate passed: {outcome.verdict.describe()}"
        return None

    def _fresh_best(self, trial: int, b: Record, records: list[Record],
                    outcome: Outcome) -> tuple[dict[int, float], int]:
        """The best's per-seed scores to screen a candidate against: with ``Objective.refresh_best_every`` = N,
        its latest measurement (its own record, or a later side-by-side re-run of it) when that is at most N
        trials old, else a re-run of the best made now (recorded in this trial's ``metrics.best_rerun``). On a
        machine whose speed drifts, or that got busier since the best ran, a stale score would turn away
        real wins before they reach the side-by-side confirmation. Also how many runs those scores average."""
        every = int(getattr(self.task.objective, "refresh_best_every", 0) or 0)
        if not every:
            return per_seed(b), runs_behind(b)
        at, scores, runs = b["trial"], per_seed(b), runs_behind(b)
        for r in records:
            m = r.get("metrics") or {}
            if r.get("trial", -1) <= at:
                continue
            c, rr = m.get("confirm") or {}, m.get("best_rerun") or {}
            if c.get("best_trial") == b["trial"] and isinstance(c.get("best_runs_per_seed"), list):
                at, runs = r["trial"], 1
                scores = dict(zip(c.get("seeds") or sorted(scores), c["best_runs_per_seed"][-1]))
            elif rr.get("best_trial") == b["trial"] and isinstance(rr.get("per_seed"), dict):
                at, scores, runs = r["trial"], {int(k): v for k, v in rr["per_seed"].items()}, 1
        if trial - at <= every:
            return {k: v for k, v in scores.items() if isinstance(v, (int, float))}, runs
        try:
            again = self.run_recipe(self.commit_of(b), self._trial_dir(trial) / "best-rerun")
        finally:
            self._cleanup_dir(self._trial_dir(trial) / "best-rerun")
        if again.label is not None or again.score is None:
            return per_seed(b), runs_behind(b)
        fresh = self._per_seed(again)
        outcome.metrics["best_rerun"] = {"best_trial": b["trial"], "score": again.score,
                                         "per_seed": {str(k): v for k, v in fresh.items()}}
        return fresh, 1

    def _per_seed(self, outcome: Outcome) -> dict[int, float]:
        # A re-run on fresh seeds reports its scores in the budget seeds' order: each stands in for that seed.
        return per_seed({"metrics": outcome.metrics, "seeds": list(self.task.budget.seeds), "score": outcome.score})

    def _apply_proposal_meta(self, rec: Record, p: Proposal) -> None:
        # Cleaned where it enters: the claim of a trial being measured shows it to other proposers before _finish.
        hypothesis = masking.clean(p.hypothesis) if isinstance(p.hypothesis, str) else p.hypothesis
        rec.update(hypothesis=hypothesis, expected_delta=p.expected_delta, kind=p.kind, step=p.step,
                   edits=[e.to_json() for e in p.edits], refused_edits=p.refused_edits, usage=dict(p.usage),
                   agent={"name": self.agent_name, "model": p.model})
        if p.notes:
            rec["agent_notes"] = p.notes

    def _check_size(self, files: dict[str, str]) -> None:
        cap = self.task.budget.artifact_bytes
        if cap is not None and self.task.budget.code_counts:
            code = sum(len(t.encode("utf-8")) for t in files.values())
            if code > cap:
                raise _SizeBlocked(f"recipe code alone is {code:,} bytes > artifact cap {cap:,}")

    @property
    def specialists(self) -> tuple[Any, ...]:
        """The task's specialists, or (``search.specialists=merged``) one agent owning all their surfaces."""
        if self.cfg.search.specialists == "merged":
            return (merge_specialists(self.task.specialists),)
        return self.task.specialists

    # -- records ---------------------------------------------------------------------------------------
    def _record(self, trial: int, *, started: str, specialist: str, parent: int | None, proposal: Proposal,
                commit: str | None, diff: str, slot: str | None = None) -> Record:
        return {
            "schema": SCHEMA, "task": self.task.name, "trial": trial, "session": self.session_id,
            "specialist": specialist, "parent": parent, "hypothesis": proposal.hypothesis,
            "expected_delta": proposal.expected_delta, "label": None, "score": None, "metrics": {},
            "delta_vs_best": None, "delta_pct": None, "commit": commit, "diff": diff, "train_s": None,
            "eval_s": None, "prepare_s": None, "startup_s": None, "seeds": list(self.task.budget.seeds),
            "agent": {"name": self.agent_name, "model": getattr(self.agent, "model", None)},
            "usage": {}, "notes": "", "started": started, "ended": None, "variant": self.task.variant,
            "device": self.device, "host": socket.gethostname(), "slot": slot,
            "metric": self.task.objective.metric, "direction": self.task.objective.direction,
            "objective": dataclasses.asdict(self.task.objective),
        }

    def _commit_unchanged(self, rec: Record, parent: Record, why: str) -> None:
        """Every trial gets a commit, even one whose code never changed: the parent's tree and the reason."""
        rec["commit"] = self.repo.commit_trial(rec["trial"], self.commit_of(parent), None,
                                               masking.clean(f"trial {rec['trial']} [{rec['specialist']}] "
                                                             f"{why[:200]} (tree unchanged)"))

    def _finish(self, rec: Record, outcome: Outcome, *, label: str | None) -> Record:
        """Decide keep/discard against the best *now* (under the lock) and append the record."""
        notes = "; ".join(x for x in (outcome.notes, rec.get("notes") if label == "harness_error" else "") if x)
        if outcome.where:  # timed on a worker: its host, not this one's
            rec.update(host=outcome.where.get("host"), worker=outcome.where)
        rec.update(score=outcome.score, metrics=outcome.metrics, train_s=outcome.train_s, eval_s=outcome.eval_s,
                   prepare_s=outcome.prepare_s, startup_s=outcome.startup_s, notes=masking.clean(notes, 4000))
        for key in ("hypothesis", "agent_notes"):
            if isinstance(rec.get(key), str):
                rec[key] = masking.clean(rec[key])
        obj = self.task.objective
        with self.lineage.lock:
            records = self.lineage.records(quiet=True)
            b = best(records, obj.direction)
            verdict = outcome.verdict
            if label is None and verdict is not None and b is not None and verdict.best_trial == b["trial"]:
                # Confirmed side by side against the best that is still the best: that comparison stands
                # (the best's recorded score is from another moment of the machine).
                label = "keep" if verdict.keep else "discard"
            elif label is None:
                label = "discard"
                if b is not None and outcome.score is not None:
                    # Against the best *now*: another worker may have kept a trial while this one ran.
                    verdict = decide(self._per_seed(outcome), per_seed(b), obj, measured_noise(records, obj),
                                     b["trial"], runs_behind(b))
                    label = "keep" if verdict.keep else "discard"
            if verdict is not None:
                rec["acceptance"] = verdict.to_json()
            if b is not None and rec["score"] is not None and rec["trial"] != 0:
                rec["delta_vs_best"] = rec["score"] - b["score"]
                rec["delta_pct"] = 100.0 * rec["delta_vs_best"] / abs(b["score"]) if b["score"] else None
                rec["best_before"] = b["trial"]
            rec["label"] = label
            rec["ended"] = _now()
            self.lineage.append(rec)
        return rec

    def _trial_dir(self, trial: int) -> Path:
        return self.dir / "trials" / f"{trial:05d}"

    def _own(self, trial: int) -> None:
        """Mark a trial's folder as this process's, so a later session can tell a killed trial's leftovers."""
        d = self._trial_dir(trial)
        d.mkdir(parents=True, exist_ok=True)
        (d / "owner.json").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                                  "session": self.session_id}))

    def _cleanup_dir(self, d: Path) -> None:
        for sub in ("src", "eval-src"):
            rmtree(d / sub)
        if not self.cfg.lineage.keep_outputs:
            rmtree(d / "out")

    def _cleanup(self, trial: int) -> None:
        self.lineage.release_code(trial)  # after the record: its code is never out of sight
        d = self._trial_dir(trial)
        self._cleanup_dir(d)
        (d / "owner.json").unlink(missing_ok=True)

    # -- plain run: the recipe once, as a test, nothing recorded ---------------------------------------
    def plain_run(self, workdir: Path) -> Record:
        rec = self._record(0, started=_now(), specialist="baseline", parent=None,
                           proposal=Proposal("plain run of the recipe", None, []), commit=None, diff="")
        syntax = self._baseline_syntax_error()
        outcome = Outcome("crash", syntax) if syntax else self.execute(
            lambda dest: _write_recipe(self.task.baseline_recipe, dest), workdir / "run")
        rec.update(label=outcome.label or "baseline", score=outcome.score, metrics=outcome.metrics,
                   notes=outcome.notes, train_s=outcome.train_s, eval_s=outcome.eval_s, ended=_now())
        if outcome.metrics and outcome.label in (None, "gate_miss", "size_blocked"):
            rec["gates"] = self._gate_report(outcome.metrics)
        return rec

    def _gate_report(self, metrics: dict[str, Any]) -> list[dict[str, Any]]:
        """Each legality check with the value it looked at and whether it passed (the plain run prints them)."""
        out = []
        for c in self.task.legality:
            name = str(getattr(c, "name", c))
            if name == "artifact_bytes<=budget.artifact_bytes":  # say the cap itself
                cap = self.task.budget.artifact_bytes
                name = f"artifact_bytes<={cap}" if cap is not None else "artifact_bytes (no cap)"
            value = metrics.get(getattr(c, "metric", "")) if isinstance(getattr(c, "metric", None), str) else None
            out.append({"check": name, "value": value if isinstance(value, (int, float, bool)) else None,
                        "ok": c(metrics, self.task.budget) is None})
        return out


class _SizeBlocked(Exception):
    pass


def _recipe_hash(recipe_dir: Path) -> str:
    """``content_hash`` of a recipe folder's text files, as ``content_hash(repo.files_at(commit))`` computes it."""
    files = {}
    for rel, data in read_recipe(recipe_dir).items():
        try:
            files[rel] = data.decode("utf-8")
        except UnicodeDecodeError:
            continue
    return content_hash(files)


def _write_recipe(recipe_dir: Path, dest: Path) -> None:
    dest.mkdir(parents=True)
    for rel, data in read_recipe(recipe_dir).items():
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        (dest / rel).write_bytes(data)
    freeze(dest)


def _traceback_tail(r: PhaseResult) -> str:
    tail = (r.error or {}).get("traceback_tail") or ""
    lines = [ln for ln in tail.strip().splitlines() if ln.strip()][-6:]
    return ("\n" + "\n".join(lines)) if lines else ""


def _ignores_seed(first: Mapping[int, float], second: Mapping[int, float], best_first: Mapping[int, float],
                  best_second: Mapping[int, float], seeds: Sequence[int], *, tolerance: float = 0.0,
                  scale: str = "absolute") -> bool:
    """A candidate re-run on fresh seeds that scores what its first run did on every seed, to within
    ``tolerance`` (on the rule's scale; a hundredth of the run-to-run sd, so a seed-dependent nudge in the last
    digits does not hide a pinned draw), where the best's own re-run on those seeds moved by more: the task's
    training depends on its seed, the candidate's does not."""
    def moved(a: Mapping[int, float], b: Mapping[int, float]) -> list[float]:
        pairs = [transform([a[s], b[s]], scale) for s in seeds
                 if isinstance(a.get(s), (int, float)) and isinstance(b.get(s), (int, float))]
        return [abs(p[0] - p[1]) for p in pairs if p is not None]

    mine, best_moves = moved(first, second), moved(best_first, best_second)
    if len(mine) != len(seeds) or not best_moves:
        return False
    return max(mine) <= tolerance and max(best_moves) > tolerance


def _near_miss(screen: Verdict, within_se: float) -> bool:
    """A screen that fell short of the bar by at most ``within_se`` standard errors of its gain. Never while the
    noise is unmeasured; where min_delta sets the bar and the noise is small, the window is as narrow as the
    noise, since a replicate could not carry the gain across."""
    if within_se <= 0 or screen.se is None or screen.se <= 0 or screen.gain <= 0:
        return False
    return screen.gain > screen.threshold - within_se * screen.se


def _single_run(rec: Record) -> dict[int, float]:
    """One run's per-seed scores of a recorded trial (its recorded scores may average several runs)."""
    m = rec.get("metrics") or {}
    seeds = rec.get("seeds") or []
    for runs in (m.get("score_runs"), (m.get("confirm") or {}).get("runs_per_seed")):
        if isinstance(runs, list) and runs and isinstance(runs[-1], list) and len(runs[-1]) == len(seeds):
            return {int(s): v for s, v in zip(seeds, runs[-1])}
    return per_seed(rec)
