"""The editing tools a model-driven agent works through, executed against an in-memory copy of the recipe.

The tools have the shape of Anthropic's text-editor tool (``view``, ``str_replace``, ``insert``, ``create``)
plus ``submit_trial``. Every edit is checked against the specialist's surface (and the evaluator's forbidden
patterns) as it lands, so an out-of-surface edit is refused with a message the model can act on instead of
costing a whole trial as a ``surface_violation``. Every call's input is checked against its tool's schema
first (required fields, types, unknown fields): a miss is a tool error the model can fix, never a guess.
"""
from __future__ import annotations

import difflib
import json
import posixpath
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping

from ..edits import (Edit, EditError, SurfaceViolation, apply_edits, check_compiles, check_forbidden, check_surface,
                     split_regions)

if TYPE_CHECKING:
    from ..task import Specialist

SNIPPET_CONTEXT = 4  # lines shown around an edit in its tool result


class ToolError(Exception):
    """A tool call that failed; its message goes back to the model as an ``is_error`` tool result."""


class Refused(ToolError):
    """An edit outside the specialist's surface (counted in the proposal's ``refused_edits``)."""


@dataclass(frozen=True)
class Submission:
    hypothesis: str
    expected_delta: float | None
    parent: int | None
    edits: list[Edit]
    notes: str = ""


EDIT_TOOLS = ("view", "str_replace", "insert", "create", "submit_trial")


def _schema(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}


def tool_specs(metric: str, direction: str, *, smoke: str = "", extra: list[dict[str, Any]] | None = None
               ) -> list[dict[str, Any]]:
    """JSON-schema tool definitions for the Messages API (the same list every session of a run, so it caches).

    ``smoke`` describes the smoke test when the harness offers one (empty: no ``smoke_test`` tool); ``extra``
    are more tools (the lineage queries), placed before ``submit_trial``.
    """
    path = {"type": "string", "description": "File path relative to the recipe folder, e.g. 'train.py'."}
    specs = [
        {"name": "view",
         "description": "Show a recipe file with line numbers (or, for path '.', list the recipe's files and "
                        "what you may edit in each). view_range [start, end] limits the lines shown "
                        "(1-based, inclusive; end -1 means to the end of the file).",
         "input_schema": _schema({
             "path": path,
             "view_range": {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 2,
                            "description": "[first line, last line]; -1 as the last line means the end."}},
             ["path"])},
        {"name": "str_replace",
         "description": "Replace old_str with new_str in a file. old_str must match the file exactly once, "
                        "whitespace included (copy it from view output without the line numbers). "
                        "Edits outside your surface are refused.",
         "input_schema": _schema({"path": path, "old_str": {"type": "string"}, "new_str": {"type": "string"}},
                                 ["path", "old_str", "new_str"])},
        {"name": "insert",
         "description": "Insert new_str after line insert_line of a file (0 inserts at the top). "
                        "Edits outside your surface are refused.",
         "input_schema": _schema({"path": path, "insert_line": {"type": "integer", "minimum": 0},
                                  "new_str": {"type": "string"}}, ["path", "insert_line", "new_str"])},
        {"name": "create",
         "description": "Create a file (or overwrite a whole file) with file_text. Only files your surface "
                        "owns whole may be created or overwritten.",
         "input_schema": _schema({"path": path, "file_text": {"type": "string"}}, ["path", "file_text"])},
    ]
    if smoke:
        specs.append({"name": "smoke_test", "description": smoke, "input_schema": _schema({}, [])})
    specs += list(extra or [])
    specs.append(
        {"name": "submit_trial",
         "description": "Submit your edits as one trial and end the session. Call it exactly once, after your "
                        f"edits. expected_delta is your predicted change of {metric} versus the parent trial, in "
                        f"{metric}'s own units (the objective is to {direction} it; negative means lower; null if "
                        "you cannot guess, but the field is required). parent optionally names another recorded "
                        "trial to branch from; by default your edits apply to the trial whose files you were shown.",
         "input_schema": _schema({
             "hypothesis": {"type": "string",
                            "description": "One or two sentences: what you changed and why it should help."},
             "expected_delta": {"type": ["number", "null"],
                                "description": f"Predicted change of {metric} versus the parent, in its units."},
             "notes": {"type": "string",
                       "description": "For the specialists after you: what you checked (a smoke test, a trial "
                                      "you built on), what result would confirm or refute the idea, what to try "
                                      "next. Kept in the trial's record and shown with it in the lineage."},
             "parent": {"type": ["integer", "null"],
                        "description": "Another recorded legal trial to apply your change to (optional)."}},
             ["hypothesis", "expected_delta"])})
    return specs


