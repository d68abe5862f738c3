"""The migration lock: one run of one migration line on one database at a time.

Two ``cellgate db sync`` runs against one database must not interleave: both
would read "revision none", both would create the same tables, and one would
fail half-way (on MariaDB/MySQL leaving tables behind that the version table
does not account for). :func:`migration_lock` serialises them. The runner
takes it around the whole upgrade or downgrade, then re-reads the revision
under the lock, so a run that waited finds the work done and changes nothing.

Each backend gets its own primitive, all keyed by (line, database):

- **PostgreSQL**: a session advisory lock, ``pg_try_advisory_lock(key)``. The
  key is a stable 64-bit hash of the line name; advisory locks are already
  scoped to the current database.
- **MariaDB/MySQL**: ``GET_LOCK(name, 0)``. Lock names are server-wide, so the
  name holds the line *and* the database name.
- **MariaDB Galera** (``wsrep_on = ON``), where ``GET_LOCK`` is per node: a
  lease row taken by a replicated, certified write
  (:mod:`cellgate.migrations.cluster_lock` says how, and how a crashed holder
  is detected). The runner renews it before each revision.
- **SQLite**: ``flock`` on a sidecar file ``<database file>.<line>.migrate-lock``
  next to the database. The file is left in place; it holds no data.

The server locks are taken on the connection that migrates, not a second one:
both belong to the session, survive commits (MySQL's implicit DDL commits
included), and end with it. So the lock cannot be lost while the work goes on
(a dropped idle side connection would lose it silently), and a killed process
releases it when the server sees its connection close. ``BEGIN EXCLUSIVE`` is
no use on SQLite: Alembic commits after every revision, which would end it,
and held on a second connection it would lock out the migrating one. A
``flock`` belongs to the open file and dies with the process.

Every attempt is non-blocking and repeated with a short, growing pause until
the deadline. A blocking server-side wait could outlast the driver's own read
timeout, and polling behaves the same on all three backends.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy.exc
from sqlalchemy import Connection, text

from cellgate.errors import BackendUnavailable, Hint, MigrationLocked
from cellgate.migrations.cluster_lock import Lease, is_cluster

log = logging.getLogger(__name__)

#: Seconds ``sync`` waits for another run's lock by default (``--lock-timeout``).
DEFAULT_LOCK_TIMEOUT = 60.0

_FIRST_PAUSE = 0.05
_MAX_PAUSE = 0.5
_MYSQL_NAME_MAX = 64  # GET_LOCK refuses longer names


class Held:
    """What :func:`migration_lock` yields: ``renew()`` before each step of a long run."""

    def __init__(self, renew: Callable[[], None] | None = None) -> None:
        self._renew = renew

    def renew(self) -> None:
        """Extend a lease (Galera); a no-op for session locks, which last as long as the session."""
        if self._renew is not None:
            self._renew()


@contextmanager
def migration_lock(
    conn: Connection, line: str, *, timeout: float, component: str
) -> Iterator[Held]:
    """Hold the migration lock of ``line`` on ``conn``'s database for the block.

    Waits up to ``timeout`` seconds (0: one attempt), then raises
    :class:`~cellgate.errors.MigrationLocked` naming ``component`` (a masked
    label). ``conn`` must have no transaction open, and none is left open, so
    Alembic can still run one transaction per revision on it.
    """
    if conn.in_transaction():
        raise RuntimeError("take the migration lock before any transaction is open")
    backend = conn.dialect.name
    held = Held()
    if backend == "sqlite":
        lock: contextlib.AbstractContextManager[bool] = _sqlite_lock(
            conn, line, timeout, component
        )
    elif backend == "postgresql":
        lock = _postgresql_lock(conn, line, timeout)
    elif backend in ("mysql", "mariadb") and is_cluster(conn):
        lease = Lease.prepare(conn, line)
        lock = _cluster_lock(lease, timeout)
        held = Held(lease.renew)
    elif backend in ("mysql", "mariadb"):
        lock = _mysql_lock(conn, line, timeout)
    else:
        raise RuntimeError(f"no migration lock for the {backend} backend")
    with lock as got:
        if not got:
            raise MigrationLocked(component=component, line=line, waited=timeout)
        log.debug("%s: holding the %s migration lock", component, line)
        yield held


def _poll(attempt: Callable[[], bool], timeout: float) -> bool:
    """Call ``attempt`` until it returns True or ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    pause = _FIRST_PAUSE
    while not attempt():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(pause, remaining))
        pause = min(pause * 2, _MAX_PAUSE)
    return True


