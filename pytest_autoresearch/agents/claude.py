"""Claude specialist agents: one Messages API session per proposal, editing the recipe through tools.

Each session's system prompt holds the task brief, the specialist's brief and surface, the budget and
legality rules and the objective (one cached block, identical across a specialist's sessions), followed by
the rendered lineage view. The model inspects and edits an in-memory copy of the parent trial's files with
``view`` / ``str_replace`` / ``insert`` / ``create`` and ends with ``submit_trial``.

The API key is read from ``ANTHROPIC_API_KEY`` by the SDK itself; this module never passes it anywhere,
stores or formats it, and scrubs it from every message it raises or returns, as a precaution against
servers that echo it back.
"""
from __future__ import annotations

import copy
import os
import re
import threading
import urllib.parse
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

from ..lineage import LEGAL, LineageView, Record, make_view
from .base import AgentFatal, AgentStop, NoProposal, Proposal, ProposalRequest
from .tools import Submission, ToolError, Workspace, numbered, tool_specs

CONFIG_FILE = Path(__file__).resolve().parent.parent / "conf" / "agent" / "claude.yaml"
PRICE_KEYS = ("input", "output", "cache_write", "cache_read")
USAGE_KEYS = ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
_KEY_PATTERN = re.compile(r"sk-ant-[A-Za-z0-9_\-]{8,}")


def redact(text: str) -> str:
    """``text`` with any API credential from the environment (or anything shaped like one) masked."""
    from .. import masking

    for var in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN"):
        secret = os.environ.get(var) or _CREDENTIALS.get(var)
        if secret and len(secret) >= 6:
            text = text.replace(secret, "[redacted]")
    return masking.mask(_KEY_PATTERN.sub("[redacted]", text))


_CREDENTIALS: dict[str, str] = {}


def take_credentials() -> dict[str, str]:
    """Move the Anthropic credentials out of ``os.environ`` (into this module, for the SDK clients this process
    builds), so no later child of the harness, git or task code, can inherit them; they stay masked."""
    from .. import masking

    for var in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN"):
        value = os.environ.pop(var, None)
        if value:
            _CREDENTIALS[var] = value
            masking.register(value)
    return dict(_CREDENTIALS)


def _plain(cfg: Any) -> Any:
    """A plain ``dict`` from an OmegaConf node, so callers may pass either."""
    if isinstance(cfg, Mapping) and not isinstance(cfg, dict):
        try:
            from omegaconf import OmegaConf

            return OmegaConf.to_container(cfg, resolve=True)
        except Exception:
            return dict(cfg)
    return cfg


@lru_cache(maxsize=1)
def _packaged_defaults() -> dict[str, Any]:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(CONFIG_FILE), resolve=True)  # type: ignore[return-value]


def defaults() -> dict[str, Any]:
    """The packaged ``conf/agent/claude.yaml`` as a plain dict (the values a partial config falls back to)."""
    return copy.deepcopy(_packaged_defaults())


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    # Given keys replace the defaults whole (a given ``models`` or ``prices`` table is the whole table),
    # except the ``view`` sizes, which merge one by one.
    out = copy.deepcopy(base)
    for k, v in over.items():
        if k == "view" and isinstance(v, Mapping):
            out[k] = {**out.get(k, {}), **v}
        else:
            out[k] = copy.deepcopy(dict(v) if isinstance(v, Mapping) else v)
    return out


def _config_error(key: str, problem: str) -> ValueError:
    return ValueError(f"agent config (conf/agent/claude.yaml) key '{key}': {problem}; fix the file or override "
                      f"it, e.g. --autoresearch-override agent.{key}=...")


