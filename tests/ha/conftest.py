"""The cluster fixtures, for every test under ``tests/ha`` (see README.md there).

Also a repair for this directory's ``xdist_group`` marks. pytest-xdist 3.8
groups tests by a ``@group`` suffix it appends to each item's node id, by
setting ``item._nodeid``; pytest 9.2 keeps the id in ``item._id`` and no
longer reads ``_nodeid``, so the groups are silently ignored and tests of
one group run on several workers at once. For tests that own fixed ports,
that means two workers starting servers on the same port. The hook below
sets the suffix where pytest 9 reads it, for the tests under this directory
only, and does nothing once a node id has a suffix (a fixed xdist).
"""

from pathlib import Path

import pytest
from _pytest.nodeid import NodeId

from tests.ha.postgres import _postgres_ports, pg_cluster, solo_postgres

__all__ = ["_postgres_ports", "pg_cluster", "solo_postgres"]

_HERE = Path(__file__).resolve().parent


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not getattr(config.option, "loadgroup", False):
        return
    for item in items:
        if _HERE not in item.path.resolve().parents or "@" in item.nodeid:
            continue
        names = sorted(
            {
                str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))
                for mark in item.iter_markers("xdist_group")
            }
        )
        if names:
            item._id = NodeId.parse(f"{item.nodeid}@{'_'.join(names)}")
