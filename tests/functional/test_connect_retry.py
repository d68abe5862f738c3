"""A connection that fails at a transaction's start is retried; one that fails later is not.

``cellgate.sql.retry`` runs an API-database write again on a fresh
connection when the connection could not be had before its first statement
(nothing of it was sent, so nothing can have been applied), and never once a
statement went out. The failures are real: the API database (MariaDB, then
PostgreSQL) sits behind a :class:`~tests.support.TcpProxy` that hangs new
connections (``blackhole``) or resets live ones, so the driver itself raises
what it raises in a failover. The whole failover, on a real primary and
standby, is in tests/ha/test_pg_failover.py. The time budget of the conflict
retry is checked on real ``SQLITE_BUSY`` errors with a clock of the test's.
"""

from __future__ import annotations

import socket
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

from cellgate.config import ApiDatabaseSettings
from cellgate.errors import BackendError, TransactionConflict
from cellgate.sql.api_database import ApiDatabase
from cellgate.sql.retry import (
    CONNECT_ATTEMPTS,
    CONNECT_CODE,
    RetryPolicy,
    RetryStats,
    run_transaction,
)
from cellgate.urls import DatabaseURL
from tests.support import Server, TcpProxy


def _via(url: DatabaseURL, port: int) -> DatabaseURL:
    return DatabaseURL(url.sqlalchemy_url.set(port=port))


def _api(url: DatabaseURL) -> ApiDatabase:
    return ApiDatabase(ApiDatabaseSettings(connection=url, connect_timeout=1, query_timeout=5))


def _insert(session: Session) -> int:
    session.execute(text("INSERT INTO probe (n) VALUES (1)"))
    return int(session.execute(text("SELECT COUNT(*) FROM probe")).scalar_one())


def test_a_connection_refused_at_the_start_is_retried_on_a_fresh_one(
    network_server: Server,
) -> None:
    url = network_server.new_database()
    port = url.sqlalchemy_url.port
    assert port is not None
    with TcpProxy("127.0.0.1", port) as proxy:
        api = _api(_via(url, proxy.port))
        try:
            with api.session() as s:
                s.execute(text("CREATE TABLE probe (n integer)"))
            proxy.blackhole()  # pooled connections closed, new ones hang: no server
            seen: list[tuple[int, str]] = []

            def back(retry: int, code: str) -> None:
                seen.append((retry, code))
                proxy.forward()  # the "new primary" accepts from the next attempt on

            assert api.write(_insert, on_retry=back) == 1
            assert seen == [(1, CONNECT_CODE)]
            assert api.retries.retries() == {("api", CONNECT_CODE): 1}
        finally:
            api.close()


def test_start_failures_are_bounded_and_then_raised_as_the_backend_error(
    network_server: Server,
) -> None:
    """A server that refuses every connection: a few quick attempts, then its error."""
    url = network_server.new_database()
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        api = _api(_via(url, closed.getsockname()[1]))
        try:
            calls: list[int] = []

            def transaction(session: Session) -> None:
                calls.append(1)  # never reached: no connection was had

            with pytest.raises(BackendError) as raised:
                api.write(transaction)
            assert not isinstance(raised.value, TransactionConflict)
            assert calls == []
            assert api.retries.retries() == {("api", CONNECT_CODE): CONNECT_ATTEMPTS - 1}
            assert api.retries.exhausted_counts() == {}
        finally:
            api.close()


def test_a_connection_lost_after_a_statement_is_never_retried(network_server: Server) -> None:
    """Once a statement went out, whether the server applied it is the caller's question."""
    url = network_server.new_database()
    port = url.sqlalchemy_url.port
    assert port is not None
    with TcpProxy("127.0.0.1", port) as proxy:
        api = _api(_via(url, proxy.port))
        try:
            with api.session() as s:
                s.execute(text("CREATE TABLE probe (n integer)"))
            calls: list[int] = []

            def transaction(session: Session) -> None:
                calls.append(1)
                session.execute(text("INSERT INTO probe (n) VALUES (1)"))
                proxy.reset()  # the server dies mid-transaction
                session.execute(text("SELECT COUNT(*) FROM probe"))

            with pytest.raises(BackendError):
                api.write(transaction)
            assert calls == [1]
            assert api.retries.total_retries == 0
        finally:
            api.close()


def test_sqlite_start_failures_are_not_retried(tmp_path: Path) -> None:
    """A file does not fail over: a missing API database file is reported at once."""
    api = _api(DatabaseURL.parse(f"sqlite:///{tmp_path}/missing.sqlite"))
    try:
        with pytest.raises(BackendError):
            api.write(_insert)
        assert api.retries.total_retries == 0
    finally:
        api.close()


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_the_time_budget_ends_conflict_retries_before_the_count_does(tmp_path: Path) -> None:
    """Each attempt (a real ``SQLITE_BUSY``) takes half the budget: two attempts, not 1000."""
    path = tmp_path / "busy.sqlite"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    clock = _Clock()
    calls: list[int] = []

    def attempt() -> None:
        calls.append(1)
        clock.now += 0.5
        other = sqlite3.connect(path, timeout=0.001, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
        finally:
            other.close()

    stats = RetryStats()
    try:
        with pytest.raises(TransactionConflict) as raised:
            run_transaction(
                attempt,
                component="c",
                database="api",
                policy=RetryPolicy(attempts=1000, budget=1.0),
                stats=stats,
                sleep=clock.sleep,
                clock=clock,
            )
    finally:
        holder.close()
    assert len(calls) == 2 and raised.value.attempts == 2
    assert stats.retries() == {("api", "SQLITE_BUSY"): 1}
    assert stats.exhausted_counts() == {"api": 1}
