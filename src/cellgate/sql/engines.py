"""Creating SQLAlchemy engines with timeouts, and translating their errors.

This is the database seam. Every engine cellgate makes comes from
:func:`make_engine`, called only by the engine owners in :mod:`cellgate.sql`,
so every connection has a connect timeout and a per-query timeout for its
driver (for PostgreSQL also a client-side deadline on every call:
:mod:`cellgate.sql.pgdeadline`), and SQL parameters are never rendered into error messages (they may
be URLs with passwords). Driver errors become
:class:`~cellgate.errors.BackendUnavailable` or
:class:`~cellgate.errors.BackendTimeout` in :func:`translate_errors`, the way
httpx maps httpcore's errors at its transport.
"""

from __future__ import annotations

import functools
import importlib
import math
import sqlite3
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import quote

import sqlalchemy
import sqlalchemy.exc
from sqlalchemy import event
from sqlalchemy.engine import Engine

from cellgate import deadline
from cellgate.errors import BackendTimeout, BackendUnavailable, Hint
from cellgate.urls import DatabaseURL, redact


class _Deferred:
    """A driver module imported on its first attribute use, not with this module.

    For import cost, not a cycle: importing PyMySQL imports ``cryptography``
    (for its auth plugins), and psycopg loads libpq; a CLI command on SQLite
    (``cellgate cell list`` on the embedded default) needs neither. The error
    checks below name the drivers' exception classes, so the modules are
    loaded when a driver error is examined, or when SQLAlchemy connects with
    that driver. ``importlib.import_module`` holds the import lock, so
    concurrent first uses import once.
    """

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attribute: str) -> Any:
        return getattr(importlib.import_module(self._name), attribute)


if TYPE_CHECKING:
    import psycopg
    import pymysql
else:
    psycopg = _Deferred("psycopg")
    pymysql = _Deferred("pymysql")

#: Seconds a PostgreSQL call may wait past ``query_timeout`` before the client
#: gives up on it (:mod:`cellgate.sql.pgdeadline`): the server's own
#: ``statement_timeout`` answers first when the server is running at all.
CLIENT_GRACE = 1.0

_TIMEOUT_WORDS = ("timed out", "timeout", "time out", "canceling statement")


def make_engine(
    url: DatabaseURL,
    *,
    connect_timeout: float,
    query_timeout: float,
    pool_size: int = 2,
    create_missing: bool = False,
    pool: Mapping[str, Any] | None = None,
    read_only: bool = False,
) -> Engine:
    """An engine for ``url`` whose every network wait is bounded.

    SQLite gets a busy timeout and foreign keys switched on, so it behaves like
    the servers in tests. A missing SQLite file is an error (a typo in a cell's
    URL must not silently create an empty cell), unless ``create_missing``: then
    the file and its directory are created, as ``db sync`` needs.
    ``pool`` replaces the pool arguments (the engine registry's connection
    budget). SQLite is not pre-pinged: a file cannot drop a connection.

    ``read_only`` makes the *server* refuse writes, for reading a database
    cellgate does not own (a Nova deployment's): SQLite opens the file
    ``mode=ro``, MySQL/MariaDB sessions are ``SET SESSION TRANSACTION READ
    ONLY``, PostgreSQL sessions have ``default_transaction_read_only``. A bug
    that wrote would fail, rather than trust this code never to try.
    """
    if read_only and create_missing:
        raise ValueError("a read-only engine cannot create its database")
    kwargs: dict[str, Any] = {"hide_parameters": True, "pool_pre_ping": url.backend != "sqlite"}
    connect_args: dict[str, Any] = {}
    if url.backend == "sqlite":
        path = (
            Path(url.database).expanduser() if url.database not in (None, "", ":memory:") else None
        )
        if path is not None and create_missing:
            path.parent.mkdir(parents=True, exist_ok=True)
        connect_args["timeout"] = query_timeout
        connect_args["isolation_level"] = None  # we issue BEGIN ourselves, below
    elif url.backend == "mysql":
        # PyMySQL reads the server's handshake with read_timeout, not
        # connect_timeout, so a server that accepts and never answers would
        # cost a whole query timeout. Connect with the short one; the
        # "connect" listener below raises it for queries.
        connect_args.update(
            connect_timeout=connect_timeout,
            read_timeout=connect_timeout,
            write_timeout=connect_timeout,
            charset="utf8mb4",
        )
        kwargs.update(pool_size=pool_size, max_overflow=pool_size, pool_timeout=connect_timeout)
    else:  # postgresql: libpq takes whole seconds, and at least 2
        connect_args.update(
            connect_timeout=max(2, math.ceil(connect_timeout)),
            options=f"-c statement_timeout={int(query_timeout * 1000)}"
            + (" -c default_transaction_read_only=on" if read_only else ""),
            tcp_user_timeout=int(query_timeout * 1000),
            keepalives=1,
            keepalives_idle=max(1, int(query_timeout)),
            keepalives_interval=1,
            keepalives_count=3,
        )
        kwargs.update(pool_size=pool_size, max_overflow=pool_size, pool_timeout=connect_timeout)
    if pool is not None:
        for name in ("pool_size", "max_overflow", "pool_timeout"):
            kwargs.pop(name, None)
        kwargs.update(pool)
    target: str | sqlalchemy.engine.URL = url.sqlalchemy_url
    if read_only and url.backend == "sqlite" and path is not None:
        # The URI form is the only way to pass mode=ro through sqlite3.connect.
        target = f"sqlite:///file:{quote(str(path.resolve()))}?mode=ro&uri=true"
    engine = sqlalchemy.create_engine(target, connect_args=connect_args, **kwargs)
    event.listen(
        engine,
        "before_cursor_execute",
        functools.partial(_before_statement, query_timeout, url.backend == "mysql"),
    )
    if read_only and url.backend == "mysql":
        event.listen(engine, "connect", _mysql_read_only)
    if url.backend == "mysql":
        event.listen(engine, "connect", functools.partial(_mysql_query_timeout, query_timeout))
        # Within a request, each wait is bounded by what is left of its deadline too.
        event.listen(engine, "checkout", functools.partial(_mysql_bounded, query_timeout))
        event.listen(engine, "checkin", functools.partial(_mysql_unbounded, query_timeout))
        event.listen(engine, "do_connect", _mysql_utf8_password)
    if url.backend == "postgresql":
        per_call = query_timeout + CLIENT_GRACE
        event.listen(engine, "do_connect", functools.partial(_pg_connect, per_call))
        event.listen(engine, "handle_error", _keep_pool_on_deadline)
    if url.backend == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin_immediate)
        if path is not None and not create_missing:
            event.listen(engine, "do_connect", functools.partial(_sqlite_must_exist, path))
    if read_only:
        # Every transaction then begins as a read (a plain BEGIN on SQLite).
        return engine.execution_options(**{READ_ONLY: True})
    return engine


