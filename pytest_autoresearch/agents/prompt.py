"""What a Claude specialist reads, built from the task, the lineage and the acceptance code itself.

The prompt is laid out for prompt caching, longest-lived first (the API caches a prefix: tools, then system
blocks, then messages):

1. ``rules_text``  -- task brief, objective, keep rule, budget, gates, labels, how to work: the same for every
   specialist of the task, all session long (cache breakpoint 1);
2. ``files_text``  -- the parent trial's recipe files, numbered: the same for every specialist that builds on
   that parent, i.e. until the next keep (breakpoint 2);
3. ``role_text``   -- the specialist's brief, surface and file listing (breakpoint 3);
4. the first user turn -- the lineage with the keep bar's current numbers, and the request (the moving
   breakpoint on the conversation's last block covers it from the second call on).

Numbers come from where the harness gets them: the keep bar from :func:`pytest_autoresearch.acceptance.decide`
(the function that labels trials), gates from the task's legality checks, metric meanings from
``HARNESS_METRICS`` for what the harness measures and the task brief for what its evaluator reports.
"""
from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from ..legality import ArtifactBytesAtMost, MetricAtLeast, MetricAtMost, MetricIsTrue
from ..lineage import FAILURES, LineageView, Record, ancestors, best, failures, in_flight_line, recent, top_k
from .tools import numbered

if TYPE_CHECKING:
    from ..task import Budget, Objective, Specialist, Task, Technique

SESSION_MARK = "[session] "  # the line of agent notes that says how the session went (not shown to models)

# What each metric the harness measures means (trial.py computes them); an evaluator's metrics are the task's.
HARNESS_METRICS = {
    "train_seconds": "wall-clock seconds of one seed's train phase, mean over the seeds, timed by the harness "
                     "from just before train.py is imported until the seed's processes are gone",
    "train_cpu_seconds": "CPU seconds of one seed's train phase (every process of it, counted by the kernel), "
                         "mean over the seeds",
    "predict_seconds": "wall-clock seconds of one seed's predict phase, mean over the seeds",
    "predict_cpu_seconds": "CPU seconds of one seed's predict phase, mean over the seeds",
    "recipe_seconds": "wall-clock seconds of one seed's train plus predict phases (importing train.py "
                      "included), mean over the seeds",
    "recipe_cpu_seconds": "CPU seconds of one seed's train plus predict phases (every process, counted by the "
                          "kernel; importing train.py included), mean over the seeds",
    "eval_seconds": "wall-clock seconds of prediction and evaluation",
}
LABELS_TEXT = (
    "baseline (trial 0, the measured starting recipe), keep (legal and past the keep bar: the new best), discard "
    "(legal, not past the bar), preflight_crash (the edit does not apply or compile, or no valid submission), "
    "surface_violation (an edit outside the surface or reaching evaluator-owned data), crash (the recipe raised: "
    "its notes hold the deepest frame in the recipe's files and the traceback's last lines), budget_overrun (a "
    "time limit; the notes say which phase and seed), size_blocked (artifact over the byte cap), gate_miss (a "
    "legality gate missed; the notes say by how much), evaluator_error (the task's evaluator failed). Trials "
    "whose agent service failed (an API outage) are marked agent_error: they say nothing about an idea and are "
    "left out of the history below.")


def metric_meaning(metric: str) -> str:
    if metric in HARNESS_METRICS:
        return f"{HARNESS_METRICS[metric]} (measured by the harness, not by the recipe)"
    return "reported by the task's evaluator (see the task brief); nothing the recipe prints counts"


def fmt(v: Any) -> str:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, int) and abs(v) >= 10_000:
        return f"{v:,}"
    return f"{v:.5g}"


