"""RPC: a call round trip and cast throughput through ``app.rpc``, and two baselines.

- ``raw kombu``: the least a request/reply over RabbitMQ can do, written
  here: one queue, a consumer thread that answers on the same channel, and a
  caller waiting on direct reply-to (``amq.rabbitmq.reply-to``), JSON bodies
  of the same shape. Same broker, same vhost.
- ``oslo.messaging``: its RPC client and a threading server on the same
  RabbitMQ vhost (its rabbit driver), when it is importable.

Calls are interleaved with their baseline, one batch each, alternately.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from kombu import Connection, Consumer, Exchange, Producer, Queue

from benchmarks.routing import CTX, Plan
from benchmarks.stats import Pair, Series, interleaved, sample
from cellgate import App, CellMapping, RPCClient, Target, TransportURL
from cellgate.rpc.amqp.rabbit import REPLY_TO, kombu_urls

TOPIC = "bench"
CASTS = 2000
READY_TIMEOUT_S = 20.0


class Endpoint:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.seen = 0
        self.wanted = 0
        self.done = threading.Event()

    def echo(self, ctx: Any, value: str) -> str:
        return value

    def note(self, ctx: Any, n: int) -> None:
        with self._lock:
            self.seen += 1
            if self.seen >= self.wanted:
                self.done.set()

    def expect(self, count: int) -> None:
        with self._lock:
            self.seen = 0
            self.wanted = count
            self.done.clear()


def wait_until_answers(call: Callable[[], object], what: str) -> None:
    """Call until one succeeds: a RabbitMQ queue exists only once its consumer is up."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        try:
            call()
            return
        except Exception:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not answer within {READY_TIMEOUT_S:g}s") from None
            time.sleep(0.1)


@contextlib.contextmanager
def cellgate_server(app: App, cell: CellMapping) -> Iterator[tuple[RPCClient, Endpoint]]:
    endpoint = Endpoint()
    server = app.rpc.server(cell, Target(TOPIC, server="bench-1"), [endpoint]).start()
    try:
        client = app.rpc.client(CTX.for_cell(cell), Target(TOPIC))
        wait_until_answers(
            lambda: client.prepare(timeout=1).call("echo", value="ready"), "cellgate RPC server"
        )
        yield client, endpoint
    finally:
        server.stop()


def call_series(client: RPCClient, plan: Plan) -> Series:
    return sample(
        lambda: client.call("echo", value="x" * 64), samples=plan.micro_samples, target_s=0.01
    )


def cast_rate(client: RPCClient, endpoint: Endpoint, plan: Plan) -> Series:
    """Casts per second, from the first send to the server having handled the last."""
    rates = []
    for _ in range(plan.cast_samples + 1):  # the first is a warm-up
        endpoint.expect(CASTS)
        start = time.perf_counter()
        for i in range(CASTS):
            client.cast("note", n=i)
        if not endpoint.done.wait(60):
            raise RuntimeError(f"only {endpoint.seen} of {CASTS} casts arrived within 60 s")
        rates.append(CASTS / (time.perf_counter() - start))
    return Series(tuple(rates[1:]))