def _type_ok(value: Any, kind: str) -> bool:
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, {"string": str, "boolean": bool, "array": list, "object": dict,
                              "null": type(None)}.get(kind, object))


def check_input(tool: str, schema: Mapping[str, Any], args: Any) -> None:
    """Raise :class:`ToolError` naming the field when ``args`` does not fit ``schema`` (required fields, types,
    enums, bounds, unknown fields) -- the subset of JSON Schema the tool definitions use."""
    if not isinstance(args, dict):
        raise ToolError(f"{tool}: input must be a JSON object, got {type(args).__name__}")
    props: Mapping[str, Any] = schema.get("properties") or {}
    missing = [k for k in schema.get("required") or () if k not in args]
    if missing:
        hints = "; ".join(f"{k}: {props.get(k, {}).get('description') or _kinds(props.get(k, {}))}" for k in missing)
        raise ToolError(f"{tool}: required field(s) {', '.join(repr(k) for k in missing)} missing ({hints}); "
                        f"call {tool} again with them")
    if schema.get("additionalProperties") is False:
        unknown = sorted(k for k in args if k not in props)
        if unknown:
            raise ToolError(f"{tool}: unknown field(s) {', '.join(repr(k) for k in unknown)}; its fields are "
                            f"{', '.join(sorted(props)) or 'none'}")
    for key, value in args.items():
        spec = props.get(key) or {}
        kinds = spec.get("type")
        kinds = [kinds] if isinstance(kinds, str) else list(kinds or [])
        if kinds and not any(_type_ok(value, k) for k in kinds):
            raise ToolError(f"{tool}: '{key}' must be {_kinds(spec)}, got {json.dumps(value, default=str)[:80]}")
        if "enum" in spec and value not in spec["enum"]:
            raise ToolError(f"{tool}: '{key}' must be one of {', '.join(map(str, spec['enum']))}, got {value!r}")
        if _type_ok(value, "number") and "minimum" in spec and value < spec["minimum"]:
            raise ToolError(f"{tool}: '{key}' must be >= {spec['minimum']}, got {value}")
        if _type_ok(value, "number") and "maximum" in spec and value > spec["maximum"]:
            raise ToolError(f"{tool}: '{key}' must be <= {spec['maximum']}, got {value}")
        if isinstance(value, list):
            if len(value) < spec.get("minItems", 0) or len(value) > spec.get("maxItems", len(value)):
                raise ToolError(f"{tool}: '{key}' must have {spec.get('minItems')} to {spec.get('maxItems')} items, "
                                f"got {len(value)}")
            item = (spec.get("items") or {}).get("type")
            if item and not all(_type_ok(v, item) for v in value):
                raise ToolError(f"{tool}: every item of '{key}' must be {item}, got {json.dumps(value)[:80]}")


def _kinds(spec: Mapping[str, Any]) -> str:
    kinds = spec.get("type")
    kinds = [kinds] if isinstance(kinds, str) else list(kinds or ["any value"])
    names = {"integer": "an integer", "number": "a number", "string": "a string", "boolean": "true or false",
             "array": "an array", "object": "an object", "null": "null"}
    return " or ".join(names.get(k, k) for k in kinds)


