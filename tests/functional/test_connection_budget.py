"""The engine registry's two bounds, counted on the real servers.

Connections are counted where they live: MariaDB's
``information_schema.processlist`` and PostgreSQL's ``pg_stat_activity``
(filtered by this test's database names), and for SQLite this process's
open file descriptors of the test's database files. The registry's own count
must agree with the server's.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pymysql
import pytest
from sqlalchemy import text

from cellgate.sql.budget import ConnectionBudgetExhausted
from cellgate.sql.registry import EngineRegistry
from cellgate.urls import DatabaseURL
from tests.support import MARIADB, POSTGRES, Server
from tests.unit.test_fanout import wait_until


def server_connections(server: Server, urls: list[DatabaseURL]) -> int:
    """Connections open to these databases, as the server (or the kernel) sees them."""
    names = [url.database or "" for url in urls]
    if server.kind == "mariadb":
        with (
            contextlib.closing(pymysql.connect(**MARIADB, connect_timeout=3)) as conn,  # type: ignore[arg-type]
            conn.cursor() as cur,
        ):
            marks = ", ".join(["%s"] * len(names))
            cur.execute(
                f"SELECT COUNT(*) FROM information_schema.processlist WHERE db IN ({marks})",
                names,
            )
            row = cur.fetchone()
            return int(row[0]) if row else 0
    if server.kind == "postgresql":
        with psycopg.connect(POSTGRES, autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = ANY(%s)", (names,)
            ).fetchone()
            return int(row[0]) if row else 0
    paths = {str(Path(name).resolve()) for name in names}
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            count += os.readlink(f"/proc/self/fd/{fd}") in paths
    return count


def settled(server: Server, urls: list[DatabaseURL], expected: int) -> int:
    """The server's count once it equals ``expected`` (a closed backend exits a moment
    after its client), or the last count seen."""
    wait_until(lambda: server_connections(server, urls) == expected)
    return server_connections(server, urls)


def databases(server: Server, count: int) -> list[DatabaseURL]:
    urls = [server.new_database() for _ in range(count)]
    if server.kind == "sqlite":  # a file to open; a missing one is refused
        for url in urls:
            Path(url.database or "").touch()
    return urls


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@contextlib.contextmanager
def registry(**kwargs: object) -> Iterator[EngineRegistry]:
    options: dict[str, object] = {
        "max_engines": 64,
        "connect_timeout": 5.0,
        "query_timeout": 30.0,
        "pool_size": 2,
    }
    options.update(kwargs)
    reg = EngineRegistry(**options)  # type: ignore[arg-type]
    try:
        yield reg
    finally:
        reg.close()


def touch(reg: EngineRegistry, url: DatabaseURL) -> None:
    with reg.get(url).connect() as conn:
        conn.execute(text("SELECT 1"))


def test_idle_connections_are_bounded_across_engines(server: Server) -> None:
    urls = databases(server, 5)
    with registry(max_connections=4, max_idle_connections=2) as reg:
        for url in urls:
            touch(reg, url)
        assert (reg.created, len(reg)) == (5, 5)  # every engine kept
        assert (reg.open_connections(), reg.idle_connections()) == (2, 2)
        assert settled(server, urls, 2) == 2
        # The two kept are the most recently used; the others reconnect on use.
        kept = [reg.get(url).pool.checkedin() for url in urls]  # type: ignore[attr-defined]
        assert kept == [0, 0, 0, 1, 1]
    assert settled(server, urls, 0) == 0  # close() closed them all


def test_a_full_budget_closes_an_idle_connection_then_waits_then_fails(server: Server) -> None:
    urls = databases(server, 3)
    with registry(max_connections=2, max_idle_connections=2, connect_timeout=0.5) as reg:
        touch(reg, urls[0])  # idle on engine 0
        with reg.get(urls[1]).connect(), reg.get(urls[2]).connect():
            # The second checkout made room by closing engine 0's idle connection.
            assert reg.get(urls[0]).pool.checkedin() == 0  # type: ignore[attr-defined]
            assert settled(server, urls, 2) == 2
            with pytest.raises(ConnectionBudgetExhausted, match="max_connections = 2"):
                touch(reg, urls[0])
            assert reg.open_connections() == 2
        touch(reg, urls[0])  # room again
        assert reg.open_connections() == 2
        assert settled(server, urls, 2) == 2


def test_a_cyclic_scan_reuses_engines_and_connections_within_the_grace(
    server: Server,
) -> None:
    from cellgate.routing.fanout import FanoutPool

    urls = databases(server, 6)
    clock = Clock()
    with (
        registry(max_connections=8, max_idle_connections=2, idle_grace=60.0, clock=clock) as reg,
        FanoutPool(max_workers=8) as pool,
    ):
        barrier = threading.Barrier(6, timeout=30)

        def hold(url: DatabaseURL) -> int:
            with reg.get(url).connect() as conn:
                barrier.wait()  # all six connections open at once
                return int(conn.execute(text("SELECT 1")).scalar_one())

        for _ in range(3):
            results = pool.scatter_gather({u.key: u for u in urls}, hold, timeout=30)
            assert all(r.value == 1 for r in results.values())  # type: ignore[union-attr]
        assert reg.created == 6
        assert reg.budget.opened == 6  # the second and third scans reconnected nothing
        assert reg.idle_connections() == 6  # above the bound, within the grace
        assert settled(server, urls, 6) == 6

        clock.now += 61  # the grace is over: the next checkin closes the surplus
        touch(reg, urls[0])
        assert reg.idle_connections() == 2
        assert settled(server, urls, 2) == 2


def test_an_evicted_engine_closes_its_connections(server: Server) -> None:
    urls = databases(server, 3)
    with registry(max_engines=2, max_connections=8, max_idle_connections=8) as reg:
        for url in urls:
            touch(reg, url)
        assert len(reg) == 2 and reg.evicted == 1
        assert reg.open_connections() == 2
        assert settled(server, urls[:1], 0) == 0
        assert settled(server, urls, 2) == 2


def test_after_fork_the_budget_forgets_the_parents_connections(server: Server) -> None:
    urls = databases(server, 1)
    with registry(max_connections=4, max_idle_connections=4) as reg:
        touch(reg, urls[0])
        assert reg.open_connections() == 1
        parents = reg.get(urls[0]).pool
        reg._after_fork_in_child()  # what os.fork() runs in the child (cellgate.forksafe)
        assert (reg.open_connections(), reg.idle_connections()) == (0, 0)
        touch(reg, urls[0])  # a connection of the child's own; the parent's is not closed
        assert reg.open_connections() == 1
        assert settled(server, urls, 2) == 2
        for record in parents.idle:  # type: ignore[attr-defined]
            record.close()  # the "parent" closes its own (PostgreSQL cannot drop a busy database)
    assert settled(server, urls, 0) == 0