class RawKombu:
    """A bare request/reply over kombu: the floor any RPC layer on RabbitMQ sits on.

    With ``like_cellgate``, the server works the way cellgate's does: it
    consumes with acknowledgements (prefetch 16) and acks each message first,
    hands the request to a thread pool, and the pool thread replies on a
    connection of its own. The difference to the bare form is the price of
    that design; the difference to cellgate is cellgate's own code.
    """

    def __init__(self, transport_url: str, *, like_cellgate: bool = False) -> None:
        self._like_cellgate = like_cellgate
        self._url = kombu_urls(TransportURL.parse(transport_url))
        name = f"bench-raw-{uuid.uuid4().hex[:8]}"
        self._exchange = Exchange(name, type="direct", durable=False, auto_delete=True)
        self._queue = Queue(
            name, self._exchange, routing_key=name, durable=False, auto_delete=True
        )
        self._key = name
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="bench-raw-kombu", daemon=True)
        self._thread.start()
        if not self._ready.wait(READY_TIMEOUT_S):
            raise RuntimeError("raw kombu server did not start")
        self._conn = Connection(self._url)
        self._channel = self._conn.channel()
        self._producer = Producer(self._channel)
        self._reply: bytes | None = None
        self._waiting: str | None = None
        self._consumer = Consumer(
            self._channel,
            queues=[Queue(REPLY_TO, no_declare=True)],
            no_ack=True,
            on_message=self._on_reply,
        )
        self._consumer.consume()

    def _serve(self) -> None:
        pool = ThreadPoolExecutor(8) if self._like_cellgate else None
        with Connection(self._url) as conn, Connection(self._url) as reply_conn:
            channel = conn.channel()
            producer = Producer(reply_conn.channel() if pool else channel)
            lock = threading.Lock()

            def reply(body: bytes | str, props: dict[str, Any]) -> None:
                request = json.loads(body)
                with lock:
                    producer.publish(
                        json.dumps({"ok": True, "result": request["args"]["value"]}),
                        exchange="",
                        routing_key=props["reply_to"],
                        correlation_id=props["correlation_id"],
                        content_type="application/json",
                        retry=False,
                    )

            def answer(message: Any) -> None:
                if pool is None:
                    reply(message.body, message.properties)
                else:
                    message.ack()
                    pool.submit(reply, message.body, message.properties)

            if pool is not None:
                channel.basic_qos(0, 16, False)
            try:
                with Consumer(
                    channel, queues=[self._queue], no_ack=pool is None, on_message=answer
                ):
                    self._ready.set()
                    while not self._stop.is_set():
                        with contextlib.suppress(TimeoutError):
                            conn.drain_events(timeout=0.5)
            finally:
                if pool is not None:
                    pool.shutdown(wait=True)

    def _on_reply(self, message: Any) -> None:
        if message.properties.get("correlation_id") == self._waiting:
            self._reply = message.body

    def call(self, value: str) -> str:
        self._reply = None
        self._waiting = uuid.uuid4().hex
        self._producer.publish(
            json.dumps({"method": "echo", "args": {"value": value}}),
            exchange=self._exchange,
            routing_key=self._key,
            reply_to=REPLY_TO,
            correlation_id=self._waiting,
            content_type="application/json",
            retry=False,
        )
        deadline = time.monotonic() + 10
        while self._reply is None:
            if time.monotonic() > deadline:
                raise TimeoutError("raw kombu: no reply within 10 s")
            with contextlib.suppress(TimeoutError):
                self._conn.drain_events(timeout=1)
        result: str = json.loads(self._reply)["result"]
        return result

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        with contextlib.suppress(Exception):
            self._conn.release()


def against_raw_kombu(
    client: RPCClient, transport_url: str, plan: Plan, *, like_cellgate: bool = False
) -> Pair:
    raw = RawKombu(transport_url, like_cellgate=like_cellgate)
    try:
        wait_until_answers(lambda: raw.call("ready"), "raw kombu server")
        return interleaved(
            lambda: client.call("echo", value="x" * 64),
            lambda: raw.call("x" * 64),
            samples=plan.micro_samples,
            target_s=0.01,
        )
    finally:
        raw.close()


def oslo_available() -> bool:
    try:
        import oslo_messaging  # noqa: F401
    except ImportError:
        return False
    return True


def against_oslo(client: RPCClient, transport_url: str, plan: Plan) -> Pair:
    """A cellgate call vs an oslo.messaging call on the same vhost (rabbit driver)."""
    import oslo_messaging
    from oslo_config import cfg

    conf = cfg.CONF  # oslo.messaging registers some options on the global config only
    if getattr(conf, "_args", None) is None:  # not parsed yet in this process
        conf([], project="cellgate-bench")
    transport = oslo_messaging.get_rpc_transport(conf, url=transport_url)
    topic = f"bench-oslo-{uuid.uuid4().hex[:8]}"

    class OsloEndpoint:
        target = oslo_messaging.Target(version="1.0")

        def echo(self, ctxt: Any, value: str) -> str:
            return value

    server = oslo_messaging.get_rpc_server(
        transport,
        oslo_messaging.Target(topic=topic, server="bench-1"),
        [OsloEndpoint()],
        executor="threading",
    )
    server.start()
    try:
        oslo = oslo_messaging.get_rpc_client(
            transport, oslo_messaging.Target(topic=topic), timeout=10
        )

        def oslo_call() -> object:
            return oslo.call({}, "echo", value="x" * 64)

        wait_until_answers(oslo_call, "oslo.messaging server")
        return interleaved(
            lambda: client.call("echo", value="x" * 64),
            oslo_call,
            samples=plan.micro_samples,
            target_s=0.01,
        )
    finally:
        server.stop()
        server.wait()
        transport.cleanup()