def numbered(text: str, start: int = 1) -> str:
    """``cat -n`` style numbering, as the text-editor tool shows files."""
    return "".join(f"{i:6d}\t{line}" for i, line in enumerate(text.splitlines(keepends=True), start))


class Workspace:
    """Recipe files a session edits, with the surface enforced on every edit.

    ``before`` is the parent trial's files; ``files`` the session's current state. ``known_parents`` are the
    trials ``submit_trial(parent=...)`` may name (``None``: any integer is accepted).
    """

    def __init__(self, files: Mapping[str, str], specialist: "Specialist", *, forbidden: tuple[str, ...] = (),
                 parent: int = 0, known_parents: set[int] | None = None, max_view_chars: int = 60_000,
                 specs: list[dict[str, Any]] | None = None,
                 handlers: Mapping[str, Callable[[dict], str]] | None = None) -> None:
        self.before = dict(files)
        self.files = dict(files)
        self.specialist = specialist
        self.forbidden = tuple(forbidden)
        self.parent = parent
        self.known_parents = known_parents
        self.max_view_chars = max_view_chars
        self.specs = {s["name"]: s["input_schema"] for s in (specs or tool_specs("score", "minimize"))}
        self.handlers: dict[str, Callable[[dict], Any]] = {
            "view": self.view, "str_replace": self.str_replace, "insert": self.insert, "create": self.create,
            "submit_trial": self.submit, **dict(handlers or {})}
        self.refused = 0
        self.calls = 0
        self.errors = 0
        self.last_error = ""

    # -- dispatch ----------------------------------------------------------------------------------------
    def run(self, name: str, args: Any) -> str | Submission:
        """Run one tool call; raise :class:`ToolError` with a message for the model when it fails."""
        self.calls += 1
        try:
            handler = self.handlers.get(name) if name in self.specs else None
            if handler is None:
                raise ToolError(f"unknown tool {name!r}; the tools are: {', '.join(self.specs)}")
            if name == "insert" and isinstance(args, dict) and "insert_text" in args and "new_str" not in args:
                args = {("new_str" if k == "insert_text" else k): v for k, v in args.items()}  # the editor's name
            check_input(name, self.specs[name], args)
            return handler(args)
        except ToolError as e:
            self.errors += 1
            self.last_error = f"{name}: {e}"
            raise

    # -- reading -----------------------------------------------------------------------------------------
    def annotation(self, path: str) -> str:
        surface = self.specialist.surface
        if surface.owns_file(path):
            return "you may edit the whole file"
        regions = surface.region_map().get(path)
        if regions:
            return "you may edit only region(s) " + ", ".join(regions)
        return "read-only for you"

    def listing(self) -> str:
        lines = [f"{p}  ({len(t.splitlines())} lines; {self.annotation(p)})" for p, t in sorted(self.files.items())]
        pats = self.specialist.surface.files
        new = [p for p in pats if not any(ch in p for ch in "*?[") and p not in self.files]
        globs = [p for p in pats if any(ch in p for ch in "*?[")]
        if new:
            lines.append("files you may create: " + ", ".join(new))
        if globs:
            lines.append("you may also create files matching: " + ", ".join(globs))
        return "\n".join(lines)

    def view(self, args: dict) -> str:
        raw = _string(args, "path", "view")
        if raw.strip() in ("", ".", "./", "/"):
            return self.listing()
        path = self._existing(raw, "view")
        text = self.files[path]
        rng = args.get("view_range")
        lines = text.splitlines(keepends=True)
        start, end = 1, len(lines)
        if rng is not None:
            if (not isinstance(rng, list) or len(rng) != 2
                    or not all(isinstance(v, int) and not isinstance(v, bool) for v in rng)):
                raise ToolError(f"view: view_range must be two integers [start, end], got {rng!r}")
            start, end = rng[0], (len(lines) if rng[1] == -1 else rng[1])
            if not 1 <= start <= max(len(lines), 1) or end < start or end > len(lines):
                raise ToolError(f"view: view_range {rng} is outside {path}, which has {len(lines)} lines")
        out = numbered("".join(lines[start - 1:end]), start)
        if len(out) > self.max_view_chars:
            cut = out[:self.max_view_chars]
            shown = cut.count("\n")
            out = cut[:cut.rfind("\n") + 1] + (f"... (output truncated after {shown} lines; "
                                               f"use view_range to see the rest of {path})\n")
        return out or f"({path} is empty)"

    # -- editing -----------------------------------------------------------------------------------------
    def str_replace(self, args: dict) -> str:
        path = self._existing(_string(args, "path", "str_replace"), "str_replace")
        old, new = _string(args, "old_str", "str_replace"), _string(args, "new_str", "str_replace")
        text = self.files[path]
        if not old:
            raise ToolError("str_replace: old_str is empty; give the exact text to replace")
        n = text.count(old)
        if n != 1:
            hint = ("copy it exactly from view output (no line numbers, same indentation)" if n == 0
                    else "include more surrounding lines so it is unique")
            raise ToolError(f"str_replace: old_str {'was not found' if n == 0 else f'matches {n} times'} "
                            f"in {path}; it must match exactly once: {hint}")
        at = text.index(old)
        updated = text[:at] + new + text[at + len(old):]
        return self._land(path, updated, first_line=text[:at].count("\n") + 1, n_lines=new.count("\n") + 1)

    def insert(self, args: dict) -> str:
        path = self._existing(_string(args, "path", "insert"), "insert")
        new = _string(args, "new_str", "insert")
        line = args.get("insert_line")
        lines = self.files[path].splitlines(keepends=True)
        if not isinstance(line, int) or isinstance(line, bool) or not 0 <= line <= len(lines):
            raise ToolError(f"insert: insert_line must be an integer from 0 to {len(lines)} "
                            f"(the number of lines in {path}), got {line!r}")
        if line and not lines[line - 1].endswith("\n"):
            lines[line - 1] += "\n"
        block = new if new.endswith("\n") or not new else new + "\n"
        updated = "".join(lines[:line]) + block + "".join(lines[line:])
        return self._land(path, updated, first_line=line + 1, n_lines=block.count("\n"))

    def create(self, args: dict) -> str:
        path = _clean_path(_string(args, "path", "create"), "create")
        text = _string(args, "file_text", "create")
        return self._land(path, text, first_line=1, n_lines=text.count("\n") + 1, verb="created")

    def _land(self, path: str, updated: str, *, first_line: int, n_lines: int, verb: str = "edited") -> str:
        candidate = dict(self.files)
        candidate[path] = updated
        try:
            check_surface(self.before, candidate, self.specialist.surface, self.specialist.name)
            check_forbidden(self.before, candidate, self.forbidden)
        except SurfaceViolation as e:
            self.refused += 1
            raise Refused(f"edit refused, nothing was changed: it {e}. Your surface: "
                          f"{self.specialist.surface.describe()}. Keep the marker lines and everything "
                          f"outside your regions byte-identical; use view to see where your regions are."
                          ) from None
        self.files = candidate
        lines = updated.splitlines(keepends=True)
        lo = max(1, first_line - SNIPPET_CONTEXT)
        hi = min(len(lines), first_line + n_lines - 1 + SNIPPET_CONTEXT)
        msg = f"{path} {verb}. Lines {lo}-{hi} now read:\n" + numbered("".join(lines[lo - 1:hi]), lo)
        if path.endswith(".py"):
            try:
                check_compiles(candidate, {path})
            except EditError as e:
                msg += f"\nWarning: {e}. Fix it before you submit."
        return msg

    # -- submitting --------------------------------------------------------------------------------------
    def submit(self, args: dict) -> Submission:
        hypothesis = args.get("hypothesis")
        if not isinstance(hypothesis, str) or not hypothesis.strip():
            raise ToolError("submit_trial: 'hypothesis' must be a non-empty string saying what you changed "
                            "and why")
        expected = args["expected_delta"]  # required (null allowed): check_input saw to it
        if expected is not None:
            expected = float(expected)
            if expected != expected or expected in (float("inf"), float("-inf")):
                raise ToolError("submit_trial: expected_delta must be a finite number or null")
        notes = args.get("notes") or ""
        parent = args.get("parent")
        if parent == self.parent:
            parent = None
        if parent is not None and self.known_parents is not None and parent not in self.known_parents:
            raise ToolError(f"submit_trial: trial {parent} cannot be a parent (it is not a recorded trial "
                            f"that ran; candidates: {sorted(self.known_parents)[-20:]}); omit parent to "
                            f"build on trial {self.parent}")
        changed = self.changed()
        if not changed:
            raise ToolError("submit_trial: you have not changed any file; make your edit with str_replace, "
                            "insert or create first, then submit")
        try:
            check_compiles(self.files, changed)
        except EditError as e:
            raise ToolError(f"submit_trial: {e}; fix it, then submit again") from None
        edits = self.edits(portable=parent is not None)
        if edits is None:
            raise ToolError(f"submit_trial: your change cannot be expressed as edits that would apply to "
                            f"trial {parent} as well; submit without parent to build on trial {self.parent}")
        return Submission(hypothesis.strip(), expected, parent, edits, notes.strip())

    def changed(self) -> set[str]:
        return {p for p in set(self.before) | set(self.files) if self.before.get(p) != self.files.get(p)}

    def edits(self, portable: bool = False) -> list[Edit] | None:
        """Edits that turn ``before`` into ``files``.

        By default one whole-file edit per changed file (exact on this parent). ``portable`` edits are
        minimal SEARCH/REPLACE hunks that may also apply to another parent; ``None`` when they cannot be
        made to reproduce the change exactly.
        """
        out: list[Edit] = []
        for path in sorted(self.changed()):
            old, new = self.before.get(path), self.files[path]
            if old is None:
                out.append(Edit(path, "", new, create=True))
            elif portable:
                out.extend(hunk_edits(path, old, new))
            else:
                out.append(Edit(path, old, new))
        try:
            ok = apply_edits(self.before, out) == self.files
        except EditError:
            ok = False
        if not ok:
            if portable:
                return None
            raise ToolError("submit_trial: your change cannot be expressed as recipe edits (an empty file "
                            "cannot be edited in place); put the change in a non-empty file")
        return out

    # -- paths -------------------------------------------------------------------------------------------
    def _existing(self, raw: str, tool: str) -> str:
        path = _clean_path(raw, tool)
        if path not in self.files:
            raise ToolError(f"{tool}: {raw!r} is not a recipe file; the files are: {', '.join(sorted(self.files))}")
        return path


