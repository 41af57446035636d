"""The JSONL lineage of one task: append-only records, queries, and the view agents read.

One record per finished trial, written as a single ``os.write`` under a ``filelock`` sidecar lock, so
concurrent workers never interleave. Readers skip an unterminated last line (a writer died mid-line or is
writing now) silently and a corrupt middle line with a warning naming its line number.
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from filelock import FileLock, Timeout

SCHEMA = 1
LEGAL = ("baseline", "keep", "discard")
BEST_LABELS = ("baseline", "keep")
FAILURES = ("preflight_crash", "surface_violation", "crash", "budget_overrun", "size_blocked", "gate_miss",
            "evaluator_error")
AGENT_LABELS = FAILURES[:-1] + ("discard",)
LABELS = ("baseline", "keep", "discard") + FAILURES + ("harness_error",)
REQUIRED_KEYS = ("schema", "task", "trial", "session", "specialist", "parent", "hypothesis", "expected_delta",
                 "label", "score", "metrics", "delta_vs_best", "commit", "diff", "train_s", "eval_s", "seeds",
                 "agent", "usage", "notes", "started", "ended")

Record = dict[str, Any]


class LineageWarning(UserWarning):
    pass


@dataclass
class LineageView:
    """What an agent sees of the lineage when it proposes (sizes from config ``lineage.*``)."""

    task: str
    metric: str
    direction: str
    n_trials: int
    best: Record | None
    top_k: list[Record] = field(default_factory=list)
    ancestors_of_best: list[Record] = field(default_factory=list)
    recent: list[Record] = field(default_factory=list)
    failures: list[Record] = field(default_factory=list)
    records: list[Record] = field(default_factory=list)
    rule: str = ""   # the keep rule with its current numbers (acceptance.describe_rule)
    in_flight: list[Record] = field(default_factory=list)   # claims of trials being measured now (Lineage.in_flight)

    def render(self, max_diff_lines: int = 40) -> str:
        """A plain-text rendering for prompts and logs."""
        lines = [f"Task {self.task}: {self.direction} {self.metric}; {self.n_trials} trials recorded."]
        if self.rule:
            lines.append(f"Keep rule: {self.rule}.")
        if self.best:
            lines.append("Current best: " + one_line(self.best))
            d = (self.best.get("diff") or "").splitlines()
            if d:
                lines += ["Best diff vs its parent:"] + d[:max_diff_lines]
        for title, recs in (("Top kept", self.top_k), ("Ancestors of best", self.ancestors_of_best),
                            ("Recent trials (all specialists)", self.recent),
                            ("Recent failures", self.failures)):
            if recs:
                lines.append(f"{title}:")
                lines += ["  " + one_line(r, notes=title == "Recent failures") for r in recs]
        if self.in_flight:
            lines.append("Being measured now (not scored yet; their code is taken):")
            lines += ["  " + in_flight_line(c) for c in self.in_flight]
        return "\n".join(lines)


def one_line(r: Record, notes: bool = True) -> str:
    score = "-" if r.get("score") is None else f"{r['score']:.6g}"
    s = (f"trial {r['trial']} [{r.get('specialist')}] {r.get('label')} score={score} "
         f"parent={r.get('parent')}: {r.get('hypothesis') or ''}")
    if notes and r.get("notes"):
        s += f" | notes: {r['notes']}"
    return s


def in_flight_line(c: Record, width: int = 240) -> str:
    """A claim on one line, its hypothesis cut like a recorded one's in a prompt: another proposer's claim must not
    bring headings or pages of text into this proposer's view."""
    h = " ".join(str(c.get("hypothesis") or "").split())
    h = h if len(h) <= width else h[:width - 3] + "..."
    return f"trial {c.get('trial')} [{c.get('specialist')}] parent={c.get('parent')}: {h}"


class LineageLocked(RuntimeError):
    """The lineage lock was not released in time; the message names its holder."""


