"""One trial, start to finish: propose -> preflight -> commit -> recipe -> evaluator -> legality -> record.

``TaskRun`` holds what one task needs across the trials of a session; ``run_trial`` is the whole loop body.
"""
from __future__ import annotations

import ast
import hashlib
import json
import math
import random
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from filelock import FileLock

from .agents.base import AgentFatal, AgentStop, NoProposal, Proposal, ProposalRequest
from .edits import (EditError, SurfaceViolation, apply_edits, check_compiles, check_forbidden, check_surface,
                    content_hash)
from .legality import run_checks
from .lineage import SCHEMA, Lineage, Record, baseline_noise, best, make_view
from .runner import PhaseResult, run_phase, scrubbed_env
from .task import Task
from .vcs import TaskRepo


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


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _top_level_functions(path: Path) -> set[str]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError):
        return set()
    return {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}


class TaskRun:
    """One task's lineage, repository, staged data and agent, for one pytest session."""

    def __init__(self, task: Task, *, root: Path, session_id: str, agent: Any, agent_name: str, device: str,
                 cfg: Any) -> None:
        self.task, self.session_id, self.agent, self.agent_name = task, session_id, agent, agent_name
        self.device, self.cfg = device, cfg
        self.dir = Path(root) / task.name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.lineage = Lineage(self.dir / "lineage.jsonl")
        self.cache_dir = self.dir / "cache"
        self.home = self.dir / "home"
        self._repo: TaskRepo | None = None
        self._staged: tuple[Path, Path] | None = None

    @property
    def repo(self) -> TaskRepo:
        if self._repo is None:
            self._repo = TaskRepo(self.dir / "repo")
        return self._repo

    # -- data staging (task code, once per task and options) -------------------------------------------
    def staged(self) -> tuple[Path, Path]:
        if self._staged:
            return self._staged
        ev = self.task.evaluator
        key = json.dumps({"script": str(ev.script), "options": dict(ev.options), "variant": self.task.variant},
                         sort_keys=True, default=str)
        d = self.dir / "data" / hashlib.sha1(key.encode()).hexdigest()[:12]
        public, private, done = d / "public", d / "private", d / "staged.ok"
        with FileLock(str(d) + ".lock"):
            if not done.exists():
                shutil.rmtree(d, ignore_errors=True)
                public.mkdir(parents=True)
                private.mkdir(parents=True)
                r = run_phase("stage", self._ctx(None, None, public, private), limit_s=3600,
                              work_dir=d / "logs", env=self._env(), startup_s=3600)
                if not r.ok:
                    raise HarnessError(f"task {self.task.name}: staging data with {ev.script} failed "
                                       f"({r.timed_out or r.deepest_error()}); log: {r.log_path}\n{r.log_tail(15)}")
                done.write_text(key)
        self._staged = (public, private)
        return self._staged

    def _env(self) -> dict[str, str]:
        return scrubbed_env(self.cache_dir, self.home, self.task.budget.threads)

    def _ctx(self, workspace: Path | None, out: Path | None, public: Path, private: Path) -> dict[str, Any]:
        b, ev = self.task.budget, self.task.evaluator
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.home.mkdir(parents=True, exist_ok=True)
        return dict(seeds=list(b.seeds), outputs_dir=str(out) if out else None, public_dir=str(public),
                    private_dir=str(private), cache_dir=str(self.cache_dir), device=self.device,
                    variant=self.task.variant, workspace=str(workspace) if workspace else None,
                    preload=list(b.preload), threads=b.threads, evaluator_script=str(ev.script),
                    function=ev.function, options=dict(ev.options), artifact_bytes=b.artifact_bytes)

    # -- running a workspace ---------------------------------------------------------------------------
    def execute(self, workspace: Path, trial_dir: Path) -> Outcome:
        """Run the recipe's phases and the evaluator on ``workspace``; label what went wrong, if anything."""
        b, obj = self.task.budget, self.task.objective
        public, private = self.staged()
        out = trial_dir / "out"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        ctx, env = self._ctx(workspace, out, public, private), self._env()
        fns = _top_level_functions(workspace / "train.py")
        res = Outcome(label=None)
        if "train" not in fns:
            return Outcome("crash", "train.py defines no top-level train(ctx) function")

        def failed(r: PhaseResult, what: str, limit: float) -> Outcome | None:
            if r.timed_out == "startup":
                return Outcome("budget_overrun", f"startup: interpreter + preload took over {b.startup_seconds:g}s")
            if r.timed_out:
                return Outcome("budget_overrun", f"{what}: exceeded {limit:g}s limit (killed after {r.seconds:.1f}s)")
            if r.rc != 0:
                return Outcome("crash", f"{what}: {r.deepest_error()}")
            return None

        if "prepare" in fns and b.prepare_seconds > 0:
            r = run_phase("prepare", ctx, limit_s=b.prepare_seconds, work_dir=trial_dir, env=env,
                          startup_s=b.startup_seconds)
            res.prepare_s = r.wall_s
            if (f := failed(r, "prepare", b.prepare_seconds)) is not None:
                f.prepare_s = r.wall_s
                return f
        r = run_phase("train", ctx, limit_s=b.train_seconds, work_dir=trial_dir, env=env, startup_s=b.startup_seconds)
        res.train_s, res.startup_s, train_cpu = r.seconds, r.wall_s - r.seconds, r.cpu_s
        if (f := failed(r, "train", b.train_seconds)) is not None:
            f.train_s, f.prepare_s, f.startup_s = r.seconds, res.prepare_s, res.startup_s
            return f
        eval_left, eval_s = b.eval_seconds, 0.0
        if "predict" in fns:
            r = run_phase("predict", ctx, limit_s=eval_left, work_dir=trial_dir, env=env, startup_s=b.startup_seconds)
            eval_s += r.wall_s
            eval_left -= r.wall_s
            if (f := failed(r, "eval (predict)", b.eval_seconds)) is not None:
                f.train_s, f.eval_s, f.prepare_s = res.train_s, eval_s, res.prepare_s
                return f
        r = run_phase("evaluate", ctx, limit_s=max(eval_left, 1.0), work_dir=trial_dir, env=env,
                      startup_s=b.startup_seconds)
        eval_s += r.wall_s
        res.eval_s = eval_s
        if r.timed_out:
            return Outcome("budget_overrun", f"eval: exceeded {b.eval_seconds:g}s limit (predict + evaluate)",
                           train_s=res.train_s, eval_s=eval_s, prepare_s=res.prepare_s)
        if r.rc != 0:
            in_recipe = bool(r.error and r.error.get("in_recipe"))
            return Outcome("crash" if in_recipe else "evaluator_error",
                           f"evaluate: {r.deepest_error()} (log: {r.log_path})",
                           train_s=res.train_s, eval_s=eval_s, prepare_s=res.prepare_s)
        metrics = dict(r.result or {})
        n = len(b.seeds)
        metrics.update(train_seconds=res.train_s / n, train_seconds_total=res.train_s, eval_seconds=eval_s,
                       prepare_seconds=res.prepare_s or 0.0, startup_seconds=res.startup_s)
        if train_cpu is not None:
            metrics.update(train_cpu_seconds=train_cpu / n, train_cpu_seconds_total=train_cpu)
        try:
            per_seed = json.loads((out / "seed_seconds.json").read_text())
            metrics["train_seconds_per_seed"] = per_seed["wall"]
            metrics["train_cpu_seconds_per_seed"] = per_seed["cpu"]
        except (OSError, ValueError, KeyError, TypeError):
            pass
        res.metrics = metrics
        score = metrics.get(obj.metric)
        if not isinstance(score, (int, float)) or isinstance(score, bool) or not math.isfinite(score):
            return Outcome("evaluator_error", f"the evaluator reported no finite '{obj.metric}' "
                           f"(got {score!r}; metrics: {sorted(metrics)})", metrics=metrics,
                           train_s=res.train_s, eval_s=eval_s, prepare_s=res.prepare_s)
        res.score = float(score)
        per_seed = metrics.get(f"{obj.metric}_per_seed")
        if isinstance(per_seed, list):
            metrics["score_per_seed"] = per_seed
        verdict = run_checks(tuple(self.task.legality), metrics, b)
        if verdict is not None:
            res.label, res.notes = verdict
        return res

    # -- the baseline ----------------------------------------------------------------------------------
    def ensure_baseline(self) -> Record:
        """Trial 0: the baseline recipe, committed and measured once per task (the first worker does it)."""
        with FileLock(str(self.dir / "baseline.lock")):
            rec = self.lineage.get(0)
            if rec is None:
                rec = self._run_baseline()
        if rec.get("label") != "baseline":
            raise BaselineError(
                f"task {self.task.name}: the baseline (trial 0 in {self.lineage.path}) is labelled "
                f"{rec.get('label')}: {rec.get('notes')}. The starting recipe must pass its own legality checks "
                f"within the budget; fix the recipe, the gate or the budget, then remove {self.dir} to re-measure.")
        return rec

    def _run_baseline(self) -> Record:
        started = _now()
        commit = self.repo.commit_baseline(self.task.baseline_recipe,
                                           f"trial 0 [baseline] {self.task.name} ({self.task.variant})")
        rec = self._record(0, started=started, specialist="baseline", parent=None,
                           proposal=Proposal("The baseline recipe, measured as the starting point.", None, []),
                           commit=commit, diff="")
        rec["content_hash"] = content_hash(self.repo.files_at(commit))
        ws = self.dir / "worktrees" / "trial-0"
        try:
            self.repo.checkout(commit, ws)
            outcome = self._measure_baseline(ws)
        except Exception as e:
            self._finish(rec, Outcome("harness_error", f"{type(e).__name__}: {e}"), label="harness_error")
            raise
        finally:
            self._cleanup(ws, 0)
        return self._finish(rec, outcome, label=outcome.label or "baseline")

    def _measure_baseline(self, ws: Path) -> Outcome:
        """Run the baseline ``objective.baseline_repeats`` times; its score is the mean, the spread is noise."""
        runs: list[Outcome] = []
        for i in range(self.task.objective.baseline_repeats):
            outcome = self.execute(ws, self._trial_dir(0) / f"run-{i}" if i else self._trial_dir(0))
            if outcome.label is not None:
                return outcome
            runs.append(outcome)
        first = runs[0]
        if len(runs) > 1:
            scores = [o.score for o in runs if o.score is not None]
            first.metrics["score_repeats"] = scores
            first.score = sum(scores) / len(scores)
            first.metrics[self.task.objective.metric] = first.score
            if not self.cfg.lineage.keep_outputs:
                for i in range(1, len(runs)):
                    shutil.rmtree(self._trial_dir(0) / f"run-{i}" / "out", ignore_errors=True)
        return first

    # -- a trial ---------------------------------------------------------------------------------------
    def run_trial(self, slot: str) -> Record:
        self.ensure_baseline()
        trial = self.lineage.claim_trial()
        started = _now()
        records = self.lineage.records()
        lc = self.cfg.lineage
        view = make_view(self.task.name, self.task.objective.metric, self.task.objective.direction, records,
                         top=lc.top_k, n_recent=lc.recent, n_failures=lc.failures)
        parent = view.best
        assert parent is not None  # ensure_baseline guarantees one
        spec = self._schedule(trial)
        rec = self._record(trial, started=started, specialist=spec.name, parent=parent["trial"],
                           proposal=Proposal("", None, []), commit=None, diff="", slot=slot)
        ws = self.dir / "worktrees" / f"trial-{trial}"
        try:
            return self._run_trial(trial, rec, spec, parent, view, ws)
        except (BaselineError, AgentStop, AgentFatal, KeyboardInterrupt):
            raise  # not a trial outcome: nothing ran, so nothing is recorded
        except Exception as e:
            if rec.get("label") is None:
                rec["notes"] = f"{type(e).__name__}: {e}"
                if rec.get("commit") is None:
                    try:  # keep "one commit per trial" when we can; the record matters more
                        self._commit_unchanged(rec, parent, ws, f"harness_error: {rec['notes']}")
                    except Exception:  # noqa: BLE001
                        pass
                self._finish(rec, Outcome("harness_error", rec["notes"]), label="harness_error")
            raise
        finally:
            self._cleanup(ws, trial)

    def _run_trial(self, trial: int, rec: Record, spec: Any, parent: Record, view: Any, ws: Path) -> Record:
        files = self.repo.files_at(parent["commit"])
        request = ProposalRequest(task=self.task, specialist=spec, trial=trial, parent=parent["trial"],
                                  files=files, view=view, seed=int(self.cfg.seed))
        try:
            proposal = self.agent.propose(request)
        except NoProposal as e:
            rec.update(usage=e.usage, agent={"name": self.agent_name, "model": e.model})
            self._commit_unchanged(rec, parent, ws, f"no proposal: {e}")
            return self._finish(rec, Outcome("preflight_crash", f"no valid submission: {e}"), label="preflight_crash")
        self._apply_proposal_meta(rec, proposal)
        if proposal.parent is not None and proposal.parent != parent["trial"]:
            named = self.lineage.get(proposal.parent)
            if named is None or not named.get("commit") or named.get("label") not in ("baseline", "keep", "discard"):
                why = f"parent trial {proposal.parent} is not a legal recorded trial"
                self._commit_unchanged(rec, parent, ws, f"preflight_crash: {why}")
                return self._finish(rec, Outcome("preflight_crash", why), label="preflight_crash")
            parent = named
            rec["parent"] = parent["trial"]
            files = self.repo.files_at(parent["commit"])
        try:
            after = apply_edits(files, proposal.edits)
        except EditError as e:
            self._commit_unchanged(rec, parent, ws, f"preflight_crash: edit does not apply: {e}")
            return self._finish(rec, Outcome("preflight_crash", f"edit does not apply: {e}"), label="preflight_crash")
        message = f"trial {trial} [{spec.name}] {proposal.hypothesis}\n\nparent: trial {parent['trial']}"
        changed = {p for p in set(files) | set(after) if files.get(p) != after.get(p)}
        label = None
        try:
            if not changed:
                raise EditError("the edit changes nothing")
            check_surface(files, after, spec.surface, spec.name)
            check_forbidden(files, after, self.task.evaluator.forbidden)
            check_compiles(after, changed)
            self._check_size(after)
        except SurfaceViolation as e:
            label, notes = "surface_violation", str(e)
        except EditError as e:
            label, notes = "preflight_crash", str(e)
        except _SizeBlocked as e:
            label, notes = "size_blocked", str(e)
        # Even a refused edit is committed, so the attempt can be read in git like any other trial.
        rec["content_hash"] = content_hash(after)
        rec["commit"] = self.repo.commit_trial(trial, parent["commit"], after, message, ws)
        rec["diff"] = self.repo.diff(parent["commit"], rec["commit"])
        if label is not None:
            return self._finish(rec, Outcome(label, notes), label=label)
        outcome = self.execute(ws, self._trial_dir(trial))
        label = outcome.label
        if label is None and self.task.objective.confirm_keeps:
            label = self._confirm(trial, ws, outcome)
        return self._finish(rec, outcome, label=label)

    def _confirm(self, trial: int, ws: Path, outcome: Outcome) -> str | None:
        """A would-be keep is measured again right after the best is re-measured, so both see the same
        machine; it stays a keep candidate (None) only if it still wins by the noise bar. Its score becomes
        the mean of its two runs."""
        obj = self.task.objective
        records = self.lineage.records(quiet=True)
        b = best(records, obj.direction)
        if b is None or outcome.score is None or obj.gain(outcome.score, b["score"]) <= keep_threshold(obj, records):
            return None
        best_ws = self.dir / "worktrees" / f"trial-{trial}-best"
        try:
            self.repo.checkout(b["commit"], best_ws)
            again_best = self.execute(best_ws, self._trial_dir(trial) / "confirm-best")
            again = self.execute(ws, self._trial_dir(trial) / "confirm")
        finally:
            self._cleanup(best_ws, trial)
            for sub in ("confirm-best", "confirm"):
                shutil.rmtree(self._trial_dir(trial) / sub / "out", ignore_errors=True)
        if again.label is not None or again.score is None or again_best.score is None:
            outcome.notes = f"not confirmed: the re-run was {again.label or 'unscored'} ({again.notes})"
            return "discard"
        first = outcome.score
        outcome.score = (first + again.score) / 2
        outcome.metrics[obj.metric] = outcome.score
        outcome.metrics["confirm"] = {"runs": [first, again.score], "best_trial": b["trial"],
                                      "best_rerun": again_best.score}
        if obj.gain(again.score, again_best.score) <= keep_threshold(obj, records):
            outcome.notes = (f"not confirmed: re-run {again.score:.6g} vs best (trial {b['trial']}) re-run "
                             f"{again_best.score:.6g}, side by side")
            return "discard"
        return None

    def _apply_proposal_meta(self, rec: Record, p: Proposal) -> None:
        rec.update(hypothesis=p.hypothesis, expected_delta=p.expected_delta, kind=p.kind, step=p.step,
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

    def _schedule(self, trial: int) -> Any:
        specs = self.task.specialists
        if self.cfg.schedule == "random":
            return random.Random(f"{self.cfg.seed}:{trial}").choice(specs)
        return specs[(trial - 1) % len(specs)]

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
            "device": self.device, "slot": slot, "metric": self.task.objective.metric,
            "direction": self.task.objective.direction,
        }

    def _commit_unchanged(self, rec: Record, parent: Record, ws: Path, why: str) -> None:
        """Every trial gets a commit, even one whose code never changed: the parent's tree and the reason."""
        rec["commit"] = self.repo.commit_trial(rec["trial"], parent["commit"], None,
                                               f"trial {rec['trial']} [{rec['specialist']}] {why[:200]} "
                                               f"(tree unchanged)", ws)

    def _finish(self, rec: Record, outcome: Outcome, *, label: str | None) -> Record:
        """Decide keep/discard against the best *now* (under the lock) and append the record."""
        rec.update(score=outcome.score, metrics=outcome.metrics, train_s=outcome.train_s, eval_s=outcome.eval_s,
                   prepare_s=outcome.prepare_s, startup_s=outcome.startup_s,
                   notes="; ".join(x for x in (outcome.notes, rec.get("notes") if label == "harness_error" else "")
                                   if x)[:2000])
        obj = self.task.objective
        with self.lineage.lock:
            records = self.lineage.records(quiet=True)
            b = best(records, obj.direction)
            if label is None:
                label = "discard"
                if b is not None and outcome.score is not None:
                    gain = obj.gain(outcome.score, b["score"])
                    if gain > keep_threshold(obj, records):
                        label = "keep"
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

    def _cleanup(self, ws: Path, trial: int) -> None:
        if ws.exists():
            self.repo.remove_worktree(ws)
        if not self.cfg.lineage.keep_outputs:
            shutil.rmtree(self._trial_dir(trial) / "out", ignore_errors=True)

    # -- plain run: the recipe once, as a test, nothing recorded ---------------------------------------
    def plain_run(self, workdir: Path) -> Record:
        ws = workdir / "recipe"
        shutil.copytree(self.task.baseline_recipe, ws, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        rec = self._record(0, started=_now(), specialist="baseline", parent=None,
                           proposal=Proposal("plain run of the recipe", None, []), commit=None, diff="")
        outcome = self.execute(ws, workdir / "run")
        rec.update(label=outcome.label or "baseline", score=outcome.score, metrics=outcome.metrics,
                   notes=outcome.notes, train_s=outcome.train_s, eval_s=outcome.eval_s, ended=_now())
        return rec


class _SizeBlocked(Exception):
    pass


def keep_threshold(objective: Any, records: list[Record]) -> float:
    """How much a trial must beat the best by to be kept: ``min_delta``, or the noise of a difference of two
    trials (sqrt(2) standard errors, times ``noise_sigmas``), whichever is larger."""
    t = float(objective.min_delta)
    se = baseline_noise(records)
    if se:
        t = max(t, objective.noise_sigmas * se * math.sqrt(2.0))
    return t