def _shorten(text: str, n: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[:max(n - 3, 0)] + "..."


# -- gates ------------------------------------------------------------------------------------------------
def gate_parts(r: Record, checks: Iterable[Any], budget: "Budget | None") -> list[str]:
    """Each legality gate with the trial's value and its margin: ``acc_mean 0.98 (gate >= 0.978, +0.002)``."""
    m = r.get("metrics") or {}
    out = []
    for c in checks:
        metric = getattr(c, "metric", None)
        if not isinstance(metric, str) or metric not in m:
            continue
        v = m[metric]
        if isinstance(c, MetricIsTrue):
            out.append(f"{metric} {'ok' if v is True or v == 1 else 'FAILED'}")
        elif isinstance(c, (MetricAtLeast, MetricAtMost)) and isinstance(v, (int, float)):
            margin = v - c.threshold if isinstance(c, MetricAtLeast) else c.threshold - v
            sym = ">=" if isinstance(c, MetricAtLeast) else "<="
            out.append(f"{metric} {fmt(v)} (gate {sym} {c.threshold:g}, {'+' if margin >= 0 else ''}{fmt(margin)})")
        elif isinstance(c, ArtifactBytesAtMost) and isinstance(v, (int, float)) and budget is not None \
                and budget.artifact_bytes is not None:
            left = budget.artifact_bytes - v
            out.append(f"{metric} {int(v):,} (cap {budget.artifact_bytes:,}, {int(left):+,})")
    return out


def gate_rules(checks: Iterable[Any], budget: "Budget") -> list[str]:
    out = []
    for c in checks:
        name = getattr(c, "name", None) or type(c).__name__
        if isinstance(c, ArtifactBytesAtMost):
            name = (f"{c.metric} <= {budget.artifact_bytes:,}" if budget.artifact_bytes is not None
                    else f"{c.metric} (no cap set)")
        out.append(f"- {name} (a trial failing it is labelled {getattr(c, 'label', 'gate_miss')})")
    return out


# -- one trial as a line ----------------------------------------------------------------------------------
def trial_line(r: Record, task: "Task | None", *, expected: bool = False, notes_chars: int = 0,
               agent_notes_chars: int = 0) -> str:
    """A trial, compact: label, score and its delta, gate values with margins, parent, kind, hypothesis; with
    ``notes_chars`` its notes (a crash's first lines), with ``agent_notes_chars`` the proposer's notes."""
    metric = (task.objective.metric if task else r.get("metric")) or "score"
    s = f"trial {r.get('trial')} [{r.get('specialist') or '-'}] {r.get('label')}"
    if r.get("agent_error"):
        s += " (agent_error)"
    if isinstance(r.get("score"), (int, float)):
        s += f" {metric}={fmt(r['score'])}"
        if isinstance(r.get("delta_pct"), (int, float)) and r.get("best_before") is not None:
            s += f" ({r['delta_pct']:+.2f}% vs trial {r['best_before']})"
    gates = gate_parts(r, task.legality, task.budget) if task else []
    if gates:
        s += " | " + "; ".join(gates)
    if r.get("parent") is not None:
        s += f" | parent {r['parent']}"
    kind = r.get("kind")
    if kind and kind not in ("claude",) and r.get("trial") != 0:
        s += f" | {kind}"
    if expected and isinstance(r.get("expected_delta"), (int, float)):
        s += f" | expected {r['expected_delta']:+.4g}"
    s += f": {_shorten(r.get('hypothesis') or '', 240)}"
    if notes_chars and r.get("notes"):
        s += "\n      notes: " + note_lines(str(r["notes"]), notes_chars).replace("\n", "\n        ")
    if agent_notes_chars:
        mine = agent_notes(r)
        if mine:
            s += f"\n      proposer's notes: {_shorten(mine, agent_notes_chars)}"
    return s


def note_lines(notes: str, limit: int, max_lines: int = 6) -> str:
    """The first lines of a note (a crash note's head and traceback tail), within ``limit`` characters."""
    lines = [ln.rstrip() for ln in notes.splitlines() if ln.strip()]
    out, used = [], 0
    for ln in lines[:max_lines]:
        ln = ln if len(ln) <= 240 else ln[:237] + "..."
        if out and used + len(ln) > limit:
            out.append(f"... ({len(lines) - len(out)} more lines)")
            break
        out.append(ln if used + len(ln) <= limit else ln[:max(limit - used - 3, 0)] + "...")
        used += len(ln)
    else:
        if len(lines) > max_lines:
            out.append(f"... ({len(lines) - max_lines} more lines)")
    return "\n".join(out)


def agent_notes(r: Record) -> str:
    """The proposer's own notes of a trial, without the harness' session line."""
    text = str(r.get("agent_notes") or "")
    return "\n".join(ln for ln in text.splitlines() if not ln.startswith(SESSION_MARK)).strip()


def research_records(records: list[Record]) -> list[Record]:
    """The trials that say something about an idea: without agent-side errors and harness errors."""
    return [r for r in records if not r.get("agent_error") and r.get("label") != "harness_error"]


# -- the keep rule ----------------------------------------------------------------------------------------
def keep_rule_text(objective: "Objective") -> str:
    """The rule's form, as ``acceptance.decide`` applies it (no numbers that change during a run)."""
    scale = objective.scale
    unit = ("the log ratio of best to candidate score (a relative gain: 0.01 is about 1%)" if scale == "relative"
            else f"{objective.metric}'s own units")
    direction = "lower" if objective.direction == "minimize" else "higher"
    text = (f"A legal trial is kept when the mean over seeds of its per-seed gain over the current best "
            f"(the same seeds, compared seed by seed; gain = how much {direction} its score is, in {unit}) exceeds "
            f"the bar max(min_delta, c x the standard error of that mean gain): a one-sided paired t-test, c being "
            f"Student's t quantile at the confidence of {objective.noise_sigmas:g} sigmas for the noise estimate's "
            f"degrees of freedom (large while few re-runs exist). The standard "
            f"error comes from run-to-run noise measured by re-running identical code (baseline repeats, "
            f"confirmation re-runs), not from seed-to-seed spread; while none is measured, the bar is min_delta "
            f"alone. min_delta is {objective.min_delta:g} {objective.metric}.")
    if objective.confirm_keeps:
        text += (" A trial that passes is run again right after the best is re-run, and kept only if it still "
                 "passes side by side; its score is then the mean of its two runs.")
        if getattr(objective, "replicate_near_misses", 0):
            text += (f" A trial that falls short of the bar by at most {objective.replicate_near_misses:g} "
                     f"standard error(s) is run again the same way, and kept if that side-by-side replicate "
                     f"passes on its own.")
    if getattr(objective, "reseed_reruns", False):
        text += (" Training here is chaotic: any edit moves the score about as far as a new seed, so every re-run "
                 "(baseline repeats, confirmations) trains on fresh seeds, and the noise is what an edit that "
                 "does nothing would meet.")
    if objective.refresh_best_every:
        text += (f" Candidates are screened against a measurement of the best at most "
                 f"{objective.refresh_best_every} trials old (the best is re-run when needed).")
    return text + " The lineage message states the bar's current numbers."


def keep_bar_text(objective: "Objective", records: list[Record]) -> str:
    """The bar as it stands now, from the same ``decide`` that labels trials, in the metric's units too."""
    from ..acceptance import decide, measured_noise, per_seed, runs_behind

    b = best(records, objective.direction)
    if b is None or not isinstance(b.get("score"), (int, float)):
        return "No scored trial yet: the first legal trial becomes the best."
    scores = per_seed(b)
    v = decide(scores, scores, objective, measured_noise(records, objective), b["trial"], runs_behind(b))
    minimize = objective.direction == "minimize"
    mean = sum(scores.values()) / len(scores)
    if v.se is not None:
        bar = (f"max(min_delta {v.min_delta:.4g}, t quantile {v.critical:.3g} ({v.dof} dof) x standard error "
               f"{v.se:.4g}) = {v.threshold:.4g}")
    else:
        bar = f"min_delta = {v.threshold:.4g} (no run-to-run noise measured yet)"
    if v.scale == "relative":
        target = mean * (math.exp(-v.threshold) if minimize else math.exp(v.threshold))
        pct = 100 * -math.expm1(-v.threshold) if minimize else 100 * math.expm1(v.threshold)
        where = (f"mean per-seed log ratio above {v.threshold:.4g}, i.e. about {pct:.2f}% "
                 f"{'lower' if minimize else 'higher'}: {objective.metric} {'below' if minimize else 'above'} about "
                 f"{fmt(target)} (the same ratio on every seed)")
    else:
        target = mean - v.threshold if minimize else mean + v.threshold
        where = (f"mean per-seed gain above {v.threshold:.4g} {objective.metric}, i.e. {objective.metric} "
                 f"{'below' if minimize else 'above'} about {fmt(target)}")
    return (f"To be kept now, a trial must beat the best (trial {b['trial']}, {objective.metric}={fmt(b['score'])} "
            f"over {v.n} seed(s)) by a {where}. The bar is {bar}; {v.noise}.")


# -- the blocks -------------------------------------------------------------------------------------------
def _other_timings(task: "Task") -> list[str]:
    text = " ".join([task.brief or ""] + [s.brief or "" for s in task.specialists])
    return [m for m in HARNESS_METRICS if m != task.objective.metric and re.search(rf"\b{m}\b", text)]


def rules_text(task: "Task", tools: set[str], smoke: Mapping[str, Any] | None = None) -> str:
    """Block 1: everything every specialist of the task shares."""
    b, obj = task.budget, task.objective
    limits = [
        f"- train(ctx) runs once per seed for seeds {list(b.seeds)}, each seed in a sandboxed process of its own "
        f"(nothing carries over between seeds or trials; no network). The seeds together get {b.train_seconds:g} s "
        f"of wall-clock time (over it: budget_overrun). Each seed's clock starts once the interpreter is up"
        + (f" and has imported {', '.join(b.preload)}" if b.preload else "") + ".",
        "- predict(ctx), if defined, runs per seed too, sees only that seed's outputs and the unlabeled test "
        "inputs, and is timed; " + (f"the predictions get {b.predict_seconds:g} s, the evaluation "
                                     f"{b.eval_seconds:g} s." if b.predict_seconds is not None else
                                     f"prediction and evaluation together get {b.eval_seconds:g} s."),
    ]
    if b.prepare_seconds:
        limits.append(f"- An optional prepare(ctx) runs untimed (up to {b.prepare_seconds:g} s) and gets no data: "
                      "use it only for warm-up such as compilation on random tensors.")
    if b.artifact_bytes:
        limits.append(f"- The saved artifact may be at most {b.artifact_bytes:,} bytes (over it: size_blocked).")
    if b.threads:
        limits.append(f"- The recipe runs with {b.threads} CPU thread(s).")
    gates = gate_rules(task.legality, b)
    others = _other_timings(task)
    objective = (f"# Objective (the only score that decides)\n{obj.direction} {obj.metric}: {metric_meaning(obj.metric)}."
                 + (f" Other timings in the records ({', '.join(others)}) are context, not the score; the time "
                    f"limits below are limits, not the score." if others else
                    " The time limits below are limits, not the score.")
                 + f"\n\n{keep_rule_text(obj)}")
    forbidden = ", ".join(repr(p) for p in task.evaluator.forbidden)
    steps = ["1. Read the lineage (the last message before your turn): build on what was kept, and do not repeat "
             "what failed, whoever tried it."]
    if {"lineage_query", "lineage_trial"} & tools:
        steps.append("2. Look deeper where it helps: lineage_query finds trials by specialist, label, kind (the "
                     "knob a trial changed, e.g. 'lr') or score; lineage_trial shows any trial's diff, notes, "
                     "metrics and files, so that building on another parent (submit_trial parent=N) is not blind.")
    steps.append(f"{len(steps) + 1}. The parent's files are in the system prompt; view shows any file or range.")
    steps.append(f"{len(steps) + 1}. Make one coherent change with str_replace, insert or create, inside your "
                 "surface, runnable within the budget.")
    if "smoke_test" in tools and smoke:
        steps.append(f"{len(steps) + 1}. Run smoke_test before submitting a change that could fail to run: it "
                     f"runs your current files for a few steps in the trial's sandbox (up to {smoke['seconds']:g} s, "
                     f"at most {smoke['max_calls']} per session) and returns 'ok' or the crash; a crash caught there "
                     "costs a tool call, not a trial.")
    steps.append(f"{len(steps) + 1}. Call submit_trial once: hypothesis (one or two sentences), expected_delta "
                 f"(your predicted change of {obj.metric} versus the parent, in its units; negative means lower; "
                 "required, null if you cannot guess), and notes for the specialists after you. That ends the "
                 "session; the harness then runs the trial.")
    parts = [
        "You are a specialist in an automated research loop that improves a training recipe. Several specialists, "
        "each owning one part of the recipe, take turns; every session one of them proposes ONE trial: a focused "
        "change, made with the editing tools and submitted with submit_trial. The harness runs the changed recipe "
        "under a fixed budget, scores it with an evaluator nobody can see or change, labels the trial and records "
        "it in the lineage all specialists read. Nobody answers questions: decide, edit and submit. Your role, "
        "your surface and the lineage follow the recipe's files.",
        f"# Task: {task.name} (variant {task.variant})\n{(task.brief or '(no brief given)').strip()}",
        objective,
        "# Budget and legality\n" + "\n".join(limits)
        + ("\nEvery trial must also pass these gates on the evaluator's metrics (the lineage shows each trial's "
           "value and margin):\n" + "\n".join(gates) if gates else ""),
        "# Surfaces\nEach specialist may change only its surface: whole files, or marked regions (the text between "
        "the lines '# autoresearch: begin NAME' and '# autoresearch: end NAME'; the marker lines themselves and "
        "everything outside the regions must stay byte-identical). Other files, other specialists' regions, the "
        "evaluator, the timer and the data are off limits: an edit outside your surface is refused."
        + (f"\nText matching these evaluator-owned patterns may never be added to the recipe: {forbidden}."
           if forbidden else ""),
        f"# Labels a trial can get\n{LABELS_TEXT}",
        "# How to work\n" + "\n".join(steps),
    ]
    return "\n\n".join(parts)


def files_text(files: Mapping[str, str], parent: int, max_chars: int) -> str:
    """Block 2: the parent trial's files, numbered (those over ``max_chars`` in all are listed, not shown)."""
    out = [f"# The recipe's files at trial {parent} (the parent your edits apply to)"]
    budget = max_chars
    for path in sorted(files):
        body = numbered(files[path])
        if len(body) > budget:
            out.append(f"(Not shown: {path}, {len(body):,} characters; use view with view_range.)")
            continue
        budget -= len(body)
        out.append(f'<file path="{path}">\n{body}</file>')
    return "\n\n".join(out)


def role_text(spec: "Specialist", listing: str) -> str:
    """Block 3: this specialist's brief, surface and what it may edit in each file."""
    return (f"# Your role: the '{spec.name}' specialist\n{(spec.brief or '').strip()}\n\nYou may change only: "
            f"{spec.surface.describe()}.\n\n## The recipe's files and what you may edit\n{listing}")


def request_text(trial: int, parent: int, focus: "Technique | None" = None) -> str:
    text = (f"Propose trial {trial}. Your edits apply to the files of trial {parent} (in the system prompt). Make "
            f"your change and call submit_trial.")
    if focus is not None:
        text += (f" You have this turn because the task's catalog expects the most from your technique "
                 f"'{focus.name}' ({focus.hypothesis}"
                 + (f"; expected change {focus.expected_delta:+g}" if focus.expected_delta is not None else "")
                 + "), which has not been measured on this parent: try it unless the lineage says otherwise.")
    return text


def render_view(view: LineageView, sizes: Mapping[str, int], task: "Task | None" = None) -> str:
    """The lineage as the model reads it, sized by the agent config (rebuilt from the records when given).

    Agent-side errors (API outages) and harness errors stay out of the research history (recent trials and
    failures); they stay in the lineage and ``lineage_query`` lists them on request.
    """
    records = list(view.records)
    research = research_records(records)
    if records:
        b = best(records, view.direction)
        tops = [r for r in top_k(records, view.direction, sizes["top_k"] + 1) if r is not b][:sizes["top_k"]]
        anc = ancestors(records, b["trial"]) if b else []
        rec_list = recent(research, sizes["recent"])
        fails = failures(research, sizes["failures"])
    else:
        b, tops, anc = view.best, view.top_k, view.ancestors_of_best
        rec_list = research_records(view.recent)
        fails = [r for r in research_records(view.failures) if r.get("label") in FAILURES]
    left_out = len(records) - len(research)
    notes_n = sizes["notes_chars"]
    agent_n = sizes.get("agent_notes_chars", 300)
    metric = task.objective.metric if task else view.metric
    head = f"# Lineage of task {view.task}: {view.n_trials} trials recorded (objective: {view.direction} {metric})"
    if left_out:
        head += (f"; {left_out} agent-side or harness error(s) are left out below (lineage_query with "
                 f"include_errors=true lists them)")
    out = [head]
    if task is not None:
        out.append("## Keep bar now\n" + keep_bar_text(task.objective, records or ([b] if b else [])))
    elif view.rule:
        out.append(f"Keep rule, with its current numbers: {view.rule}.")
    if b:
        out.append("## Current best\n" + trial_line(b, task, agent_notes_chars=agent_n))
        diff = (b.get("diff") or "").splitlines()
        if diff and sizes["max_diff_lines"]:
            shown = diff[:sizes["max_diff_lines"]]
            more = len(diff) - len(shown)
            out.append("Its diff versus its parent:\n```diff\n" + "\n".join(shown)
                       + (f"\n... ({more} more lines)" if more > 0 else "") + "\n```")
    else:
        out.append("No scored trial yet.")
    sections = (("Other top trials (kept, best first)", tops, {}),
                ("Ancestors of the best (nearest first)", anc, {}),
                ("Recent trials of all specialists (oldest first)", rec_list,
                 {"expected": True, "agent_notes_chars": agent_n}),
                ("Recent failures and their notes", fails, {"notes_chars": notes_n}))
    for title, recs, kw in sections:
        if not recs:
            continue
        out.append(f"## {title}")
        for r in recs:
            out.append("- " + trial_line(r, task, **kw))
            if title.startswith("Recent trials") and sizes["recent_diff_lines"]:
                out += ["      " + ln for ln in _changed_lines(r.get("diff") or "", sizes["recent_diff_lines"])]
    if view.in_flight:
        out.append("## Being measured now on other workers (not scored yet; the same code would be refused)")
        out += ["- " + in_flight_line(c) for c in view.in_flight]
    return "\n".join(out)


def _changed_lines(diff: str, n: int) -> list[str]:
    lines = [ln for ln in (diff or "").splitlines() if ln[:1] in "+-" and not ln.startswith(("+++", "---"))]
    return lines[:n] + ([f"... ({len(lines) - n} more changed lines)"] if len(lines) > n else [])
