"""Creating SQLAlchemy engines with timeouts, and translating their errors.

This is the database seam. Every engine cellgate makes comes from
:func:`make_engine`, so every connection has a connect timeout and a
per-query timeout for its driver, and SQL parameters are never rendered into
error messages (they may be URLs with passwords). Driver errors become
:class:`~cellgate.errors.BackendUnavailable` or
:class:`~cellgate.errors.BackendTimeout` in :func:`translate_errors`, the way
httpx maps httpcore's errors at its transport.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pymysql
import sqlalchemy
import sqlalchemy.exc
from sqlalchemy import event
from sqlalchemy.engine import Engine

from cellgate.errors import BackendTimeout, BackendUnavailable
from cellgate.urls import DatabaseURL, redact

_TIMEOUT_WORDS = ("timed out", "timeout", "time out", "canceling statement")


def make_engine(
    url: DatabaseURL,
    *,
    connect_timeout: float,
    query_timeout: float,
    pool_size: int = 2,
) -> Engine:
    """An engine for ``url`` whose every network wait is bounded.

    SQLite files get their parent directory created, a busy timeout and
    foreign keys switched on, so SQLite behaves like the servers in tests.
    """
    kwargs: dict[str, Any] = {"hide_parameters": True, "pool_pre_ping": True}
    connect_args: dict[str, Any] = {}
    if url.backend == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        connect_args["timeout"] = query_timeout
        connect_args["isolation_level"] = None  # we issue BEGIN ourselves, below
    elif url.backend == "mysql":
        connect_args.update(
            connect_timeout=connect_timeout,
            read_timeout=query_timeout,
            write_timeout=query_timeout,
            charset="utf8mb4",
        )
        kwargs.update(pool_size=pool_size, max_overflow=pool_size, pool_timeout=connect_timeout)
    else:  # postgresql: libpq takes whole seconds, and at least 2
        connect_args.update(
            connect_timeout=max(2, math.ceil(connect_timeout)),
            options=f"-c statement_timeout={int(query_timeout * 1000)}",
            tcp_user_timeout=int(query_timeout * 1000),
            keepalives=1,
            keepalives_idle=max(1, int(query_timeout)),
            keepalives_interval=1,
            keepalives_count=3,
        )
        kwargs.update(pool_size=pool_size, max_overflow=pool_size, pool_timeout=connect_timeout)
    engine = sqlalchemy.create_engine(url.sqlalchemy_url, connect_args=connect_args, **kwargs)
    if url.backend == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin_immediate)
    return engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _sqlite_begin_immediate(conn: sqlalchemy.Connection) -> None:
    # A deferred transaction that reads and then writes cannot wait for a
    # concurrent writer: SQLite fails it at once with "database is locked".
    # Taking the write lock up front lets the busy timeout serialise writers,
    # so two processes creating the same cell get a clean duplicate error.
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def describe_db_error(exc: BaseException) -> str:
    """One short, password-free line describing a driver error."""
    orig = getattr(exc, "orig", None) or exc
    if isinstance(orig, BaseException) and orig.args and isinstance(orig.args[-1], str):
        # PyMySQL's errors are (code, message); psycopg's are (message,).
        text = orig.args[-1]
    else:
        text = str(orig)
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(orig).__name__)
    return redact(first)


# Driver error codes that mean "this server cannot be used right now", as
# opposed to "this statement is wrong" (which must not be reported as an outage).
_MYSQL_BACKEND_CODES = frozenset({1040, 1044, 1045, 1049, 1205, 2003, 2006, 2013, 2055, 3024})
_PG_BACKEND_CLASSES = ("08", "28", "3D", "53", "57")
_SQLITE_BACKEND_WORDS = ("unable to open", "database is locked", "disk i/o", "readonly database")


def is_backend_failure(exc: BaseException) -> bool:
    """True if ``exc`` says the server is unreachable, refused us, or timed out."""
    if isinstance(exc, sqlalchemy.exc.TimeoutError | TimeoutError):
        return True
    if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated:
        return True
    orig = getattr(exc, "orig", None)
    if orig is None:
        return False
    if isinstance(orig, psycopg.Error):
        return orig.sqlstate is None or orig.sqlstate.startswith(_PG_BACKEND_CLASSES)
    if isinstance(orig, pymysql.err.MySQLError):
        code = orig.args[0] if orig.args else None
        return code in _MYSQL_BACKEND_CODES
    text = str(orig).lower()
    return any(word in text for word in _SQLITE_BACKEND_WORDS)


def is_timeout(exc: BaseException) -> bool:
    if isinstance(exc, sqlalchemy.exc.TimeoutError | TimeoutError):
        return True
    text = str(getattr(exc, "orig", None) or exc).lower()
    return any(word in text for word in _TIMEOUT_WORDS)


@contextmanager
def translate_errors(component: str, hint: str | None = None) -> Iterator[None]:
    """Turn connection-level driver errors into cellgate's backend errors.

    Only errors that say "the server could not be used" are translated;
    programming errors (bad SQL, missing table) pass through untouched.
    """
    try:
        yield
    except (sqlalchemy.exc.DBAPIError, sqlalchemy.exc.TimeoutError) as exc:
        if not is_backend_failure(exc):
            raise
        error = BackendTimeout if is_timeout(exc) else BackendUnavailable
        raise error(component=component, reason=describe_db_error(exc), hint=hint) from exc
