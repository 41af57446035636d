"""The offline agent: real edits inside a specialist's surface, steered by the lineage, no network.

Candidates come from three places: the numeric constants, booleans and named options written in the
specialist's regions (generic, so a new task needs no catalog), the task's catalog of known techniques,
and the specialist's own earlier wins that the current best does not contain yet. Each candidate is
weighted by what the lineage says about its knob and direction, then one is drawn with a seeded RNG.

Weights aim at the keep bar. A trial that moves the score by less than the bar is a wasted trial however
right its direction, so every candidate gets a predicted gain, as a fraction of the best score, and is weighed
by that prediction over the bar:
- from the lineage: every trial that changed the same knob and was scored (kept, discarded or over a gate)
  gives a slope, gain per log-step, which predicts both directions and any step size (a catalog technique or
  re-applied edit that only moved one number counts as a step on that knob);
- from the task author: a catalog technique's ``expected_delta``;
- on a cost objective (a timing or size on the relative scale, minimized) with nothing measured yet: shrinking
  an integer size or count of 4 or more is expected to save cost and growing it to spend more; any other
  number is expected to leave the cost alone, which cannot clear a bar on cost.

Gates are predicted the same way: a knob's measured effect on a gated metric (``MetricAtLeast``/``AtMost``)
says whether a step would leave the best's margin negative, and such a step is drawn rarely. When the drawn
step is predicted to lose gate margin, the trial *trades*: it also makes the change on another knob of the
surface that measured the most margin back without costing the objective more than a quarter of the bar.
"""
from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..allocation import Prior
from ..edits import Edit, EditError, apply_edits, content_hash, split_regions
from ..lineage import Record
from .base import NoProposal, Proposal, ProposalRequest

_NUM = r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?"
ASSIGN_RE = re.compile(rf"^(?P<head>\s*(?P<name>[A-Za-z_]\w*)\s*(?::\s*[\w\[\]., ]+)?=\s*)"
                       rf"(?P<value>{_NUM}|True|False)(?P<tail>\s*(?:#.*)?)$")
OPTION_RE = re.compile(r"^(?P<head>\s*(?P<name>[A-Za-z_]\w*)\s*=\s*)(?P<q>[\"'])(?P<value>[^\"']*)(?P=q)"
                       r"(?P<tail>\s*#.*?options:\s*(?P<opts>[\w.+-]+(?:\s*\|\s*[\w.+-]+)+).*)$")
KWARG_RE = re.compile(rf"(?<![\w.])(?P<name>[A-Za-z_]\w*)=(?P<value>{_NUM})(?![\w.])")
RANGE_RE = re.compile(rf"range:\s*(?P<lo>{_NUM})\s*\.\.\s*(?P<hi>{_NUM})")
FAILED = ("budget_overrun", "gate_miss", "crash", "size_blocked")
STALL = 5  # judged trials without a keep before steps grow
SCORED = ("keep", "discard", "gate_miss")  # labels whose score measured the change


@dataclass
class Candidate:
    knob: str             # "train.py:opt:lr"
    direction: str        # "up" | "down" | "toggle" | "=value" | "catalog" | "reapply"
    factor: float         # size of the step (1.0 for non-numeric changes)
    edits: list[Edit]
    describe: str
    weight: float = 1.0
    evidence: list[str] = field(default_factory=list)
    expected: float | None = None
    old_value: str | None = None  # the number a numeric step changes, as written
    predicted: float | None = None  # predicted gain, as a fraction of the best score
    gate_moves: dict[str, float] = field(default_factory=dict)  # gate metric -> predicted change toward passing


def _fmt(value: float, like: str) -> str:
    if re.fullmatch(r"[-+]?\d+", like):
        return str(int(round(value)))
    s = f"{value:.4g}"
    return s if any(c in s for c in ".eE") else s + ".0"


