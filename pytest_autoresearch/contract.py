"""The task fixtures have generic names (``budget``, ``evaluator``, ``objective``, ...): a task module that
forgets one would silently get a same-named fixture from a ``conftest.py`` or another plugin. Each must come
from the task module itself."""
from __future__ import annotations

from pathlib import Path

import pytest

from .task import FIXTURES, display_path


def check_fixture_origins(metafunc: pytest.Metafunc) -> None:
    """At collection: a collection error for the module naming each task fixture defined outside it."""
    node = metafunc.definition
    module = node.getparent(pytest.Module)
    if module is None:
        return
    fm = node.session._fixturemanager  # pytest's own resolver: what the trial would actually get
    foreign = []
    for name in FIXTURES:
        defs = fm.getfixturedefs(name, node)
        if not defs:
            continue  # missing entirely: reported by the session's own check
        d = defs[-1]  # the definition pytest picks: the closest one
        if d.baseid == module.nodeid or d.baseid.startswith(module.nodeid + "::"):
            continue
        code = getattr(d.func, "__code__", None)
        where = (f"{display_path(Path(code.co_filename))}:{code.co_firstlineno}" if code is not None
                 else getattr(d.func, "__module__", "a plugin"))
        foreign.append(f"'{name}' (found in {where})")
    if foreign:
        raise pytest.Collector.CollectError(
            f"{display_path(Path(str(module.path)))}: the task module does not define the task fixture"
            f"{'s' if len(foreign) > 1 else ''} {', '.join(foreign)}; a task's fixtures must be defined in its own "
            f"module, so a same-named fixture from a conftest.py or a plugin never stands in for a missing one.")