def validate_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults filled in and every value checked, with the offending key named."""
    c = _merge(defaults(), _plain(cfg) or {})
    for key in ("max_tokens", "max_turns", "max_file_chars"):
        if not isinstance(c[key], int) or isinstance(c[key], bool) or c[key] < 1:
            raise _config_error(key, f"must be a positive integer, got {c[key]!r}")
    for key in ("max_retries", "max_consecutive_api_errors"):
        if not isinstance(c[key], int) or isinstance(c[key], bool) or c[key] < 0:
            raise _config_error(key, f"must be an integer >= 0, got {c[key]!r}")
    for key in ("top_k", "recent", "failures", "max_diff_lines", "recent_diff_lines", "notes_chars"):
        v = c["view"].get(key)
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise _config_error(f"view.{key}", f"must be an integer >= 0, got {v!r}")
    if not isinstance(c["model"], str) or not c["model"]:
        raise _config_error("model", f"must name a model, got {c['model']!r}")
    if not isinstance(c["models"], dict) or not all(isinstance(v, str) and v for v in c["models"].values()):
        raise _config_error("models", "must map specialist names to model names")
    for key in ("temperature", "max_cost_usd", "max_tokens_total", "timeout"):
        v = c[key]
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0):
            raise _config_error(key, f"must be a number >= 0 or null, got {v!r}")
    if c["base_url"] is not None and not isinstance(c["base_url"], str):
        raise _config_error("base_url", f"must be a URL string or null, got {c['base_url']!r}")
    if not isinstance(c["request_extra"], dict):
        raise _config_error("request_extra", "must be a mapping of extra Messages API fields")
    if not isinstance(c["prices"], dict):
        raise _config_error("prices", "must map model names to {input, output, cache_write, cache_read}")
    for model, p in c["prices"].items():
        if not isinstance(p, dict) or any(not isinstance(p.get(k), (int, float)) or isinstance(p.get(k), bool)
                                          for k in PRICE_KEYS):
            raise _config_error(f"prices.{model}", f"must give {', '.join(PRICE_KEYS)} in USD per million "
                                                   f"tokens, got {p!r}")
    return c


def price_for(prices: Mapping[str, Mapping[str, float]], model: str) -> Mapping[str, float] | None:
    """The model's price: exact name, else the longest configured prefix (dated snapshots), else ``default``."""
    if model in prices:
        return prices[model]
    prefixes = [m for m in prices if m != "default" and model.startswith(m)]
    if prefixes:
        return prices[max(prefixes, key=len)]
    return prices.get("default")


def cost_usd(usage: Mapping[str, int], price: Mapping[str, float] | None) -> float:
    if not price:
        return 0.0
    return (usage.get("input_tokens", 0) * price["input"] + usage.get("output_tokens", 0) * price["output"]
            + usage.get("cache_creation_input_tokens", 0) * price["cache_write"]
            + usage.get("cache_read_input_tokens", 0) * price["cache_read"]) / 1e6


