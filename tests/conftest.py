import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))


class ToyRun:
    """Runs pytest in a real subprocess inside ``root``, where tests write toy tasks."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def run(self, *args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
        e = {k: v for k, v in os.environ.items() if k not in ("ANTHROPIC_API_KEY", "PYTEST_ADDOPTS")}
        e.update({"TOY_SCRIPT": str(self.root / "script.json"), "PYTHONDONTWRITEBYTECODE": "1"})
        e.update(env or {})
        if "scripted" in args and not any(str(a).startswith("schedule=") for a in args):
            # A script is written per trial for the specialist whose turn it is: turns go round-robin.
            args = (*args, "--autoresearch-override", "schedule=round_robin")
        # Hypothesis' plugin is not needed by these sessions and costs most of a second each.
        proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:hypothesispytest",
                               "-rfExXs", *args],
                              cwd=self.root, env=e, capture_output=True, text=True, timeout=timeout)
        proc.output = proc.stdout + proc.stderr  # type: ignore[attr-defined]
        return proc

    def records(self, task: str = "toy", lineage: Path | None = None) -> list[dict[str, Any]]:
        path = (lineage or self.root / ".autoresearch") / task / "lineage.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture
def toy(tmp_path: Path) -> ToyRun:
    return ToyRun(tmp_path)


@pytest.fixture(scope="session")
def sandbox() -> Any:
    """A bubblewrap sandbox as trials get it. Skipped where bwrap cannot run, unless the environment says it
    must (CI sets AUTORESEARCH_REQUIRE_SANDBOX=1, so a broken sandbox fails there instead of skipping)."""
    from pytest_autoresearch.sandbox import Limits, Sandbox, detect

    iso = detect("auto")
    if not iso.sandboxed:
        if os.environ.get("AUTORESEARCH_REQUIRE_SANDBOX"):
            pytest.fail(f"bubblewrap is required here but cannot run: {iso.reason}")
        pytest.skip(f"no sandbox here: {iso.reason}")
    return Sandbox(iso, Limits(log_bytes=1 << 20))
