"""Claude specialist agents: one Messages API session per proposal, editing the recipe through tools.

A session's prompt (see ``prompt.py``) is laid out for prompt caching: the tools and the task's rules (shared
by every specialist), the parent's files (shared until the next keep), the specialist's role, each ending in
a cache breakpoint, then the lineage and the request as the first user turn; a moving breakpoint on the
conversation's last block makes every later call of the session read the earlier ones from cache. The model
inspects and edits an in-memory copy of the parent's files with ``view`` / ``str_replace`` / ``insert`` /
``create``, reads the lineage with ``lineage_query`` / ``lineage_trial``, runs its change with ``smoke_test``
(in the trial sandbox, when the harness lends a workbench) and ends with ``submit_trial``.

Hardening: a reply cut off at ``max_tokens`` is never executed (the model is told); tool inputs are checked
against their schemas (a miss is a tool error the model can fix); a malformed 200, an undecodable body or a
broken stream is retried and then ends the proposal as an agent-side ``preflight_crash``, never a harness
error. With ``fix_up``, a session whose trial crashed (or failed preflight) gets the error and one more try at
the specialist's next turn.

The API key is read from ``ANTHROPIC_API_KEY`` by the SDK itself; this module never passes it anywhere,
stores or formats it, and scrubs it from every message it raises or returns, as a precaution against
servers that echo it back.
"""
from __future__ import annotations

import copy
import os
import re
import threading
import time
import urllib.parse
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

from ..lineage import LEGAL, LineageView
from . import prompt
from .base import AgentFatal, AgentStop, NoProposal, Proposal, ProposalRequest
from .lineage_tools import LineageTools, lineage_specs
from .tools import Submission, ToolError, Workspace, change_kind, tool_specs

CONFIG_FILE = Path(__file__).resolve().parent.parent / "conf" / "agent" / "claude.yaml"
PRICE_KEYS = ("input", "output", "cache_write", "cache_read")
USAGE_KEYS = ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
_KEY_PATTERN = re.compile(r"sk-ant-[A-Za-z0-9_\-]{8,}")
TRANSIENT_ERROR_TYPES = ("overloaded_error", "api_error", "rate_limit_error", "timeout_error")
RETRY_BASE_S = 0.25          # backoff of our own retries (malformed replies, broken streams): 0.25, 0.5, 1, ... 8 s
MAX_CUTS = 3                 # replies cut off at max_tokens in a row before the session gives up
FIX_LABELS = ("crash", "preflight_crash")
MAX_WAITING = 4              # sessions per specialist kept for a fix-up while their trials are still running
LONG_TRIAL_S = 240.0         # cache_ttl=auto: trials whose budget exceeds this keep the shared prefix for 1 hour

# Re-exported for callers that render the view without a session.
render_view = prompt.render_view


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
    # except the ``view`` and ``smoke`` settings, which merge one by one.
    out = copy.deepcopy(base)
    for k, v in over.items():
        if k in ("view", "smoke") and isinstance(v, Mapping):
            out[k] = {**out.get(k, {}), **v}
        else:
            out[k] = copy.deepcopy(dict(v) if isinstance(v, Mapping) else v)
    return out