class HeldLock:
    """The lineage's ``filelock`` with a timeout, and a note of who holds it so a waiter can say so.

    Reentrant within a process, like ``FileLock``; the holder note is written on the outermost acquire.
    """

    def __init__(self, path: Path, timeout_s: float, what: str = "writing the lineage") -> None:
        self.path = Path(path)
        self.timeout_s = timeout_s
        self.what = what
        self._lock = FileLock(str(self.path), timeout=timeout_s)
        self._holder = self.path.with_name(self.path.name + ".holder")
        self._depth = threading.local()

    def __enter__(self) -> "HeldLock":
        depth = getattr(self._depth, "n", 0)
        try:
            self._lock.acquire()
        except Timeout:
            raise LineageLocked(f"{self.path} was not released within {self.timeout_s:g}s: it is held by "
                                f"{self.holder()} ({self.what}). If that process is gone or hung, stop it (the lock "
                                f"goes with it); to wait longer, set lineage.lock_timeout_s") from None
        if depth == 0:
            note = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S")}
            try:
                self._holder.write_text(json.dumps(note))
            except OSError:
                pass
        self._depth.n = depth + 1
        return self

    def __exit__(self, *exc: Any) -> None:
        self._depth.n = getattr(self._depth, "n", 1) - 1
        self._lock.release()

    def holder(self) -> str:
        try:
            h = json.loads(self._holder.read_text())
            return f"pid {h['pid']} on {h['host']} since {h['since']}"
        except (OSError, ValueError, KeyError, TypeError):
            return "an unknown process"


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Lineage:
    """``<dir>/lineage.jsonl`` with its ``.lock`` sidecar and a trial-number counter."""

    def __init__(self, path: Path, lock_timeout_s: float = 600.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.lock = HeldLock(Path(str(self.path) + ".lock"), lock_timeout_s)
        self._counter = self.path.with_name("next_trial")

    # -- writing ---------------------------------------------------------------------------------------
    def append(self, record: Record) -> None:
        """Append one record as a single write; the caller may hold ``self.lock`` already (it is reentrant)."""
        missing = [k for k in REQUIRED_KEYS if k not in record]
        if missing:
            raise ValueError(f"lineage record for trial {record.get('trial')} lacks keys {missing}")
        data = (json.dumps(record, ensure_ascii=False, default=str) + "\n").encode("utf-8")
        with self.lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                self._terminate_torn_line(fd)
                os.write(fd, data)
            finally:
                os.close(fd)

    def _terminate_torn_line(self, fd: int) -> None:
        # A writer killed mid-line leaves no newline; start on a fresh line so our record stays readable.
        size = os.fstat(fd).st_size
        if size:
            with open(self.path, "rb") as f:
                f.seek(size - 1)
                if f.read(1) != b"\n":
                    os.write(fd, b"\n")

    def claim_trial(self) -> int:
        """The next trial number, unique across processes, continuing the task's numbering.

        The counter file makes a claim O(1); the tail of the lineage guards it, so a counter that was reset
        or deleted can never hand out a number that is already recorded.
        """
        with self.lock:
            try:
                n = int(self._counter.read_text())
            except (FileNotFoundError, ValueError):
                # Only claims advance the counter, so a scan is needed just once (or after it was deleted).
                n = max((r["trial"] for r in self.records(quiet=True)), default=0) + 1
            n = max(n, 1, self._max_recent_trial() + 1)
            tmp = self._counter.with_suffix(".tmp")
            tmp.write_text(str(n + 1))
            os.replace(tmp, self._counter)
            return n

    # -- trials being measured -------------------------------------------------------------------------
    # Workers measure trials side by side, and a trial is recorded only when it ends: without these claims a
    # proposer would not see the code a trial beside it is measuring, so two trials could measure the same code
    # (two draws of its noise at one keep, and a worker's trial wasted).
    @property
    def _claims(self) -> Path:
        return self.path.with_name("in_flight")

    def in_flight(self, records: Sequence[Record] | None = None) -> list[Record]:
        """The trials being measured now, oldest first: each one's claim (``claim_code``). A claim left by a process
        that is gone, or whose trial is recorded already, is dropped. ``records``: the lineage as just read."""
        try:
            paths = sorted(self._claims.glob("*.json"))
        except OSError:
            return []
        if not paths:
            return []
        host, out = socket.gethostname(), []
        # A recorded trial's claim is over even if a process with its pid lives (another machine's, or a reused pid).
        recorded = {r["trial"] for r in (self.records(quiet=True) if records is None else records)}
        for p in paths:
            try:
                c = json.loads(p.read_text(encoding="utf-8"))
                trial, pid = int(c["trial"]), int(c["pid"])
            except (OSError, ValueError, KeyError, TypeError):
                continue  # not a claim this version wrote: never a reason to stop
            if trial not in recorded and (c.get("host") != host or pid_alive(pid)):
                out.append(c)
            else:
                p.unlink(missing_ok=True)
        return out

    def claim_code(self, claim: Record, records: Sequence[Record] | None = None) -> Record | None:
        """Register that this process measures ``claim["trial"]``, whose code has ``claim["content_hash"]`` and
        ``claim["code_hash"]``; None, or the live claim of another trial with the same code (then nothing is
        registered). Under the lock, so of two trials with the same code exactly one gets the claim (``records``:
        the lineage as read under this same hold of the lock)."""
        with self.lock:
            for c in self.in_flight(records):
                if c["trial"] != claim["trial"] and (c.get("content_hash") == claim["content_hash"]
                                                     or c.get("code_hash") == claim["code_hash"]):
                    return c
            self._claims.mkdir(exist_ok=True)
            path = self._claims / f"{int(claim['trial']):06d}.json"
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps({**claim, "pid": os.getpid(), "host": socket.gethostname()},
                                      ensure_ascii=False, default=str), encoding="utf-8")
            os.replace(tmp, path)
        return None

    def release_code(self, trial: int) -> None:
        """End ``trial``'s claim, after its record (if it has one) was appended: its code never drops from view."""
        (self._claims / f"{int(trial):06d}.json").unlink(missing_ok=True)

    def _max_recent_trial(self, window: int = 1 << 16) -> int:
        """The highest trial number among the records in the last ``window`` bytes of the file."""
        try:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                f.seek(max(0, size - window))
                chunk = f.read()
        except FileNotFoundError:
            return 0
        best = 0
        for line in chunk.split(b"\n")[1 if size > window else 0:-1]:
            try:
                t = json.loads(line).get("trial")
            except (ValueError, AttributeError):
                continue
            if isinstance(t, int):
                best = max(best, t)
        return best

    # -- reading ---------------------------------------------------------------------------------------
    def records(self, quiet: bool = False) -> list[Record]:
        return list(self._iter(quiet))

    def _iter(self, quiet: bool) -> Iterator[Record]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return
        lines = raw.split(b"\n")
        for i, line in enumerate(lines, 1):
            if not line.strip():
                continue
            last = i == len(lines)  # no newline after it: torn, or being written right now
            if last:
                continue  # no newline yet: torn by a dead writer, or being written right now
            try:
                rec = json.loads(line.decode("utf-8"))
                if not isinstance(rec, dict) or not isinstance(rec.get("trial"), int):
                    raise ValueError("not a trial record")
            except (ValueError, UnicodeDecodeError) as e:
                if not quiet:
                    warnings.warn(f"{self.path}:{i}: skipping corrupt lineage line ({e})", LineageWarning,
                                  stacklevel=3)
                continue
            yield rec

    def get(self, trial: int) -> Record | None:
        """The trial's latest record: numbers are unique, except that a failed baseline measured again appends a
        second trial-0 record after the first (both stay)."""
        found = None
        for r in self.records(quiet=True):
            if r["trial"] == trial:
                found = r
        return found


