"""What the RabbitMQ driver declares on the real broker, for both ``[rpc] queue_type`` values.

The broker itself is asked (``rabbitmqctl list_queues`` on the test's own
vhost, and messages read back with a plain kombu ``basic_get``), so these
tests check the queues RabbitMQ actually has, not what the code meant to
declare. The memory transport has no queues; its RPC behaviour is covered by
``test_rpc.py``, which also runs every RPC test under both queue types.
"""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kombu.connection import Connection

from cellgate import App, CellUnavailable, RequestContext, Target, load_settings
from cellgate.apidb.mappings import create_cell
from cellgate.rpc.amqp.rabbit import kombu_urls
from cellgate.rpc.server import RPCServer
from cellgate.sql.api_database import ApiDatabase
from cellgate.urls import TemplateDefaults, TransportURL, url_passwords
from tests.support import Broker

pytestmark = pytest.mark.backends

CTX = RequestContext(request_id="req-queues")
TOPIC = "compute"
COLUMNS = ("name", "durable", "auto_delete", "exclusive", "type", "arguments")


class Sink:
    """An endpoint that keeps the ``n`` of every ``poke`` it is sent."""

    def __init__(self) -> None:
        self.seen: list[int] = []

    def poke(self, ctx: RequestContext, n: int) -> None:
        self.seen.append(n)


