"""Real database servers for tests: one fresh database (and user) per request.

Each :class:`Server` makes uniquely named databases, each owned by a uniquely
named user whose password contains characters that must be percent-encoded,
so every backend test also proves URLs with awkward passwords work. Everything
made is dropped at teardown. Under ``CI=true`` a server that does not answer
fails the test instead of skipping it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import struct
import subprocess
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from urllib.parse import quote

import psycopg
import pymysql
import pytest

from cellgate.urls import DatabaseURL

MARIADB = {"host": "127.0.0.1", "port": 3306, "user": "root", "password": ""}
POSTGRES = "host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=3"
#: Seeded into every server-side test user's password (percent-encoded in URLs).
# ASCII only: PyMySQL sends passwords latin-1 encoded, so a non-ASCII password
# set through a utf8 connection never matches (see docs/deployment.md).
AWKWARD = "p@ss:w/rd%,#?"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def unavailable(what: str, exc: BaseException) -> None:
    message = f"{what} is not reachable ({exc}); start it (scripts/services; see DEVELOPERS.md)"
    if in_ci():
        pytest.fail(message)
    pytest.skip(message)


@dataclass
class Server:
    """A backend kind that can make fresh databases."""

    kind: str  # sqlite | mariadb | postgresql
    tmp_path: object
    made: list[str] = field(default_factory=list)

    def new_database(self) -> DatabaseURL:
        name = f"cgt_{secrets.token_hex(5)}"
        password = f"{AWKWARD}{secrets.token_hex(4)}"
        self.made.append(name)
        if self.kind == "sqlite":
            return DatabaseURL.parse(f"sqlite:///{self.tmp_path}/{name}.sqlite")
        if self.kind == "mariadb":
            with _mariadb() as conn, conn.cursor() as cur:
                cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
                cur.execute(f"CREATE USER '{name}'@'%%' IDENTIFIED BY %s", (password,))
                cur.execute(f"GRANT ALL ON `{name}`.* TO '{name}'@'%'")
            return DatabaseURL.parse(
                f"mysql+pymysql://{name}:{quote(password, safe='')}@127.0.0.1:3306/{name}"
            )
        with _postgres() as conn:
            conn.execute(f"CREATE ROLE {name} LOGIN PASSWORD {_pg_literal(password)}".encode())
            conn.execute(f"CREATE DATABASE {name} OWNER {name}".encode())
        return DatabaseURL.parse(
            f"postgresql+psycopg://{name}:{quote(password, safe='')}@127.0.0.1:5432/{name}"
        )

    def drop_all(self) -> None:
        if self.kind == "mariadb" and self.made:
            with _mariadb() as conn, conn.cursor() as cur:
                for name in self.made:
                    cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
                    cur.execute(f"DROP USER IF EXISTS '{name}'@'%'")
        elif self.kind == "postgresql" and self.made:
            with _postgres() as conn:
                for name in self.made:
                    conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)".encode())
                    conn.execute(f"DROP ROLE IF EXISTS {name}".encode())
        self.made.clear()

    def check(self) -> None:
        try:
            if self.kind == "mariadb":
                _mariadb().close()
            elif self.kind == "postgresql":
                _postgres().close()
        except Exception as exc:  # any failure to connect means "not available"
            unavailable(self.kind, exc)


def _pg_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _mariadb() -> pymysql.connections.Connection[pymysql.cursors.Cursor]:
    return pymysql.connect(**MARIADB, connect_timeout=3, autocommit=True)  # type: ignore[arg-type]


def _postgres() -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(POSTGRES, autocommit=True)


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


@dataclass
class Broker:
    """The local RabbitMQ: fresh vhosts, each with its own user and awkward password."""

    made: list[str] = field(default_factory=list)

    def check(self) -> None:
        try:
            with socket.create_connection(("127.0.0.1", 5672), timeout=3):
                pass
        except OSError as exc:
            unavailable("RabbitMQ", exc)

    def new_vhost(self) -> str:
        """A transport URL for a new vhost owned by a new user."""
        name = f"cgt_{secrets.token_hex(5)}"
        password = f"{AWKWARD}{secrets.token_hex(4)}"
        self.made.append(name)
        _rabbitmqctl("add_vhost", name)
        _rabbitmqctl("add_user", name, password)
        _rabbitmqctl("set_permissions", "-p", name, name, ".*", ".*", ".*")
        return f"rabbit://{name}:{quote(password, safe='')}@127.0.0.1:5672/{name}"

    def drop_all(self) -> None:
        for name in self.made:
            _rabbitmqctl("delete_vhost", name)
            _rabbitmqctl("delete_user", name)
        self.made.clear()


@contextmanager
def blackhole() -> Iterator[int]:
    """A 127.0.0.1 port that accepts TCP connections and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)  # the kernel completes handshakes; nobody ever reads
        yield sock.getsockname()[1]


