"""Checks on what crosses from recipe to evaluator, and on what the evaluator itself stands on.

- ``check_outputs``: a trial's outputs folder holds only ``seed-N`` folders of regular, singly-linked files
  (no symlinks, hard links, fifos or devices), so nothing the recipe wrote can point the evaluator elsewhere.
- ``freeze`` / ``thaw``: read-only trees (exports of a commit, validated outputs) and their removal.
- ``digest``: a fingerprint of the evaluator's files and the staged private data, taken when the session
  starts and compared before every score.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
from pathlib import Path
from typing import Iterable

SEED_DIR = re.compile(r"^seed-\d+$")
# Files above this size are fingerprinted by size, mtime and inode instead of content (staged shards).
CONTENT_LIMIT = 64 << 20


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a fifo"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"


def check_outputs(out: Path) -> str | None:
    """None when ``out`` holds only ``seed-N/`` folders of regular files; else what is wrong, by path."""
    problems: list[str] = []
    for root, dirs, files in os.walk(out, followlinks=False):
        rel_root = Path(root).relative_to(out)
        for name in sorted(dirs + files):
            p = Path(root) / name
            rel = rel_root / name
            try:
                st = os.lstat(p)
            except OSError as e:
                problems.append(f"{rel}: {e.strerror}")
                continue
            if stat.S_ISDIR(st.st_mode):
                if rel_root == Path(".") and not SEED_DIR.match(name):
                    problems.append(f"{rel}/ is not a seed folder")
                continue
            if not stat.S_ISREG(st.st_mode):
                problems.append(f"{rel} is {_kind(st.st_mode)}")
            elif st.st_nlink > 1:
                problems.append(f"{rel} is a hard link ({st.st_nlink} names)")
            elif rel_root == Path("."):
                problems.append(f"{rel} lies outside the seed folders")
        dirs[:] = [d for d in dirs if not os.path.islink(Path(root) / d)]
    if not problems:
        return None
    more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
    return "outputs must be regular files in seed-N folders: " + "; ".join(problems[:3]) + more


def freeze(path: Path) -> None:
    """Make a tree read-only (files 0444, folders 0555)."""
    for root, dirs, files in os.walk(path, topdown=False):
        for f in files:
            p = os.path.join(root, f)
            if not os.path.islink(p):
                os.chmod(p, 0o444)
        for d in dirs:
            p = os.path.join(root, d)
            if not os.path.islink(p):
                os.chmod(p, 0o555)
    if path.is_dir() and not path.is_symlink():
        os.chmod(path, 0o555)


def rmtree(path: Path) -> None:
    """Remove a tree even where it was frozen."""
    if not os.path.lexists(path):
        return

    def fix(func, p, _exc):  # noqa: ANN001 - shutil's onerror signature
        try:
            os.chmod(os.path.dirname(p), 0o755)
            if not os.path.islink(p) and os.path.isdir(p):
                os.chmod(p, 0o755)
            func(p)
        except OSError:
            pass

    if path.is_symlink() or path.is_file():
        path.unlink()
        return
    for root, dirs, _files in os.walk(path):
        for d in dirs:
            p = os.path.join(root, d)
            if not os.path.islink(p):
                try:
                    os.chmod(p, 0o755)
                except OSError:
                    pass
    try:
        os.chmod(path, 0o755)
    except OSError:
        pass
    shutil.rmtree(path, onerror=fix)


def _file_entry(p: Path) -> bytes:
    st = p.stat()
    if st.st_size > CONTENT_LIMIT:
        return f"meta:{st.st_size}:{st.st_mtime_ns}:{st.st_ino}".encode()
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.digest()


def digest(paths: Iterable[Path]) -> str:
    """One SHA-256 over files and trees (symlinks followed: staged data may link to shards elsewhere)."""
    h = hashlib.sha256()
    for base in sorted(Path(p) for p in paths):
        if base.is_file():
            h.update(str(base).encode() + b"\0" + _file_entry(base))
            continue
        for root, dirs, files in os.walk(base, followlinks=True):
            dirs.sort()
            for f in sorted(files):
                p = Path(root) / f
                if "__pycache__" in p.parts:
                    continue
                h.update(str(p.relative_to(base)).encode() + b"\0" + _file_entry(p))
    return h.hexdigest()