@dataclass
class Cell:
    app: App
    url: str
    vhost: str

    def server(self, endpoint: object, server: str | None = None) -> RPCServer:
        srv = self.app.rpc.server(
            self.app.cells.get(CTX, "q"), Target(TOPIC, server=server), [endpoint]
        ).start()
        assert srv._listener.ready.wait(15), "the consumer did not start"  # type: ignore[attr-defined]
        return srv

    def cast(self, n: int, **target: Any) -> None:
        with self.app.target_cell(RequestContext(), "q") as cctx:
            self.app.rpc.client(cctx, Target(TOPIC, **target)).cast("poke", n=n)

    def queues(self) -> dict[str, dict[str, str]]:
        """The vhost's queues as the broker reports them, by name."""
        out = subprocess.run(
            ["rabbitmqctl", "-q", "--no-table-headers", "list_queues", "-p", self.vhost, *COLUMNS],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
        rows = [line.split("\t") for line in out.splitlines() if line.strip()]
        return {row[0]: dict(zip(COLUMNS, row, strict=True)) for row in rows}

    def kombu(self) -> Connection:
        return Connection(kombu_urls(TransportURL.parse(self.url)), connect_timeout=5)


def _cell(tmp_path: Path, url: str, queue_type: str) -> App:
    conf = tmp_path / "c.conf"
    conf.write_text(
        f"[api_database]\nconnection = sqlite:///{tmp_path}/api.sqlite\n"
        "[DEFAULT]\nrpc_response_timeout = 10\n"
        f"[rpc]\nconnect_timeout = 2\nqueue_type = {queue_type}\n",
        encoding="utf-8",
    )
    settings = load_settings(conf)
    api = ApiDatabase(settings.api_database)
    api.upgrade()
    with api.session() as s:
        create_cell(
            s,
            name="q",
            transport_url=url,
            database_connection=f"sqlite:///{tmp_path}/q.db",
            defaults=TemplateDefaults(database=None, transport=None),
        )
    api.close()
    return App(settings)


@pytest.fixture(params=["classic", "quorum"])
def cell(request: pytest.FixtureRequest, tmp_path: Path, broker: Broker) -> Iterator[Cell]:
    url = broker.new_vhost()
    with _cell(tmp_path, url, request.param) as app:
        yield Cell(app, url, url.rsplit("/", 1)[1])


def _until(predicate: Any, seconds: float = 15) -> bool:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_topic_queues_are_durable_of_the_configured_type_and_fanout_queues_exclusive(
    cell: Cell,
) -> None:
    queue_type = cell.app.settings.rpc.queue_type
    srv = cell.server(Sink(), server="host1")
    try:
        queues = cell.queues()
    finally:
        srv.stop()
    topic = {name: q for name, q in queues.items() if ":fanout:" not in name}
    fanout = [q for name, q in queues.items() if name.startswith(f"cellgate:{TOPIC}:fanout:")]
    assert sorted(topic) == [f"cellgate:{TOPIC}", f"cellgate:{TOPIC}:host1"]
    for q in topic.values():
        assert (q["durable"], q["auto_delete"], q["type"]) == ("true", "false", queue_type)
        assert q["exclusive"] in ("false", "")  # quorum queues leave the column empty
        assert f'{{"x-queue-type","{queue_type}"}}' in q["arguments"]
    assert len(fanout) == 1
    assert (fanout[0]["durable"], fanout[0]["exclusive"], fanout[0]["type"]) == (
        "false",
        "true",
        "classic",
    )
    # The topic queues outlive their server (durable, not auto-deleted); the fanout one does not.
    after = cell.queues()
    assert sorted(after) == sorted(topic)


def test_casts_are_persistent_and_wait_in_the_topic_queue_for_a_server(cell: Cell) -> None:
    cell.server(Sink()).stop()  # declares the queues, then goes away
    for n in range(3):
        cell.cast(n)
    with cell.kombu() as conn:
        channel = conn.channel()
        modes = []
        for _ in range(3):
            message = channel.basic_get(f"cellgate:{TOPIC}", no_ack=False)
            assert message is not None, "a cast did not reach the durable topic queue"
            modes.append(message.properties.get("delivery_mode"))
            channel.basic_reject(message.delivery_tag, requeue=True)
    assert modes == [2, 2, 2]
    sink = Sink()
    srv = cell.server(sink)  # a server started later gets what was cast meanwhile
    try:
        assert _until(lambda: sorted(sink.seen) == [0, 1, 2]), sink.seen
    finally:
        srv.stop()


def test_an_unroutable_cast_is_refused_under_quorum_and_dropped_under_classic(
    cell: Cell,
) -> None:
    """No server ever declared the topic: classic drops the cast as before; quorum says so."""
    if cell.app.settings.rpc.queue_type == "quorum":
        with pytest.raises(CellUnavailable, match="NO_ROUTE") as info:
            cell.cast(1)
        for secret in url_passwords(cell.url):  # a new error path: masked like every other
            assert secret not in str(info.value) and secret not in repr(info.value)
    else:
        cell.cast(1)
    cell.cast(2, fanout=True)  # fanout casts are fire and forget under both


def test_the_transient_queues_of_earlier_releases_are_replaced_when_empty_and_unused(
    cell: Cell, caplog: pytest.LogCaptureFixture
) -> None:
    """An upgrade: the old transient topic queue is replaced once it is empty and unused;
    until then the server says which queue is in the way and keeps retrying."""
    name = f"cellgate:{TOPIC}"
    with cell.kombu() as conn:
        channel = conn.channel()
        channel.exchange_declare("cellgate", "direct", durable=False, auto_delete=False)
        channel.queue_declare(name, durable=False, exclusive=False, auto_delete=False)
        channel.queue_bind(name, "cellgate", TOPIC)
        channel.basic_publish(channel.prepare_message(b"{}"), "cellgate", TOPIC)
        assert _until(lambda: cell.queues()[name]["durable"] == "false")
        sink = Sink()
        with caplog.at_level(logging.ERROR, logger="cellgate.rpc.amqp.rabbit"):
            srv = cell.app.rpc.server(cell.app.cells.get(CTX, "q"), Target(TOPIC), [sink])
            srv.start()
            try:
                assert _until(lambda: "not empty" in caplog.text or "in use" in caplog.text)
                assert f"queue {name!r} exists with other properties" in caplog.text
                assert not srv._listener.ready.is_set()  # type: ignore[attr-defined]
                channel.queue_purge(name)  # the operator drains the old queue
                assert srv._listener.ready.wait(15)  # type: ignore[attr-defined]
                cell.cast(7)
                assert _until(lambda: sink.seen == [7])
            finally:
                srv.stop()
    queue_type = cell.app.settings.rpc.queue_type
    assert (cell.queues()[name]["durable"], cell.queues()[name]["type"]) == ("true", queue_type)
    for secret in url_passwords(cell.url):  # the new error log line names no password
        assert secret not in caplog.text
