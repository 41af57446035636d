"""Who proposes the next trial and from which parent, with the numbers behind each choice.

Specialists (``schedule``):

- ``round_robin``  trial N goes to specialist (N - 1) mod k;
- ``random``       a seeded draw;
- ``bandit``       UCB1 over each specialist's measured *yield*: every finished trial of a specialist scores
                   ``reward / relative_cost``, where the reward is how far its paired gain got toward the keep
                   bar (0 for a failure or a loss, 0.5 at the bar, up to 1 at twice the bar) and the relative
                   cost is its wall seconds over the median trial's (clipped to 0.25..4). Illegal trials score
                   0, so the legality rate is part of the yield.
                   Each arm's *prior* counts as one pseudo-turn of that yield: the largest gain its task's
                   catalog expects from a technique that still applies to the best and was not measured
                   (``catalog_priors``), or what the agent predicts from its best next move for that
                   specialist when the agent can say (``prior`` on the agent: the offline agent's measured
                   slopes, catalog and sizes-on-a-cost rule), scored on the same reward scale against the
                   keep bar. So the most promising changes are measured first, a specialist with nothing
                   expected to clear the bar waits while one whose line pays off plays again, and the prior
                   fades as measured turns outweigh it (a catalog whose expectations the machine does not bear
                   out stops steering). Index: ``(prior_reward + sum(yields)) / (1 + n) + explore *
                   sqrt(2 ln(1 + N) / (1 + n))``; ties go to the arm with fewer turns, then the task's order.
                   ``search.bandit_min_turns`` > 0 first deals every specialist that many turns (largest prior
                   first; a specialist whose last trial was kept plays again, win-stay). With workers, a trial
                   still being measured counts as its specialist's turn in ``n``, ``N`` and the dealt turns,
                   without a yield yet: an arm is not dealt a second turn only because its first has not ended.

Parents (``search.parent``):

- ``best``         always the current best (greedy hill-climbing);
- ``tournament``   a seeded draw among the top ``search.parent_k`` legal trials, weighted by rank, so the search
                   can leave a plateau: a near-miss branch gets built on;
- ``own_line``     the best trial of the proposing specialist's own line when it has a legal one, else the best.

Every choice is recorded (``turn`` and ``parent_rule`` in the record) with the numbers used.
"""
from __future__ import annotations

import math
import random
import statistics
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, NamedTuple, Sequence

from .edits import EditError, apply_edits, content_hash
from .lineage import LEGAL, Record, ranked

SCHEDULES = ("round_robin", "random", "bandit")
PARENT_RULES = ("best", "tournament", "own_line")


@dataclass
class Turn:
    """Which specialist proposes, why, and (for the bandit) each arm's numbers."""

    index: int
    rule: str
    why: str
    arms: dict[str, dict[str, Any]] = field(default_factory=dict)
    focus: str | None = None  # the catalog technique whose prior won the turn, handed to the agent

    def to_json(self) -> dict[str, Any]:
        return {"rule": self.rule, "why": self.why, **({"focus": self.focus} if self.focus else {}),
                **({"arms": self.arms} if self.arms else {})}


class Prior(NamedTuple):
    """A specialist's prior for the bandit: a predicted gain (fraction of the best score), the catalog technique
    it comes from (handed to the agent as the turn's focus), and where it comes from when that is not the
    catalog (an agent's prediction, ``Agent.prior``)."""

    gain: float
    technique: str | None = None
    note: str = ""


def reward(rec: Record) -> float:
    """How far a finished trial got toward the keep bar, in [0, 1]: 0 for any failure or a loss."""
    if rec.get("label") not in ("keep", "discard"):
        return 0.0
    acc = rec.get("acceptance") or {}
    gain, bar = acc.get("gain"), acc.get("threshold")
    if not isinstance(gain, (int, float)) or gain <= 0:
        return 1.0 if rec.get("label") == "keep" else 0.0
    if not isinstance(bar, (int, float)) or bar <= 0:
        return 1.0 if rec.get("label") == "keep" else 0.5  # no bar (deterministic score): any gain is signal
    return min(gain / bar, 2.0) / 2.0


