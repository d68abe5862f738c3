"""The node-loss drill on the RabbitMQ cluster, shared by its test and the benchmark.

A cell whose transport URL names the three nodes, ``[rpc] queue_type =
quorum``, one RPC server; a thread casts and calls back to back while the
node leading the topic queue is SIGKILLed. :func:`kill_leader_during_loop`
returns what happened, counted on both sides: the casts the broker confirmed
(client side) and those the server handled (server side). The test asserts
on it (``tests/ha/test_rabbit_cluster.py``); ``python -m benchmarks run
--rabbit-cluster`` reports it as ``rabbit_node_loss_casts_lost``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cellgate import App, CellUnavailable, RequestContext, RPCTimeout, Target, load_settings
from cellgate.apidb.mappings import create_cell
from cellgate.sql.api_database import ApiDatabase
from cellgate.urls import TemplateDefaults
from tests.ha.rabbit import RabbitCluster

TOPIC = "compute"
QUEUE = f"cellgate:{TOPIC}"
CTX = RequestContext(request_id="req-ha")


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
                    if client.call("ping") == "pong":
                        self.answered.append(time.monotonic())
                except (CellUnavailable, RPCTimeout):
                    self.failed_calls += 1
                    time.sleep(0.2)


@dataclass
class Outcome:
    victim: str
    members: tuple[str, list[str]]
    confirmed: int
    lost: int
    duplicates: int
    refused: int
    first_answer_s: float
    reconnects: int
    consuming: bool

    def summary(self) -> str:
        return (
            f"killed {self.victim} (queue leader): {self.confirmed} casts confirmed, "
            f"{self.lost} lost, {self.duplicates} delivered twice, {self.refused} refused; "
            f"first answer {self.first_answer_s:.1f}s after the kill; "
            f"consumer reconnects: {self.reconnects}"
        )


@contextlib.contextmanager
def cell_app(
    cluster: RabbitCluster, tmp_path: Path, queue_type: str = "quorum"
) -> Iterator[tuple[App, str]]:
    """An ``App`` with one cell ``h`` on a fresh vhost of ``cluster`` (removed after)."""
    vhost = f"cgha-{uuid.uuid4().hex[:10]}"
    cluster.add_vhost(vhost)
    conf = tmp_path / "c.conf"
    conf.write_text(
        f"[api_database]\nconnection = sqlite:///{tmp_path}/api.sqlite\n"
        "[DEFAULT]\nrpc_response_timeout = 5\n"
        f"[rpc]\nconnect_timeout = 2\nheartbeat = 5\nqueue_type = {queue_type}\n"
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
            transport_url=cluster.url(vhost),
            database_connection=f"sqlite:///{tmp_path}/h.db",
            defaults=TemplateDefaults(database=None, transport=None),
        )
    api.close()
    try:
        with App(settings) as app:
            yield app, vhost
    finally:
        cluster.delete_vhost(vhost)


def members(cluster: RabbitCluster, vhost: str) -> tuple[str, list[str]]:
    """The topic queue's type and member nodes, as the cluster reports them."""
    out = cluster.nodes[0].ctl(
        "list_queues", "--no-table-headers", "-p", vhost, "name", "type", "members"
    )
    rows = {line.split("\t")[0]: line.split("\t")[1:] for line in out.splitlines() if line}
    kind, names = rows[QUEUE]
    return kind, sorted(m.strip() for m in names.strip("[]").split(","))


def until(predicate: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def kill_leader_during_loop(cluster: RabbitCluster, app: App, vhost: str) -> Outcome:
    """Run the drill; the killed node is started again before this returns.

    Raises ``AssertionError`` when the loop never got going or never resumed
    (bounded waits), so a caller never waits for ever.
    """
    ledger = Ledger()
    srv = app.rpc.server(app.cells.get(CTX, "h"), Target(TOPIC), [ledger]).start()
    listener = srv._listener  # type: ignore[attr-defined]
    loop = Loop(app)
    thread = threading.Thread(target=loop.run, name="cgha-loop", daemon=True)
    victim = None
    try:
        assert listener.ready.wait(30), "the server's consumer did not start"
        queue = members(cluster, vhost)
        victim = cluster.node(cluster.queue_node(vhost, QUEUE))
        thread.start()
        assert until(lambda: len(loop.answered) >= 50, 120), "no steady loop before the kill"
        killed_at = time.monotonic()
        os.kill(victim.beam_pid(), signal.SIGKILL)
        victim.kill()  # reap its process group
        before = len(loop.confirmed)
        assert until(
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
        until(lambda: confirmed <= ledger.seen(), 60)
        return Outcome(
            victim=victim.name,
            members=queue,
            confirmed=len(confirmed),
            lost=len(confirmed - ledger.seen()),
            duplicates=len(ledger.handled) - len(ledger.seen()),
            refused=loop.refused,
            first_answer_s=min(t for t in loop.answered if t > killed_at) - killed_at,
            reconnects=listener.reconnects,
            consuming=listener.ready.is_set(),
        )
    finally:
        loop.stop.set()
        srv.stop()
        if victim is not None and not victim.running:
            cluster.restart(victim)
