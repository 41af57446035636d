"""``<lineage>/<task>/task.json``: what a trial run knew about its task, for the commands that work on a lineage
afterwards (``autoresearch promote``, ``replay``, ``audit``): the task module, the recipe folder, the
objective, the budget and every specialist's surface as the trials ran under them."""
from __future__ import annotations

import dataclasses
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

FILE_NAME = "task.json"


def describe(run: Any) -> dict[str, Any]:
    task = run.task
    specs = {s.name: s for s in (*task.specialists, *run.specialists)}  # the merged generalist too, when used
    return {
        "task": task.name, "module": str(task.module_path.resolve()), "recipe": str(task.baseline_recipe.resolve()),
        "variant": task.variant, "device": run.device,
        "objective": dataclasses.asdict(task.objective),
        "budget": json.loads(json.dumps(dataclasses.asdict(task.budget), default=str)),
        "gates": [str(getattr(c, "name", c)) for c in task.legality],
        "specialists": [{"name": s.name, "files": list(s.surface.files), "regions": list(s.surface.regions),
                         "brief": s.brief} for s in specs.values()],
        "written": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def write(run: Any) -> None:
    """Write the task's description next to its lineage (atomically; the latest session's wins)."""
    path = Path(run.dir) / FILE_NAME
    tmp = path.with_name(f".{FILE_NAME}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(describe(run), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read(lineage_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((Path(lineage_dir) / FILE_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