def _unique_search(text: str, line: str, lines: list[str], idx: int) -> str:
    """Grow ``line`` with preceding lines until it occurs once in ``text``."""
    start, search = idx, line
    while text.count(search) > 1 and start > 0:
        start -= 1
        search = "".join(lines[start:idx + 1])
    return search


def _numeric_steps(v: float, is_int: bool) -> list[tuple[float, str, float]]:
    """(new value, direction, step factor) for a numeric knob."""
    if is_int:
        if v == 0:
            return [(1, "up", 2.0)]
        if abs(v) < 4:
            return [(v + 1, "up", (v + 1) / v if v else 2.0), (v - 1, "down", v / (v - 1) if v - 1 else 2.0)]
        out = []
        for f in (0.5, 0.75, 1.25, 2.0):
            nv = int(round(v * f))
            if nv != v:
                out.append((nv, "up" if nv > v else "down", max(f, 1 / f)))
        return out
    if v == 0:
        return [(0.1, "up", 2.0)]
    return [(v * f, "up" if (v * f > v) else "down", max(f, 1 / f)) for f in (0.5, 0.8, 1.25, 2.0)]


def surface_candidates(files: Mapping[str, str], surface: Any) -> list[Candidate]:
    """Every single-knob change the surface allows, found in its regions (or whole owned files)."""
    cands: list[Candidate] = []
    regions = surface.region_map()
    for path in sorted(files):
        text = files[path]
        if not path.endswith(".py"):
            continue
        if surface.owns_file(path):
            spans = [("file", text)]
        elif path in regions:
            spans = [(n, chunk) for n, chunk in split_regions(text) if n in regions[path]]
        else:
            continue
        all_lines = text.splitlines(keepends=True)
        line_no = 0
        for region, chunk in (spans if spans[0][0] == "file" else split_regions(text)):
            chunk_lines = chunk.splitlines(keepends=True)
            if spans[0][0] == "file" or region in regions.get(path, ()):
                for k, line in enumerate(chunk_lines):
                    cands += _line_candidates(path, region or "file", text, line, all_lines, line_no + k)
            line_no += len(chunk_lines)
    return cands


def _line_candidates(path: str, region: str, text: str, line: str, lines: list[str], idx: int) -> list[Candidate]:
    body = line.rstrip("\n")
    nl = line[len(body):]
    search = _unique_search(text, line, lines, idx)
    out: list[Candidate] = []

    def cand(name: str, direction: str, factor: float, new_line: str, describe: str, old: str | None = None) -> None:
        out.append(Candidate(f"{path}:{region}:{name}", direction, factor,
                             [Edit(path, search, search[: len(search) - len(line)] + new_line + nl)], describe,
                             old_value=old))

    m = OPTION_RE.match(body)
    if m:
        for opt in (o.strip() for o in m["opts"].split("|")):
            if opt != m["value"]:
                cand(m["name"], f"={opt}", 1.0, f"{m['head']}{m['q']}{opt}{m['q']}{m['tail']}",
                     f"set {m['name']} from '{m['value']}' to '{opt}' ({path}, region {region})")
        return out
    m = ASSIGN_RE.match(body)
    if m:
        name, value, tail = m["name"], m["value"], m["tail"]
        if value in ("True", "False"):
            new = "False" if value == "True" else "True"
            cand(name, "toggle", 1.0, f"{m['head']}{new}{tail}", f"turn {name} {value}->{new} ({path}, region {region})")
            return out
        rng = RANGE_RE.search(tail or "")
        lo, hi = (float(rng["lo"]), float(rng["hi"])) if rng else (-math.inf, math.inf)
        is_int = re.fullmatch(r"[-+]?\d+", value) is not None
        for nv, direction, factor in _numeric_steps(float(value), is_int):
            if lo <= nv <= hi:
                s = _fmt(nv, value)
                cand(name, direction, factor, f"{m['head']}{s}{tail}",
                     f"change {name} {value}->{s} ({path}, region {region})", old=value)
        return out
    if body.lstrip().startswith("#"):
        return out
    for m in KWARG_RE.finditer(body):
        name, value = m["name"], m["value"]
        is_int = re.fullmatch(r"[-+]?\d+", value) is not None
        if is_int and int(value) <= 0:
            continue  # dim=-1, ignore_index=-1, axis=0: sentinels and axes, not knobs
        for nv, direction, factor in _numeric_steps(float(value), is_int):
            s = _fmt(nv, value)
            new = body[: m.start("value")] + s + body[m.end("value"):]
            cand(name, direction, factor, new, f"change {name}={value}->{s} ({path}, region {region})", old=value)
    return out


