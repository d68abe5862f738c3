"""The RabbitMQ driver: kombu (py-amqp) under the :class:`Transport` seam.

Layout on the broker, per vhost (one vhost per cell is the recommended setup):

- direct exchange ``cellgate``; queue ``cellgate:TOPIC`` bound with key
  ``TOPIC`` (shared by the topic's servers: round robin) and queue
  ``cellgate:TOPIC:SERVER`` bound with ``TOPIC:SERVER``;
- fanout exchange ``cellgate:TOPIC:fanout``; each server binds an exclusive,
  auto-deleted queue to it.

Names are joined with ``:``, which a topic or server name cannot contain, so
topic ``a.b`` with server ``c`` never meets topic ``a.b.c``.

Calls wait for their reply on RabbitMQ's *direct reply-to*
(``amq.rabbitmq.reply-to``): no reply queue is declared per caller, and the
request carries an expiration equal to its timeout so an unanswered request
does not linger. Call channels are pooled (one call per channel at a time).

Every wait is bounded: connect timeout, reply timeout, and ``drain_events``
slices of at most one second between which heartbeats are checked. A server's
consumer reconnects with exponential backoff (0.5 s doubling to 5 s) after the
broker restarts, re-declaring what it needs.

Broker errors become :class:`~cellgate.errors.BackendUnavailable`, naming the
brokers by host and port only, as their ``address`` (never shown to API clients).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
import uuid
from typing import Any, Final
from urllib.parse import quote

from kombu.connection import Connection
from kombu.entity import Exchange, Queue
from kombu.messaging import Consumer, Producer

from cellgate.errors import BackendUnavailable
from cellgate.rpc.amqp.broker import DEFAULT_AMQP_PORT, describe_amqp_error
from cellgate.rpc.target import Target
from cellgate.rpc.transport import Incoming, Listener, OnMessage, Transport
from cellgate.urls import TransportURL

log = logging.getLogger(__name__)

EXCHANGE: Final = "cellgate"
REPLY_TO: Final = "amq.rabbitmq.reply-to"
MAX_IDLE_CHANNELS: Final = 8
_BACKOFF_START: Final = 0.5
_BACKOFF_MAX: Final = 5.0


def kombu_urls(url: TransportURL) -> str:
    """``amqp://`` URLs, one per broker, joined by ``;`` as kombu wants for failover."""
    vhost = quote(url.virtual_host or "/", safe="")
    parts = []
    for host in url.hosts:
        user = quote(host.username or "guest", safe="")
        password = quote(host.password or "guest", safe="")
        parts.append(
            f"amqp://{user}:{password}@{host.hostname}:{host.port or DEFAULT_AMQP_PORT}/{vhost}"
        )
    return ";".join(parts)


def connect(conn: Connection, hosts: int) -> None:
    """Open ``conn``, trying each of its ``hosts`` once, each for at most the connect timeout.

    kombu makes ``max_retries + 1`` attempts, switching host after each failure.
    """
    conn.ensure_connection(
        max_retries=max(0, hosts - 1), interval_start=0, interval_step=0.2, interval_max=0.5
    )


