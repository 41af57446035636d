"""The per-task git repository: the baseline as the root commit, one commit per trial, worktrees to run in."""
from __future__ import annotations

import shutil
from pathlib import Path

from filelock import FileLock

IDENTITY = ("-c", "user.name=pytest-autoresearch", "-c", "user.email=autoresearch@localhost")


class TaskRepo:
    """``.autoresearch/<task>/repo``. Every trial's commit is tagged ``trial-N`` so none is ever unreachable."""

    def __init__(self, path: Path) -> None:
        import git  # gitpython is only needed once a trial runs

        self.path = Path(path)
        self.lock = FileLock(str(self.path) + ".lock")
        with self.lock:
            if not (self.path / ".git").exists():
                self.path.mkdir(parents=True, exist_ok=True)
                git.Repo.init(self.path, initial_branch="main")
        self.repo = git.Repo(self.path)
        self.git = self.repo.git

    def _g(self, *args: str, cwd: Path | None = None) -> str:
        if cwd is None:
            return self.git.execute(["git", *IDENTITY, *args])
        import git

        return git.Git(str(cwd)).execute(["git", *IDENTITY, *args])

    def tag_commit(self, trial: int) -> str | None:
        try:
            return self.repo.commit(f"refs/tags/trial-{trial}").hexsha
        except Exception:  # noqa: BLE001 - gitpython raises several types for a missing ref
            return None

    def commit_baseline(self, recipe_dir: Path, message: str) -> str:
        """Commit the baseline recipe as trial 0 (idempotent: returns the existing commit)."""
        with self.lock:
            existing = self.tag_commit(0)
            if existing:
                return existing
            for src in sorted(p for p in Path(recipe_dir).rglob("*") if p.is_file()):
                rel = src.relative_to(recipe_dir)
                if "__pycache__" in rel.parts or rel.suffix == ".pyc":
                    continue
                dst = self.path / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst)
            self._g("add", "-A")
            self._g("commit", "--allow-empty", "-q", "-m", message)
            sha = self.repo.head.commit.hexsha
            self._g("tag", "trial-0", sha)
            return sha

    def files_at(self, commit: str) -> dict[str, str]:
        """The recipe's text files at ``commit``."""
        c = self.repo.commit(commit)
        out = {}
        for blob in c.tree.traverse():
            if blob.type == "blob":
                data = blob.data_stream.read()
                try:
                    out[blob.path] = data.decode("utf-8")
                except UnicodeDecodeError:
                    continue  # binary files are carried by git but not editable
        return out

    def checkout(self, commit: str, workspace: Path) -> None:
        """A detached worktree of ``commit`` at ``workspace`` (replacing a stale one)."""
        with self.lock:
            if workspace.exists():
                self.remove_worktree(workspace)
            self._g("worktree", "add", "--detach", "-f", str(workspace), commit)

    def commit_trial(self, trial: int, parent: str, files: dict[str, str] | None, message: str,
                     workspace: Path) -> str:
        """Check out ``parent`` as a worktree at ``workspace``, write ``files`` (None: leave as is), commit it.

        The commit is made even when nothing changed (an edit that did not apply), so every trial has one.
        """
        self.checkout(parent, workspace)
        if files is not None:
            current = {p for p in self._g("ls-files", cwd=workspace).splitlines() if p}
            for rel in current - set(files):
                (workspace / rel).unlink(missing_ok=True)
            for rel, text in files.items():
                dst = workspace / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                if not dst.exists() or dst.read_text(encoding="utf-8", errors="replace") != text:
                    dst.write_text(text, encoding="utf-8")
        self._g("add", "-A", cwd=workspace)
        self._g("commit", "--allow-empty", "-q", "-m", message, cwd=workspace)
        sha = self._g("rev-parse", "HEAD", cwd=workspace).strip()
        with self.lock:
            self._g("tag", "-f", f"trial-{trial}", sha)
        return sha

    def diff(self, a: str, b: str) -> str:
        return self._g("diff", a, b)

    def remove_worktree(self, workspace: Path) -> None:
        with self.lock:
            try:
                self._g("worktree", "remove", "--force", str(workspace))
            except Exception:  # noqa: BLE001 - fall back to deleting a half-made worktree
                shutil.rmtree(workspace, ignore_errors=True)
                self._g("worktree", "prune")