def _direction_sign(direction: str) -> str | None:
    return {"up": "down", "down": "up"}.get(direction)


class OfflineAgent:
    """Deterministic given ``seed``; reads the whole lineage it is shown."""

    name = "offline"

    def __init__(self, cfg: Mapping[str, Any] | None = None, *, seed: int = 0) -> None:
        self.cfg = dict(cfg or {})
        self.seed = seed
        self.explore = float(self.cfg.get("explore", 0.15))

    def describe(self) -> str:
        return f"offline (seed {self.seed}, no model)"

    def _usable(self, request: ProposalRequest) -> tuple[list[Candidate], float | None, set[str]]:
        """Every candidate that applies and gives untried code, weighed and aimed (see the module docstring),
        with the keep bar (fraction of the best score) and the content hashes already measured."""
        spec, files, view = request.specialist, dict(request.files), request.view
        records = view.records
        # A repeat is the same resulting code, not the same textual change: a change discarded on an old
        # parent may still pay off on the current best, so it stays a (down-weighted) candidate.
        # Code a trial beside this one is measuring is taken too: the harness would refuse it.
        tried = {r.get("content_hash") for r in [*records, *view.in_flight]} - {None}
        cands = surface_candidates(files, spec.surface)
        raw, records = records, _as_knob_steps(records, cands)
        cands += self._catalog(spec, files, request.focus)
        cands += self._reapply(request, records)
        bar = _bar_fraction(request)
        slopes = _slopes(records, request.task.objective)
        gates = _gates(request.task)
        gate_slopes = _gate_slopes(records, gates)
        usable: list[Candidate] = []
        for c in cands:
            try:
                after = apply_edits(files, c.edits)
            except EditError:
                continue
            if after == files or content_hash(after) in tried:
                continue
            self._weigh(c, raw if c.direction == "catalog" else records, request)
            self._aim(c, request, bar, slopes)
            self._guard(c, request, gates, gate_slopes)
            usable.append(c)
        return usable, bar, tried

    def prior(self, request: ProposalRequest) -> Prior | None:
        """The largest gain, as a fraction of the best score, this agent predicts from one of the specialist's
        changes on ``request.files`` (a measured slope, the catalog's expectation, a size on a cost), for the
        bandit's prior (allocation.py); None when it predicts nothing (no keep bar yet)."""
        aimed = [c for c in self._usable(request)[0] if c.predicted is not None]
        if not aimed:
            return None
        top = max(aimed, key=lambda c: c.predicted or 0.0)
        return Prior(max(top.predicted or 0.0, 0.0), top.knob.split(":", 1)[1] if top.direction == "catalog" else None,
                     f"the offline agent predicts {100 * (top.predicted or 0.0):+.2g}% from: {top.describe[:120]}")

    def propose(self, request: ProposalRequest) -> Proposal:
        spec, files, records = request.specialist, dict(request.files), request.view.records
        usable, bar, tried = self._usable(request)
        if not usable:
            busy = f" or is being measured by trial(s) {sorted(c.get('trial') for c in request.view.in_flight)}" \
                if request.view.in_flight else ""
            raise NoProposal(f"offline agent: every change it knows inside the surface of '{spec.name}' "
                             f"({spec.surface.describe()}) was already tried{busy}")
        rng = random.Random(f"{self.seed}:{request.task.name}:{request.trial}:{spec.name}")
        total = sum(c.weight for c in usable)
        pick = rng.uniform(0, total)
        chosen = usable[-1]
        for c in usable:
            pick -= c.weight
            if pick <= 0:
                chosen = c
                break
        focus = next((c for c in usable if c.knob == f"catalog:{request.focus}"), None)
        rival = max((c.predicted for c in usable if c is not focus and c.predicted is not None), default=None)
        if focus is not None and rng.random() >= self.explore and (
                rival is None or (focus.predicted is not None and focus.predicted >= rival)):
            # The schedule spent this turn on this technique's expected gain: anything else wastes the reason
            # the turn was given, except for the ``explore`` share of draws that keeps the rest of the surface,
            # and unless this agent predicts more from another change (a measured slope, a size on a cost).
            chosen = focus
        kind, edits, hypothesis = f"{chosen.knob}:{chosen.direction}", chosen.edits, self._hypothesis(chosen, records)
        partner = self._trade_partner(chosen, usable, files, bar, tried)
        if partner is not None:
            edits = chosen.edits + partner.edits
            kind = f"{kind}+{partner.knob}:{partner.direction}"
            hypothesis += (f" Traded: {chosen.describe} is predicted to cost "
                           f"{', '.join(f'{m} {v:+.3g}' for m, v in chosen.gate_moves.items() if v < 0)}, so this "
                           f"trial also makes the change that measured gains back: {partner.describe} "
                           f"({'; '.join(partner.evidence[:1])}).")
        return Proposal(hypothesis=hypothesis, expected_delta=chosen.expected, edits=edits, kind=kind,
                        step=chosen.factor)

    # -- candidate sources ----------------------------------------------------------------------------
    def _catalog(self, spec: Any, files: Mapping[str, str], focus: str | None = None) -> list[Candidate]:
        out = []
        for t in spec.catalog:
            c = Candidate(f"catalog:{t.name}", "catalog", 1.0, list(t.edits), f"{t.name}: {t.hypothesis}",
                          weight=2.0, expected=t.expected_delta)
            if t.name == focus:
                c.evidence.append("the schedule gave this specialist the turn for this technique's expected gain")
            out.append(c)
        return out

    def _reapply(self, request: ProposalRequest, records: list[Record]) -> list[Candidate]:
        """This specialist's earlier wins (keeps, or legal improvements under the noise bar) that the best lacks."""
        view = request.view
        if view.best is None:
            return []
        lineage_of_best = {view.best["trial"]} | {r["trial"] for r in view.ancestors_of_best}
        out = []
        for r in records:
            if r.get("specialist") != request.specialist.name or r["trial"] in lineage_of_best or not r.get("edits"):
                continue
            gain = _gain(r, view.direction)
            if r.get("label") == "keep" or (r.get("label") == "discard" and gain is not None and gain > 0):
                c = Candidate(f"reapply:{r['trial']}", "reapply", 1.0, [Edit.from_json(e) for e in r["edits"]],
                              f"re-apply trial {r['trial']}'s edit ({r.get('hypothesis', '')[:80]}) on top of "
                              f"{'the current best, ' if request.parent == view.best['trial'] else 'its parent, '}"
                              f"trial {request.parent}", weight=3.0 if r["label"] == "keep" else 1.5)
                c.evidence.append(f"trial {r['trial']} ({r['label']}, Δ {_pct(r)}) was measured on parent "
                                  f"{r.get('parent')}, which the best (trial {view.best['trial']}) does not descend from")
                c.expected = r.get("delta_vs_best")
                out.append(c)
        return out

    # -- lineage evidence -----------------------------------------------------------------------------
    def _weigh(self, c: Candidate, records: list[Record], request: ProposalRequest) -> None:
        direction = request.view.direction
        same_knob = [r for r in records if (r.get("kind") or "").rsplit(":", 1)[0] == c.knob]
        deltas = []
        for r in same_knob:
            r_dir = (r.get("kind") or "").rsplit(":", 1)[-1]
            r_factor = float(r.get("step") or 1.0)
            label = r.get("label")
            gain = _gain(r, direction)
            same = r_dir == c.direction
            opposite = _direction_sign(r_dir) == c.direction
            if label == "keep" and same:
                c.weight *= 3.0
                deltas.append(r.get("delta_vs_best"))
                c.evidence.append(f"trial {r['trial']} moved it {r_dir} and was kept (Δ {_pct(r)})")
            elif label == "discard" and same and gain is not None and gain > 0:
                c.weight *= 1.5
                c.evidence.append(f"trial {r['trial']} moved it {r_dir}: better but within noise (Δ {_pct(r)})")
            elif label == "discard" and same:
                c.weight *= 0.4
                c.evidence.append(f"trial {r['trial']} moved it {r_dir} and was worse (Δ {_pct(r)})")
            elif label == "discard" and opposite and gain is not None and gain < 0:
                c.weight *= 1.5
                c.evidence.append(f"trial {r['trial']} moved it {r_dir} and was worse, so this goes {c.direction}")
            elif label in FAILED and same:
                # Back off: the same step or a bigger one is nearly ruled out; a smaller one stays possible.
                c.weight *= 0.05 if c.factor >= r_factor else 0.5
                c.evidence.append(f"trial {r['trial']} moved it {r_dir} (x{r_factor:g}) and hit {label}"
                                  + (f" ({r['notes'][:80]})" if r.get("notes") else "")
                                  + ("; this is a smaller step" if c.factor < r_factor else ""))
            elif label in FAILED and opposite:
                c.weight *= 1.5
                c.evidence.append(f"trial {r['trial']} moved it {r_dir} and hit {label}, so this goes {c.direction}")
            elif label == "preflight_crash" and same:
                c.weight *= 0.5
        if same_knob and not c.evidence:
            r = same_knob[-1]
            c.evidence.append(f"trial {r['trial']} changed it ({(r.get('kind') or '').rsplit(':', 1)[-1]}) and was "
                              f"{r.get('label')} (Δ {_pct(r)})")
        if not same_knob and c.direction not in ("catalog", "reapply"):
            c.evidence.append(f"no trial among the {len(records)} recorded has changed {c.knob.split(':')[-1]} yet")
        elif c.direction == "catalog" and not same_knob:
            c.evidence.append(f"a known technique not yet tried in the {len(records)} recorded trials")
        self._size_for_bar(c, records)
        c.weight = max(c.weight, self.explore * 0.1)
        deltas = [d for d in deltas if isinstance(d, (int, float))]
        if deltas:
            c.expected = sum(deltas) / len(deltas)
        elif c.expected is None and request.view.best and isinstance(request.view.best.get("score"), (int, float)):
            sign = -1.0 if direction == "minimize" else 1.0
            c.expected = sign * 0.005 * abs(request.view.best["score"])

    def _aim(self, c: Candidate, request: ProposalRequest, bar: float | None,
             slopes: dict[str, list[float]]) -> None:
        """Weigh ``c`` by its predicted gain over the keep bar (see the module docstring)."""
        if bar is None or bar <= 0:
            return
        best = request.view.best
        best_score = best.get("score") if best else None
        predicted, why = None, ""
        signed = _signed_log_step(c)
        if c.knob in slopes and signed is not None:
            n = len(slopes[c.knob])
            s = sorted(slopes[c.knob])[n // 2]
            # One measurement carries run-to-run noise of about half the bar: shrink toward no effect.
            predicted = s * signed * n / (n + 1)
            why = (f"{n} scored trial(s) on this knob give a slope of {100 * s:+.2g}% per log-step, so this "
                   f"step should move the score {100 * predicted:+.2g}%")
        elif c.direction == "catalog" and isinstance(c.expected, (int, float)) and best_score:
            sign = -1.0 if request.view.direction == "minimize" else 1.0
            predicted = sign * float(c.expected) / abs(float(best_score))
            why = f"the task's catalog expects {100 * predicted:+.2g}%"
        elif signed is not None and _is_cost(request.task) and _is_size(c):
            predicted = -bar * signed / math.log(2)
            why = (f"{request.task.objective.metric} is a cost and this integer is a size or count: "
                   f"{'shrinking' if signed < 0 else 'growing'} it should {'save' if signed < 0 else 'spend'} cost")
        elif signed is not None and _is_cost(request.task):
            predicted = 0.0
            why = f"{request.task.objective.metric} is a cost and this number is not a size: its effect on cost is unmeasured"
        if predicted is None:
            return
        c.predicted = predicted
        # exp(2 (g/bar - 1/2)): a change predicted to clear the bar is worth e times one predicted to do nothing
        # useful, e^-1; one predicted to lose by the bar is nearly ruled out.
        c.weight *= min(6.0, max(0.02, math.exp(2.0 * (predicted / bar - 0.5))))
        c.evidence.insert(0, f"{why}; the keep bar is {100 * bar:.2g}%")

    def _guard(self, c: Candidate, request: ProposalRequest, gates: list[tuple[str, float, float]],
               gate_slopes: dict[str, dict[str, list[float]]]) -> None:
        """Down-weigh a step predicted, from the knob's measured effect on a gate metric, to fail that gate."""
        signed = _signed_log_step(c)
        best = request.view.best
        if signed is None or not best or c.knob not in gate_slopes:
            return
        metrics = best.get("metrics") or {}
        for metric, threshold, sign in gates:
            ss = gate_slopes[c.knob].get(metric)
            value = metrics.get(metric)
            if not ss or not isinstance(value, (int, float)):
                continue
            n = len(ss)
            move = sorted(ss)[n // 2] * signed * n / (n + 1)   # toward passing when positive
            c.gate_moves[metric] = move
            after = value + sign * move
            if sign * (after - threshold) < 0:
                c.weight *= 0.2
                c.evidence.insert(0, f"{n} scored trial(s) on this knob moved {metric}: this step should leave it "
                                     f"at {after:.4g}, failing the gate {threshold:g}")

    def _trade_partner(self, chosen: Candidate, usable: list[Candidate], files: Mapping[str, str],
                       bar: float | None, tried: set[str]) -> Candidate | None:
        """For a step predicted to lose gate margin, the change on another knob that measured the most margin
        back without costing the objective more than a quarter of the bar; None when there is none."""
        losses = [m for m, v in chosen.gate_moves.items() if v < 0]
        if not losses or chosen.direction not in ("up", "down"):
            return None
        knob_of = chosen.knob
        best, best_gain = None, 0.0
        for p in usable:
            if p.knob == knob_of or p.direction not in ("up", "down"):
                continue
            gain = min((p.gate_moves.get(m, 0.0) for m in losses), default=0.0)
            cost_ok = p.predicted is None or bar is None or p.predicted >= -bar / 4
            if gain > best_gain and cost_ok:
                try:
                    after = apply_edits(apply_edits(files, chosen.edits), p.edits)
                except EditError:
                    continue
                if content_hash(after) in tried:
                    continue  # this pair was measured already
                best, best_gain = p, gain
        return best

    def _size_for_bar(self, c: Candidate, records: list[Record]) -> None:
        """Size steps to the keep bar. Larger steps are preferred (and the smallest passed over) when the legal
        trials so far moved the score by a median of under half the bar (a step of the same size is a wasted
        trial), or when none of the last ``STALL`` judged trials was kept (the 1/5th success rule of evolution
        strategies: too few successes, step up). Failures still back a knob's step off in ``_weigh``."""
        if c.direction not in ("up", "down"):
            return
        judged = [(r.get("acceptance"), r.get("label")) for r in records]
        judged = [a for a, label in judged if label in ("keep", "discard") and isinstance(a, dict)
                  and isinstance(a.get("gain"), (int, float)) and isinstance(a.get("threshold"), (int, float))
                  and a["threshold"] > 0]
        if len(judged) < 3:
            return
        moved = sorted(abs(a["gain"]) for a in judged)
        median, bar = moved[len(moved) // 2], judged[-1]["threshold"]
        recent = [r.get("label") for r in records if r.get("label") in ("keep", "discard")][-STALL:]
        stalled = len(recent) == STALL and "keep" not in recent
        if median >= bar / 2 and not stalled:
            return
        if c.factor >= 2.0:
            c.weight *= 3.0
            c.evidence.append(f"legal steps so far moved the score by a median {median:.3g}, under half the keep "
                              f"bar {bar:.3g}: a x{c.factor:g} step" if median < bar / 2 else
                              f"none of the last {STALL} judged trials was kept: a x{c.factor:g} step")
        elif c.factor <= 1.34:
            c.weight *= 0.4

    def _hypothesis(self, c: Candidate, records: list[Record]) -> str:
        text = c.describe[0].upper() + c.describe[1:]
        evidence = "; ".join(c.evidence[:3]) if c.evidence else f"lineage holds {len(records)} trials"
        return f"{text}. Evidence: {evidence}."


def _bar_fraction(request: ProposalRequest) -> float | None:
    """The keep bar now, as a fraction of the best score: what a change must move the score by to be kept."""
    from ..acceptance import bar_fraction

    return bar_fraction(request.task.objective, request.view.records, request.view.best)


def _numeric_change(edits: Any) -> tuple[str, str, float, float] | None:
    """(path, name, old, new) when ``edits`` (recorded JSON) change one numeric assignment and nothing else."""
    if not isinstance(edits, list) or len(edits) != 1 or not isinstance(edits[0], dict):
        return None
    e = edits[0]
    before, after = str(e.get("search", "")).splitlines(), str(e.get("replace", "")).splitlines()
    diff = [(a, b) for a, b in zip(before, after) if a != b]
    if len(before) != len(after) or len(diff) != 1:
        return None
    ma, mb = ASSIGN_RE.match(diff[0][0]), ASSIGN_RE.match(diff[0][1])
    if not ma or not mb or ma["name"] != mb["name"] or "True" in (ma["value"], mb["value"]) or \
            "False" in (ma["value"], mb["value"]):
        return None
    return str(e.get("path", "")), ma["name"], float(ma["value"]), float(mb["value"])


def _as_knob_steps(records: list[Record], cands: list[Candidate]) -> list[Record]:
    """Records whose edit (a catalog technique's, say) only moved one numeric knob of the surface, read as that
    knob's step, so what they measured counts for the knob's slope and history like a step proposed on it."""
    knobs = {(c.knob.split(":", 1)[0], c.knob.rsplit(":", 1)[-1]): c.knob for c in cands}
    out = []
    for r in records:
        kind = r.get("kind") or ""
        change = _numeric_change(r.get("edits")) if kind.startswith(("catalog:", "reapply:")) else None
        if change is not None and (change[0], change[1]) in knobs and change[2] and change[3] and \
                (change[2] > 0) == (change[3] > 0) and change[2] != change[3]:
            _, _, old, new = change
            r = {**r, "kind": f"{knobs[(change[0], change[1])]}:{'up' if abs(new) > abs(old) else 'down'}",
                 "step": max(abs(new / old), abs(old / new))}
        out.append(r)
    return out


def _signed_log_step(c: Candidate) -> float | None:
    """ln(step) signed by direction (+ up, - down); None for non-numeric changes."""
    if c.direction not in ("up", "down") or not c.factor or c.factor <= 0:
        return None
    step = math.log(max(c.factor, 1.0 + 1e-9))
    return step if c.direction == "up" else -step


def _slopes(records: list[Record], objective: Any) -> dict[str, list[float]]:
    """Knob -> measured gains per signed log-step (gain as a fraction of the score), one per scored trial.

    A trial's gain is the keep rule's paired gain where it has one (against a fresh measurement of the best,
    so a drifting machine does not read as an effect); a gate miss has only its score against the best's.
    """
    from ..acceptance import scale_of

    out: dict[str, list[float]] = {}
    for r in records:
        knob, _, r_dir = (r.get("kind") or "").rpartition(":")
        step = r.get("step")
        if r.get("label") not in SCORED or r_dir not in ("up", "down"):
            continue
        if not isinstance(step, (int, float)) or step <= 1.0:
            continue
        acc, pct = r.get("acceptance") or {}, r.get("delta_pct")
        if isinstance(acc.get("gain"), (int, float)):
            gain = float(acc["gain"])
            if (acc.get("scale") or scale_of(objective)) == "absolute":
                ref = r.get("score")
                if not isinstance(ref, (int, float)) or not ref:
                    continue
                gain /= abs(float(ref))
        elif isinstance(pct, (int, float)):
            gain = (-pct if objective.direction == "minimize" else pct) / 100.0
        else:
            continue
        out.setdefault(knob, []).append(gain / (math.log(step) * (1 if r_dir == "up" else -1)))
    return out


def _gates(task: Any) -> list[tuple[str, float, float]]:
    """(metric, threshold, +1 for at-least / -1 for at-most) of the task's gates on one metric."""
    from ..legality import MetricAtLeast, MetricAtMost

    out = []
    for check in getattr(task, "legality", ()) or ():
        if isinstance(check, (MetricAtLeast, MetricAtMost)):
            out.append((check.metric, float(check.threshold), 1.0 if isinstance(check, MetricAtLeast) else -1.0))
    return out


def _gate_slopes(records: list[Record], gates: list[tuple[str, float, float]]) -> dict[str, dict[str, list[float]]]:
    """Knob -> gate metric -> its change toward passing per signed log-step, from single-knob trials whose
    parent's metric is recorded too."""
    by_trial = {r.get("trial"): r for r in records}
    out: dict[str, dict[str, list[float]]] = {}
    for r in records:
        knob, _, r_dir = (r.get("kind") or "").rpartition(":")
        step, parent = r.get("step"), by_trial.get(r.get("parent"))
        if r_dir not in ("up", "down") or not isinstance(step, (int, float)) or step <= 1.0 or parent is None:
            continue
        log_step = math.log(step) * (1 if r_dir == "up" else -1)
        mine, theirs = r.get("metrics") or {}, parent.get("metrics") or {}
        for metric, _, sign in gates:
            a, b = mine.get(metric), theirs.get(metric)
            if isinstance(a, (int, float)) and isinstance(b, (int, float)):
                out.setdefault(knob, {}).setdefault(metric, []).append(sign * (a - b) / log_step)
    return out


def _is_cost(task: Any) -> bool:
    """A cost objective: minimized and compared on the relative scale (timings, bytes, FLOPs)."""
    objective = getattr(task, "objective", None)
    return (getattr(objective, "direction", None) == "minimize" and getattr(objective, "scale", None) == "relative")


def _is_size(c: Candidate) -> bool:
    """The candidate steps an integer of 4 or more (a width, a count, a number of images)."""
    return c.old_value is not None and re.fullmatch(r"[-+]?\d+", c.old_value) is not None and int(c.old_value) >= 4


def _gain(r: Record, direction: str) -> float | None:
    """Positive when the trial was better than the best it was compared with (only the sign is used)."""
    acc = r.get("acceptance") or {}
    if isinstance(acc.get("gain"), (int, float)):
        return float(acc["gain"])  # the keep rule's paired gain, against a fresh measurement where there is one
    d = r.get("delta_vs_best")
    if not isinstance(d, (int, float)):
        return None
    return -d if direction == "minimize" else d


def _pct(r: Record) -> str:
    p = r.get("delta_pct")
    return f"{p:+.2f}%" if isinstance(p, (int, float)) else "n/a"


def make_agent(cfg: Mapping[str, Any], *, seed: int) -> OfflineAgent:
    return OfflineAgent(cfg, seed=seed)