def _config_error(key: str, problem: str) -> ValueError:
    return ValueError(f"agent config (conf/agent/claude.yaml) key '{key}': {problem}; fix the file or override "
                      f"it, e.g. --autoresearch-override agent.{key}=...")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def validate_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults filled in and every value checked, with the offending key named."""
    c = _merge(defaults(), _plain(cfg) or {})
    for key in ("view", "smoke"):
        if not isinstance(c[key], dict):
            raise _config_error(key, f"must be a mapping of settings, got {c[key]!r}")
    for key in ("max_tokens", "max_turns", "max_file_chars"):
        if not _is_int(c[key]) or c[key] < 1:
            raise _config_error(key, f"must be a positive integer, got {c[key]!r}")
    for key in ("max_retries", "max_consecutive_api_errors"):
        if not _is_int(c[key]) or c[key] < 0:
            raise _config_error(key, f"must be an integer >= 0, got {c[key]!r}")
    for key in ("top_k", "recent", "failures", "max_diff_lines", "recent_diff_lines", "notes_chars",
                "agent_notes_chars"):
        v = c["view"].get(key)
        if not _is_int(v) or v < 0:
            raise _config_error(f"view.{key}", f"must be an integer >= 0, got {v!r}")
    if not isinstance(c["model"], str) or not c["model"]:
        raise _config_error("model", f"must name a model, got {c['model']!r}")
    if not isinstance(c["models"], dict) or not all(isinstance(v, str) and v for v in c["models"].values()):
        raise _config_error("models", "must map specialist names to model names")
    for key in ("temperature", "max_cost_usd", "max_tokens_total"):
        v = c[key]
        if v is not None and (not _is_number(v) or v < 0):
            raise _config_error(key, f"must be a number >= 0 or null, got {v!r}")
    for key in ("timeout", "idle_timeout"):
        if not _is_number(c[key]) or c[key] <= 0:
            raise _config_error(key, f"must be a positive number of seconds, got {c[key]!r}")
    for key in ("stream", "fix_up", "lineage_tools"):
        if not isinstance(c[key], bool):
            raise _config_error(key, f"must be true or false, got {c[key]!r}")
    if c["cache_ttl"] not in ("5m", "1h", "auto"):
        raise _config_error("cache_ttl", f"must be 5m, 1h or auto, got {c['cache_ttl']!r}")
    s = c["smoke"]
    if not isinstance(s.get("enabled"), bool):
        raise _config_error("smoke.enabled", f"must be true or false, got {s.get('enabled')!r}")
    if not _is_number(s.get("seconds")) or s["seconds"] <= 0:
        raise _config_error("smoke.seconds", f"must be a positive number of seconds, got {s.get('seconds')!r}")
    for key in ("steps", "rows", "max_calls"):
        if not _is_int(s.get(key)) or s[key] < 0:
            raise _config_error(f"smoke.{key}", f"must be an integer >= 0, got {s.get(key)!r}")
    if c["base_url"] is not None and not isinstance(c["base_url"], str):
        raise _config_error("base_url", f"must be a URL string or null, got {c['base_url']!r}")
    if not isinstance(c["request_extra"], dict):
        raise _config_error("request_extra", "must be a mapping of extra Messages API fields")
    if not isinstance(c["prices"], dict):
        raise _config_error("prices", "must map model names to {input, output, cache_write, cache_read}")
    for model, p in c["prices"].items():
        if not isinstance(p, dict) or any(not _is_number(p.get(k)) for k in PRICE_KEYS) \
                or ("cache_write_1h" in p and not _is_number(p["cache_write_1h"])):
            raise _config_error(f"prices.{model}", f"must give {', '.join(PRICE_KEYS)} (and optionally "
                                                   f"cache_write_1h) in USD per million tokens, got {p!r}")
    return c


def price_for(prices: Mapping[str, Mapping[str, float]], model: str) -> Mapping[str, float] | None:
    """The model's price: exact name, else the longest configured prefix (dated snapshots), else ``default``."""
    if model in prices:
        return prices[model]
    prefixes = [m for m in prices if m != "default" and model.startswith(m)]
    if prefixes:
        return prices[max(prefixes, key=len)]
    return prices.get("default")


def cost_usd(usage: Mapping[str, int], price: Mapping[str, float] | None, cache_write_1h: int = 0) -> float:
    """USD for one call's ``usage``; ``cache_write_1h`` of the cache-write tokens were written for an hour
    (priced ``cache_write_1h``, by default twice the input price)."""
    if not price:
        return 0.0
    long_writes = min(int(cache_write_1h), int(usage.get("cache_creation_input_tokens", 0)))
    return (usage.get("input_tokens", 0) * price["input"] + usage.get("output_tokens", 0) * price["output"]
            + (usage.get("cache_creation_input_tokens", 0) - long_writes) * price["cache_write"]
            + long_writes * price.get("cache_write_1h", 2 * price["input"])
            + usage.get("cache_read_input_tokens", 0) * price["cache_read"]) / 1e6


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


