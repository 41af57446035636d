"""A loopback server speaking the Anthropic Messages API, for driving the real SDK in tests.

``FakeAnthropic`` serves ``POST /v1/messages`` on 127.0.0.1 (a free port) from a thread. Each request takes
the next scripted step: a reply (content blocks, stop reason, usage), an error in Anthropic's error JSON
shape (429 / 529 / 401 / ...; optional headers such as ``retry-after-ms``), a malformed 200 (``raw``), optionally
after a delay. When the script runs out, ``responder(body)`` is asked for the step (default: a text-only
reply). Every request body is recorded in ``requests``.

What it checks and answers the way the API does:

- **Requests**: roles alternate starting with ``user``; every ``tool_use`` of an assistant turn is answered by a
  ``tool_result`` with its id at the start of the next user turn, and no ``tool_result`` names an id the
  previous turn did not use; at most 4 ``cache_control`` breakpoints; a 1-hour breakpoint never follows a
  5-minute one; no ``cache_control`` on an empty text block. A violation is a 400 ``invalid_request_error``.
- **Prompt caching**: the prompt is the sequence tools, system blocks, message blocks. A breakpoint caches the
  prefix ending at its block once that prefix holds at least ``min_cache_tokens`` tokens. A request reads the
  longest cached prefix found at a breakpoint or up to 20 blocks before one, writes the prefixes of the
  breakpoints after it, and pays full price for the rest; ``usage`` reports ``cache_read_input_tokens``,
  ``cache_creation_input_tokens`` (split by lifetime in ``cache_creation``) and ``input_tokens``. Entries live
  5 minutes or 1 hour (``ttl``) on the fake's clock, refreshed when read; ``advance(seconds)`` moves the clock.
- **Streaming**: a request with ``"stream": true`` gets server-sent events (``message_start``,
  ``content_block_start`` / ``_delta`` / ``_stop`` with ``text_delta``, ``input_json_delta``,
  ``thinking_delta``, ``signature_delta``, ``message_delta`` with the stop reason and cumulative usage,
  ``message_stop``); a step's ``stall`` pauses mid-stream and ``stream_error`` sends an ``error`` event.

Tokens are approximated as characters / 4 of each block's JSON.

Run it standalone for the acceptance check of a whole task (a scripted "researcher" that edits one number
inside the specialist's regions each session, through the tools)::

    python tests/fake_anthropic.py --port 8765
    ANTHROPIC_BASE_URL=http://127.0.0.1:8765 ANTHROPIC_API_KEY=x \\
        pytest --autoresearch-trials 5 --autoresearch-agent claude tasks/airbench
"""
from __future__ import annotations

import hashlib
import itertools
import json
import random
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

_ids = itertools.count(1)
TTL_SECONDS = {"5m": 300.0, "1h": 3600.0}
LOOKBACK_BLOCKS = 20
MAX_BREAKPOINTS = 4


def text(t: str) -> dict[str, Any]:
    return {"type": "text", "text": t}


def tool_use(name: str, input: Any, id: str | None = None) -> dict[str, Any]:
    return {"type": "tool_use", "id": id or f"toolu_{next(_ids):06d}", "name": name, "input": input}


@dataclass
class Step:
    """One scripted response: a message (``content``), an error (``status`` >= 400) or raw bytes (``raw``)."""

    content: list[dict[str, Any]] = field(default_factory=list)
    stop_reason: str | None = None
    usage: dict[str, int] | None = None
    status: int = 200
    error_type: str = ""
    message: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    raw: bytes | None = None              # sent as the 200 body verbatim (a malformed response)
    content_type: str = "application/json"
    stall: float = 0.0                    # streaming: pause this long after the first content block starts
    stream_error: str = ""                # streaming: an ``error`` event of this type instead of message_stop


