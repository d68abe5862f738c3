"""The transport seam: what the RPC client and server need from a broker.

A :class:`Transport` moves opaque bytes: ``call`` (request and wait for one
reply), ``cast`` (fire and forget) and ``listen`` (deliver to a callback on a
thread of the transport's own). Envelopes, versions and errors are the
client's and server's business (:mod:`cellgate.rpc.wire`), so every driver
behaves the same.

Drivers, by URL scheme:

- ``memory://NAME``: :class:`MemoryTransport`, an in-process broker. Each
  name is a separate broker, as isolated as two RabbitMQ servers. Brokers
  live in the :class:`TransportRegistry` that made them (one per ``App``).
- ``rabbit://`` and ``amqp://``: :class:`cellgate.rpc.amqp.rabbit.RabbitTransport`.
- ``none:///``: :class:`NullTransport` (cell0); every operation raises
  :class:`~cellgate.errors.NoTransport`.

Transports raise :class:`~cellgate.errors.BackendUnavailable` when the broker
cannot be used and the builtin :class:`TimeoutError` when no reply came; the
client turns both into per-cell errors.
"""

from __future__ import annotations

import abc
import itertools
import logging
import queue
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field

from cellgate import forksafe
from cellgate.errors import NoTransport
from cellgate.rpc.target import Target
from cellgate.urls import TransportURL

log = logging.getLogger(__name__)


@dataclass
class Incoming:
    """A message delivered to a listener; ``reply`` answers a call (no-op for casts)."""

    body: bytes
    _reply: Callable[[bytes], None] | None = field(default=None, repr=False)

    @property
    def wants_reply(self) -> bool:
        return self._reply is not None

    def reply(self, body: bytes) -> None:
        if self._reply is not None:
            self._reply(body)


class Listener(abc.ABC):
    """A running subscription; ``stop()`` ends it and waits briefly for its thread."""

    @abc.abstractmethod
    def stop(self) -> None: ...


OnMessage = Callable[[Incoming], None]


class Transport(abc.ABC):
    """One cell's message bus."""

    @abc.abstractmethod
    def call(self, target: Target, body: bytes, timeout: float) -> bytes:
        """Send ``body`` to one server of ``target``; return its reply body."""

    @abc.abstractmethod
    def cast(self, target: Target, body: bytes, *, confirm: bool = False) -> None:
        """Send ``body`` to one server (or, for fanout, every server) of ``target``.

        ``confirm=True`` (topic targets only) returns only once the broker
        has taken the message for a queue some server consumes from, and
        raises :class:`~cellgate.errors.BackendUnavailable` when it did not:
        a cast whose loss nobody would notice otherwise (a build) uses it.
        """

    @abc.abstractmethod
    def listen(self, target: Target, on_message: OnMessage) -> Listener:
        """Deliver messages for ``target`` to ``on_message`` until stopped."""

    @abc.abstractmethod
    def close(self) -> None: ...


class NullTransport(Transport):
    """cell0's transport: there is no queue, and saying so is the only answer."""

    def __init__(self, cell_label: str = "cell0") -> None:
        self._label = cell_label

    def call(self, target: Target, body: bytes, timeout: float) -> bytes:
        raise NoTransport(cell=self._label)

    def cast(self, target: Target, body: bytes, *, confirm: bool = False) -> None:
        raise NoTransport(cell=self._label)

    def listen(self, target: Target, on_message: OnMessage) -> Listener:
        raise NoTransport(cell=self._label)

    def close(self) -> None:
        return None


class _MemoryListener(Listener):
    def __init__(self, broker: MemoryBroker, target: Target, on_message: OnMessage) -> None:
        self.target = target
        self._broker = broker
        self._inbox: queue.SimpleQueue[Incoming | None] = queue.SimpleQueue()
        self._on_message = on_message
        self._thread = threading.Thread(
            target=self._run, name=f"cellgate-memory-{target.topic}", daemon=True
        )
        self._thread.start()

    def deliver(self, message: Incoming) -> None:
        self._inbox.put(message)

    def _run(self) -> None:
        while (message := self._inbox.get()) is not None:
            try:
                self._on_message(message)
            except Exception:  # a handler bug must not kill the listener
                log.exception("RPC handler failed on %s", self.target)

    def stop(self) -> None:
        self._broker.unsubscribe(self)
        self._inbox.put(None)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)


