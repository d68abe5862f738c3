"""RPC on a real 3-node RabbitMQ cluster (tests/ha/rabbit.py) while a node is killed.

The cell's transport URL names all three nodes. With ``[rpc] queue_type =
quorum`` the topic queue is replicated on every node; the test SIGKILLs the
node that leads it (which is also the node the server's consumer is connected
to: a quorum queue's leader is placed on the declaring client's node) during
a loop of casts and calls, and checks that

- every cast that returned (was confirmed by the broker) reached the server:
  the server's own record of what it handled is compared with the client's
  record of what was confirmed; a duplicate is allowed (at-least-once);
- calls answer again after the reconnect, so the server has re-declared and
  re-consumed on a surviving node by itself.

The figures (casts lost, duplicates, seconds without an answer) are printed
for docs/deployment.md; nothing here asserts a duration.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cellgate import App, CellUnavailable, RequestContext, RPCTimeout, Target, load_settings
from cellgate.apidb.mappings import create_cell
from cellgate.sql.api_database import ApiDatabase
from cellgate.urls import TemplateDefaults
from tests.ha import rabbit
from tests.ha.rabbit import RabbitCluster
from tests.support import unavailable

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.timeout(900),
]

TOPIC = "compute"
QUEUE = f"cellgate:{TOPIC}"
CTX = RequestContext(request_id="req-ha")


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


@dataclass
class Ledger:
    """The server side's record: the id of every cast it handled, duplicates kept."""

    handled: list[int] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, ctx: RequestContext, n: int) -> None:
        with self.lock:
            self.handled.append(n)

    def ping(self, ctx: RequestContext) -> str:
        return "pong"

    def seen(self) -> set[int]:
        with self.lock:
            return set(self.handled)


@pytest.fixture
def cell_app(rabbit_cluster: RabbitCluster, tmp_path: Path) -> Iterator[tuple[App, str]]:
    vhost = f"cgha-{uuid.uuid4().hex[:10]}"
    rabbit_cluster.add_vhost(vhost)
    conf = tmp_path / "c.conf"
    conf.write_text(
        f"[api_database]\nconnection = sqlite:///{tmp_path}/api.sqlite\n"
        "[DEFAULT]\nrpc_response_timeout = 5\n"
        "[rpc]\nconnect_timeout = 2\nheartbeat = 5\nqueue_type = quorum\n"
        "[cells]\nbreaker_threshold = 0\n",
        encoding="utf-8",
    )
    settings = load_settings(conf)
    api = ApiDatabase(settings.api_database)
    api.upgrade()
    with api.session() as s:
        create_cell(
            s,
            name="h",
            transport_url=rabbit_cluster.url(vhost),
            database_connection=f"sqlite:///{tmp_path}/h.db",
            defaults=TemplateDefaults(database=None, transport=None),
        )
    api.close()
    try:
        with App(settings) as app:
            yield app, vhost
    finally:
        rabbit_cluster.delete_vhost(vhost)


def _members(cluster: RabbitCluster, vhost: str) -> tuple[str, list[str]]:
    """The topic queue's type and member nodes, as the cluster reports them."""
    out = cluster.nodes[0].ctl(
        "list_queues", "--no-table-headers", "-p", vhost, "name", "type", "members"
    )
    rows = {line.split("\t")[0]: line.split("\t")[1:] for line in out.splitlines() if line}
    kind, members = rows[QUEUE]
    return kind, sorted(m.strip() for m in members.strip("[]").split(","))


@dataclass
class Loop:
    """Casts and calls back to back from one thread, recording what the broker confirmed."""

    app: App
    confirmed: list[int] = field(default_factory=list)
    refused: int = 0
    answered: list[float] = field(default_factory=list)  # monotonic time of each answer
    failed_calls: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            with self.app.target_cell(RequestContext(), "h") as cctx:
                client = self.app.rpc.client(cctx, Target(TOPIC)).prepare(timeout=5)
                n += 1
                try:
                    client.cast("record", n=n)
                    self.confirmed.append(n)
                except CellUnavailable:
                    self.refused += 1  # not confirmed: the caller knows, nothing is promised
                try:
                    assert client.call("ping") == "pong"
                    self.answered.append(time.monotonic())
                except (CellUnavailable, RPCTimeout):
                    self.failed_calls += 1
                    time.sleep(0.2)


def _until(predicate: object, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_killing_the_queue_leader_loses_no_confirmed_cast_and_calls_resume(
    rabbit_cluster: RabbitCluster, cell_app: tuple[App, str]
) -> None:
    app, vhost = cell_app
    ledger = Ledger()
    srv = app.rpc.server(app.cells.get(CTX, "h"), Target(TOPIC), [ledger]).start()
    listener = srv._listener  # type: ignore[attr-defined]
    loop = Loop(app)
    thread = threading.Thread(target=loop.run, name="cgha-loop", daemon=True)
    victim = None
    try:
        assert listener.ready.wait(30)
        assert _members(rabbit_cluster, vhost) == (
            "quorum",
            [n.name for n in rabbit_cluster.nodes],
        )
        victim = rabbit_cluster.node(rabbit_cluster.queue_node(vhost, QUEUE))
        thread.start()
        assert _until(lambda: len(loop.answered) >= 50, 120), "no steady loop before the kill"
        killed_at = time.monotonic()
        os.kill(victim.beam_pid(), signal.SIGKILL)
        victim.kill()  # reap its process group
        before = len(loop.confirmed)
        assert _until(
            lambda: (
                len([t for t in loop.answered if t > killed_at]) >= 50
                and len(loop.confirmed) >= before + 50
            ),
            180,
        ), (
            f"calls or casts did not resume: {len(loop.answered)} answers, "
            f"{loop.failed_calls} failed calls, {len(loop.confirmed)} confirmed casts"
        )
        loop.stop.set()
        thread.join(30)
        confirmed = set(loop.confirmed)
        assert _until(lambda: confirmed <= ledger.seen(), 60)
        lost = confirmed - ledger.seen()
        gap = min(t for t in loop.answered if t > killed_at) - killed_at
        duplicates = len(ledger.handled) - len(ledger.seen())
        print(
            f"\nkilled {victim.name} (queue leader): {len(confirmed)} casts confirmed, "
            f"{len(lost)} lost, {duplicates} delivered twice, {loop.refused} refused; "
            f"first answer {gap:.1f}s after the kill; consumer reconnects: {listener.reconnects}"
        )
        assert lost == set()
        assert listener.reconnects >= 1  # the server's node died: it re-declared and re-consumed
        assert listener.ready.is_set()
    finally:
        loop.stop.set()
        srv.stop()
        if victim is not None and not victim.running:
            rabbit_cluster.restart(victim)
