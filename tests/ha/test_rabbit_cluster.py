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

from cellgate import App, CellUnavailable, RequestContext, RPCClient, RPCTimeout, Target
from tests.ha import rabbit, rabbit_drill
from tests.ha.rabbit import RabbitCluster
from tests.ha.rabbit_drill import Ledger
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


def test_a_classic_topic_queue_is_unavailable_while_its_node_is_down(
    rabbit_cluster: RabbitCluster, tmp_path: Path
) -> None:
    """Why quorum: under ``queue_type = classic`` the topic queue lives on one node.

    With that node killed, calls get no answer however often they are tried
    (the queue is down, not moved), and the server cannot consume from it on
    another node; once the node is back, the same server answers again.
    """
    with rabbit_drill.cell_app(rabbit_cluster, tmp_path, "classic") as (app, vhost):
        srv = app.rpc.server(
            app.cells.get(rabbit_drill.CTX, "h"), Target(rabbit_drill.TOPIC), [Ledger()]
        ).start()
        victim = None
        try:
            assert srv._listener.ready.wait(30)  # type: ignore[attr-defined]
            victim = rabbit_cluster.node(rabbit_cluster.queue_node(vhost, rabbit_drill.QUEUE))
            with app.target_cell(RequestContext(), "h") as cctx:
                client = app.rpc.client(cctx, Target(rabbit_drill.TOPIC)).prepare(timeout=2)
                assert client.call("ping") == "pong"
                victim.kill()
                outcomes = []
                for _ in range(5):
                    try:
                        outcomes.append(client.call("ping"))
                    except (RPCTimeout, CellUnavailable) as exc:
                        outcomes.append(type(exc).__name__)
                assert "pong" not in outcomes, outcomes
                rabbit_cluster.restart(victim)
                assert rabbit_drill.until(lambda: _answers(client), 120)
        finally:
            srv.stop()
            if victim is not None and not victim.running:
                rabbit_cluster.restart(victim)


def _answers(client: RPCClient) -> bool:
    try:
        return bool(client.call("ping") == "pong")
    except (RPCTimeout, CellUnavailable):
        return False
