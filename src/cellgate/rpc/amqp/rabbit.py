"""The RabbitMQ driver: kombu (py-amqp) under the :class:`Transport` seam.

The queues and exchanges are in :mod:`cellgate.rpc.amqp.queues`.

Calls wait for their reply on RabbitMQ's *direct reply-to*
(``amq.rabbitmq.reply-to``): no reply queue is declared per caller, and the
request carries an expiration equal to its timeout so an unanswered request
does not linger. Call channels are pooled (one call per channel at a time);
a pooled one idle for more than half the heartbeat, or whose socket shows
the broker closed it, is replaced before anything is sent on it (an idle
connection sends no heartbeats, so the broker closes it).

Casts are persistent messages (delivery mode 2) in durable queues, so on a
single broker they survive its restart; call requests are transient.
**Casts in quorum mode** (``[rpc] queue_type = quorum``) to a topic queue,
and casts sent with ``confirm=True`` in either mode (builds), are also
``mandatory`` and confirmed: ``cast``
returns only once the broker has confirmed the message (for a quorum queue:
written on a majority of its nodes), and raises when it was refused, returned
as unroutable (no server has ever declared the queue), or not confirmed
within the confirm timeout (``[DEFAULT] rpc_response_timeout``). Confirms use
a channel of their own, so an acknowledgement is never mistaken for another
message's. Fanout casts, and other casts in classic mode, are fire and forget.
A server acknowledges a message as it takes it (at-most-once per delivery); a
broker node that dies before it saw that acknowledgement delivers the message
again, so a confirmed cast is delivered at least once, perhaps twice.

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
import select
import threading
import time
import uuid
from typing import Any, Final
from urllib.parse import quote

from amqp.exceptions import MessageNacked
from kombu.connection import Connection
from kombu.entity import Queue
from kombu.messaging import Consumer, Producer

from cellgate.errors import BackendUnavailable
from cellgate.rpc.amqp.broker import DEFAULT_AMQP_PORT, describe_amqp_error
from cellgate.rpc.amqp.queues import QUORUM, QueueMismatch, declare, routing, server_queues
from cellgate.rpc.target import Target
from cellgate.rpc.transport import Incoming, Listener, OnMessage, Transport
from cellgate.urls import TransportURL

log = logging.getLogger(__name__)

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
    def __init__(
        self,
        url: TransportURL,
        *,
        connect_timeout: float,
        heartbeat: int,
        queue_type: str = "classic",
        confirm_timeout: float = 60.0,
    ) -> None:
        self._url = url
        self._kombu_url = kombu_urls(url)
        self.connect_timeout = connect_timeout
        self._heartbeat = heartbeat
        self.queue_type = queue_type
        #: Casts to topic queues are persistent and confirmed (quorum mode).
        self.confirmed_casts = queue_type == QUORUM
        self.confirm_timeout = confirm_timeout
        #: The brokers, by host and port only; in errors, apart from the subject.
        self.address = ",".join(f"{h.hostname}:{h.port or DEFAULT_AMQP_PORT}" for h in url.hosts)
        self.label = f"transport {self.address}"
        self.host_count = len(url.hosts)
        self._idle: queue.LifoQueue[_CallChannel] = queue.LifoQueue()
        self._lock = threading.Lock()
        self._closed = False
        #: Pooled connections found dead (or idle too long) and replaced.
        self.stale_discarded = 0

    # -- connections ------------------------------------------------------
    def connection(self) -> Connection:
        """A new, not yet opened connection with every timeout set."""
        return Connection(
            self._kombu_url,
            failover_strategy="round-robin",
            connect_timeout=self.connect_timeout,
            heartbeat=self._heartbeat,
            transport_options={"max_retries": 1},
        )

    def unavailable(self, exc: BaseException) -> BackendUnavailable:
        return BackendUnavailable(
            component="transport", address=self.address, reason=describe_amqp_error(exc)
        )

    @property
    def max_idle(self) -> float | None:
        """Seconds a pooled channel may sit idle and still be handed out.

        Idle, a pooled connection sends no heartbeat, and the broker closes
        a client it has not heard from for about its heartbeat timeout. Half
        of it is safe whatever the broker counts as missed; with heartbeats
        off the broker never closes an idle client, so only the socket check
        of :meth:`_CallChannel.usable` applies.
        """
        return self._heartbeat / 2 if self._heartbeat > 0 else None

    def _acquire(self) -> _CallChannel:
        """A pooled channel that is still usable, else a new one.

        A pooled connection that sat idle too long, or that the broker closed
        meanwhile (its socket has an EOF or a Connection.Close waiting), is
        closed here, before anything is sent on it, and counted in
        ``stale_discarded``: nothing was lost, and no error is raised (nor
        counted against the cell's breaker) for it.
        """
        while True:
            try:
                channel = self._idle.get_nowait()
            except queue.Empty:
                return _CallChannel(self)
            if channel.usable(self.max_idle):
                return channel
            channel.close(graceful=False)
            with self._lock:
                self.stale_discarded += 1
            log.debug("%s: discarded a stale pooled connection", self.label)

    def _release(self, channel: _CallChannel) -> None:
        if self._closed or self._idle.qsize() >= MAX_IDLE_CHANNELS:
            channel.close()
        else:
            channel.idle_since = time.monotonic()
            self._idle.put(channel)

    def _with_channel(self, action: Any) -> Any:
        """Run ``action(channel)``; on a dead pooled connection, retry once on a new one."""
        for attempt in (1, 2):
            channel = self._acquire()
            try:
                result = action(channel)
            except _StaleConnection as exc:
                channel.close(graceful=False)
                if attempt == 2:
                    raise self.unavailable(exc.__cause__ or exc) from exc
                continue
            except BaseException:
                channel.close(graceful=False)
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

    def cast(self, target: Target, body: bytes, *, confirm: bool = False) -> None:
        if target.fanout and confirm:
            raise ValueError(
                "a confirmed cast needs a topic queue; fanout casts are not confirmed"
            )
        if confirm or (self.confirmed_casts and not target.fanout):
            self._with_channel(lambda ch: ch.publish_confirmed(target, body))
        else:
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


class _CallChannel:
    """One connection + channel + reply consumer; used by one call at a time."""

    def __init__(self, transport: RabbitTransport) -> None:
        self._transport = transport
        self._conn = transport.connection()
        self._declared: set[str] = set()
        self._waiting: str | None = None
        self._reply: bytes | None = None
        self._consumer: Consumer | None = None
        self._confirm_channel: Any = None
        self._returned: list[str] = []
        self.idle_since = time.monotonic()
        try:
            connect(self._conn, self._transport.host_count)
            self._channel = self._conn.channel()
            self._producer = Producer(self._channel)
        except Exception as exc:
            self.close()
            raise transport.unavailable(exc) from exc

    def _errors(self) -> tuple[type[BaseException], ...]:
        return tuple(self._conn.connection_errors) + tuple(self._conn.channel_errors)

    def usable(self, max_idle: float | None) -> bool:
        """Whether this pooled connection can be used: not idle too long, not closed.

        An idle connection reads nothing, so a broker that closed it (missed
        heartbeats, ``rabbitmqctl close_connection``, a proxy or a NAT that
        dropped it) has left an EOF or a Connection.Close in the socket. A
        readable socket is therefore drained here, briefly: heartbeats and
        stray late replies are consumed, anything else means it is dead.
        """
        if max_idle is not None and time.monotonic() - self.idle_since > max_idle:
            return False
        if not self._conn.connected:  # (``.connection`` would connect again)
            return False
        try:
            sock = self._conn.connection.sock
            if sock is None:
                return False
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                with contextlib.suppress(TimeoutError):  # only heartbeats were waiting
                    self._conn.drain_events(timeout=0.01)
                self._conn.heartbeat_check()
        except Exception:  # any error on an idle connection: it is gone
            return False
        return True

    def publish(self, target: Target, body: bytes, *, reply: bool, timeout: float | None) -> str:
        exchange, key = routing(target)
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
                # Casts persist in a durable queue; a call is useless past its timeout.
                delivery_mode=1 if reply else 2,
                retry=False,
                **headers,
            )
        except self._errors() as exc:
            raise _StaleConnection() from exc
        return correlation_id

    def publish_confirmed(self, target: Target, body: bytes) -> None:
        """Publish a persistent, mandatory message and wait for the broker's confirm."""
        exchange, key = routing(target)
        try:
            channel = self._confirm_channel
            if channel is None:
                channel = self._conn.channel()
                channel.events["basic_return"].add(self._on_return)
                exchange(channel).declare()
                # Selected here, not lazily by basic_publish_confirm: a dead
                # connection then fails before the message is sent (a retry
                # on a new connection is safe), not after.
                channel.confirm_select()
                channel._confirm_selected = True
                self._confirm_channel = channel
            message = channel.prepare_message(
                body,
                content_type="application/json",
                content_encoding="utf-8",
                properties={"delivery_mode": 2},
            )
        except self._errors() as exc:
            raise _StaleConnection() from exc
        self._returned.clear()
        timeout = self._transport.confirm_timeout
        try:
            # A connection that dies before the confirm may or may not have
            # stored the message: the error reaches the caller, no retry here.
            channel.basic_publish_confirm(
                message,
                exchange=exchange.name,
                routing_key=key,
                mandatory=True,
                confirm_timeout=timeout,
            )
        except TimeoutError as exc:
            self._confirm_channel = None  # a late confirm must not answer the next cast
            raise self._transport.unavailable(
                TimeoutError(f"no confirm from the broker within {timeout:g}s")
            ) from exc
        except (*self._errors(), MessageNacked) as exc:
            raise self._transport.unavailable(exc) from exc
        if self._returned:
            raise self._transport.unavailable(RuntimeError(self._returned[0]))

    def _on_return(self, exc: BaseException, exchange: str, key: str, _message: Any) -> None:
        self._returned.append(f"{describe_amqp_error(exc)} (routing key {key!r})")

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

    def close(self, *, graceful: bool = True) -> None:
        """Close the connection: with the AMQP handshake, bounded, or (after any
        error) by just closing the socket.

        A graceful close waits for the broker's Close-Ok, which a silent broker
        (a partition that keeps the socket open) never sends: without a bound,
        the thread closing it would hang for ever. A connection that failed is
        not worth a handshake at all.
        """
        try:
            if graceful:
                sock = self._conn.connection.sock if self._conn.connected else None
                if sock is not None:
                    sock.settimeout(self._transport.connect_timeout)
                self._conn.release()
            else:
                self._conn.collect()
        except Exception:  # closing a dead connection may raise anything; it is gone
            log.debug("ignoring error while closing an AMQP connection", exc_info=True)
            with contextlib.suppress(Exception):
                self._conn.collect()


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
        return server_queues(self._target, self._transport.queue_type)

    def _run(self) -> None:
        backoff = _BACKOFF_START
        while not self._stopping.is_set():
            conn = self._transport.connection()
            try:
                connect(conn, self._transport.host_count)
                queues = self._queues()
                channel = declare(conn, queues)
                channel.basic_qos(0, 16, False)
                with Consumer(
                    channel, queues=queues, on_message=self._deliver, auto_declare=False
                ):
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
                level = logging.ERROR if isinstance(exc, QueueMismatch) else logging.WARNING
                log.log(
                    level,
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