def _string(args: dict, key: str, tool: str) -> str:
    v = args.get(key)
    if not isinstance(v, str):
        what = "missing" if key not in args else f"a {type(v).__name__}, not a string"
        raise ToolError(f"{tool}: '{key}' is {what}; it is required and must be a string")
    return v


def _clean_path(raw: str, tool: str) -> str:
    p = raw.strip().replace("\\", "/")
    while p.startswith("./"):
        p = p[2:]
    p = posixpath.normpath(p.lstrip("/")) if p else p
    if not p or p == "." or p.startswith("../") or p == "..":
        raise ToolError(f"{tool}: path {raw!r} is not inside the recipe folder; use paths like 'train.py'")
    return p


def hunk_edits(path: str, old: str, new: str, context: int = 3) -> list[Edit]:
    """Minimal SEARCH/REPLACE edits from ``old`` to ``new``, each search widened until it is unique."""
    a, b = old.splitlines(keepends=True), new.splitlines(keepends=True)
    out: list[Edit] = []
    current = old
    for group in difflib.SequenceMatcher(None, a, b, autojunk=False).get_grouped_opcodes(context):
        i1, i2, j1, j2 = group[0][1], group[-1][2], group[0][3], group[-1][4]
        # Widen with unchanged lines on both sides until the search text is unique in the file.
        while current.count("".join(a[i1:i2])) != 1 and (i1 > 0 or i2 < len(a)):
            if i1 > 0:
                i1, j1 = i1 - 1, j1 - 1
            if i2 < len(a):
                i2, j2 = i2 + 1, j2 + 1
        search, replace = "".join(a[i1:i2]), "".join(b[max(j1, 0):j2])
        out.append(Edit(path, search, replace))
        current = current.replace(search, replace, 1) if search else current
    return out


