"""Real servers for tests: a fresh database, user or vhost per request.

Each :class:`Server` makes uniquely named databases, each owned by a uniquely
named user whose password contains characters that must be percent-encoded,
so every backend test also proves URLs with awkward passwords work; each
:class:`Broker` does the same with RabbitMQ vhosts and users. Everything made
is dropped. Under ``CI=true`` a server that does not answer fails the test
instead of skipping it.

Why the pools: making and dropping these is slow in ways a test should not
wait for. PostgreSQL 15 forces a checkpoint on every ``DROP DATABASE``
(0.5–2 s, more under load) and ``CREATE DATABASE`` copies ``template1``; every
``rabbitmqctl`` call boots an Erlang VM (1–3 s), and one vhost with its user
took three calls to make and two to drop. So, per process (that is, per
xdist worker), :class:`_PostgresPool` makes databases ahead of need and drops
them behind the tests on background threads, and :class:`_VhostPool` makes
vhosts in batches with one ``rabbitmqctl import_definitions`` and deletes them
in batches with one ``rabbitmqctl eval``. Nothing is shared: a database or
vhost is handed to one test only, never reused, and its name and password are
as fresh as before. :func:`close_pools` (at the end of the session, on every
worker) drops whatever is left and fails if anything it made is still on a
server. MariaDB makes and drops a database in milliseconds: no pool.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import socket
import struct
import subprocess
import threading
import time
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
#: What every name made here looks like (databases, roles, vhosts, users).
NAME = re.compile(r"cgt_[0-9a-f]{10}")


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def unavailable(what: str, exc: BaseException) -> None:
    message = f"{what} is not reachable ({exc}); start it (scripts/services; see DEVELOPERS.md)"
    if in_ci():
        pytest.fail(message)
    pytest.skip(message)


def _fresh() -> tuple[str, str]:
    """A name nobody has used, and an awkward password for it."""
    return f"cgt_{secrets.token_hex(5)}", f"{AWKWARD}{secrets.token_hex(4)}"


@dataclass
class Server:
    """A backend kind that can make fresh databases."""

    kind: str  # sqlite | mariadb | postgresql
    tmp_path: object
    made: list[str] = field(default_factory=list)

    def new_database(self) -> DatabaseURL:
        if self.kind == "postgresql":
            name, password = _pools.postgres().take()
            self.made.append(name)
            return DatabaseURL.parse(
                f"postgresql+psycopg://{name}:{quote(password, safe='')}@127.0.0.1:5432/{name}"
            )
        name, password = _fresh()
        self.made.append(name)
        if self.kind == "sqlite":
            return DatabaseURL.parse(f"sqlite:///{self.tmp_path}/{name}.sqlite")
        with _mariadb() as conn, conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
            cur.execute(f"CREATE USER '{name}'@'%%' IDENTIFIED BY %s", (password,))
            cur.execute(f"GRANT ALL ON `{name}`.* TO '{name}'@'%'")
        return DatabaseURL.parse(
            f"mysql+pymysql://{name}:{quote(password, safe='')}@127.0.0.1:3306/{name}"
        )

    def drop_all(self) -> None:
        """Drop every database made; PostgreSQL's go to the pool's droppers."""
        if self.kind == "mariadb" and self.made:
            with _mariadb() as conn, conn.cursor() as cur:
                for name in self.made:
                    cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
                    cur.execute(f"DROP USER IF EXISTS '{name}'@'%'")
        elif self.kind == "postgresql" and self.made:
            _pools.postgres().release(self.made)
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


def _rabbitmqctl(*args: str, stdin: str | None = None) -> str:
    done = subprocess.run(
        ["rabbitmqctl", "-q", *args],
        input=stdin,
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.stdout


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
        name, password = _pools.vhosts().take()
        self.made.append(name)
        return f"rabbit://{name}:{quote(password, safe='')}@127.0.0.1:5672/{name}"

    def drop_all(self) -> None:
        """Hand every vhost made to the pool, which deletes them (in batches)."""
        if self.made:
            _pools.vhosts().release(self.made)
        self.made.clear()


# --------------------------------------------------------------------------
# The pools behind Server and Broker (see the module docstring for why)
# --------------------------------------------------------------------------


class _Pool:
    """What both pools share: names made ahead (``_ready``) and released ones (``_doomed``).

    A taker waits for a ready one; if the last attempt to make one failed, it
    raises that instead of waiting for the retry, so a sick server fails the
    test that needs it rather than hanging it.
    """

    WHAT = "thing"
    TAKE_TIMEOUT = 120.0
    RETRY_PAUSE = 1.0

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._ready: list[tuple[str, str]] = []
        self._doomed: list[str] = []  # released, still to be dropped
        self._made: list[str] = []  # every name this pool created, or began to
        self._failure: Exception | None = None  # of the last attempt to make one
        self._closing = False  # stop making new ones

    def take(self) -> tuple[str, str]:
        """A name (of the database or vhost, and of its owner) and the owner's password.

        Never handed out twice.
        """
        deadline = time.monotonic() + self.TAKE_TIMEOUT
        with self._cond:
            while not self._ready:
                if self._failure is not None:
                    raise RuntimeError(f"making a {self.WHAT} failed: {self._failure}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"no {self.WHAT} made within {self.TAKE_TIMEOUT:g} s")
                self._cond.wait(remaining)
            taken = self._ready.pop(0)
            self._cond.notify_all()  # the filler makes the next one
            return taken

    def release(self, names: Iterable[str]) -> None:
        """Names a test is done with: they are dropped behind it."""
        with self._cond:
            self._doomed.extend(names)
            self._cond.notify_all()


class _PostgresPool(_Pool):
    """PostgreSQL databases, each owned by its own role, made ahead and dropped behind.

    One filler thread keeps ``READY`` databases made, so a test takes one
    without waiting; ``DROPPERS`` threads drop what tests released. Drops run
    side by side on purpose: each waits for a forced checkpoint, and
    concurrent requests share one.
    """

    WHAT = "PostgreSQL test database"
    READY = 6
    DROPPERS = 3
    DROP_ATTEMPTS = 4
    TAKE_TIMEOUT = 90.0

    def __init__(self) -> None:
        super().__init__()
        self._drop_failures: list[str] = []
        self._live: set[str] = set()  # made and not dropped (yet): taken, ready or doomed
        self._drained = False  # the droppers stop once nothing is doomed
        self._filler = threading.Thread(target=self._fill, name="cgt-pg-fill", daemon=True)
        self._droppers = [
            threading.Thread(target=self._drop, name=f"cgt-pg-drop-{i}", daemon=True)
            for i in range(self.DROPPERS)
        ]
        for thread in [self._filler, *self._droppers]:
            thread.start()

    def close(self) -> list[str]:
        """Drop everything made (used or not); what went wrong, if anything."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._filler.join()
        with self._cond:  # the ready ones, and any a test took and never released
            self._doomed.extend(sorted(self._live - set(self._doomed)))
            self._ready.clear()
            self._drained = True
            self._cond.notify_all()
        for thread in self._droppers:
            thread.join()
        problems = list(self._drop_failures)
        with _postgres() as conn:
            left = conn.execute(
                "SELECT datname FROM pg_database WHERE datname = ANY(%(n)s)"
                " UNION SELECT rolname FROM pg_roles WHERE rolname = ANY(%(n)s)",
                {"n": self._made},
            ).fetchall()
        problems += [f"PostgreSQL database or role {name} left behind" for (name,) in left]
        return problems

    def _fill(self) -> None:
        conn: psycopg.Connection[tuple[object, ...]] | None = None
        try:
            while True:
                with self._cond:
                    while not self._closing and len(self._ready) >= self.READY:
                        self._cond.wait()
                    if self._closing:
                        return
                    name, password = _fresh()
                    self._made.append(name)
                    self._live.add(name)
                try:
                    if conn is None:
                        conn = _postgres()
                    conn.execute(
                        f"CREATE ROLE {name} LOGIN PASSWORD {_pg_literal(password)}".encode()
                    )
                    conn.execute(f"CREATE DATABASE {name} OWNER {name}".encode())
                except Exception as exc:  # told to the next taker; tried again after a pause
                    if conn is not None:
                        conn.close()
                        conn = None
                    with self._cond:
                        self._failure = exc  # the half-made one stays live: close() drops it
                        self._cond.notify_all()
                        self._cond.wait(self.RETRY_PAUSE)
                    continue
                with self._cond:
                    self._ready.append((name, password))
                    self._failure = None
                    self._cond.notify_all()
        finally:
            if conn is not None:
                conn.close()

    def _drop(self) -> None:
        conn: psycopg.Connection[tuple[object, ...]] | None = None
        try:
            while True:
                with self._cond:
                    while not self._doomed and not self._drained:
                        self._cond.wait()
                    if not self._doomed:
                        return
                    name = self._doomed.pop(0)
                for attempt in range(self.DROP_ATTEMPTS):
                    try:
                        if conn is None:
                            conn = _postgres()
                        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)".encode())
                        conn.execute(f"DROP ROLE IF EXISTS {name}".encode())
                    except Exception as exc:
                        # Drops side by side can collide on the shared catalogs
                        # ("tuple concurrently deleted"): try again.
                        if conn is not None:
                            conn.close()
                            conn = None
                        if attempt == self.DROP_ATTEMPTS - 1:
                            with self._cond:
                                self._drop_failures.append(f"dropping {name} failed: {exc}")
                        else:
                            time.sleep(0.2 * (attempt + 1))
                        continue
                    with self._cond:
                        self._live.discard(name)
                    break
        finally:
            if conn is not None:
                conn.close()