def _mysql_utf8_password(
    _dialect: Any, _record: Any, _cargs: list[Any], cparams: dict[str, Any]
) -> None:
    # PyMySQL encodes a str password as latin-1, so a non-ASCII password set
    # through any UTF-8 client (CREATE USER ... IDENTIFIED BY 'pässwörd' over
    # utf8mb4) never matched ("Access denied"), and one outside latin-1 could
    # not even be sent. Bytes are sent as they are: send the UTF-8 the server
    # hashed. ASCII passwords are the same bytes either way.
    password = cparams.get("password")
    if isinstance(password, str):
        cparams["password"] = password.encode("utf-8")


def _mysql_read_only(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("SET SESSION TRANSACTION READ ONLY")
    cursor.close()


def _sqlite_must_exist(path: Path, *_args: Any) -> None:
    if not path.is_file():
        raise sqlite3.OperationalError(f"unable to open database file {path}: it does not exist")


def _pg_connect(
    deadline: float, _dialect: Any, _record: Any, cargs: list[Any], cparams: dict[str, Any]
) -> Any:
    # Imported here, with the first PostgreSQL connection: it imports psycopg.
    from cellgate.sql import pgdeadline

    return pgdeadline.connect(deadline, *cargs, **cparams)


def _keep_pool_on_deadline(context: sqlalchemy.engine.ExceptionContext) -> None:
    # One backend that stopped answering says nothing about the others: drop
    # that connection (a disconnect, see pgdeadline) but not the whole pool.
    if getattr(context.original_exception, "client_deadline", False):
        context.invalidate_pool_on_disconnect = False


def _before_statement(
    query_timeout: float, mysql: bool, conn: sqlalchemy.Connection, *_args: Any
) -> None:
    # No statement starts once the request's deadline has passed (cellgate.deadline).
    deadline.check("a database statement")
    if mysql and deadline.remaining() is not None:
        _mysql_query_timeout(deadline.bound(query_timeout), conn.connection.dbapi_connection)


def _mysql_bounded(timeout: float, dbapi_connection: Any, *_args: Any) -> None:
    if deadline.remaining() is not None:
        _mysql_query_timeout(deadline.bound(timeout), dbapi_connection)


def _mysql_unbounded(timeout: float, dbapi_connection: Any, *_args: Any) -> None:
    if dbapi_connection is not None:
        _mysql_query_timeout(timeout, dbapi_connection)


def _mysql_query_timeout(timeout: float, dbapi_connection: Any, _record: Any = None) -> None:
    # PyMySQL keeps its socket timeouts in these attributes and applies them
    # on every read and write; there is no public setter.
    timeout = max(timeout, 0.01)  # 0 would make the socket non-blocking
    dbapi_connection._read_timeout = timeout
    dbapi_connection._write_timeout = timeout


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


#: Execution option of a session that only reads (``app.db.session(..., read_only=True)``).
READ_ONLY: Final = "cellgate_read_only"


def _sqlite_begin_immediate(conn: sqlalchemy.Connection) -> None:
    # A deferred transaction that reads and then writes cannot wait for a
    # concurrent writer: SQLite fails it at once with "database is locked".
    # Taking the write lock up front lets the busy timeout serialise writers,
    # so two processes creating the same cell get a clean duplicate error.
    # A session that only reads never upgrades, so a plain BEGIN serves it
    # and concurrent readers do not queue for the write lock.
    statement = "BEGIN" if conn.get_execution_options().get(READ_ONLY) else "BEGIN IMMEDIATE"
    # On the driver's connection, not exec_driver_sql: a BEGIN needs no result
    # object, and that machinery was a sixth of a short session's CPU. Errors
    # are wrapped as SQLAlchemy's own would be, for translate_errors.
    driver = conn.connection.driver_connection
    assert driver is not None  # a connection in a begin event is checked out
    try:
        driver.execute(statement)
    except sqlite3.Error as exc:
        raise sqlalchemy.exc.OperationalError(statement, None, exc) from exc


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


# Errors about the statement or its data (a NUL byte, a bad value, a duplicate)
# the client's fault, whatever the driver's code says. Never an outage.
def _pg_request_errors() -> tuple[type[Exception], ...]:
    # Built on use, not at import: naming psycopg's classes imports the driver.
    return (
        psycopg.DataError,
        psycopg.ProgrammingError,
        psycopg.IntegrityError,
        psycopg.NotSupportedError,
    )


def _mysql_request_errors() -> tuple[type[Exception], ...]:
    return (
        pymysql.err.DataError,
        pymysql.err.ProgrammingError,
        pymysql.err.IntegrityError,
        pymysql.err.NotSupportedError,
    )


def is_backend_failure(exc: BaseException) -> bool:
    """True if ``exc`` says the server is unreachable, refused us, or timed out."""
    if isinstance(exc, sqlalchemy.exc.TimeoutError | TimeoutError):
        return True
    if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated:
        return True
    orig = getattr(exc, "orig", None)
    if orig is None or isinstance(orig, ValueError):  # e.g. a driver refusing a NUL byte
        return False
    if isinstance(orig, psycopg.Error):
        if orig.sqlstate is not None:  # 3D (no such database) is a ProgrammingError
            return orig.sqlstate.startswith(_PG_BACKEND_CLASSES)
        # No SQLSTATE: the connection failed, unless the driver refused the request
        # itself (a NUL byte in a string is a DataError without one).
        return not isinstance(orig, _pg_request_errors())
    if isinstance(orig, pymysql.err.MySQLError):
        code = orig.args[0] if orig.args else None
        return code in _MYSQL_BACKEND_CODES and not isinstance(orig, _mysql_request_errors())
    text = str(orig).lower()
    return any(word in text for word in _SQLITE_BACKEND_WORDS)


def is_timeout(exc: BaseException) -> bool:
    if isinstance(exc, sqlalchemy.exc.TimeoutError | TimeoutError):
        return True
    if getattr(getattr(exc, "orig", None), "client_deadline", False):
        return True
    text = str(getattr(exc, "orig", None) or exc).lower()
    return any(word in text for word in _TIMEOUT_WORDS)


@contextmanager
def translate_errors(
    component: str,
    hint: str | None = None,
    *,
    address: str | None = None,
    unavailable: type[BackendUnavailable] = BackendUnavailable,
    timeout: type[BackendTimeout] = BackendTimeout,
) -> Iterator[None]:
    """Turn connection-level driver errors into cellgate's backend errors.

    Only errors that say "the server could not be used" are translated;
    programming errors (bad SQL, missing table) pass through untouched.
    ``address`` (a masked URL) is kept apart from ``component`` so that API
    clients are told the subject but not where it lives
    (:attr:`~cellgate.errors.BackendError.public_message`); the driver's own
    text, which may name the host, is never made public.
    """
    try:
        yield
    except UnicodeEncodeError:
        # PyMySQL encodes passwords as latin-1; its message would quote the
        # offending character of the password, so it is not repeated.
        reason = "the driver cannot send this password (PyMySQL sends latin-1)"
        raise unavailable(
            component=component,
            address=address,
            reason=reason,
            public_reason=reason,  # ours, and it names nothing
            hint=Hint.ASCII_PASSWORD,
        ) from None
    except (sqlalchemy.exc.DBAPIError, sqlalchemy.exc.TimeoutError) as exc:
        if not is_backend_failure(exc):
            raise
        if deadline.expired():  # a wait cut short by the request's deadline
            raise deadline.exceeded("the database answered") from exc
        error = timeout if is_timeout(exc) else unavailable
        raise error(
            component=component, address=address, reason=describe_db_error(exc), hint=hint
        ) from exc