def reply(*blocks: dict[str, Any], stop_reason: str | None = None, usage: dict[str, int] | None = None,
          delay: float = 0.0, stall: float = 0.0) -> Step:
    if stop_reason is None:
        stop_reason = "tool_use" if any(b.get("type") == "tool_use" for b in blocks) else "end_turn"
    return Step(list(blocks), stop_reason, usage, delay=delay, stall=stall)


ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 500: "api_error",
               529: "overloaded_error"}


def error(status: int, message: str = "", error_type: str | None = None, headers: dict[str, str] | None = None,
          delay: float = 0.0) -> Step:
    return Step(status=status, error_type=error_type or ERROR_TYPES.get(status, "api_error"),
                message=message or f"scripted {status}", headers=dict(headers or {}), delay=delay)


def malformed(raw: bytes | str = b'{"id": "msg_x", "type": "mess', content_type: str = "application/json") -> Step:
    """A 200 whose body is not a valid Messages API response (truncated JSON by default)."""
    return Step(raw=raw.encode() if isinstance(raw, str) else raw, content_type=content_type)


def approx_tokens(obj: Any) -> int:
    return max(1, len(json.dumps(obj, ensure_ascii=False, sort_keys=True)) // 4)


def _strip_cache(block: Any) -> Any:
    if isinstance(block, dict):
        return {k: v for k, v in block.items() if k != "cache_control"}
    return block


def prompt_blocks(body: dict[str, Any]) -> list[tuple[Any, dict[str, Any] | None]]:
    """The request as the cache sees it: (block without cache_control, its cache_control), in prompt order."""
    out: list[tuple[Any, dict[str, Any] | None]] = []
    for t in body.get("tools") or []:
        out.append((("tool", _strip_cache(t)), t.get("cache_control") if isinstance(t, dict) else None))
    system = body.get("system")
    if isinstance(system, str):
        out.append((("system", system), None))
    for b in system if isinstance(system, list) else []:
        out.append((("system", _strip_cache(b)), b.get("cache_control") if isinstance(b, dict) else None))
    for i, m in enumerate(body.get("messages") or []):
        content = m.get("content")
        if isinstance(content, str):
            out.append(((m.get("role"), i, content), None))
            continue
        for b in content or []:
            out.append(((m.get("role"), i, _strip_cache(b)), b.get("cache_control") if isinstance(b, dict) else None))
    return out


class FakeAnthropic:
    """The server. Use as a context manager, or ``start()`` / ``stop()``."""

    def __init__(self, responder: Callable[[dict[str, Any]], Step] | None = None, *,
                 min_cache_tokens: int = 1024) -> None:
        self.script: list[Step] = []
        self.responder = responder
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.usages: list[dict[str, Any]] = []     # the usage of every 200 reply, in order
        self.rejected: list[str] = []              # why requests were refused with a 400
        self.min_cache_tokens = min_cache_tokens
        self._cache: dict[str, tuple[float, float]] = {}   # prefix key -> (expires at, ttl seconds)
        self._clock = 0.0
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------------------
    def start(self, port: int = 0) -> "FakeAnthropic":
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

            def do_POST(self) -> None:
                fake._handle(self)

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "FakeAnthropic":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the server first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def queue(self, *steps: Step) -> None:
        with self._lock:
            self.script.extend(steps)

    def now(self) -> float:
        return time.monotonic() + self._clock

    def advance(self, seconds: float) -> None:
        """Move the cache clock forward (entries older than their lifetime expire)."""
        with self._lock:
            self._clock += seconds

    # -- serving -----------------------------------------------------------------------------------------
    def _next(self, body: dict[str, Any]) -> Step:
        with self._lock:
            if self.script:
                return self.script.pop(0)
        if self.responder is not None:
            return self.responder(body)
        return reply(text("(the fake server's script is exhausted)"))

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        raw = h.rfile.read(int(h.headers.get("content-length") or 0))
        if not h.path.split("?")[0].rstrip("/").endswith("/v1/messages"):
            return self._send(h, 404, self._error_body("not_found_error", f"no route {h.path}"), {})
        try:
            body = json.loads(raw)
        except ValueError:
            return self._send(h, 400, self._error_body("invalid_request_error", "body is not JSON"), {})
        with self._lock:
            self.requests.append(body)
            self.headers.append({k.lower(): v for k, v in h.headers.items()})
        problem = validate_request(body)
        if problem:
            with self._lock:
                self.rejected.append(problem)
            return self._send(h, 400, self._error_body("invalid_request_error", problem), {})
        step = self._next(body)
        if step.delay:
            time.sleep(step.delay)
        if step.status >= 400:
            return self._send(h, step.status, self._error_body(step.error_type, step.message), step.headers)
        if step.raw is not None:
            return self._send_raw(h, 200, step.raw, step.content_type, step.headers)
        message = self._message(body, step)
        with self._lock:
            self.usages.append(message["usage"])
        if body.get("stream"):
            return self._stream(h, message, step)
        self._send(h, 200, message, step.headers)

    @staticmethod
    def _error_body(etype: str, message: str) -> dict[str, Any]:
        return {"type": "error", "error": {"type": etype, "message": message},
                "request_id": f"req_fake{next(_ids):06d}"}

    # -- prompt caching ----------------------------------------------------------------------------------
    def _usage(self, body: dict[str, Any], step: Step) -> dict[str, Any]:
        out: dict[str, Any] = {"input_tokens": 0, "output_tokens": approx_tokens(step.content),
                               "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
                               "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
                               "service_tier": "standard"}
        if step.usage is not None:
            out.update(step.usage)
            return out
        blocks = prompt_blocks(body)
        sizes = [approx_tokens(b) for b, _ in blocks]
        cum = list(itertools.accumulate(sizes))
        total = cum[-1] if cum else 0
        keys: list[str] = []
        h = hashlib.sha256(json.dumps(body.get("model")).encode())
        for b, _ in blocks:
            h.update(json.dumps(b, sort_keys=True, ensure_ascii=False).encode())
            keys.append(h.copy().hexdigest())
        marks = [(i, str(cc.get("ttl") or "5m")) for i, (_, cc) in enumerate(blocks) if cc]
        now = self.now()
        with self._lock:
            read_at = -1
            for i, _ in marks:                      # the longest cached prefix at or just before a breakpoint
                for j in range(i, max(i - LOOKBACK_BLOCKS, -1), -1):
                    hit = self._cache.get(keys[j])
                    if hit and hit[0] > now:
                        read_at = max(read_at, j)
                        break
            if read_at >= 0:
                ttl = self._cache[keys[read_at]][1]
                self._cache[keys[read_at]] = (now + ttl, ttl)   # a read refreshes the entry
            read = cum[read_at] if read_at >= 0 else 0
            written_to, by_ttl = read_at, {"5m": 0, "1h": 0}
            for i, ttl in marks:
                if i <= read_at or cum[i] < self.min_cache_tokens:
                    continue
                self._cache[keys[i]] = (now + TTL_SECONDS.get(ttl, 300.0), TTL_SECONDS.get(ttl, 300.0))
                by_ttl[ttl if ttl in by_ttl else "5m"] += cum[i] - (cum[written_to] if written_to >= 0 else 0)
                written_to = i
        created = sum(by_ttl.values())
        out.update(input_tokens=max(total - read - created, 0), cache_read_input_tokens=read,
                   cache_creation_input_tokens=created,
                   cache_creation={"ephemeral_5m_input_tokens": by_ttl["5m"],
                                   "ephemeral_1h_input_tokens": by_ttl["1h"]})
        return out

    def _message(self, body: dict[str, Any], step: Step) -> dict[str, Any]:
        return {"id": f"msg_fake{next(_ids):06d}", "type": "message", "role": "assistant",
                "model": body.get("model", "unknown"), "content": step.content, "stop_reason": step.stop_reason,
                "stop_sequence": None, "usage": self._usage(body, step)}

    # -- wire --------------------------------------------------------------------------------------------
    @staticmethod
    def _send(h: BaseHTTPRequestHandler, status: int, payload: dict[str, Any], headers: dict[str, str]) -> None:
        FakeAnthropic._send_raw(h, status, json.dumps(payload).encode(), "application/json", headers,
                                payload.get("request_id"))

    @staticmethod
    def _send_raw(h: BaseHTTPRequestHandler, status: int, data: bytes, content_type: str,
                  headers: dict[str, str], request_id: str | None = None) -> None:
        try:
            h.send_response(status)
            h.send_header("content-type", content_type)
            h.send_header("content-length", str(len(data)))
            h.send_header("request-id", request_id or f"req_fake{next(_ids):06d}")
            for k, v in headers.items():
                h.send_header(k, v)
            h.end_headers()
            h.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout test); nothing to do

    def _stream(self, h: BaseHTTPRequestHandler, message: dict[str, Any], step: Step) -> None:
        usage = message["usage"]
        start = dict(message, content=[], stop_reason=None,
                     usage={**usage, "output_tokens": 1})
        events: list[tuple[str, dict[str, Any]]] = [("message_start", {"type": "message_start", "message": start})]
        for i, block in enumerate(message["content"]):
            events += _block_events(i, block)
        if step.stream_error:
            events.append(("error", {"type": "error", "error": {"type": step.stream_error,
                                                                "message": f"scripted {step.stream_error}"}}))
        else:
            events.append(("message_delta", {"type": "message_delta",
                                             "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                                             "usage": {k: usage[k] for k in ("input_tokens", "output_tokens",
                                                                             "cache_creation_input_tokens",
                                                                             "cache_read_input_tokens")}}))
            events.append(("message_stop", {"type": "message_stop"}))
        try:
            h.send_response(200)
            h.send_header("content-type", "text/event-stream")
            h.send_header("cache-control", "no-cache")
            h.send_header("request-id", f"req_fake{next(_ids):06d}")
            h.send_header("connection", "close")
            for k, v in step.headers.items():
                h.send_header(k, v)
            h.end_headers()
            for n, (name, data) in enumerate(events):
                h.wfile.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
                h.wfile.flush()
                if n == 1 and step.stall:
                    time.sleep(step.stall)
            h.close_connection = True
        except (BrokenPipeError, ConnectionResetError):
            pass