# -- what kind of change a submission is (the record's ``kind``, as the offline agent writes it) --------------
_ASSIGN = re.compile(r"^\s*(?P<name>[A-Za-z_]\w*)\s*(?::[^=]+)?=\s*(?P<value>[-+]?(?:\d+\.\d*|\.\d+|\d+)"
                     r"(?:[eE][-+]?\d+)?|True|False)\s*(?:#.*)?$")


def _line_regions(text: str) -> list[str | None]:
    """The marked region of each line of ``text`` (None outside every region, marker lines included)."""
    out: list[str | None] = []
    for name, chunk in split_regions(text):
        out += [name] * len(chunk.splitlines())
    return out


def change_kind(before: Mapping[str, str], after: Mapping[str, str], surface: Any) -> tuple[str, float | None]:
    """``path:region:knob:direction`` and the step factor when the change sets one constant to another number
    (``up``/``down``) or flips a boolean (``toggle``); else ``path:region:edit`` for a change within one region
    (``file`` for a file owned whole) or ``multi:<places>`` -- so later proposals can learn per knob."""
    places: list[str] = []
    pairs: list[tuple[str, str, str, str]] = []
    for path in sorted(set(before) | set(after)):
        old, new = before.get(path), after.get(path)
        if old == new:
            continue
        if old is None or new is None or surface.owns_file(path):
            places.append(f"{path}:file")
            a, b = (old or "").splitlines(), (new or "").splitlines()
            regions: list[str | None] = ["file"] * max(len(a), 1)
        else:
            a, b = old.splitlines(), new.splitlines()
            regions = _line_regions(old) or [None]
        for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
            if op == "equal":
                continue
            region = regions[min(i1, len(regions) - 1)] or "outside"
            places.append(f"{path}:{region}")
            if op == "replace" and i2 - i1 == 1 and j2 - j1 == 1:
                pairs.append((path, region, a[i1], b[j1]))
            else:
                pairs.append((path, region, "", ""))
    places = list(dict.fromkeys(places))
    if len(pairs) == 1 and pairs[0][2]:
        path, region, old_line, new_line = pairs[0]
        m_old, m_new = _ASSIGN.match(old_line), _ASSIGN.match(new_line)
        if m_old and m_new and m_old["name"] == m_new["name"]:
            v_old, v_new = m_old["value"], m_new["value"]
            if {v_old, v_new} == {"True", "False"}:
                return f"{path}:{region}:{m_old['name']}:toggle", None
            try:
                x, y = float(v_old), float(v_new)
            except ValueError:
                x = y = 0.0
            if x != y and x * y > 0:
                return f"{path}:{region}:{m_old['name']}:{'up' if y > x else 'down'}", max(y / x, x / y)
            if x != y:
                return f"{path}:{region}:{m_old['name']}:{'up' if y > x else 'down'}", None
    if len(places) == 1:
        return f"{places[0]}:edit", None
    return "multi:" + ",".join(places[:4]) + (",..." if len(places) > 4 else ""), None