class _VhostPool(_Pool):
    """RabbitMQ vhosts, each with its own user, made and deleted in batches.

    One thread runs every ``rabbitmqctl`` of this process, one at a time: an
    ``import_definitions`` of ``BATCH`` vhosts, users and permissions (it adds
    to the broker's definitions and leaves the others alone) whenever fewer
    than ``LOW`` are ready, and an ``eval`` deleting the released ones once
    ``DELETE_BATCH`` have piled up. ``close()`` deletes the rest in one more
    ``eval``, which also reports any name that still exists.
    """

    WHAT = "RabbitMQ test vhost"
    LOW = 3
    BATCH = 6
    DELETE_BATCH = 12

    def __init__(self) -> None:
        super().__init__()
        self._thread = threading.Thread(target=self._work, name="cgt-rabbit-pool", daemon=True)
        self._thread.start()

    def close(self) -> list[str]:
        """Delete everything made (used or not); what went wrong, if anything."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join()
        if not self._made:
            return []
        try:
            left = _delete_vhosts(self._made)
        except (OSError, subprocess.SubprocessError) as exc:
            return [f"deleting the RabbitMQ test vhosts failed: {exc}"]
        return [f"RabbitMQ vhost or user {name} left behind" for name in left]

    def _work(self) -> None:
        while True:
            with self._cond:
                while (
                    not self._closing
                    and len(self._ready) >= self.LOW
                    and len(self._doomed) < self.DELETE_BATCH
                ):
                    self._cond.wait()
                if self._closing:
                    return
                if len(self._ready) < self.LOW:
                    fresh = [_fresh() for _ in range(self.BATCH)]
                    self._made.extend(name for name, _ in fresh)
                    doomed: list[str] = []
                else:
                    fresh, doomed = [], self._doomed[:]
                    self._doomed.clear()
            if doomed:
                # Whatever this leaves, close() deletes: it goes over every name made.
                with contextlib.suppress(OSError, subprocess.SubprocessError):
                    _delete_vhosts(doomed)
                continue
            try:
                _import_vhosts(fresh)
            except (OSError, subprocess.SubprocessError) as exc:  # told to the next taker
                with self._cond:
                    self._failure = exc
                    self._cond.notify_all()
                    self._cond.wait(self.RETRY_PAUSE)
                continue
            with self._cond:
                self._ready.extend(fresh)
                self._failure = None
                self._cond.notify_all()


def _import_vhosts(fresh: list[tuple[str, str]]) -> None:
    """Make each vhost, its user and the user's permissions on it: one rabbitmqctl call."""
    definitions = {
        "vhosts": [{"name": name} for name, _ in fresh],
        "users": [{"name": name, "password": password, "tags": ""} for name, password in fresh],
        "permissions": [
            {"user": name, "vhost": name, "configure": ".*", "write": ".*", "read": ".*"}
            for name, _ in fresh
        ],
    }
    # On stdin, so the passwords are never in a file or on a command line.
    _rabbitmqctl("import_definitions", "--format", "json", stdin=json.dumps(definitions))