def advisory_key(line: str) -> int:
    """The PostgreSQL advisory lock key of ``line``: a stable signed 64-bit hash."""
    digest = hashlib.sha256(f"cellgate migration lock: {line}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def mysql_lock_name(line: str, database: str) -> str:
    """The ``GET_LOCK`` name of ``line`` on ``database`` (at most 64 characters)."""
    name = f"cellgate-migrate:{line}:{database}"
    if len(name) <= _MYSQL_NAME_MAX:
        return name
    prefix = f"cellgate-migrate:{line}:"
    digest = hashlib.sha256(database.encode()).hexdigest()
    return prefix + digest[: _MYSQL_NAME_MAX - len(prefix)]


@contextmanager
def _postgresql_lock(conn: Connection, line: str, timeout: float) -> Iterator[bool]:
    key = advisory_key(line)

    def attempt() -> bool:
        got = conn.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": key}).scalar()
        conn.commit()  # a session lock outlives the transaction; leave none open
        return bool(got)

    if not _poll(attempt, timeout):
        yield False
        return
    try:
        yield True
    finally:
        _release(conn, text("SELECT pg_advisory_unlock(:key)"), {"key": key})


@contextmanager
def _mysql_lock(conn: Connection, line: str, timeout: float) -> Iterator[bool]:
    database = conn.execute(text("SELECT DATABASE()")).scalar()
    conn.commit()
    name = mysql_lock_name(line, str(database))

    def attempt() -> bool:
        got = conn.execute(text("SELECT GET_LOCK(:name, 0)"), {"name": name}).scalar()
        conn.commit()
        return got == 1

    if not _poll(attempt, timeout):
        yield False
        return
    try:
        yield True
    finally:
        _release(conn, text("SELECT RELEASE_LOCK(:name)"), {"name": name})


@contextmanager
def _cluster_lock(lease: Lease, timeout: float) -> Iterator[bool]:
    if not _poll(lease.try_take, timeout):
        yield False
        return
    try:
        yield True
    finally:
        try:
            lease.release()
        except sqlalchemy.exc.SQLAlchemyError:
            # Our connection id dies with the session: a sync on this node
            # takes the row over at once, one elsewhere when the lease expires.
            with contextlib.suppress(sqlalchemy.exc.SQLAlchemyError):
                lease.conn.invalidate()


def _release(
    conn: Connection, statement: sqlalchemy.TextClause, params: dict[str, object]
) -> None:
    """Release a session lock; if that fails, end the session, which releases it too.

    A connection returned to the pool still holding the lock would keep it for
    as long as the pool keeps the connection.
    """
    try:
        if conn.in_transaction():  # a failed migration's transaction
            conn.rollback()
        conn.execute(statement, params)
        conn.commit()
    except sqlalchemy.exc.SQLAlchemyError:
        with contextlib.suppress(sqlalchemy.exc.SQLAlchemyError):
            conn.invalidate()


@contextmanager
def _sqlite_lock(conn: Connection, line: str, timeout: float, component: str) -> Iterator[bool]:
    database = conn.engine.url.database
    if database in (None, "", ":memory:"):
        yield True  # a private in-memory database: nobody else can migrate it
        return
    sidecar = Path(str(database)).expanduser()
    sidecar = sidecar.with_name(f"{sidecar.name}.{line}.migrate-lock")
    try:
        fd = os.open(sidecar, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise BackendUnavailable(
            component=component,
            reason=f"cannot open the migration lock file {sidecar}: {exc.strerror}",
            hint=Hint.LOCK_DIR_WRITABLE,
        ) from exc
    try:

        def attempt() -> bool:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    return False
                raise
            return True

        if not _poll(attempt, timeout):
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