def cost(rec: Record) -> float:
    return sum(float(rec.get(k) or 0.0) for k in ("train_s", "eval_s", "prepare_s"))


def _agent_side(rec: Record) -> bool:
    """Trials that say nothing about the specialist's ideas: the API failed, or the harness did."""
    return rec.get("label") == "harness_error" or bool(rec.get("agent_error"))


def catalog_priors(specs: Sequence[Any], files: Mapping[str, str], direction: str, best_score: float,
                   tried: set[str]) -> dict[str, Prior]:
    """Each specialist's prior for the bandit's first turns: the largest gain, as a fraction of the best score,
    that its catalog expects from a technique whose edits still apply to ``files`` and give code not yet
    tried; 0 when none does (no catalog, no expectation, or everything applicable measured)."""
    sign = -1.0 if direction == "minimize" else 1.0
    out: dict[str, Prior] = {}
    for spec in specs:
        gains = [Prior(0.0)]
        for t in getattr(spec, "catalog", ()):
            if not isinstance(t.expected_delta, (int, float)) or not best_score:
                continue
            try:
                after = apply_edits(files, t.edits)
            except EditError:
                continue  # written for another scale or already applied: says nothing about this recipe
            if after != dict(files) and content_hash(after) not in tried:
                gains.append(Prior(sign * float(t.expected_delta) / abs(float(best_score)), t.name))
        out[spec.name] = max(gains, key=lambda p: p.gain)
    return out


def prior_reward(gain: float, bar: float | None) -> float:
    """A predicted gain (fraction of the best score) on ``reward``'s scale: 0.5 at the keep bar ``bar`` (also a
    fraction), 1 at twice it; with no bar (a deterministic score) any predicted gain is worth 0.5."""
    if gain <= 0:
        return 0.0
    if bar is None or bar <= 0:
        return 0.5
    return min(gain / bar, 2.0) / 2.0


