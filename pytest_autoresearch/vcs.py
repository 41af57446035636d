"""The per-task git repository: the baseline as the root commit, one commit per trial, tagged ``trial-N``.

Commits are made with git's plumbing on a private index (``read-tree``, ``hash-object``, ``write-tree``,
``commit-tree``): there is no work tree to leave behind, and no hook or filter ever runs (hooks are disabled on
every command as well). git runs with the user's identity config ignored and our own identity given.
A trial's code reaches its processes as a read-only export of its commit (:meth:`TaskRepo.export`).

If the repository goes missing or loses commits, :meth:`TaskRepo.commit_for` rebuilds a trial's commit from the
lineage: the baseline from the task's recipe folder, every later trial by applying its recorded diff to its
parent, checked against the content hash the record holds.
"""
from __future__ import annotations

import os
import stat
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping

from .integrity import freeze

IDENTITY = ("-c", "user.name=pytest-autoresearch", "-c", "user.email=autoresearch@localhost")
HARDENING = ("-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false", "-c", "commit.gpgsign=false",
             "-c", "tag.gpgsign=false", "-c", "core.autocrlf=false", "-c", "core.symlinks=false")
GIT_ENV = {"GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull, "GIT_TERMINAL_PROMPT": "0",
           "GIT_OPTIONAL_LOCKS": "0"}


class RepoError(RuntimeError):
    """The task repository cannot give a trial's commit; the message says what to do."""


class RepoWarning(UserWarning):
    """Commits were rebuilt from the lineage."""


