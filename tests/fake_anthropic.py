"""A loopback server speaking the Anthropic Messages API, for driving the real SDK in tests.

``FakeAnthropic`` serves ``POST /v1/messages`` on 127.0.0.1 (a free port) from a thread. Each request takes
the next scripted step: a reply (content blocks, stop reason, usage), an error in Anthropic's error JSON
shape (429 / 529 / 401 / ...; optional headers such as ``retry-after-ms``), optionally after a delay. When
the script runs out, ``responder(body)`` is asked for the step (default: a text-only reply). Every request
body is recorded in ``requests``.

Run it standalone for the acceptance check of a whole task (a scripted "researcher" that edits one number
inside the specialist's regions each session, through the tools)::

    python tests/fake_anthropic.py --port 8765
    ANTHROPIC_BASE_URL=http://127.0.0.1:8765 ANTHROPIC_API_KEY=x \\
        pytest --autoresearch-trials 5 --autoresearch-agent claude tasks/airbench
"""
from __future__ import annotations

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


def text(t: str) -> dict[str, Any]:
    return {"type": "text", "text": t}


def tool_use(name: str, input: Any, id: str | None = None) -> dict[str, Any]:
    return {"type": "tool_use", "id": id or f"toolu_{next(_ids):06d}", "name": name, "input": input}


@dataclass
class Step:
    """One scripted response: a message (``content``) or an error (``status`` >= 400)."""

    content: list[dict[str, Any]] = field(default_factory=list)
    stop_reason: str | None = None
    usage: dict[str, int] | None = None
    status: int = 200
    error_type: str = ""
    message: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


def reply(*blocks: dict[str, Any], stop_reason: str | None = None, usage: dict[str, int] | None = None,
          delay: float = 0.0) -> Step:
    if stop_reason is None:
        stop_reason = "tool_use" if any(b.get("type") == "tool_use" for b in blocks) else "end_turn"
    return Step(list(blocks), stop_reason, usage, delay=delay)


ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 500: "api_error",
               529: "overloaded_error"}


def error(status: int, message: str = "", error_type: str | None = None, headers: dict[str, str] | None = None,
          delay: float = 0.0) -> Step:
    return Step(status=status, error_type=error_type or ERROR_TYPES.get(status, "api_error"),
                message=message or f"scripted {status}", headers=dict(headers or {}), delay=delay)


def approx_tokens(obj: Any) -> int:
    return max(1, len(json.dumps(obj, ensure_ascii=False)) // 4)


class FakeAnthropic:
    """The server. Use as a context manager, or ``start()`` / ``stop()``."""

    def __init__(self, responder: Callable[[dict[str, Any]], Step] | None = None) -> None:
        self.script: list[Step] = []
        self.responder = responder
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self._cached: set[str] = set()
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
        step = self._next(body)
        if step.delay:
            time.sleep(step.delay)
        if step.status >= 400:
            return self._send(h, step.status, self._error_body(step.error_type, step.message), step.headers)
        self._send(h, 200, self._message(body, step), step.headers)

    @staticmethod
    def _error_body(etype: str, message: str) -> dict[str, Any]:
        return {"type": "error", "error": {"type": etype, "message": message},
                "request_id": f"req_fake{next(_ids):06d}"}

    def _usage(self, body: dict[str, Any], step: Step) -> dict[str, int]:
        if step.usage is not None:
            return {"input_tokens": 0, "output_tokens": 0, "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": 0, **step.usage}
        # Simulated prompt caching: the prefix up to the first system block marked cache_control is
        # written on first sight and read afterwards.
        system = body.get("system")
        prefix_tokens, total = 0, approx_tokens(body.get("messages", [])) + approx_tokens(system or "")
        if isinstance(system, list):
            marked = [i for i, b in enumerate(system) if isinstance(b, dict) and b.get("cache_control")]
            if marked:
                prefix = [body.get("tools"), system[:marked[0] + 1]]
                prefix_tokens = approx_tokens(prefix)
        out = {"input_tokens": max(total - prefix_tokens, 1), "output_tokens": approx_tokens(step.content),
               "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
        if prefix_tokens:
            key = json.dumps([body.get("model"), body.get("tools"), system[:marked[0] + 1]], sort_keys=True)
            with self._lock:
                hit = key in self._cached
                self._cached.add(key)
            out["cache_read_input_tokens" if hit else "cache_creation_input_tokens"] = prefix_tokens
        return out

    def _message(self, body: dict[str, Any], step: Step) -> dict[str, Any]:
        return {"id": f"msg_fake{next(_ids):06d}", "type": "message", "role": "assistant",
                "model": body.get("model", "unknown"), "content": step.content, "stop_reason": step.stop_reason,
                "stop_sequence": None, "usage": self._usage(body, step)}

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, status: int, payload: dict[str, Any], headers: dict[str, str]) -> None:
        data = json.dumps(payload).encode()
        try:
            h.send_response(status)
            h.send_header("content-type", "application/json")
            h.send_header("content-length", str(len(data)))
            h.send_header("request-id", payload.get("request_id") or f"req_fake{next(_ids):06d}")
            for k, v in headers.items():
                h.send_header(k, v)
            h.end_headers()
            h.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout test); nothing to do


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


def researcher(seed: int = 0) -> Callable[[dict[str, Any]], Step]:
    """A responder that, each session, lists the files, views one it may edit, scales one numeric constant
    it may edit (inside its marked regions, or anywhere in a file it owns whole) by 0.8 or 1.25 (or flips
    a boolean one when there is no number), and submits."""
    rng = random.Random(seed)

    def respond(body: dict[str, Any]) -> Step:
        n_assistant = sum(1 for m in body["messages"] if m["role"] == "assistant")
        results = _tool_results(body)
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
        if any("edited" in r for r in results):
            return reply(tool_use("submit_trial", {"hypothesis": "Scaling one tunable constant of my region "
                                                                 "may speed up training at equal accuracy.",
                                                   "expected_delta": -0.01}))
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