def _shorten(text: str, n: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[:max(n - 3, 0)] + "..."


def _score(r: Record) -> str:
    s = r.get("score")
    return "-" if not isinstance(s, (int, float)) else f"{s:.6g}"


def _changed_lines(diff: str, n: int) -> list[str]:
    lines = [ln for ln in (diff or "").splitlines() if ln[:1] in "+-" and not ln.startswith(("+++", "---"))]
    return lines[:n] + ([f"... ({len(lines) - n} more changed lines)"] if len(lines) > n else [])


def render_view(view: LineageView, sizes: Mapping[str, int]) -> str:
    """The lineage as the model reads it, sized by the agent config (rebuilt from the records when given)."""
    if view.records:
        fresh = make_view(view.task, view.metric, view.direction, view.records, top=sizes["top_k"],
                          n_recent=sizes["recent"], n_failures=sizes["failures"])
        fresh.rule = fresh.rule or view.rule
        view = fresh
    notes_n = sizes["notes_chars"]

    def line(r: Record, *, notes: bool = False, expected: bool = False) -> str:
        s = (f"trial {r.get('trial')} [{r.get('specialist') or '-'}] {r.get('label')} score={_score(r)} "
             f"parent={r.get('parent')}")
        if isinstance(r.get("delta_vs_best"), (int, float)):
            s += f" delta_vs_best={r['delta_vs_best']:+.4g}"
        if expected and isinstance(r.get("expected_delta"), (int, float)):
            s += f" (expected {r['expected_delta']:+.4g})"
        s += f": {_shorten(r.get('hypothesis') or '', 240)}"
        if notes and r.get("notes"):
            s += f"\n      notes: {_shorten(r['notes'], notes_n)}"
        return s

    out = [f"# Lineage of task {view.task} ({view.n_trials} trials recorded; objective: {view.direction} "
           f"{view.metric})"]
    if view.rule:
        out.append(f"Keep rule, with its current numbers: {view.rule}.")
    if view.best:
        out.append("## Current best\n" + line(view.best))
        diff = (view.best.get("diff") or "").splitlines()
        if diff and sizes["max_diff_lines"]:
            shown = diff[:sizes["max_diff_lines"]]
            more = len(diff) - len(shown)
            out.append("Its diff versus its parent:\n```diff\n" + "\n".join(shown)
                       + (f"\n... ({more} more lines)" if more > 0 else "") + "\n```")
    else:
        out.append("No scored trial yet.")
    sections = (("Top trials (kept, best first)", view.top_k, {}),
                ("Ancestors of the best (nearest first)", view.ancestors_of_best, {}),
                ("Recent trials of all specialists (oldest first)", view.recent, {"expected": True}),
                ("Recent failures and their notes", view.failures, {"notes": True}))
    for title, recs, kw in sections:
        if not recs:
            continue
        out.append(f"## {title}")
        for r in recs:
            out.append("- " + line(r, **kw))
            if title.startswith("Recent trials") and sizes["recent_diff_lines"]:
                out += ["      " + ln for ln in _changed_lines(r.get("diff") or "", sizes["recent_diff_lines"])]
    return "\n".join(out)


def _describe_checks(checks: tuple[Any, ...]) -> list[str]:
    out = []
    for c in checks:
        name = getattr(c, "name", None) or type(c).__name__
        label = getattr(c, "label", "gate_miss")
        out.append(f"- {name} (a trial failing it is labelled {label})")
    return out


def static_prompt(request: ProposalRequest) -> str:
    """Task, specialist and rules: the same for every session of this specialist, so it is cached."""
    task, spec = request.task, request.specialist
    b, obj = task.budget, task.objective
    rules = [
        f"- The recipe's train(ctx) runs once per seed for seeds {list(b.seeds)}, each seed in a sandboxed process "
        f"of its own (nothing carries over between seeds or trials; no network); the seeds together get "
        f"{b.train_seconds:g} s of wall-clock time (exceeding it: budget_overrun). Each seed's timer starts once "
        f"the interpreter is up" + (f" and has imported {', '.join(b.preload)}" if b.preload else "") + ".",
        "- predict(ctx), if defined, runs per seed too, sees only that seed's outputs and the unlabeled test "
        "inputs, and is timed; " + (f"the predictions get {b.predict_seconds:g} s, the evaluation "
                                     f"{b.eval_seconds:g} s." if b.predict_seconds is not None else
                                     f"prediction and evaluation together get {b.eval_seconds:g} s."),
    ]
    if b.prepare_seconds:
        rules.append(f"- An optional prepare(ctx) runs untimed (up to {b.prepare_seconds:g} s) and gets no data: "
                     "use it only for warm-up such as compilation on random tensors.")
    if b.artifact_bytes:
        rules.append(f"- The saved artifact may be at most {b.artifact_bytes:,} bytes (over it: size_blocked).")
    if b.threads:
        rules.append(f"- The recipe runs with {b.threads} CPU threads.")
    checks = _describe_checks(tuple(task.legality))
    keep_rule = (f"its mean per-seed gain over the best, on the same seeds, beats the keep bar: max(min_delta "
                 f"{obj.min_delta:g}, {obj.noise_sigmas:g} standard errors of run-to-run noise measured from re-runs "
                 f"of the same code){' on a relative (log ratio) scale' if obj.scale == 'relative' else ''}; the "
                 f"lineage view states the bar with its current numbers")
    forbidden = ", ".join(repr(p) for p in task.evaluator.forbidden)
    parts = [
        f"You are the '{spec.name}' specialist of an automated research loop that improves a training recipe. "
        "Several specialists, each owning one part of the recipe, take turns; every session you propose ONE "
        "trial: a focused change, made with the editing tools and then submitted with submit_trial. The "
        "harness runs the changed recipe under a fixed wall-clock budget, scores it with an evaluator you "
        "can neither see nor change, labels the trial and records it in the lineage that all specialists "
        "read. Nobody answers questions: decide, edit and submit.",
        f"# Task: {task.name} (variant {task.variant})\n{(task.brief or '(no brief given)').strip()}",
        f"# Objective\n{obj.direction} {obj.metric} (measured by the evaluator and the harness, never by "
        f"anything the recipe prints). A trial is kept only when it is legal and {keep_rule}.",
        f"# Your role: {spec.name}\n{(spec.brief or '').strip()}\n\nYou may change only: "
        f"{spec.surface.describe()}.\nA marked region is the text between the lines "
        "'# autoresearch: begin NAME' and '# autoresearch: end NAME'; the marker lines themselves and "
        "everything outside your regions must stay byte-identical. Other files, other specialists' regions, "
        "the evaluator, the timer and the data are off limits: an edit outside your surface is refused."
        + (f"\nText matching these evaluator-owned patterns may never be added to the recipe: {forbidden}."
           if forbidden else ""),
        "# Budget and legality\n" + "\n".join(rules)
        + ("\nEvery trial must also pass these checks on the evaluator's metrics:\n" + "\n".join(checks)
           if checks else ""),
        "# Labels a trial can get\nbaseline (the starting recipe), keep (new best), discard (legal, not "
        "better), preflight_crash (edit does not apply or compile, or no submission), surface_violation, "
        "crash (the recipe raised; the last error is in its notes), budget_overrun, size_blocked, gate_miss "
        "(a legality check failed), evaluator_error.",
        "# How to work\n1. Read the lineage: build on what was kept, and do not repeat what failed, whoever "
        "tried it.\n2. Look at the files you were given (view shows any file or range with line numbers).\n"
        "3. Make one coherent change with str_replace, insert or create, staying inside your surface and "
        "keeping the code runnable within the budget.\n4. Call submit_trial once with a one- or two-sentence "
        f"hypothesis and expected_delta: your predicted change of {obj.metric} versus the parent (negative "
        "means lower). That ends the session.",
    ]
    return "\n\n".join(parts)


def files_message(request: ProposalRequest, ws: Workspace, max_chars: int) -> str:
    """The first user turn: the parent's files the specialist may edit (numbered), the others listed."""
    spec = request.specialist
    out = [f"Propose trial {request.trial}. Your edits apply to the files of trial {request.parent}.",
           "## Recipe files", ws.listing()]
    budget = max_chars
    for path in sorted(request.files):
        if not spec.surface.touches(path):
            continue
        body = numbered(request.files[path])
        if len(body) > budget:
            out.append(f"(Not shown: {path}, {len(body):,} characters; use view with view_range.)")
            continue
        budget -= len(body)
        out.append(f'<file path="{path}">\n{body}</file>')
    out.append("Make your change and call submit_trial.")
    return "\n\n".join(out)


def _block_param(block: Any) -> dict[str, Any]:
    """An assistant content block as it must be sent back on the next turn."""
    if block.type == "text":
        return {"type": "text", "text": block.text}
    if block.type == "tool_use":
        return {"type": "tool_use", "id": block.id, "name": block.name, "input": block.input}
    # thinking / redacted_thinking and anything newer go back verbatim
    return block.model_dump(mode="json", exclude_none=True)


def _with_cache_breakpoint(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A copy whose last block carries ``cache_control``, so each turn reads the previous turns from cache."""
    out = list(messages)
    if out[-1]["role"] != "user":  # resuming a paused assistant turn: its blocks may not carry cache_control
        return out
    last = dict(out[-1])
    content = last["content"]
    if isinstance(content, str):
        content = [{"type": "text", "text": content}]
    content = list(content)
    content[-1] = {**content[-1], "cache_control": {"type": "ephemeral"}}
    last["content"] = content
    out[-1] = last
    return out


@dataclass
class _Totals:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    cost_usd: float = 0.0

    def add(self, usage: Mapping[str, int], cost: float) -> None:
        for k in USAGE_KEYS:
            setattr(self, k, getattr(self, k) + int(usage.get(k) or 0))
        self.cost_usd += cost

    @property
    def tokens(self) -> int:
        return sum(getattr(self, k) for k in USAGE_KEYS)

    def as_usage(self) -> dict[str, Any]:
        d: dict[str, Any] = {k: getattr(self, k) for k in USAGE_KEYS}
        d["cost_usd"] = round(self.cost_usd, 6)
        return d


class ClaudeAgent:
    """The ``claude`` agent: one Claude session per proposal, with session-wide cost and token caps."""

    name = "claude"
    requires_sandbox = True  # its edits are arbitrary code: see sandbox.mode

    def __init__(self, cfg: Mapping[str, Any], *, seed: int = 0, client: Any = None) -> None:
        self.cfg = validate_config(cfg)
        self.seed = seed
        self.totals = _Totals()
        self.proposals = 0
        self._client = client
        self._lock = threading.Lock()
        self._api_errors = 0
        self._stopped: str | None = None
        self._tools: dict[tuple[str, str], list[dict[str, Any]]] = {}

    # -- interface ---------------------------------------------------------------------------------------
    def describe(self) -> str:
        c = self.cfg
        s = f"claude (model {c['model']}"
        if c["models"]:
            s += "; " + ", ".join(f"{k}: {v}" for k, v in sorted(c["models"].items()))
        caps = []
        if c["max_cost_usd"] is not None:
            caps.append(f"max ${c['max_cost_usd']:g}")
        if c["max_tokens_total"] is not None:
            caps.append(f"max {int(c['max_tokens_total']):,} tokens")
        if caps:
            s += "; " + ", ".join(caps)
        url = c["base_url"] or os.environ.get("ANTHROPIC_BASE_URL")
        if url:
            parts = urllib.parse.urlsplit(url)
            s += f"; via {parts.scheme}://{parts.hostname or ''}" + (f":{parts.port}" if parts.port else "")
        return redact(s + ")")

    def model_for(self, specialist: Any) -> str:
        return (self.cfg["models"].get(specialist.name) or getattr(specialist, "model", None)
                or self.cfg["model"])

    def usage(self) -> dict[str, Any]:
        """Session-wide totals so far (all proposals of this agent)."""
        return self.totals.as_usage()

    def propose(self, request: ProposalRequest) -> Proposal:
        self._check_caps()
        model = self.model_for(request.specialist)
        session = _Session(self, request, model)
        try:
            proposal = session.run()
        finally:
            with self._lock:
                self.totals.add(session.totals.as_usage(), session.totals.cost_usd)
                self.proposals += 1
        return proposal

    # -- internals ---------------------------------------------------------------------------------------
    def _check_caps(self) -> None:
        c, t = self.cfg, self.totals
        if self._stopped:
            raise AgentStop(self._stopped)
        if c["max_cost_usd"] is not None and t.cost_usd >= c["max_cost_usd"]:
            self._stopped = (f"claude agent cost cap reached: ${t.cost_usd:.4f} spent of max_cost_usd="
                             f"${c['max_cost_usd']:g} over {self.proposals} proposals; raise agent.max_cost_usd "
                             f"to continue")
        elif c["max_tokens_total"] is not None and t.tokens >= c["max_tokens_total"]:
            self._stopped = (f"claude agent token cap reached: {t.tokens:,} tokens used of max_tokens_total="
                             f"{int(c['max_tokens_total']):,} over {self.proposals} proposals; raise "
                             f"agent.max_tokens_total to continue")
        if self._stopped:
            raise AgentStop(self._stopped)

    def client(self) -> Any:
        if self._client is None:
            import anthropic

            c = self.cfg
            try:
                creds = take_credentials()
                self._client = anthropic.Anthropic(api_key=creds.get("ANTHROPIC_API_KEY"),
                                                   auth_token=creds.get("ANTHROPIC_AUTH_TOKEN"),
                                                   base_url=c["base_url"] or None, max_retries=c["max_retries"],
                                                   timeout=c["timeout"] if c["timeout"] else None)
            except Exception as e:  # e.g. no key and an unreadable credentials profile
                raise AgentFatal(redact(f"cannot create the Anthropic client: {e} Set the ANTHROPIC_API_KEY "
                                        f"environment variable, or run with --autoresearch-agent offline")) from None
        return self._client

    def tools(self, request: ProposalRequest) -> list[dict[str, Any]]:
        # The same list object for every session of a task, so the cached prompt prefix stays identical.
        obj = request.task.objective
        key = (obj.metric, obj.direction)
        if key not in self._tools:
            self._tools[key] = tool_specs(obj.metric, obj.direction)
        return self._tools[key]

    def _api_failed(self, transient: bool, reason: str, session: "_Session") -> NoProposal:
        """A call failed after the SDK's retries: this proposal ends; persistent errors stop the run."""
        if not transient:
            self._api_errors += 1
            limit = self.cfg["max_consecutive_api_errors"]
            if limit and self._api_errors >= limit:
                raise AgentFatal(redact(f"the Anthropic API rejected {self._api_errors} proposals in a row; "
                                        f"last error: {reason}. Check agent.model, agent.request_extra and "
                                        f"agent.base_url"))
        return NoProposal(redact(reason), session.totals.as_usage(), session.model, agent_side=True)

    def _api_ok(self) -> None:
        self._api_errors = 0


class _Session:
    """One proposal: a tool-use conversation that ends with ``submit_trial``."""

    def __init__(self, agent: ClaudeAgent, request: ProposalRequest, model: str) -> None:
        self.agent, self.request, self.model = agent, request, model
        self.cfg = agent.cfg
        self.totals = _Totals()
        self.price = price_for(self.cfg["prices"], model)
        if self.price is None and self.cfg["max_cost_usd"] is not None:
            raise AgentFatal(f"no price for model {model} in agent.prices (and no 'default' entry), so "
                             f"max_cost_usd cannot be enforced; add agent.prices.{model} with "
                             f"{', '.join(PRICE_KEYS)} in USD per million tokens")
        known = {r["trial"] for r in request.view.records if r.get("label") in LEGAL} if request.view.records \
            else None
        self.ws = Workspace(request.files, request.specialist, forbidden=tuple(request.task.evaluator.forbidden),
                            parent=request.parent, known_parents=known, max_view_chars=self.cfg["max_file_chars"])
        self.turns = 0

    def _fail(self, reason: str) -> NoProposal:
        return NoProposal(redact(reason), self.totals.as_usage(), self.model)

    def run(self) -> Proposal:
        req, cfg = self.request, self.cfg
        system = [
            {"type": "text", "text": static_prompt(req), "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": render_view(req.view, cfg["view"])},
        ]
        messages: list[dict[str, Any]] = [
            {"role": "user", "content": files_message(req, self.ws, cfg["max_file_chars"])}]
        reminded = False
        while self.turns < cfg["max_turns"]:
            self.turns += 1
            msg = self._call(system, messages)
            content = [_block_param(b) for b in msg.content]
            messages.append({"role": "assistant", "content": content or [{"type": "text", "text": "(empty)"}]})
            uses = [b for b in msg.content if b.type == "tool_use"]
            if not uses:
                if msg.stop_reason == "refusal":
                    raise self._fail(f"the model declined to propose (stop_reason=refusal) after {self.turns} "
                                     f"turns")
                if msg.stop_reason == "pause_turn":
                    continue
                if reminded:
                    raise self._fail(f"the model ended its turn without calling submit_trial (after a reminder; "
                                     f"{self.turns} turns, {self.ws.calls} tool calls)")
                reminded = True
                cut = msg.stop_reason == "max_tokens"
                messages.append({"role": "user", "content": (
                    "Your reply was cut off at max_tokens. Be brief: " if cut else
                    "No trial is recorded until you call submit_trial. ")
                    + "Make your change with the editing tools and call submit_trial now."})
                continue
            results, submission = self._run_tools(uses)
            if submission is not None:
                return self._proposal(submission)
            messages.append({"role": "user", "content": results})
        last = f"; last tool error: {self.ws.last_error}" if self.ws.last_error else ""
        raise self._fail(f"no valid submit_trial within max_turns={cfg['max_turns']} turns "
                         f"({self.ws.calls} tool calls, {self.ws.refused} refused edits){last}")

    def _run_tools(self, uses: list[Any]) -> tuple[list[dict[str, Any]], Submission | None]:
        results: list[dict[str, Any]] = []
        for use in uses:
            try:
                out = self.ws.run(use.name, use.input)
            except ToolError as e:  # refused edits included: the model reads why and tries again
                results.append({"type": "tool_result", "tool_use_id": use.id, "content": str(e), "is_error": True})
                continue
            if isinstance(out, Submission):
                return results, out
            results.append({"type": "tool_result", "tool_use_id": use.id, "content": out})
        return results, None

    def _proposal(self, sub: Submission) -> Proposal:
        ws = self.ws
        notes = f"claude {self.model}: {self.turns} turns, {ws.calls} tool calls"
        if ws.refused:
            notes += f", {ws.refused} edits refused as outside the surface"
        return Proposal(hypothesis=redact(sub.hypothesis), expected_delta=sub.expected_delta, edits=sub.edits,
                        parent=sub.parent, kind="claude", refused_edits=ws.refused,
                        usage=self.totals.as_usage(), model=self.model, notes=notes)

    def _call(self, system: list[dict[str, Any]], messages: list[dict[str, Any]]) -> Any:
        import anthropic

        cfg, agent = self.cfg, self.agent
        kwargs: dict[str, Any] = {
            "model": self.model, "max_tokens": cfg["max_tokens"], "system": system,
            "tools": agent.tools(self.request), "messages": _with_cache_breakpoint(messages)}
        if cfg["temperature"] is not None:
            kwargs["temperature"] = cfg["temperature"]
        if cfg["request_extra"]:
            kwargs["extra_body"] = copy.deepcopy(cfg["request_extra"])
        client = agent.client()
        where = f"model {self.model}"
        try:
            msg = client.messages.create(**kwargs)
        except (anthropic.AuthenticationError, anthropic.PermissionDeniedError) as e:
            raise AgentFatal(redact(
                f"the Anthropic API refused the credentials (HTTP {e.status_code}: {_api_message(e)}). Set a valid "
                f"key in the ANTHROPIC_API_KEY environment variable (and check ANTHROPIC_BASE_URL / "
                f"agent.base_url), or run with --autoresearch-agent offline")) from None
        except anthropic.NotFoundError as e:
            raise AgentFatal(redact(f"the Anthropic API does not know {where} (HTTP 404: {_api_message(e)}); "
                                    f"set agent.model / agent.models to a model your account can use")) from None
        except anthropic.APIStatusError as e:
            detail = _api_message(e)
            if e.status_code == 429 and "spend_limit" in detail:
                raise AgentStop(redact(f"the Anthropic account's spend limit is reached ({detail})")) from None
            transient = e.status_code in (408, 409, 429) or e.status_code >= 500
            after = f" after {cfg['max_retries']} retries" if transient else ""
            raise agent._api_failed(transient, f"Anthropic API error for {where}{after}: HTTP {e.status_code}: "
                                               f"{detail}", self) from None
        except anthropic.APITimeoutError:
            raise agent._api_failed(True, f"Anthropic API request for {where} timed out after "
                                          f"{cfg['max_retries']} retries (agent.timeout={cfg['timeout']})",
                                    self) from None
        except anthropic.APIConnectionError as e:
            raise agent._api_failed(True, f"cannot reach the Anthropic API for {where} after {cfg['max_retries']} "
                                          f"retries: {type(e).__name__}: {e}", self) from None
        except TypeError as e:
            if "authentication" in str(e).lower():
                raise AgentFatal("no Anthropic credentials: set the ANTHROPIC_API_KEY environment variable, or run "
                                 "with --autoresearch-agent offline") from None
            raise
        agent._api_ok()
        usage = msg.usage
        counts = {k: int(getattr(usage, k, 0) or 0) for k in USAGE_KEYS}
        self.totals.add(counts, cost_usd(counts, self.price))
        return msg


def _api_message(e: Any) -> str:
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and err.get("message"):
            return _shorten(f"{err.get('type', 'error')}: {err['message']}", 300)
    return _shorten(getattr(e, "message", None) or str(e), 300)


def make_agent(cfg: Mapping[str, Any], *, seed: int) -> ClaudeAgent:
    """Factory registered as the ``claude`` agent; ``cfg`` is the composed ``agent`` config node."""
    return ClaudeAgent(cfg, seed=seed)


make_agent.requires_sandbox = True  # type: ignore[attr-defined]  # read before any agent is built
