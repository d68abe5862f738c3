"""RPC on a real 3-node RabbitMQ cluster (tests/ha/rabbit.py) while a node is killed.

The cell's transport URL names all three nodes. With ``[rpc] queue_type =
quorum`` the topic queue is replicated on every node; the drill
(tests/ha/rabbit_drill.py) SIGKILLs the node that leads it (which is also the
node the server's consumer is connected to: a quorum queue's leader is placed
on the declaring client's node) during a loop of casts and calls. This test
checks that

- every cast that returned (was confirmed by the broker) reached the server:
  the server's own record of what it handled is compared with the client's
  record of what was confirmed; a duplicate is allowed (at-least-once);
- calls answer again after the reconnect, and the server has re-declared and
  re-consumed on a surviving node by itself.

The figures (casts lost, duplicates, seconds without an answer) are printed
(``-s``) for docs/deployment.md; nothing here asserts a duration.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cellgate import App
from tests.ha import rabbit, rabbit_drill
from tests.ha.rabbit import RabbitCluster
from tests.support import unavailable

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def rabbit_cluster() -> Iterator[RabbitCluster]:
    """Module-scoped, not session-scoped: pytest-xdist's ``xdist_group`` does not group
    here (pytest 9), so a session fixture could run on two workers at once; the
    cluster's lock (see :func:`rabbit.running_cluster`) makes a second one wait."""
    why = rabbit.available()
    if why is not None:
        unavailable("RabbitMQ cluster", RuntimeError(why))
    with rabbit.running_cluster() as cluster:
        print(f"\nRabbitMQ cluster: 3 nodes up in {cluster.startup_seconds:.1f}s")
        yield cluster


@pytest.fixture
def cell_app(rabbit_cluster: RabbitCluster, tmp_path: Path) -> Iterator[tuple[App, str]]:
    with rabbit_drill.cell_app(rabbit_cluster, tmp_path) as pair:
        yield pair


def test_killing_the_queue_leader_loses_no_confirmed_cast_and_calls_resume(
    rabbit_cluster: RabbitCluster, cell_app: tuple[App, str]
) -> None:
    app, vhost = cell_app
    outcome = rabbit_drill.kill_leader_during_loop(rabbit_cluster, app, vhost)
    print("\n" + outcome.summary())
    assert outcome.members == ("quorum", [n.name for n in rabbit_cluster.nodes])
    assert outcome.lost == 0
    assert outcome.reconnects >= 1  # the server's node died: it re-declared and re-consumed
    assert outcome.consuming