def _delete_vhosts(names: list[str]) -> list[str]:
    """Delete each vhost and user (one rabbitmqctl call); the names that still exist."""
    assert all(NAME.fullmatch(name) for name in names), names  # safe inside Erlang binaries
    binaries = ", ".join(f'<<"{name}">>' for name in names)
    found = _rabbitmqctl(
        "eval",
        f'Names = [{binaries}], Acting = <<"cellgate-tests">>, '
        "[catch rabbit_vhost:delete(N, Acting) || N <- Names], "
        "[catch rabbit_auth_backend_internal:delete_user(N, Acting) || N <- Names], "
        "[N || N <- Names, "
        "rabbit_vhost:exists(N) orelse rabbit_auth_backend_internal:exists(N)].",
    ).strip()
    return re.findall(r'<<"([^"]*)">>', found)


class _Pools:
    """This process's pools, made on first use; :func:`close_pools` ends them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._owner = os.getpid()
        self._postgres: _PostgresPool | None = None
        self._vhosts: _VhostPool | None = None

    def postgres(self) -> _PostgresPool:
        with self._lock:
            if self._postgres is None:
                self._postgres = _PostgresPool()
            return self._postgres

    def vhosts(self) -> _VhostPool:
        with self._lock:
            if self._vhosts is None:
                self._vhosts = _VhostPool()
            return self._vhosts

    def close(self) -> list[str]:
        if os.getpid() != self._owner:  # a forked child: the parent's to clean up
            return []
        with self._lock:
            pools = [p for p in (self._postgres, self._vhosts) if p is not None]
            self._postgres = self._vhosts = None
        problems: list[str] = []
        for pool in pools:
            problems += pool.close()
        return problems


# One per process, like the servers it fronts: Server and Broker are made
# anywhere (fixtures, test bodies), and all of them must share it.
_pools = _Pools()


def close_pools() -> None:
    """Drop every database and vhost the pools made; fail if one is left or a drop failed."""
    problems = _pools.close()
    assert not problems, "test backends left dirty:\n" + "\n".join(problems)


@contextmanager
def blackhole(host: str = "127.0.0.1") -> Iterator[int]:
    """A port on ``host`` (a 127.0.0.x) that accepts TCP connections and never answers."""
    with socket.socket() as sock:
        sock.bind((host, 0))
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
