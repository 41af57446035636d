"""The editing tools a model-driven agent works through, executed against an in-memory copy of the recipe.

The tools have the shape of Anthropic's text-editor tool (``view``, ``str_replace``, ``insert``, ``create``)
plus ``submit_trial``. Every edit is checked against the specialist's surface (and the evaluator's forbidden
patterns) as it lands, so an out-of-surface edit is refused with a message the model can act on instead of
costing a whole trial as a ``surface_violation``.
"""
from __future__ import annotations

import difflib
import posixpath
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

from ..edits import Edit, EditError, SurfaceViolation, apply_edits, check_compiles, check_forbidden, check_surface

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


def tool_specs(metric: str, direction: str) -> list[dict[str, Any]]:
    """JSON-schema tool definitions for the Messages API (the same list every session, so it caches)."""
    path = {"type": "string", "description": "File path relative to the recipe folder, e.g. 'train.py'."}
    return [
        {"name": "view",
         "description": "Show a recipe file with line numbers (or, for path '.', list the recipe's files and "
                        "what you may edit in each). view_range [start, end] limits the lines shown "
                        "(1-based, inclusive; end -1 means to the end of the file).",
         "input_schema": {"type": "object", "properties": {
             "path": path,
             "view_range": {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 2}},
             "required": ["path"]}},
        {"name": "str_replace",
         "description": "Replace old_str with new_str in a file. old_str must match the file exactly once, "
                        "whitespace included (copy it from view output without the line numbers). "
                        "Edits outside your surface are refused.",
         "input_schema": {"type": "object", "properties": {
             "path": path, "old_str": {"type": "string"}, "new_str": {"type": "string"}},
             "required": ["path", "old_str", "new_str"]}},
        {"name": "insert",
         "description": "Insert new_str after line insert_line of a file (0 inserts at the top). "
                        "Edits outside your surface are refused.",
         "input_schema": {"type": "object", "properties": {
             "path": path, "insert_line": {"type": "integer", "minimum": 0}, "new_str": {"type": "string"}},
             "required": ["path", "insert_line", "new_str"]}},
        {"name": "create",
         "description": "Create a file (or overwrite a whole file) with file_text. Only files your surface "
                        "owns whole may be created or overwritten.",
         "input_schema": {"type": "object", "properties": {
             "path": path, "file_text": {"type": "string"}},
             "required": ["path", "file_text"]}},
        {"name": "submit_trial",
         "description": "Submit your edits as one trial and end the session. Call it exactly once, after your "
                        f"edits. expected_delta is your predicted change of {metric} versus the parent trial "
                        f"(the objective is to {direction} it; null if you cannot guess). parent optionally "
                        "names another recorded trial to branch from; by default your edits apply to the "
                        "trial whose files you were shown.",
         "input_schema": {"type": "object", "properties": {
             "hypothesis": {"type": "string",
                            "description": "One or two sentences: what you changed and why it should help."},
             "expected_delta": {"type": ["number", "null"]},
             "parent": {"type": ["integer", "null"]}},
             "required": ["hypothesis", "expected_delta"]}},
    ]


def numbered(text: str, start: int = 1) -> str:
    """``cat -n`` style numbering, as the text-editor tool shows files."""
    return "".join(f"{i:6d}\t{line}" for i, line in enumerate(text.splitlines(keepends=True), start))


class Workspace:
    """Recipe files a session edits, with the surface enforced on every edit.

    ``before`` is the parent trial's files; ``files`` the session's current state. ``known_parents`` are the
    trials ``submit_trial(parent=...)`` may name (``None``: any integer is accepted).
    """

    def __init__(self, files: Mapping[str, str], specialist: "Specialist", *, forbidden: tuple[str, ...] = (),
                 parent: int = 0, known_parents: set[int] | None = None, max_view_chars: int = 60_000) -> None:
        self.before = dict(files)
        self.files = dict(files)
        self.specialist = specialist
        self.forbidden = tuple(forbidden)
        self.parent = parent
        self.known_parents = known_parents
        self.max_view_chars = max_view_chars
        self.refused = 0
        self.calls = 0
        self.errors = 0
        self.last_error = ""

    # -- dispatch ----------------------------------------------------------------------------------------
    def run(self, name: str, args: Any) -> str | Submission:
        """Run one tool call; raise :class:`ToolError` with a message for the model when it fails."""
        self.calls += 1
        try:
            if not isinstance(args, dict):
                raise ToolError(f"{name}: input must be a JSON object, got {type(args).__name__}")
            handler = {"view": self.view, "str_replace": self.str_replace, "insert": self.insert,
                       "create": self.create, "submit_trial": self.submit}.get(name)
            if handler is None:
                raise ToolError(f"unknown tool {name!r}; use view, str_replace, insert, create or submit_trial")
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
        new = args.get("new_str", args.get("insert_text"))
        if not isinstance(new, str):
            raise ToolError("insert: 'new_str' (a string) is required")
        line = args.get("insert_line")
        if isinstance(line, str) and line.strip().isdigit():
            line = int(line)
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
        expected = args.get("expected_delta")
        if expected is not None:
            try:
                expected = float(expected)
            except (TypeError, ValueError):
                raise ToolError(f"submit_trial: expected_delta must be a number or null, got {expected!r}") from None
            if expected != expected or expected in (float("inf"), float("-inf")):
                raise ToolError("submit_trial: expected_delta must be a finite number or null")
        parent = args.get("parent")
        if isinstance(parent, str) and parent.strip().lstrip("-").isdigit():
            parent = int(parent)
        if parent is not None and (not isinstance(parent, int) or isinstance(parent, bool)):
            raise ToolError(f"submit_trial: parent must be a trial number or null, got {parent!r}")
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
        return Submission(hypothesis.strip(), expected, parent, edits)

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