class RabbitTransport(Transport):
    def __init__(self, url: TransportURL, *, connect_timeout: float, heartbeat: int) -> None:
        self._url = url
        self._kombu_url = kombu_urls(url)
        self._connect_timeout = connect_timeout
        self._heartbeat = heartbeat
        #: The brokers, by host and port only; in errors, apart from the subject.
        self.address = ",".join(f"{h.hostname}:{h.port or DEFAULT_AMQP_PORT}" for h in url.hosts)
        self.label = f"transport {self.address}"
        self.host_count = len(url.hosts)
        self._idle: queue.LifoQueue[_CallChannel] = queue.LifoQueue()
        self._lock = threading.Lock()
        self._closed = False

    # -- connections ------------------------------------------------------
    def connection(self) -> Connection:
        """A new, not yet opened connection with every timeout set."""
        return Connection(
            self._kombu_url,
            failover_strategy="round-robin",
            connect_timeout=self._connect_timeout,
            heartbeat=self._heartbeat,
            transport_options={"max_retries": 1},
        )

    def unavailable(self, exc: BaseException) -> BackendUnavailable:
        return BackendUnavailable(
            component="transport", address=self.address, reason=describe_amqp_error(exc)
        )

    def _acquire(self) -> _CallChannel:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            return _CallChannel(self)

    def _release(self, channel: _CallChannel) -> None:
        if self._closed or self._idle.qsize() >= MAX_IDLE_CHANNELS:
            channel.close()
        else:
            self._idle.put(channel)

    def _with_channel(self, action: Any) -> Any:
        """Run ``action(channel)``; on a dead pooled connection, retry once on a new one."""
        for attempt in (1, 2):
            channel = self._acquire()
            try:
                result = action(channel)
            except _StaleConnection as exc:
                channel.close()
                if attempt == 2:
                    raise self.unavailable(exc.__cause__ or exc) from exc
                continue
            except BaseException:
                channel.close()
                raise
            self._release(channel)
            return result
        raise AssertionError("unreachable")

    # -- Transport --------------------------------------------------------
    def call(self, target: Target, body: bytes, timeout: float) -> bytes:
        if target.fanout:
            raise ValueError("a call needs one server; fanout targets are cast-only")
        result: bytes = self._with_channel(lambda ch: ch.call(target, body, timeout))
        return result

    def cast(self, target: Target, body: bytes) -> None:
        self._with_channel(lambda ch: ch.publish(target, body, reply=False, timeout=None))

    def listen(self, target: Target, on_message: OnMessage) -> Listener:
        return _RabbitListener(self, target, on_message)

    def reply(self, reply_to: str, correlation_id: str, body: bytes) -> None:
        self._with_channel(lambda ch: ch.send_reply(reply_to, correlation_id, body))

    def close(self) -> None:
        self._closed = True
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return


class _StaleConnection(Exception):
    """A pooled connection died while idle; the operation may be retried."""


def _routing(target: Target) -> tuple[Exchange, str]:
    if target.fanout:
        return Exchange(f"{EXCHANGE}:{target.topic}:fanout", type="fanout", durable=False), ""
    key = f"{target.topic}:{target.server}" if target.server else target.topic
    return Exchange(EXCHANGE, type="direct", durable=False), key


class _CallChannel:
    """One connection + channel + reply consumer; used by one call at a time."""

    def __init__(self, transport: RabbitTransport) -> None:
        self._transport = transport
        self._conn = transport.connection()
        self._declared: set[str] = set()
        self._waiting: str | None = None
        self._reply: bytes | None = None
        self._consumer: Consumer | None = None
        try:
            connect(self._conn, self._transport.host_count)
            self._channel = self._conn.channel()
            self._producer = Producer(self._channel)
        except Exception as exc:
            self.close()
            raise transport.unavailable(exc) from exc

    def _errors(self) -> tuple[type[BaseException], ...]:
        return tuple(self._conn.connection_errors) + tuple(self._conn.channel_errors)

    def publish(self, target: Target, body: bytes, *, reply: bool, timeout: float | None) -> str:
        exchange, key = _routing(target)
        correlation_id = uuid.uuid4().hex
        headers: dict[str, Any] = {}
        if reply:
            headers.update(reply_to=REPLY_TO, correlation_id=correlation_id)
        if timeout is not None:
            headers["expiration"] = timeout
        try:
            if exchange.name not in self._declared:
                exchange(self._channel).declare()
                self._declared.add(exchange.name)
            self._producer.publish(
                body,
                exchange=exchange,
                routing_key=key,
                content_type="application/json",
                content_encoding="utf-8",
                retry=False,
                **headers,
            )
        except self._errors() as exc:
            raise _StaleConnection() from exc
        return correlation_id

    def call(self, target: Target, body: bytes, timeout: float) -> bytes:
        deadline = time.monotonic() + timeout
        try:
            if self._consumer is None:
                self._consumer = Consumer(
                    self._channel,
                    queues=[Queue(REPLY_TO, no_declare=True)],
                    no_ack=True,
                    on_message=self._on_reply,
                )
                self._consumer.consume()
        except self._errors() as exc:
            raise _StaleConnection() from exc
        self._reply = None
        self._waiting = self.publish(target, body, reply=True, timeout=timeout)
        try:
            while self._reply is None and (remaining := deadline - time.monotonic()) > 0:
                with contextlib.suppress(TimeoutError):  # kombu's "nothing arrived yet"
                    self._conn.drain_events(timeout=min(remaining, 1.0))
                self._conn.heartbeat_check()
        except self._errors() as exc:
            raise self._transport.unavailable(exc) from exc
        finally:
            self._waiting = None
        if self._reply is None:
            raise TimeoutError(f"no reply within {timeout:g}s")
        return self._reply

    def _on_reply(self, message: Any) -> None:
        if message.properties.get("correlation_id") == self._waiting:
            self._reply = _raw(message.body)

    def send_reply(self, reply_to: str, correlation_id: str, body: bytes) -> None:
        try:
            self._producer.publish(
                body,
                exchange="",
                routing_key=reply_to,
                correlation_id=correlation_id,
                content_type="application/json",
                content_encoding="utf-8",
                retry=False,
            )
        except self._errors() as exc:
            raise _StaleConnection() from exc

    def close(self) -> None:
        try:
            self._conn.release()
        except Exception:  # closing a dead connection may raise anything; it is gone
            log.debug("ignoring error while closing an AMQP connection", exc_info=True)


