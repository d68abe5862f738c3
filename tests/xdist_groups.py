"""Make ``@pytest.mark.xdist_group`` group again, for the whole suite (a pytest plugin).

pytest-xdist's ``--dist loadgroup`` keeps the tests of one group on one
worker by a ``@<group>`` suffix on each item's node id: its worker-side hook
sets ``item._nodeid``, and the controller's scheduler splits the suffix off
the ids the workers send. pytest 9.2 keeps the id in ``item._id`` and no
longer reads ``_nodeid``, so the suffix never reaches the scheduler and the
groups are silently ignored: the tests of ``nova-<backend>`` (one
``nova-manage`` build per backend and session) or ``bench`` (never two at
once) spread over every worker. This hook runs after xdist's (``trylast``)
and sets the suffix where pytest 9 reads it, with xdist's own rule (the
sorted group names of every ``xdist_group`` mark on the item, its fixture
params' included, joined by ``_``). It leaves alone an id that already has a
suffix, so a fixed pytest-xdist makes it a no-op.

``tests/conftest.py`` imports the hook, so it applies to every test;
``tests/unit/test_xdist_groups.py`` runs a small suite with it under
``-n 2 --dist loadgroup`` and checks that each group ran on one worker.
"""

from __future__ import annotations

import pytest
from _pytest.nodeid import NodeId


def group_names(item: pytest.Item) -> list[str]:
    """The item's xdist group names, sorted, as pytest-xdist computes them."""
    return sorted(
        {
            str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))
            for mark in item.iter_markers("xdist_group")
        }
    )


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not getattr(config.option, "loadgroup", False):
        return  # not an xdist worker of a --dist loadgroup run
    for item in items:
        if "@" in item.nodeid:
            continue
        names = group_names(item)
        if names:
            item._id = NodeId.parse(f"{item.nodeid}@{'_'.join(names)}")