# -- queries over a list of records (pure functions, easy to test) -------------------------------------
def _scored(records: list[Record], labels: tuple[str, ...]) -> list[Record]:
    return [r for r in records if r.get("label") in labels and isinstance(r.get("score"), (int, float))]


def ranked(records: list[Record], direction: str, labels: tuple[str, ...] = BEST_LABELS) -> list[Record]:
    """Records with ``labels``, best first (ties: earlier trial first)."""
    sign = 1 if direction == "minimize" else -1
    return sorted(_scored(records, labels), key=lambda r: (sign * r["score"], r["trial"]))


def best(records: list[Record], direction: str) -> Record | None:
    r = ranked(records, direction)
    return r[0] if r else None


def top_k(records: list[Record], direction: str, k: int) -> list[Record]:
    return ranked(records, direction)[:k]


def ancestors(records: list[Record], trial: int) -> list[Record]:
    """The chain from ``trial``'s parent back to the baseline, nearest first."""
    by = {r["trial"]: r for r in records}
    out, seen = [], {trial}
    cur = by.get(trial)
    while cur is not None and cur.get("parent") is not None and cur["parent"] not in seen:
        seen.add(cur["parent"])
        cur = by.get(cur["parent"])
        if cur is not None:
            out.append(cur)
    return out


def recent(records: list[Record], n: int) -> list[Record]:
    return sorted(records, key=lambda r: r["trial"])[-n:] if n > 0 else []


def failures(records: list[Record], n: int) -> list[Record]:
    return recent([r for r in records if r.get("label") in FAILURES], n)


def make_view(task: str, metric: str, direction: str, records: list[Record], *, top: int = 5,
              n_recent: int = 10, n_failures: int = 5, objective: Any = None,
              in_flight: Sequence[Record] = ()) -> LineageView:
    b = best(records, direction)
    rule = ""
    if objective is not None:
        from .acceptance import describe_rule, measured_noise, per_seed, runs_behind

        rule = describe_rule(objective, measured_noise(records, objective), len(per_seed(b)) if b else 1,
                             b.get("score") if b else None, runs_behind(b))
    return LineageView(
        task=task, metric=metric, direction=direction, n_trials=len(records), best=b,
        top_k=top_k(records, direction, top), ancestors_of_best=ancestors(records, b["trial"]) if b else [],
        recent=recent(records, n_recent), failures=failures(records, n_failures), records=list(records),
        rule=rule, in_flight=list(in_flight))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a side file (promotions, replays, rechecks): missing file -> [], unreadable lines skipped."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def recorded_objective(records: Sequence[Record]) -> Any:
    """The objective as the baseline record keeps it (None for imported or older lineages): what readers without
    the task's objects (an xdist controller, the report, show) judge by."""
    from .task import Objective

    base = next((r for r in reversed(records) if r.get("trial") == 0), None) or {}
    o = base.get("objective")
    if not isinstance(o, dict):
        return None
    try:
        return Objective(**o)
    except (TypeError, ValueError):
        return None


def latest_per_trial(records: Sequence[Record]) -> list[Record]:
    """One record per trial number (a re-measured baseline's latest record), in trial order."""
    by: dict[int, Record] = {}
    for r in records:
        if isinstance(r.get("trial"), int):
            by[r["trial"]] = r
    return [by[t] for t in sorted(by)]