class MemoryBroker:
    """One in-process broker: topics, servers, fanout, round robin."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._listeners: list[_MemoryListener] = []
        self._turn = itertools.count()
        #: Confirmed casts nobody listened for yet, by (topic, server).
        self._backlog: dict[tuple[str, str | None], list[Incoming]] = {}

    def subscribe(self, target: Target, on_message: OnMessage) -> _MemoryListener:
        listener = _MemoryListener(self, target, on_message)
        with self._lock:
            self._listeners.append(listener)
            waiting = self._backlog.pop((target.topic, target.server), [])
        for message in waiting:
            listener.deliver(message)
        return listener

    def unsubscribe(self, listener: _MemoryListener) -> None:
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def route(self, target: Target, message: Incoming, *, keep: bool = False) -> None:
        """Deliver like RabbitMQ would; with no subscriber the message is dropped.

        ``keep`` (a confirmed cast to a topic): with no subscriber the message
        waits for the first server that listens on its topic, as in a durable
        queue, instead of being dropped.
        """
        with self._lock:
            same_topic = [lst for lst in self._listeners if lst.target.topic == target.topic]
            if target.fanout:
                chosen = same_topic
            else:
                if target.server is not None:
                    same_topic = [lst for lst in same_topic if lst.target.server == target.server]
                chosen = [same_topic[next(self._turn) % len(same_topic)]] if same_topic else []
            if not chosen and keep:
                self._backlog.setdefault((target.topic, target.server), []).append(message)
        for listener in chosen:
            listener.deliver(message)


class MemoryTransport(Transport):
    """In-process transport over one :class:`MemoryBroker`."""

    def __init__(self, broker: MemoryBroker) -> None:
        self.broker = broker

    def call(self, target: Target, body: bytes, timeout: float) -> bytes:
        if target.fanout:
            raise ValueError("a call needs one server; fanout targets are cast-only")
        future: Future[bytes] = Future()

        def reply(answer: bytes) -> None:
            if not future.done():
                future.set_result(answer)

        self.broker.route(target, Incoming(body, reply))
        try:
            return future.result(timeout=timeout)
        except FutureTimeout:
            raise TimeoutError(f"no reply within {timeout:g}s") from None

    def cast(self, target: Target, body: bytes, *, confirm: bool = False) -> None:
        if confirm and target.fanout:
            raise ValueError(
                "a confirmed cast needs a topic queue; fanout casts are not confirmed"
            )
        self.broker.route(target, Incoming(body), keep=confirm)

    def listen(self, target: Target, on_message: OnMessage) -> Listener:
        return self.broker.subscribe(target, on_message)

    def close(self) -> None:
        return None  # the broker outlives one user of it, like a real broker


TransportFactory = Callable[[TransportURL], Transport]


class TransportRegistry:
    """One transport per transport URL, created once, bounded, closed with the App.

    Keyed by the rendered URL, not the cell, so an updated mapping takes
    effect at once. Least recently used transports beyond ``max_transports``
    are closed (memory brokers are kept: they hold in-process state).
    """

    def __init__(self, *, max_transports: int, rabbit: TransportFactory) -> None:
        self.max_transports = max_transports
        self._rabbit = rabbit
        self._lock = threading.Lock()
        self._transports: OrderedDict[str, Transport] = OrderedDict()
        self._brokers: dict[str, MemoryBroker] = {}
        self._closed = False
        self.created = 0
        forksafe.register(self)

    def _after_fork_in_child(self) -> None:
        """Drop the parent's broker connections (unclosed) and in-process brokers."""
        self._lock = threading.Lock()
        self._transports = OrderedDict()
        self._brokers = {}

    def get(self, url: TransportURL, cell_label: str) -> Transport:
        if url.is_none:
            return NullTransport(cell_label)
        key = url.key
        with self._lock:
            if self._closed:
                raise RuntimeError("the App owning this transport registry is closed")
            transport = self._transports.get(key)
            if transport is not None:
                self._transports.move_to_end(key)
                return transport
            if url.scheme == "memory":
                name = url.hosts[0].hostname if url.hosts else "default"
                broker = self._brokers.setdefault(name, MemoryBroker(name))
                transport = MemoryTransport(broker)
            else:
                # Creating a RabbitTransport opens no connection, so doing it
                # under the lock costs nothing and makes creation once-per-URL.
                transport = self._rabbit(url)
            self._transports[key] = transport
            self.created += 1
            victims = []
            while len(self._transports) > self.max_transports:
                _, victim = self._transports.popitem(last=False)
                victims.append(victim)
        for victim in victims:
            victim.close()
        return transport

    def dedicated(self, url: TransportURL, cell_label: str) -> Transport:
        """A transport outside the LRU, for a server: its owner closes it.

        Servers keep listeners running, so evicting their transport would stop
        them; they get one of their own instead.
        """
        if url.is_none or url.scheme == "memory":
            return self.get(url, cell_label)
        with self._lock:
            if self._closed:
                raise RuntimeError("the App owning this transport registry is closed")
        return self._rabbit(url)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            transports = list(self._transports.values())
            self._transports.clear()
        for transport in transports:
            transport.close()