class TaskRepo:
    """``.autoresearch/<task>/repo``. Every trial's commit is tagged ``trial-N`` so none is ever unreachable."""

    def __init__(self, path: Path, lock_timeout_s: float = 600.0) -> None:
        import git  # gitpython is only needed once a trial runs

        from .lineage import HeldLock

        self.path = Path(path)
        self.lock = HeldLock(Path(str(self.path) + ".lock"), lock_timeout_s, what="committing to the task repository")
        with self.lock:
            if not (self.path / ".git").exists():
                self.path.mkdir(parents=True, exist_ok=True)
                git.Repo.init(self.path, initial_branch="main")
                self.created = True
            else:
                self.created = False
        self.repo = git.Repo(self.path)
        self.git = self.repo.git
        # gitpython starts git from a copy of os.environ: blank every secret-looking variable and the user's
        # config for all its processes (the object readers included).
        from .masking import SECRET_NAME

        self.git.update_environment(**GIT_ENV, **{k: "" for k in os.environ if SECRET_NAME.search(k)})
        if (self.path / ".git" / "worktrees").exists():
            self._g("worktree", "prune")  # left by an older version or a killed session

    def _g(self, *args: str, env: Mapping[str, str] | None = None, stdin: bytes | str | None = None,
           strip: bool = True) -> str:
        kw: dict[str, Any] = {"env": {**GIT_ENV, **(env or {})}, "strip_newline_in_stdout": strip}
        if stdin is not None:
            kw["istream"] = subprocess_input(stdin)
        return self.git.execute(["git", *IDENTITY, *HARDENING, *args], **kw)

    def tag_commit(self, trial: int) -> str | None:
        try:
            return self._g("rev-parse", "-q", "--verify", f"refs/tags/trial-{trial}^{{commit}}")
        except Exception:  # noqa: BLE001 - gitpython raises GitCommandError for a missing ref
            return None

    def _tag(self, trial: int, sha: str) -> None:
        """Tag a trial's commit; a trial number is used once (never ``tag -f``)."""
        existing = self.tag_commit(trial)
        if existing is not None and existing != sha:
            raise RepoError(f"{self.path}: tag trial-{trial} already names commit {existing[:12]}; trial numbers are "
                            f"never reused (is another session writing to this lineage with its own counter?)")
        if existing is None:
            self._g("tag", f"trial-{trial}", sha)

    # -- writing commits -----------------------------------------------------------------------------------
    def _commit_tree(self, parent: str | None, files: Mapping[str, bytes] | None, message: str,
                     patch: str | None = None) -> str:
        with tempfile.TemporaryDirectory(prefix="autoresearch-index-") as d:
            env = {"GIT_INDEX_FILE": str(Path(d) / "index")}
            if parent is not None:
                self._g("read-tree", parent, env=env)
            if patch is not None:
                self._g("apply", "--cached", "--whitespace=nowarn", "-", env=env, stdin=patch)
            if files is not None:
                current = set(self._g("ls-files", "-z", env=env, strip=False).split("\0")) - {""}
                for rel in sorted(current - set(files)):
                    self._g("update-index", "--force-remove", "--", rel, env=env)
                for rel, data in sorted(files.items()):
                    sha = self._g("hash-object", "-w", "--stdin", stdin=data)
                    self._g("update-index", "--add", "--cacheinfo", f"100644,{sha},{rel}", env=env)
            tree = self._g("write-tree", env=env)
        args = ["commit-tree", tree, "-m", message]
        if parent is not None:
            args[2:2] = ["-p", parent]
        return self._g(*args)

    def commit_baseline(self, recipe_dir: Path, message: str) -> str:
        """Commit the baseline recipe as trial 0 (idempotent: returns the existing commit)."""
        with self.lock:
            existing = self.tag_commit(0)
            if existing:
                return existing
            sha = self._commit_tree(None, read_recipe(recipe_dir), message)
            self._g("update-ref", "refs/heads/main", sha)
            self._tag(0, sha)
            return sha

    def replace_baseline(self, recipe_dir: Path, message: str) -> str:
        """A failed baseline measured again: commit the recipe folder as trial 0 anew. A changed recipe gets a new
        root commit; the failed one keeps a tag of its own (``trial-0-failed-N``), so it stays reachable."""
        with self.lock:
            old = self.tag_commit(0)
            sha = self._commit_tree(None, read_recipe(recipe_dir), message)
            if old is not None:
                if self._g("rev-parse", f"{old}^{{tree}}") == self._g("rev-parse", f"{sha}^{{tree}}"):
                    return old  # the same code: the evaluator, gates or budget changed
                n = len([t for t in self._g("tag", "--list", "trial-0-failed-*").splitlines() if t.strip()]) + 1
                self._g("tag", f"trial-0-failed-{n}", old)
                self._g("tag", "-d", "trial-0")
            self._g("update-ref", "refs/heads/main", sha)
            self._tag(0, sha)
            return sha

    def commit_trial(self, trial: int, parent: str, files: Mapping[str, str | bytes] | None, message: str) -> str:
        """Commit ``files`` (the whole recipe; None: the parent's tree unchanged) on ``parent`` as ``trial``."""
        data = None if files is None else {k: v.encode("utf-8") if isinstance(v, str) else v for k, v in files.items()}
        with self.lock:
            sha = self._commit_tree(parent, data, message)
            self._tag(trial, sha)
        return sha

    # -- reading -------------------------------------------------------------------------------------------
    def _blobs(self, commit: str) -> list[Any]:
        return [b for b in self.repo.commit(commit).tree.traverse() if b.type == "blob"]

    def files_at(self, commit: str) -> dict[str, str]:
        """The recipe's text files at ``commit``."""
        out = {}
        for blob in self._blobs(commit):
            try:
                out[blob.path] = blob.data_stream.read().decode("utf-8")
            except UnicodeDecodeError:
                continue  # binary files are carried by git but not editable
        return out

    def tree_bytes(self, commit: str) -> int:
        """Bytes of every file in the commit's tree (the recipe's code, as an artifact counts it)."""
        return sum(int(b.size) for b in self._blobs(commit))

    def export(self, commit: str, dest: Path) -> None:
        """Write ``commit``'s tree to a new folder ``dest`` and make it read-only."""
        dest.mkdir(parents=True)
        for blob in self._blobs(commit):
            p = dest / blob.path
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(blob.data_stream.read())
        freeze(dest)

    def diff(self, a: str, b: str) -> str:
        return self._g("diff", "--no-ext-diff", "--no-textconv", a, b, strip=False)

    # -- recovery ------------------------------------------------------------------------------------------
    def commit_for(self, rec: Mapping[str, Any], get: Callable[[int], Mapping[str, Any] | None],
                   baseline_dir: Path, content_hash: Callable[[dict[str, str]], str]) -> str:
        """The commit of a recorded trial: its tag, or (repository lost or incomplete) rebuilt from the lineage."""
        trial = int(rec["trial"])
        sha = self.tag_commit(trial)
        if sha is not None:
            return sha
        chain: list[Mapping[str, Any]] = []
        cur: Mapping[str, Any] | None = rec
        while cur is not None and self.tag_commit(int(cur["trial"])) is None:
            chain.append(cur)
            cur = get(int(cur["parent"])) if cur.get("parent") is not None else None
            if cur is None and chain[-1].get("parent") is not None:
                raise RepoError(f"cannot rebuild trial {trial}: its ancestor trial {chain[-1]['parent']} is not in "
                                f"the lineage")
        parent = self.tag_commit(int(cur["trial"])) if cur is not None else None
        warnings.warn(f"{self.path} lacks the commits of trial(s) {sorted(int(r['trial']) for r in chain)} (the "
                      f"repository was deleted or replaced): rebuilding them from the lineage's recorded diffs",
                      RepoWarning, stacklevel=2)
        with self.lock:
            for r in reversed(chain):
                t = int(r["trial"])
                if parent is None:  # the baseline: from the task's recipe folder
                    sha = self._commit_tree(None, read_recipe(baseline_dir), "trial 0 [baseline] (rebuilt)")
                    self._g("update-ref", "refs/heads/main", sha)
                else:
                    diff = r.get("diff") or ""
                    try:
                        sha = self._commit_tree(parent, None, f"trial {t} (rebuilt from the lineage diff)",
                                                patch=(diff if diff.endswith("\n") else diff + "\n") if diff.strip()
                                                else None)
                    except Exception as e:  # noqa: BLE001 - git's message names the failing hunk
                        raise RepoError(f"cannot rebuild trial {t} in {self.path}: its recorded diff does not apply "
                                        f"to trial {r.get('parent')} ({str(e).strip().splitlines()[-1][:300]}). "
                                        f"Start a fresh lineage (--autoresearch-lineage DIR) or restore the "
                                        f"repository") from None
                want = r.get("content_hash")
                if want and content_hash(self.files_at(sha)) != want:
                    where = ("the task's recipe folder changed since the baseline was measured" if parent is None
                             else "its recorded diff does not reproduce the recorded files")
                    raise RepoError(f"cannot rebuild trial {t} in {self.path}: {where}. Start a fresh lineage "
                                    f"(--autoresearch-lineage DIR) or restore the repository")
                self._tag(t, sha)
                parent = sha
        assert parent is not None
        return parent


def read_recipe(recipe_dir: Path) -> dict[str, bytes]:
    """A recipe folder's files (no caches, no links), path -> bytes."""
    out: dict[str, bytes] = {}
    for src in sorted(Path(recipe_dir).rglob("*")):
        rel = src.relative_to(recipe_dir)
        if "__pycache__" in rel.parts or rel.suffix == ".pyc" or src.is_symlink() or not src.is_file():
            continue
        if not stat.S_ISREG(os.lstat(src).st_mode):
            continue
        out[rel.as_posix()] = src.read_bytes()
    return out


def subprocess_input(data: bytes | str) -> Any:
    """A file object gitpython can pass as a command's stdin."""
    f = tempfile.TemporaryFile()
    f.write(data.encode("utf-8") if isinstance(data, str) else data)
    f.seek(0)
    return f
