"""The API database handle: one engine, transactional sessions, a schema check.

An :class:`ApiDatabase` is created by ``App`` (the CLI's and the service's
alike) and closed by it; nothing keeps one in a global. It lives in
:mod:`cellgate.sql`, next to the other engine owners, and not in
:mod:`cellgate.apidb`: that package holds the pure schema and the functions
that take a ``Session``, and must not depend on the migration runner this
handle uses for its schema check.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import sqlalchemy.exc
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from cellgate import forksafe
from cellgate.config import ApiDatabaseSettings
from cellgate.errors import Hint, SchemaMismatch
from cellgate.keyring import SESSION_INFO_KEY, KeyRing
from cellgate.migrations.lock import DEFAULT_LOCK_TIMEOUT
from cellgate.migrations.runner import Applied, MigrationLine, apply, current, head
from cellgate.sql.engines import make_engine, translate_errors
from cellgate.sql.retry import RetryPolicy, RetryStats, mark_start_failure, run_transaction

T = TypeVar("T")


class ApiDatabase:
    """Owns the API database engine; create lazily, close explicitly.

    Every session it opens carries the configured :class:`KeyRing` in
    ``session.info``, so the mapping functions encrypt and decrypt URLs with
    the keys of the process that opened the session, and with no others.
    """

    def __init__(self, settings: ApiDatabaseSettings, retries: RetryStats | None = None) -> None:
        self.settings = settings
        #: Conflict retries of :meth:`write` (the App shares one with its cell sessions).
        self.retries = retries if retries is not None else RetryStats()
        self.retry_policy = RetryPolicy(attempts=settings.conflict_attempts)
        self.keyring = KeyRing(settings.encryption_keys)
        #: The subject of its errors; ``address`` (the masked URL) is kept apart
        #: so that API clients are not told where it lives.
        self.subject = "API database"
        self.address = str(settings.connection)
        self.component = f"{self.subject} {self.address}"
        self._engine: Engine | None = None
        self._sessions: sessionmaker[Session] | None = None
        forksafe.register(self)

    def _after_fork_in_child(self) -> None:
        """Never share the parent's pooled sockets: drop them unclosed."""
        if self._engine is not None:
            self._engine.dispose(close=False)

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = make_engine(
                self.settings.connection,
                connect_timeout=self.settings.connect_timeout,
                query_timeout=self.settings.query_timeout,
            )
        return self._engine

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session in one transaction: committed on success, rolled back on error."""
        if self._sessions is None:
            self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        with (
            translate_errors(self.subject, address=self.address),
            self._sessions.begin() as session,
        ):
            session.info[SESSION_INFO_KEY] = self.keyring
            if self.settings.connection.backend != "sqlite":
                # Check the connection out before the caller's first statement:
                # a failure here is one no statement of it followed, which
                # :meth:`write` may run again on a fresh connection.
                try:
                    session.connection()
                except sqlalchemy.exc.DBAPIError as exc:
                    mark_start_failure(exc)
                    raise
            yield session

    def write(
        self,
        transaction: Callable[[Session], T],
        *,
        on_retry: Callable[[int, str], None] | None = None,
    ) -> T:
        """Run ``transaction(session)`` in a fresh transaction, whole again on a conflict.

        Every API database write goes through here (``cellgate.sql.retry``
        says why whole, and what ``transaction`` may do). A connection that
        could not be had at the start of an attempt (a PostgreSQL failover
        under way) is tried again on a fresh one, a few times. ``on_retry``
        is for tests.

        :raises TransactionConflict: refused as a conflict on every attempt
            (``[api_database] conflict_attempts``); nothing was written.
        """

        def attempt() -> T:
            with self.session() as session:
                return transaction(session)

        return run_transaction(
            attempt,
            component=self.subject,
            database="api",
            policy=self.retry_policy,
            stats=self.retries,
            on_retry=on_retry,
        )

    def create_file(self) -> None:
        """For a SQLite API database: create its directory and empty file if missing.

        Only ``api-db sync`` does this; every other use of a missing file is an
        error, so a typo in the path is reported instead of silently creating
        an empty database.
        """
        path = self._sqlite_path()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch(exist_ok=True)

    def _sqlite_path(self) -> Path | None:
        url = self.settings.connection
        if url.backend == "sqlite" and url.database not in (None, "", ":memory:"):
            return Path(str(url.database)).expanduser()
        return None

    def upgrade(
        self,
        revision: str = "head",
        *,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
        stop: threading.Event | None = None,
    ) -> Applied:
        """Migrate the API line to ``revision``, creating a missing SQLite file first.

        Waits up to ``lock_timeout`` seconds for another run's migration lock;
        ``stop`` ends the run at the next revision boundary.
        """
        self.create_file()
        with translate_errors(self.component):
            return apply(
                self.engine,
                MigrationLine.API,
                "upgrade",
                revision,
                lock_timeout=lock_timeout,
                component=self.component,
                stop=stop,
            )

    def revision(self) -> str | None:
        """The API line's revision; ``None`` for an empty (or not yet created) database."""
        path = self._sqlite_path()
        if path is not None and not path.exists():
            return None
        with translate_errors(self.subject, address=self.address):
            return current(self.engine, MigrationLine.API)

    def require_current(self) -> None:
        """Raise :class:`SchemaMismatch` unless the API schema is at this code's head."""
        expected = head(MigrationLine.API)
        found = self.revision()
        if found != expected:
            raise SchemaMismatch(
                component=self.subject,
                address=self.address,
                current=found,
                expected=expected,
                hint=Hint.SYNC_API_DB,
            )

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None
            self._sessions = None
