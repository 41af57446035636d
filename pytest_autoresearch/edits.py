"""Edits an agent proposes, how they apply to recipe files, and the surface rules they must obey."""
from __future__ import annotations

import ast
import difflib
import hashlib
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    from .task import Surface

Files = Mapping[str, str]
MARK_RE = re.compile(r"^\s*#\s*autoresearch:\s*(?P<kind>begin|end)\s+(?P<name>[\w.-]+)\s*$")


@dataclass(frozen=True)
class Edit:
    """A SEARCH/REPLACE block on one recipe file (``search == ""`` with ``create=True`` writes a new file).

    ``search`` must occur exactly once in the file, so an edit never lands somewhere unintended.
    """

    path: str
    search: str
    replace: str
    create: bool = False

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"path": self.path, "search": self.search, "replace": self.replace}
        if self.create:
            d["create"] = True
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "Edit":
        return cls(str(d["path"]), str(d.get("search", "")), str(d.get("replace", "")), bool(d.get("create", False)))


class EditError(ValueError):
    """An edit that does not apply (a ``preflight_crash``)."""


class SurfaceViolation(ValueError):
    """An edit outside the specialist's surface (a ``surface_violation``)."""


def apply_edits(files: Files, edits: tuple[Edit, ...] | list[Edit]) -> dict[str, str]:
    """Return new file contents with ``edits`` applied in order; raise :class:`EditError` naming the edit."""
    out = dict(files)
    for i, e in enumerate(edits, 1):
        if ".." in e.path.split("/") or e.path.startswith("/"):
            raise EditError(f"edit {i}: path {e.path!r} leaves the recipe folder")
        if e.create:
            if e.path in out:
                raise EditError(f"edit {i}: cannot create {e.path}: it already exists")
            out[e.path] = e.replace
            continue
        if e.path not in out:
            raise EditError(f"edit {i}: {e.path} does not exist in the recipe (files: {sorted(out)})")
        if not e.search and out[e.path] == "":
            out[e.path] = e.replace  # an empty file has nothing to search for: write it whole
            continue
        n = out[e.path].count(e.search) if e.search else 0
        if n != 1:
            what = "is empty" if not e.search else f"matches {n} times" if n else "was not found"
            raise EditError(f"edit {i}: search text {what} in {e.path}; it must match exactly once "
                            f"(copy it verbatim, with enough context to be unique)")
        out[e.path] = out[e.path].replace(e.search, e.replace, 1)
    return out


def split_regions(text: str) -> list[tuple[str | None, str]]:
    """Split text into ``(region_name_or_None, chunk)``; marker lines belong to the outside (None) chunks."""
    chunks: list[tuple[str | None, str]] = []
    cur: list[str] = []
    region: str | None = None
    for line in text.splitlines(keepends=True):
        m = MARK_RE.match(line)
        if m and m["kind"] == "begin" and region is None:
            cur.append(line)
            chunks.append((None, "".join(cur)))
            cur, region = [], m["name"]
        elif m and m["kind"] == "end" and region == m["name"]:
            chunks.append((region, "".join(cur)))
            cur, region = [line], None
        else:
            cur.append(line)
    chunks.append((region, "".join(cur)))
    return chunks


def region_names(text: str) -> list[str]:
    return [name for name, _ in split_regions(text) if name is not None]


def region_text(text: str, name: str) -> str | None:
    for n, chunk in split_regions(text):
        if n == name:
            return chunk
    return None


def _frozen_view(text: str, editable: tuple[str, ...]) -> list[tuple[str | None, str]]:
    """The parts of ``text`` a specialist owning ``editable`` regions must leave unchanged."""
    return [(n, "" if n in editable else chunk) for n, chunk in split_regions(text)]


def check_surface(before: Files, after: Files, surface: "Surface", specialist: str) -> None:
    """Raise :class:`SurfaceViolation` if ``after`` differs from ``before`` outside ``surface``."""
    regions = surface.region_map()
    for path in sorted(set(before) | set(after)):
        old, new = before.get(path), after.get(path)
        if old == new or surface.owns_file(path):
            continue
        if path not in regions:
            verb = "creates" if old is None else "deletes" if new is None else "changes"
            raise SurfaceViolation(f"{verb} {path}, which is outside the surface of specialist '{specialist}' "
                                   f"({surface.describe()})")
        if old is None or new is None:
            raise SurfaceViolation(f"{'creates' if old is None else 'deletes'} {path}; specialist "
                                   f"'{specialist}' may only edit its marked regions there")
        missing = [n for n in regions[path] if n not in region_names(old)]
        if missing:
            raise SurfaceViolation(f"{path} has no marked region {missing} (surface of '{specialist}')")
        if _frozen_view(old, regions[path]) != _frozen_view(new, regions[path]):
            raise SurfaceViolation(f"changes {path} outside region(s) {list(regions[path])} of specialist "
                                   f"'{specialist}' (or moves a marker line); only text between "
                                   f"'# autoresearch: begin/end <name>' may change")


def check_compiles(files: Files, changed: set[str]) -> None:
    """Raise :class:`EditError` if a changed Python file no longer compiles."""
    for path in sorted(changed):
        if path.endswith(".py") and path in files:
            try:
                compile(files[path], path, "exec")
            except SyntaxError as e:
                raise EditError(f"{path} does not compile after the edit: {e.msg} (line {e.lineno})") from None
            except (ValueError, RecursionError, MemoryError) as e:  # null bytes; nesting the compiler cannot take
                raise EditError(f"{path} does not compile after the edit: {type(e).__name__}: "
                                f"{e or 'too large to parse'}") from None


def check_forbidden(before: Files, after: Files, patterns: tuple[str, ...]) -> None:
    """Raise :class:`SurfaceViolation` if an edit adds text matching an evaluator-owned pattern."""
    for path in sorted(after):
        added = [ln for ln in changed_lines(before.get(path, ""), after[path]) if ln.startswith("+")]
        for pat in patterns:
            for ln in added:
                if re.search(pat, ln):
                    raise SurfaceViolation(f"{path} adds {ln[1:].strip()!r}, which reaches evaluator-owned data "
                                           f"(pattern {pat!r}); the recipe may not read held-out data")


def changed_lines(old: str, new: str) -> list[str]:
    """``-``/``+`` lines between two texts, without headers or context."""
    return [ln for ln in difflib.unified_diff(old.splitlines(), new.splitlines(), lineterm="", n=0)
            if ln[:1] in "+-" and not ln.startswith(("+++", "---"))]


def content_hash(files: Files) -> str:
    """Identity of a whole recipe tree: two trials with equal hashes ran the same code."""
    h = hashlib.sha1()
    for path in sorted(files):
        h.update(path.encode() + b"\0" + files[path].encode("utf-8") + b"\0")
    return h.hexdigest()[:16]


def code_hash(files: Files) -> str:
    """Identity of what a recipe tree does: ``content_hash``, except that a Python file counts by its syntax tree,
    so comments, blank lines and layout do not make new code (a file that does not parse counts by its text)."""
    h = hashlib.sha1()
    for path in sorted(files):
        text = files[path]
        if path.endswith(".py"):
            try:
                text = ast.dump(ast.parse(text))
            except (SyntaxError, ValueError, RecursionError, MemoryError):
                pass
        h.update(path.encode() + b"\0" + text.encode("utf-8") + b"\0")
    return h.hexdigest()[:16]