def _block_events(i: int, block: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    t = block.get("type")
    if t == "text":
        first, deltas = {"type": "text", "text": ""}, [{"type": "text_delta", "text": block["text"]}]
    elif t == "tool_use":
        first = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
        js = json.dumps(block.get("input"))
        deltas = [{"type": "input_json_delta", "partial_json": js[k:k + 40]} for k in range(0, len(js), 40)]
    elif t == "thinking":
        first = {"type": "thinking", "thinking": "", "signature": ""}
        deltas = [{"type": "thinking_delta", "thinking": block["thinking"]},
                  {"type": "signature_delta", "signature": block.get("signature", "")}]
    else:
        first, deltas = block, []
    out = [("content_block_start", {"type": "content_block_start", "index": i, "content_block": first})]
    out += [("content_block_delta", {"type": "content_block_delta", "index": i, "delta": d}) for d in deltas]
    out.append(("content_block_stop", {"type": "content_block_stop", "index": i}))
    return out


def validate_request(body: dict[str, Any]) -> str:
    """Why the Messages API would refuse ``body`` with a 400 (the checks listed in the module docstring)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: at least one message is required"
    if not isinstance(body.get("max_tokens"), int) or body["max_tokens"] < 1:
        return "max_tokens: must be a positive integer"
    marks = [cc for _, cc in prompt_blocks(body) if cc]
    if len(marks) > MAX_BREAKPOINTS:
        return f"A maximum of {MAX_BREAKPOINTS} blocks with cache_control may be provided. Found {len(marks)}."
    seen_5m = False
    for cc in marks:
        ttl = cc.get("ttl", "5m")
        if ttl not in TTL_SECONDS:
            return f"cache_control.ttl: must be '5m' or '1h', got {ttl!r}"
        if ttl == "1h" and seen_5m:
            return "a ttl='1h' cache_control block must not come after a ttl='5m' cache_control block"
        seen_5m = seen_5m or ttl == "5m"
    for blocks in ([body.get("system")] if isinstance(body.get("system"), list) else []) + \
            [m.get("content") for m in messages if isinstance(m.get("content"), list)]:
        for b in blocks or []:
            if isinstance(b, dict) and b.get("type") == "text" and b.get("cache_control") and not b.get("text"):
                return "cache_control cannot be set for empty text blocks"
    previous_uses: list[str] = []
    for i, m in enumerate(messages):
        role = m.get("role")
        if role != ("user" if i % 2 == 0 else "assistant"):
            return f"messages.{i}: roles must alternate between 'user' and 'assistant', starting with 'user'"
        content = m.get("content")
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else list(content or [])
        if not blocks:
            return f"messages.{i}: content must not be empty"
        if role == "user":
            results = [b.get("tool_use_id") for b in blocks if isinstance(b, dict) and b.get("type") == "tool_result"]
            lead = [b.get("tool_use_id") for b in blocks[:len(previous_uses)]
                    if isinstance(b, dict) and b.get("type") == "tool_result"]
            if previous_uses and sorted(lead) != sorted(previous_uses):
                missing = [u for u in previous_uses if u not in lead]
                return (f"messages.{i}: `tool_use` ids were found without `tool_result` blocks immediately after: "
                        f"{', '.join(missing) or previous_uses}. Each `tool_use` block must have a corresponding "
                        f"`tool_result` block in the next message.")
            stray = [r for r in results if r not in previous_uses]
            if stray:
                return f"messages.{i}: unexpected `tool_use_id` found in `tool_result` blocks: {stray[0]}"
            previous_uses = []
        else:
            previous_uses = [b.get("id") for b in blocks if isinstance(b, dict) and b.get("type") == "tool_use"]
    if messages[-1].get("role") == "assistant" and previous_uses:
        return "the final assistant message may not end with tool_use blocks"
    return ""


# -- a scripted researcher for whole-task runs -----------------------------------------------------------
_REGION_LINE = re.compile(r"you may edit only region\(s\) ([\w.\-, ]+)\)")
_BOOL_ASSIGN = re.compile(r"^\s*[A-Za-z_]\w*\s*=\s*(True|False)\s*(#.*)?$")
_NUMBER_ASSIGN = re.compile(r"^(?P<lhs>\s*[A-Za-z_]\w*\s*=\s*)(?P<num>-?\d+(?:\.\d*)?(?:[eE]-?\d+)?)"
                            r"(?P<rest>\s*(#.*)?)$")


def _tool_results(body: dict[str, Any]) -> list[str]:
    last = body["messages"][-1]
    if last.get("role") != "user" or not isinstance(last.get("content"), list):
        return []
    return [b.get("content", "") if isinstance(b.get("content"), str) else json.dumps(b.get("content"))
            for b in last["content"] if isinstance(b, dict) and b.get("type") == "tool_result"]


def researcher(seed: int = 0, smoke: bool = True) -> Callable[[dict[str, Any]], Step]:
    """A responder that, each session, lists the files, views one it may edit, scales one numeric constant
    it may edit (inside its marked regions, or anywhere in a file it owns whole) by 0.8 or 1.25 (or flips
    a boolean one when there is no number), runs ``smoke_test`` when the tool is offered (and ``smoke``), and
    submits with a note."""
    rng = random.Random(seed)

    def respond(body: dict[str, Any]) -> Step:
        n_assistant = sum(1 for m in body["messages"] if m["role"] == "assistant")
        results = _tool_results(body)
        tools = {t.get("name") for t in body.get("tools") or []}
        if n_assistant == 0:
            return reply(text("Let me look at the recipe."), tool_use("view", {"path": "."}))
        if n_assistant == 1:
            listing = results[0] if results else ""
            for line in listing.splitlines():
                if "you may edit" in line:
                    return reply(tool_use("view", {"path": line.split("  (")[0]}))
            return reply(text("Nothing I may edit."))
        if n_assistant == 2:
            return _edit_step(body, results[0] if results else "", rng)
        if n_assistant == 3 and smoke and "smoke_test" in tools and any("edited" in r for r in results):
            return reply(text("Quick check that it runs."), tool_use("smoke_test", {}))
        if any("edited" in r for r in results) or (n_assistant == 4 and results):
            return reply(tool_use("submit_trial", {"hypothesis": "Scaling one tunable constant of my region "
                                                                 "may speed up training at equal accuracy.",
                                                   "expected_delta": -0.01,
                                                   "notes": "Scaled one constant; " + (results[0][:60] if results
                                                                                       else "")}))
        return reply(text("I could not make an edit."))

    return respond


def _knob_lines(lines: list[str], whole: bool, allowed: set[str]) -> list[str]:
    """Lines the specialist may edit: all of a whole file, else those inside its marked regions."""
    region, out = None, []
    for ln in lines:
        begin = re.match(r"^\s*#\s*autoresearch:\s*begin\s+([\w.-]+)", ln)
        if begin:
            region = begin.group(1)
        elif re.match(r"^\s*#\s*autoresearch:\s*end\b", ln):
            region = None
        elif whole or region in allowed:
            out.append(ln)
    return out


def _edit_step(body: dict[str, Any], numbered: str, rng: random.Random) -> Step:
    listing = ""
    path = None
    for m in body["messages"]:
        for b in m["content"] if isinstance(m["content"], list) else []:
            if not isinstance(b, dict):
                continue
            if b.get("type") == "tool_result" and not listing and isinstance(b.get("content"), str):
                listing = b["content"]
            if b.get("type") == "tool_use" and b.get("name") == "view" and b["input"].get("path") != ".":
                path = b["input"].get("path")
    entry = next((ln for ln in listing.splitlines() if path and ln.startswith(path + "  (")), "")
    whole = "whole file" in entry
    m_regions = _REGION_LINE.search(entry)
    allowed = {r.strip() for r in m_regions.group(1).split(",")} if m_regions else set()
    lines = [ln.split("\t", 1)[1] if "\t" in ln else ln for ln in numbered.splitlines()]
    candidates = [ln for ln in _knob_lines(lines, whole, allowed)
                  if (m := _NUMBER_ASSIGN.match(ln)) and float(m["num"]) != 0 and lines.count(ln) == 1]
    if not candidates and path is not None:
        flags = [ln for ln in _knob_lines(lines, whole, allowed) if _BOOL_ASSIGN.match(ln) and lines.count(ln) == 1]
        if flags:
            old = rng.choice(flags)
            flipped = re.sub(r"\b(True|False)\b", lambda m: "False" if m.group(1) == "True" else "True", old, 1)
            return reply(tool_use("str_replace", {"path": path, "old_str": old, "new_str": flipped}))
    if not candidates or path is None:
        return reply(text("No tunable constant found in my surface."))
    old = rng.choice(candidates)
    m = _NUMBER_ASSIGN.match(old)
    assert m is not None
    num = m["num"]
    factor = rng.choice((0.8, 1.25))
    if re.fullmatch(r"-?\d+", num):
        new_num = str(round(int(num) * factor))
        if new_num == num or new_num in ("0", "-0"):
            new_num = str(int(num) + 1)
    else:
        new_num = f"{float(num) * factor:.6g}"
    return reply(tool_use("str_replace", {"path": path, "old_str": old, "new_str": m["lhs"] + new_num + m["rest"]}))


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    server = FakeAnthropic(responder=researcher(args.seed)).start(args.port)
    print(f"fake Messages API at {server.url} (Ctrl-C to stop)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