class _RabbitListener(Listener):
    """A consumer thread that survives broker restarts."""

    def __init__(self, transport: RabbitTransport, target: Target, on_message: OnMessage):
        self._transport = transport
        self._target = target
        self._on_message = on_message
        self._stopping = threading.Event()
        self.ready = threading.Event()
        self.reconnects = 0
        self._thread = threading.Thread(
            target=self._run, name=f"cellgate-rabbit-{target.topic}", daemon=True
        )
        self._thread.start()

    def _queues(self) -> list[Queue]:
        topic, server = self._target.topic, self._target.server
        direct = Exchange(EXCHANGE, type="direct", durable=False)
        queues = [Queue(f"{EXCHANGE}:{topic}", direct, routing_key=topic, durable=False)]
        if server:
            queues.append(
                Queue(
                    f"{EXCHANGE}:{topic}:{server}",
                    direct,
                    routing_key=f"{topic}:{server}",
                    durable=False,
                )
            )
        fanout = Exchange(f"{EXCHANGE}:{topic}:fanout", type="fanout", durable=False)
        queues.append(
            Queue(
                f"{EXCHANGE}:{topic}:fanout:{uuid.uuid4().hex[:12]}",
                fanout,
                durable=False,
                exclusive=True,
                auto_delete=True,
            )
        )
        return queues

    def _run(self) -> None:
        backoff = _BACKOFF_START
        while not self._stopping.is_set():
            conn = self._transport.connection()
            try:
                connect(conn, self._transport.host_count)
                channel = conn.channel()
                channel.basic_qos(0, 16, False)
                with Consumer(channel, queues=self._queues(), on_message=self._deliver):
                    self.ready.set()
                    backoff = _BACKOFF_START
                    while not self._stopping.is_set():
                        with contextlib.suppress(TimeoutError):
                            conn.drain_events(timeout=1.0)
                        conn.heartbeat_check()  # after every slice, busy or not
            except Exception as exc:  # any broker failure: log, back off, reconnect
                if self._stopping.is_set():
                    break
                self.ready.clear()
                self.reconnects += 1
                log.warning(
                    "%s: consumer for %s lost (%s); reconnecting in %.1fs",
                    self._transport.label,
                    self._target,
                    describe_amqp_error(exc),
                    backoff,
                )
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX)
            finally:
                try:
                    conn.release()
                except Exception:  # the connection may already be dead
                    log.debug("ignoring error while closing a consumer", exc_info=True)

    def _deliver(self, message: Any) -> None:
        # Ack first (at-most-once, as oslo.messaging does for RPC): a handler
        # that crashes the process must not make the broker redeliver forever.
        message.ack()
        props = message.properties
        reply_to, correlation_id = props.get("reply_to"), props.get("correlation_id")
        answer = None
        if reply_to and correlation_id:

            def answer(body: bytes) -> None:
                self._transport.reply(reply_to, correlation_id, body)

        self._on_message(Incoming(_raw(message.body), answer))

    def stop(self) -> None:
        self._stopping.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)


def _raw(body: bytes | str) -> bytes:
    """kombu hands over ``str`` for text content encodings; the wire wants bytes."""
    return body.encode() if isinstance(body, str) else bytes(body)