def malformed(msg: Any) -> str:
    """Why ``msg`` is not a usable Messages API reply ("" when it is)."""
    content = getattr(msg, "content", None)
    if not isinstance(content, list):
        return f"the reply has no content list (got {type(msg).__name__})"
    for i, b in enumerate(content):
        kind = getattr(b, "type", None)
        if not isinstance(kind, str):
            return f"content block {i} has no type"
        if kind == "text" and not isinstance(getattr(b, "text", None), str):
            return f"text block {i} has no text"
        if kind == "tool_use" and not (isinstance(getattr(b, "id", None), str)
                                       and isinstance(getattr(b, "name", None), str)):
            return f"tool_use block {i} has no id or name"
    usage = getattr(msg, "usage", None)
    if usage is None or not isinstance(getattr(usage, "input_tokens", None), int):
        return "the reply has no usage"
    stop = getattr(msg, "stop_reason", None)
    if stop is not None and not isinstance(stop, str):
        return f"stop_reason is not a string: {stop!r}"
    return ""


class _Retry(Exception):
    """A failed call worth trying again: a malformed reply, a stalled or broken stream."""


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
        self._tools: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
        self._rules: dict[tuple[Any, ...], str] = {}
        # specialist -> its sessions whose trials may still need a fix-up (with trials in flight on workers,
        # a trial's record can arrive after the specialist's next turn)
        self._open: dict[str, list[_Session]] = {}

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
        waiting, crashed = [], None
        for old in self._open.pop(request.specialist.name, []):
            state, rec = old.outcome(request.view)
            if state == "crashed" and crashed is None:
                crashed = (old, rec)
            elif state == "pending":
                waiting.append(old)
        self._open[request.specialist.name] = waiting[-MAX_WAITING:]
        session = crashed[0] if crashed else _Session(self, request, self.model_for(request.specialist))
        try:
            proposal = session.fix_up(request, crashed[1]) if crashed else session.run()
            if self.cfg["fix_up"] and not session.fixing:
                self._open[request.specialist.name].append(session)
        finally:
            with self._lock:
                self.totals.add(session.totals.as_usage(), session.totals.cost_usd)
                self.proposals += 1
        return proposal

    # -- what every session of a run shares (same objects, so the cached prefix stays identical) -----------
    def tools(self, request: ProposalRequest) -> list[dict[str, Any]]:
        obj = request.task.objective
        key = (obj.metric, obj.direction, self.smoke_offered(request), self.cfg["lineage_tools"])
        if key not in self._tools:
            self._tools[key] = tool_specs(obj.metric, obj.direction, smoke=self.smoke_description(request),
                                          extra=lineage_specs(obj.metric) if self.cfg["lineage_tools"] else None)
        return self._tools[key]

    def rules(self, request: ProposalRequest) -> str:
        key = (request.task.name, request.task.variant, self.smoke_offered(request), self.cfg["lineage_tools"])
        if key not in self._rules:
            names = {t["name"] for t in self.tools(request)}
            self._rules[key] = prompt.rules_text(request.task, names, self.cfg["smoke"])
        return self._rules[key]

    def smoke_offered(self, request: ProposalRequest) -> bool:
        s = self.cfg["smoke"]
        return bool(s["enabled"] and s["max_calls"] and request.bench is not None)

    def smoke_description(self, request: ProposalRequest) -> str:
        if not self.smoke_offered(request):
            return ""
        s, b = self.cfg["smoke"], request.task.budget
        rows = f"the first {s['rows']:,} rows of each training array" if s["rows"] else "the training data"
        stop = f"until {s['steps']} progress reports (ctx.report) or {s['seconds']:g} s" if s["steps"] else \
            f"for up to {s['seconds']:g} s"
        return (f"Run your current files (your edits so far) the way a trial runs them, in the same sandbox: "
                f"train(ctx) for seed {b.seeds[0]} on {rows}, {stop}, then predict(ctx) if training finished. "
                f"Returns 'ok: ...' or 'crash: ...' with the deepest frame in the recipe's files and the traceback's "
                f"last lines. Costs seconds, not a trial; at most {s['max_calls']} per session. Its timings are not "
                f"scores.")

    def cache_control(self, request: ProposalRequest) -> dict[str, str]:
        """The breakpoint of the long-lived prefix: 1 hour when asked, or (auto) when a trial's budget is longer
        than the 5-minute cache would last between two sessions."""
        ttl = self.cfg["cache_ttl"]
        if ttl == "auto":
            b = request.task.budget
            span = b.train_seconds + b.eval_seconds + (b.predict_seconds or 0.0) + b.prepare_seconds
            ttl = "1h" if span > LONG_TRIAL_S else "5m"
        return {"type": "ephemeral", "ttl": "1h"} if ttl == "1h" else {"type": "ephemeral"}

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
            # Streaming: the read timeout is the idle limit between events; the whole reply is bounded by
            # ``timeout`` in the session. Without streaming, one read waits for the whole reply.
            timeout = anthropic.Timeout(c["timeout"], connect=min(c["timeout"], 30.0),
                                        read=c["idle_timeout"] if c["stream"] else c["timeout"])
            try:
                creds = take_credentials()
                self._client = anthropic.Anthropic(api_key=creds.get("ANTHROPIC_API_KEY"),
                                                   auth_token=creds.get("ANTHROPIC_AUTH_TOKEN"),
                                                   base_url=c["base_url"] or None, max_retries=c["max_retries"],
                                                   timeout=timeout)
            except Exception as e:  # e.g. no key and an unreadable credentials profile
                raise AgentFatal(redact(f"cannot create the Anthropic client: {e} Set the ANTHROPIC_API_KEY "
                                        f"environment variable, or run with --autoresearch-agent offline")) from None
        return self._client

    def _api_failed(self, transient: bool, reason: str, session: "_Session") -> NoProposal:
        """A call failed after the retries: this proposal ends; persistent errors stop the run."""
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
    """One proposal: a tool-use conversation that ends with ``submit_trial`` (and, with ``fix_up``, may resume
    once when its trial crashed)."""

    def __init__(self, agent: ClaudeAgent, request: ProposalRequest, model: str) -> None:
        self.agent, self.request, self.model = agent, request, model
        self.cfg = agent.cfg
        self.totals = _Totals()
        self.price = price_for(self.cfg["prices"], model)
        if self.price is None and self.cfg["max_cost_usd"] is not None:
            raise AgentFatal(f"no price for model {model} in agent.prices (and no 'default' entry), so "
                             f"max_cost_usd cannot be enforced; add agent.prices.{model} with "
                             f"{', '.join(PRICE_KEYS)} in USD per million tokens")
        records = list(request.view.records)
        known = {r["trial"] for r in records if r.get("label") in LEGAL} if records else None
        self.lineage = LineageTools(records, request.task, request.bench, self.cfg["max_file_chars"])
        handlers: dict[str, Any] = {"smoke_test": self._smoke}
        if self.cfg["lineage_tools"]:
            handlers.update(self.lineage.handlers())
        self.tools = agent.tools(request)
        self.ws = Workspace(request.files, request.specialist, forbidden=tuple(request.task.evaluator.forbidden),
                            parent=request.parent, known_parents=known, max_view_chars=self.cfg["max_file_chars"],
                            specs=self.tools, handlers=handlers)
        self.bench = request.bench
        self.turns = 0
        self.smokes: list[bool] = []
        self.messages: list[dict[str, Any]] = []
        self.system: list[dict[str, Any]] = []
        self.fixing: int | None = None      # the crashed trial this session is fixing
        self.submitted: Submission | None = None
        self._pending: tuple[list[Any], list[dict[str, Any]], Any] | None = None

    def _fail(self, reason: str) -> NoProposal:
        return NoProposal(redact(reason), self.totals.as_usage(), self.model)

    # -- the conversation ----------------------------------------------------------------------------------
    def run(self) -> Proposal:
        req, cfg = self.request, self.cfg
        cc = self.agent.cache_control(req)
        self.system = [
            {"type": "text", "text": self.agent.rules(req), "cache_control": cc},
            {"type": "text", "text": prompt.files_text(req.files, req.parent, cfg["max_file_chars"]),
             "cache_control": cc},
            {"type": "text", "text": prompt.role_text(req.specialist, self.ws.listing()), "cache_control": cc},
        ]
        self.messages = [{"role": "user", "content": [
            {"type": "text", "text": prompt.render_view(req.view, cfg["view"], req.task)},
            {"type": "text", "text": prompt.request_text(
                req.trial, req.parent, next((t for t in req.specialist.catalog if t.name == req.focus), None))}]}]
        return self._loop()

    def _loop(self) -> Proposal:
        cfg, messages = self.cfg, self.messages
        reminded, cuts = False, 0
        while self.turns < cfg["max_turns"]:
            self.turns += 1
            msg = self._call(self.system, messages)
            content = [_block_param(b) for b in msg.content]
            messages.append({"role": "assistant", "content": content or [{"type": "text", "text": "(empty)"}]})
            uses = [b for b in msg.content if b.type == "tool_use"]
            if msg.stop_reason == "max_tokens":
                cuts += 1
                if cuts >= MAX_CUTS:
                    raise self._fail(f"the model's replies were cut off at max_tokens={cfg['max_tokens']} "
                                     f"{cuts} times in a row (after {self.turns} turns)")
                messages.append({"role": "user", "content": self._cut_off(uses)})
                continue
            cuts = 0
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
                messages.append({"role": "user", "content": "No trial is recorded until you call submit_trial. "
                                                            "Make your change with the editing tools and call "
                                                            "submit_trial now."})
                continue
            results, submission, submit_use = self._run_tools(uses)
            if submission is not None:
                self.submitted = submission
                self._pending = (uses, results, submit_use)
                return self._proposal(submission)
            messages.append({"role": "user", "content": results})
        last = f"; last tool error: {self.ws.last_error}" if self.ws.last_error else ""
        raise self._fail(f"no valid submit_trial within max_turns={cfg['max_turns']} turns "
                         f"({self.ws.calls} tool calls, {self.ws.refused} refused edits){last}")

    def _cut_off(self, uses: list[Any]) -> list[dict[str, Any]]:
        """The answer to a reply cut off at max_tokens: none of its tool calls ran, and the model is told."""
        n = self.cfg["max_tokens"]
        out: list[dict[str, Any]] = [
            {"type": "tool_result", "tool_use_id": u.id, "is_error": True,
             "content": f"not executed: your reply was cut off at max_tokens ({n}) before this call was complete"}
            for u in uses]
        out.append({"type": "text", "text": (
            f"Your last reply was cut off at max_tokens ({n} tokens), so nothing in it was executed. Reply more "
            f"briefly: one tool call at a time, and for a large change several str_replace calls rather than one "
            f"create.")})
        return out

    def _run_tools(self, uses: list[Any]) -> tuple[list[dict[str, Any]], Submission | None, Any]:
        results: list[dict[str, Any]] = []
        for use in uses:
            args = use.input
            if self.fixing is not None and use.name == "submit_trial" and isinstance(args, dict) \
                    and args.get("parent") is None and self.submitted is not None and self.submitted.parent is not None:
                args = {**args, "parent": self.submitted.parent}   # a fix-up builds on the same parent
            try:
                out = self.ws.run(use.name, args)
            except ToolError as e:  # refused edits and schema misses included: the model reads why and retries
                results.append({"type": "tool_result", "tool_use_id": use.id, "content": redact(str(e)),
                                "is_error": True})
                continue
            if isinstance(out, Submission):
                return results, out, use
            results.append({"type": "tool_result", "tool_use_id": use.id, "content": redact(out)})
        return results, None, None

    def _smoke(self, args: Mapping[str, Any]) -> str:
        s = self.cfg["smoke"]
        if self.bench is None or not s["enabled"]:
            raise ToolError("smoke_test is not available in this run")
        if len(self.smokes) >= s["max_calls"]:
            raise ToolError(f"smoke_test: this session's {s['max_calls']} smoke tests are used up; submit your "
                            f"change or fix it by reading the code")
        try:
            result = self.bench.smoke(dict(self.ws.files), seconds=float(s["seconds"]), steps=int(s["steps"]),
                                      rows=int(s["rows"]))
        except Exception as e:  # noqa: BLE001 - a harness problem must not end the proposal
            raise ToolError(redact(f"smoke_test could not run: {type(e).__name__}: {e}")) from None
        self.smokes.append(result.ok)
        return result.report

    def _proposal(self, sub: Submission) -> Proposal:
        ws, req = self.ws, self.request
        parent = sub.parent
        if self.fixing is not None and parent is None:
            parent = ws.parent   # the fix-up's files came from the crashed trial's parent
        if parent == req.parent:
            parent = None
        kind, step = change_kind(ws.before, ws.files, req.specialist.surface)
        session = f"{prompt.SESSION_MARK}claude {self.model}: {self.turns} turns, {ws.calls} tool calls"
        if self.smokes:
            session += f", {len(self.smokes)} smoke test(s) ({sum(self.smokes)} ok)"
        if ws.refused:
            session += f", {ws.refused} edits refused as outside the surface"
        if self.fixing is not None:
            session += f", fix-up of trial {self.fixing}"
        notes = "\n".join(x for x in (redact(sub.notes), session) if x)
        return Proposal(hypothesis=redact(sub.hypothesis), expected_delta=sub.expected_delta, edits=sub.edits,
                        parent=parent, kind=kind, step=step, refused_edits=ws.refused,
                        usage=self.totals.as_usage(), model=self.model, notes=notes)

    # -- fix-up ------------------------------------------------------------------------------------------
    def outcome(self, view: LineageView) -> tuple[str, dict[str, Any] | None]:
        """``crashed`` (with the record) when this session's trial crashed or failed preflight for a reason of
        the idea's own, ``pending`` while the lineage has no record of it yet, else ``done``."""
        if self._pending is None or self.fixing is not None:
            return "done", None
        rec = next((r for r in reversed(view.records) if r.get("trial") == self.request.trial), None)
        if rec is None:
            return ("pending" if view.records else "done"), None
        if rec.get("label") in FIX_LABELS and not rec.get("agent_error"):
            return "crashed", rec
        return "done", None

    def fix_up(self, request: ProposalRequest, rec: dict[str, Any]) -> Proposal:
        """Resume the conversation: the submission's tool result is the trial's outcome, and one more try."""
        assert self._pending is not None
        uses, done, submit_use = self._pending
        old = self.request.trial
        self.fixing = old
        self.totals = _Totals()          # this proposal's usage is the fix-up's own
        self.turns = 0
        self.bench = request.bench or self.bench
        self.request = request
        # The tools read the lineage as it is now (with the crashed trial), not as it was.
        self.lineage.records = sorted(request.view.records, key=lambda r: r.get("trial", 0))
        self.lineage.bench = self.bench
        if request.view.records:
            self.ws.known_parents = {r["trial"] for r in request.view.records if r.get("label") in LEGAL}
        answered = {r["tool_use_id"] for r in done}
        note = prompt.note_lines(str(rec.get("notes") or ""), 1500, max_lines=12)
        results = list(done)
        for u in uses:
            if u.id in answered:
                continue
            if u is submit_use:
                results.append({"type": "tool_result", "tool_use_id": u.id, "content": redact(
                    f"Trial {old} ran and was labelled {rec.get('label')}:\n{note}\n\nYou get one fix-up try: fix "
                    f"the problem with the editing tools (your files are as you submitted them"
                    + (", and smoke_test runs them" if self.agent.smoke_offered(request) else "")
                    + f"), then call submit_trial again. It is recorded as trial {request.trial}, built on "
                      f"trial {self.submitted.parent if self.submitted and self.submitted.parent is not None else self.ws.parent}.")})
            else:
                results.append({"type": "tool_result", "tool_use_id": u.id, "is_error": True,
                                "content": "not executed: submit_trial ended the session"})
        self.messages.append({"role": "user", "content": results})
        self._pending = None
        return self._loop()

    # -- one API call --------------------------------------------------------------------------------------
    def _call(self, system: list[dict[str, Any]], messages: list[dict[str, Any]]) -> Any:
        cfg, agent = self.cfg, self.agent
        kwargs: dict[str, Any] = {
            "model": self.model, "max_tokens": cfg["max_tokens"], "system": system,
            "tools": self.tools, "messages": _with_cache_breakpoint(messages)}
        if cfg["temperature"] is not None:
            kwargs["temperature"] = cfg["temperature"]
        if cfg["request_extra"]:
            kwargs["extra_body"] = copy.deepcopy(cfg["request_extra"])
        attempts = cfg["max_retries"] + 1
        for attempt in range(attempts):
            try:
                msg = self._attempt(kwargs)
                problem = malformed(msg)
                if problem:
                    raise _Retry(f"malformed reply: {problem}")
            except _Retry as e:
                if attempt + 1 < attempts:
                    time.sleep(min(RETRY_BASE_S * 2 ** attempt, 8.0))
                    continue
                raise agent._api_failed(True, f"Anthropic API call for model {self.model} failed {attempts} "
                                              f"time(s): {e}", self) from None
            agent._api_ok()
            usage = msg.usage
            counts = {k: int(getattr(usage, k, 0) or 0) for k in USAGE_KEYS}
            long_writes = int(getattr(getattr(usage, "cache_creation", None), "ephemeral_1h_input_tokens", 0) or 0)
            self.totals.add(counts, cost_usd(counts, self.price, long_writes))
            return msg
        raise AssertionError("unreachable")  # pragma: no cover

    def _attempt(self, kwargs: dict[str, Any]) -> Any:
        """One request (the SDK retries 429 / 5xx / connection errors itself); its failures classified."""
        import anthropic

        cfg, agent = self.cfg, self.agent
        client = agent.client()
        where = f"model {self.model}"
        try:
            if cfg["stream"]:
                deadline = time.monotonic() + cfg["timeout"]
                with client.messages.stream(**kwargs) as stream:
                    for _ in stream:
                        if time.monotonic() > deadline:
                            raise _Retry(f"the streamed reply took longer than agent.timeout={cfg['timeout']:g}s")
                    return stream.get_final_message()
            return client.messages.create(**kwargs)
        except _Retry:
            raise
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
            if e.status_code < 400:   # an error event in the middle of a stream
                if _error_type(e) in TRANSIENT_ERROR_TYPES:
                    raise _Retry(f"the stream ended with an error: {detail}") from None
                raise agent._api_failed(False, f"Anthropic API error for {where} in the stream: {detail}",
                                        self) from None
            if e.status_code == 429 and "spend_limit" in detail:
                raise AgentStop(redact(f"the Anthropic account's spend limit is reached ({detail})")) from None
            transient = e.status_code in (408, 409, 429) or e.status_code >= 500
            after = f" after {cfg['max_retries']} retries" if transient else ""
            raise agent._api_failed(transient, f"Anthropic API error for {where}{after}: HTTP {e.status_code}: "
                                               f"{detail}", self) from None
        except anthropic.APITimeoutError:
            raise agent._api_failed(True, f"Anthropic API request for {where} timed out after "
                                          f"{cfg['max_retries']} retries (agent.timeout={cfg['timeout']}"
                                          + (f", idle_timeout={cfg['idle_timeout']}" if cfg["stream"] else "") + ")",
                                    self) from None
        except anthropic.APIConnectionError as e:
            raise agent._api_failed(True, f"cannot reach the Anthropic API for {where} after {cfg['max_retries']} "
                                          f"retries: {type(e).__name__}: {e}", self) from None
        except TypeError as e:
            if "authentication" in str(e).lower():
                raise AgentFatal("no Anthropic credentials: set the ANTHROPIC_API_KEY environment variable, or run "
                                 "with --autoresearch-agent offline") from None
            raise _Retry(f"malformed reply: {type(e).__name__}: {e}") from None
        except (ValueError, AttributeError, KeyError) as e:  # JSON decode errors, replies that do not parse
            raise _Retry(f"malformed reply: {type(e).__name__}: {_shorten(str(e), 200)}") from None
        except AssertionError:  # the SDK's stream accumulator found no message_start: not a Messages API stream
            raise _Retry("malformed reply: the stream held no complete message") from None
        except Exception as e:  # noqa: BLE001 - the transport broke mid-stream (idle timeout, reset, ...)
            raise _Retry(f"the reply stream broke off: {type(e).__name__}: {_shorten(str(e), 200)}") from None


def _shorten(text: str, n: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[:max(n - 3, 0)] + "..."


def _error_type(e: Any) -> str:
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):
            return str(err.get("type") or "")
    return ""


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