class TcpProxy:
    """A TCP proxy on 127.0.0.1 in front of one server, that can misbehave on demand.

    Faults, each one call from the test (every mode applies to new connections;
    ``drop`` and ``reset`` act on the live ones and leave the mode as it is):

    - ``forward()`` (the initial mode) relays every new connection to
      ``target_host:target_port``; connections held while blackholed are closed;
    - ``latency`` (seconds, settable at any time) holds every chunk the server
      sends that long before relaying it: each answer is late by it, while
      what the client sends reaches the server at once;
    - ``blackhole()`` closes every current connection, both sides, then accepts
      new ones and never forwards nor answers them: to a client the server
      looks hung;
    - ``drop()`` closes every live connection cleanly (FIN), both sides;
    - ``reset()`` aborts every live connection, both sides, with a TCP RST
      (``SO_LINGER`` 0), whatever is in flight: a server dying mid-stream.

    ``close()`` stops listening and closes everything. Every thread is a daemon
    and every socket has a timeout, so nothing here can hang a test run.
    """

    _TICK = 0.25  # seconds between checks of the stop flag
    _CONNECT_TIMEOUT = 3.0

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._lock = threading.Lock()
        self._blackholed = False
        self._closed = False
        self._stopping = threading.Event()  # cuts latency sleeps short at close()
        self._pairs: set[tuple[socket.socket, socket.socket]] = set()
        self._held: set[socket.socket] = set()
        self.latency: float = 0.0
        self.accepted = 0  # connections accepted so far, in any mode: attempts to reach it
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(self._TICK)
        self.port: int = self._listener.getsockname()[1]
        self._thread = threading.Thread(
            target=self._accept_loop, name=f"tcp-proxy-{self.port}", daemon=True
        )
        self._thread.start()

    def blackhole(self) -> None:
        """Close all current connections; hold new ones without a word."""
        with self._lock:
            self._blackholed = True
            doomed = self._take_all_locked()
        _close_all(doomed)

    def forward(self) -> None:
        """Relay new connections again (connections held while dead are closed)."""
        with self._lock:
            self._blackholed = False
            doomed = list(self._held)
            self._held.clear()
        _close_all(doomed)

    def drop(self) -> None:
        """Close every live connection cleanly (FIN to both sides); the mode stays."""
        with self._lock:
            doomed = self._take_all_locked()
        _close_all(doomed)

    def reset(self) -> None:
        """Abort every live connection with an RST to both sides; the mode stays."""
        with self._lock:
            doomed = self._take_all_locked()
        _reset_all(doomed)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            doomed = self._take_all_locked()
        self._stopping.set()
        _close_all([self._listener, *doomed])
        self._thread.join(timeout=5)

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _take_all_locked(self) -> list[socket.socket]:
        doomed = [s for pair in self._pairs for s in pair] + list(self._held)
        self._pairs.clear()
        self._held.clear()
        return doomed

    def _accept_loop(self) -> None:
        while True:
            with self._lock:
                if self._closed:
                    return
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:  # the listener was closed
                return
            client.settimeout(self._TICK)
            with self._lock:
                self.accepted += 1
                if self._closed:
                    _close_all([client])
                    return
                if self._blackholed:
                    self._held.add(client)
                    continue
            threading.Thread(
                target=self._connect, args=(client,), name=f"tcp-proxy-{self.port}-c", daemon=True
            ).start()

    def _connect(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self._target, timeout=self._CONNECT_TIMEOUT)
        except OSError:
            _close_all([client])
            return
        upstream.settimeout(self._TICK)
        pair = (client, upstream)
        with self._lock:
            if self._closed or self._blackholed:  # the mode changed while connecting
                _close_all([upstream])
                if self._closed:
                    _close_all([client])
                else:
                    self._held.add(client)
                return
            self._pairs.add(pair)
        for src, dst, late in ((client, upstream, False), (upstream, client, True)):
            threading.Thread(
                target=self._pump,
                args=(pair, src, dst, late),
                name=f"tcp-proxy-{self.port}-p",
                daemon=True,
            ).start()

    def _pump(
        self,
        pair: tuple[socket.socket, socket.socket],
        src: socket.socket,
        dst: socket.socket,
        late: bool,
    ) -> None:
        try:
            while True:
                with self._lock:
                    if pair not in self._pairs:
                        return
                try:
                    data = src.recv(65536)
                except TimeoutError:
                    continue
                if not data:
                    return
                if late and (delay := self.latency) > 0 and self._stopping.wait(delay):
                    return
                while data:
                    with self._lock:  # a drop or reset while this chunk waited
                        if pair not in self._pairs:
                            return
                    try:
                        data = data[dst.send(data) :]
                    except TimeoutError:  # the reader is slow: wait on, unless stopped
                        continue
        except OSError:
            return
        finally:  # one side is done (or failed): end the whole connection
            with self._lock:
                mine = pair in self._pairs
                self._pairs.discard(pair)
            if mine:
                _close_all(pair)


def _reset_all(socks: Iterable[socket.socket]) -> None:
    """Close with an RST: linger on with a zero timeout discards unsent data and aborts."""
    for sock in socks:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RD)  # wakes our own pump's recv; sends nothing
        with contextlib.suppress(OSError):
            sock.close()


def _close_all(socks: Iterable[socket.socket]) -> None:
    for sock in socks:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            sock.close()
