"""Promote: write a trial's recipe files into the task's recipe folder (an ordinary diff for the project's own
git), record the promotion next to the lineage (``promotions.jsonl``), and, where the task has a committed
reference, re-measure the promoted recipe and make it the new reference.

The recipe folder is overwritten only when its current content is the code of some recorded trial (the
baseline, or an earlier promotion): changes of the user's own that no trial recorded are never lost silently.
"""
from __future__ import annotations

import difflib
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from .edits import content_hash
from .lineage import LEGAL, HeldLock, Lineage, Record, best
from .task import display_path
from .vcs import read_recipe

FILE_NAME = "promotions.jsonl"


class PromoteError(ValueError):
    """The promotion cannot go ahead; the message says why and what to do."""


@dataclass
class Promotion:
    trial: int
    recipe: Path
    diff: str
    changed: list[str]
    record: dict[str, Any] = field(default_factory=dict)


def text_files(folder: Path) -> dict[str, str]:
    out = {}
    for rel, data in read_recipe(folder).items():
        try:
            out[rel] = data.decode("utf-8")
        except UnicodeDecodeError:
            continue
    return out


def pick(records: Sequence[Record], which: str) -> Record:
    """``best`` or a trial number -> that trial's (latest) record."""
    if not records:
        raise PromoteError("the lineage holds no trials")
    if which == "best":
        direction = next((r.get("direction") for r in records if r.get("direction")), "minimize")
        b = best(list(records), str(direction))
        if b is None:
            raise PromoteError("the lineage has no legal scored trial to promote")
        return b
    try:
        n = int(which)
    except ValueError:
        raise PromoteError(f"TRIAL must be a trial number or 'best', got {which!r}") from None
    found = [r for r in records if r.get("trial") == n]
    if not found:
        raise PromoteError(f"the lineage has no trial {n} (it holds trials {min(r['trial'] for r in records)}.."
                           f"{max(r['trial'] for r in records)})")
    return found[-1]


def recipe_folder(info: dict[str, Any] | None, explicit: Path | None, lineage_dir: Path) -> Path:
    if explicit is not None:
        folder = Path(explicit)
    elif info and info.get("recipe"):
        folder = Path(info["recipe"])
    else:
        raise PromoteError(f"{lineage_dir} has no task.json naming the task's recipe folder (a trial run writes "
                           f"it): pass --recipe DIR")
    if not folder.is_dir():
        raise PromoteError(f"recipe folder {folder} does not exist; pass --recipe DIR")
    return folder


def promote(lineage_dir: Path, which: str, *, recipe: Path | None = None, force: bool = False) -> Promotion:
    """Write the chosen trial's files into the recipe folder and record it (no re-measure: see ``remeasure``)."""
    from .taskinfo import read as read_info
    from .vcs import TaskRepo

    lineage_dir = Path(lineage_dir)
    lin = Lineage(lineage_dir / "lineage.jsonl")
    records = lin.records()
    rec = pick(records, which)
    trial = int(rec["trial"])
    if rec.get("imported"):
        raise PromoteError(f"trial {trial} was imported from {rec['imported'].get('source')}: there is no code to "
                           f"promote")
    if rec.get("label") not in LEGAL and not force:
        raise PromoteError(f"trial {trial} is labelled {rec.get('label')} ({rec.get('notes')}): promoting it would "
                           f"put a recipe that failed into the task; pass --force to do it anyway")
    if not (lineage_dir / "repo" / ".git").exists():
        raise PromoteError(f"{lineage_dir / 'repo'} does not exist: the trial's code is in the task repository")
    info = read_info(lineage_dir)
    folder = recipe_folder(info, recipe, lineage_dir)
    current = text_files(folder)
    known = {r.get("content_hash") for r in records if r.get("content_hash")}
    if content_hash(current) not in known and not force:
        raise PromoteError(f"{folder} holds code that no trial in {lin.path} recorded (changes of your own?); "
                           f"commit or stash them first, or pass --force to overwrite them")
    repo = TaskRepo(lineage_dir / "repo")
    commit = repo.tag_commit(trial) or str(rec.get("commit") or "")
    if not commit:
        raise PromoteError(f"trial {trial} has no commit in {lineage_dir / 'repo'}")
    with tempfile.TemporaryDirectory(prefix="autoresearch-promote-") as d:
        src = Path(d) / "tree"
        repo.export(commit, src)
        new = read_recipe(src)
    old = read_recipe(folder)
    changed = sorted(p for p in set(old) | set(new) if old.get(p) != new.get(p))
    diff = _diff(folder, old, new, changed)
    for rel in changed:
        dest = folder / rel
        if rel not in new:
            dest.unlink()
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(new[rel])
    entry = {"trial": trial, "commit": commit, "content_hash": rec.get("content_hash"), "label": rec.get("label"),
             "score": rec.get("score"), "metric": rec.get("metric"), "specialist": rec.get("specialist"),
             "hypothesis": rec.get("hypothesis"), "recipe": str(folder.resolve()), "files": changed,
             "previous_hash": content_hash(current), "forced": force,
             "promoted": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    return Promotion(trial, folder, diff, changed, entry)


def record(lineage_dir: Path, entry: dict[str, Any]) -> None:
    """Append the promotion to ``promotions.jsonl`` beside the lineage, under its own lock."""
    path = Path(lineage_dir) / FILE_NAME
    data = (json.dumps(entry, ensure_ascii=False, default=str) + "\n").encode("utf-8")
    with HeldLock(Path(str(path) + ".lock"), 60.0, what="recording a promotion"):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)


def remeasure(module: Path, variant: str | None, extra: Sequence[str] = ()) -> int:
    """Re-measure the task's (now promoted) recipe and rewrite its reference: a plain run with
    ``--autoresearch-update-reference``; its output goes to the terminal. Returns pytest's exit status."""
    cmd = [sys.executable, "-m", "pytest", str(module), "-p", "no:cacheprovider", "-q",
           "--autoresearch-update-reference", *(["--autoresearch-override", f"variant={variant}"] if variant else []),
           *extra]
    print("autoresearch promote: re-measuring:", " ".join(cmd), flush=True)
    return subprocess.call(cmd)


def _diff(folder: Path, old: dict[str, bytes], new: dict[str, bytes], changed: list[str]) -> str:
    out: list[str] = []
    for rel in changed:
        a, b = old.get(rel), new.get(rel)
        try:
            at = a.decode("utf-8").splitlines(keepends=True) if a is not None else []
            bt = b.decode("utf-8").splitlines(keepends=True) if b is not None else []
        except UnicodeDecodeError:
            out.append(f"Binary file {folder / rel} changed\n")
            continue
        shown = display_path(folder / rel)
        out += difflib.unified_diff(at, bt, fromfile=f"{shown} (before)" if a is not None else "/dev/null",
                                    tofile=f"{shown} (promoted)" if b is not None else "/dev/null")
    return "".join(out)