def choose_specialist(rule: str, names: Sequence[str], records: Sequence[Record], trial: int, seed: int,
                      explore: float = 1.0, min_turns: int = 0,
                      priors: Mapping[str, Prior] | Callable[[], Mapping[str, Prior]] | None = None,
                      bar: float | None = None, in_flight: Sequence[str] = ()) -> Turn:
    """The specialist for ``trial`` under ``rule`` (see the module docstring). ``priors`` may be a callable,
    called only when the bandit decides; ``bar`` is the keep bar now, as a fraction of the best score;
    ``in_flight`` the specialists of the trials being measured now (one entry per trial)."""
    k = len(names)
    if rule == "random":
        i = random.Random(f"{seed}:{trial}").randrange(k)
        return Turn(i, rule, f"seeded draw ({seed}:{trial})")
    if rule != "bandit" or k == 1:
        i = (trial - 1) % k
        return Turn(i, "round_robin", f"trial {trial} -> specialist {i + 1} of {k}")
    done = [r for r in records if r.get("trial", 0) > 0 and r.get("specialist") in names and not _agent_side(r)]
    costs = [c for c in (cost(r) for r in done) if c > 0]
    median_cost = statistics.median(costs) if costs else 1.0
    arms: dict[str, dict[str, Any]] = {}
    pending = Counter(in_flight)
    for name in names:
        mine = [r for r in done if r.get("specialist") == name]
        ys = [reward(r) / min(max(cost(r) / median_cost, 0.25), 4.0) if cost(r) > 0 else reward(r) for r in mine]
        arms[name] = {"turns": len(mine), "keeps": sum(r.get("label") == "keep" for r in mine),
                      "legal": round(sum(r.get("label") in LEGAL for r in mine) / len(mine), 3) if mine else None,
                      "yield": round(sum(ys) / len(ys), 4) if ys else None}
        if pending[name]:
            arms[name]["in_flight"] = pending[name]
    dealt = {n: a["turns"] + a.get("in_flight", 0) for n, a in arms.items()}   # turns, ended or not
    fresh = [i for i, n in enumerate(names) if dealt[n] < min_turns]
    if fresh:
        last = max(done, key=lambda r: r["trial"], default=None)
        if last is not None and last.get("label") == "keep":
            i = list(names).index(last["specialist"])
            return Turn(i, rule, f"win-stay: {names[i]}'s last trial ({last['trial']}) was kept; "
                                 f"{len(fresh)} specialist(s) still to have their first {min_turns} turn(s)", arms)
    priors = dict((priors() if callable(priors) else priors) or {})
    gain = {n: priors[n].gain if n in priors else 0.0 for n in names}
    for n in names:
        if n in priors:
            arms[n]["prior"] = round(gain[n], 5)
    if fresh:
        # Fewest turns first; among those the largest prior, then the order the task lists them in.
        i = min(fresh, key=lambda j: (dealt[names[j]], -gain[names[j]], j))
        why = f"{names[i]} has had {dealt[names[i]]} of its first {min_turns} turn(s)"
    else:
        total = sum(dealt.values())
        for n, a in arms.items():
            r0 = prior_reward(gain[n], bar)
            a["prior_reward"] = round(r0, 4)
            a["bonus"] = round(explore * math.sqrt(2.0 * math.log(1 + total) / (1 + dealt[n])), 4)
            a["index"] = round((r0 + a["turns"] * (a["yield"] or 0.0)) / (1 + a["turns"]) + a["bonus"], 4)
        i = min(range(k), key=lambda j: (-arms[names[j]]["index"], dealt[names[j]], j))
        a = arms[names[i]]
        why = (f"highest UCB index {a['index']:.3f} = mean of prior {a['prior_reward']:.3f} and {a['turns']} "
               f"turn(s) of yield {a['yield'] if a['yield'] is not None else 0:.3f}, plus exploration "
               f"{a['bonus']:.3f} ({a['keeps']} keep(s)"
               + (f", {100 * a['legal']:.0f}% legal" if a["legal"] is not None else "")
               + (f", {a['in_flight']} being measured)" if a.get("in_flight") else ")"))
    focus = priors[names[i]].technique if gain[names[i]] > 0 else None
    if focus:
        why += f"; its catalog expects up to {100 * gain[names[i]]:.2g}% from '{focus}'"
        if fresh:
            why += " (the largest prior among them)"
    elif gain[names[i]] > 0 and priors[names[i]].note:
        why += f"; prior: {priors[names[i]].note}"
    return Turn(i, rule, why, arms, focus=focus)


def choose_parent(rule: str, records: Sequence[Record], direction: str, best: Record, specialist: str,
                  trial: int, seed: int, k: int = 3) -> tuple[Record, str]:
    """The parent for ``specialist``'s ``trial`` under ``rule``, and why."""
    if rule == "tournament":
        top = ranked(list(records), direction, labels=LEGAL)[:max(k, 1)]
        top = [r for r in top if r.get("commit")] or [best]
        # Rank weights 1, 1/2, 1/3...: the best stays the likeliest parent.
        weights = [1.0 / (i + 1) for i in range(len(top))]
        pick = random.Random(f"{seed}:{trial}:parent").choices(top, weights=weights)[0]
        pos = top.index(pick) + 1
        return pick, (f"tournament: rank {pos} of the top {len(top)} legal trials "
                      f"({', '.join(str(r['trial']) for r in top)})")
    if rule == "own_line":
        mine = [r for r in records if r.get("specialist") == specialist and r.get("commit")]
        own = ranked(mine, direction, labels=LEGAL)
        if own and own[0]["trial"] != best["trial"]:
            return own[0], f"own line: {specialist}'s best legal trial"
        return best, f"own line: {specialist} has no legal trial of its own apart from the best"
    return best, "the current best"



def merge_specialists(specs: Sequence[Any]) -> Any:
    """One agent that owns every specialist's surface (the single-agent pattern, for comparison)."""
    from .task import Specialist, Surface

    files = tuple(dict.fromkeys(f for s in specs for f in s.surface.files))
    regions = tuple(dict.fromkeys(r for s in specs for r in s.surface.regions))
    brief = "You own the whole recipe's editable surface. " + " ".join(s.brief for s in specs)
    catalog = tuple(t for s in specs for t in s.catalog)
    return Specialist("generalist", Surface(files=files, regions=regions), brief, catalog=catalog)
