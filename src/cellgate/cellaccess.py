"""Per-call access to a cell's database and message queue: ``app.db`` and ``app.rpc``.

:class:`CellDatabases` and :class:`CellRPC` are the two halves of the
request path's third step (after looking the cell up and targeting the
context): they render the cell's URLs and hand out sessions, engines, RPC
clients and servers from the ``App``'s registries. They are built only by
:class:`~cellgate.app.App`, which owns what they use; they live apart from it
so that each file stays readable on its own.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Final, Generic, TypeVar

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from cellgate.apidb.mappings import CellMapping
from cellgate.context import RequestContext
from cellgate.errors import CellgateError, CellTimeout, CellUnavailable, UntargetedContext
from cellgate.routing.breaker import UNGUARDED, BreakerRegistry
from cellgate.rpc.client import RPCClient
from cellgate.rpc.server import DEFAULT_SERVER_WORKERS, RPCServer
from cellgate.rpc.target import Target
from cellgate.rpc.transport import TransportRegistry
from cellgate.sql.api_database import ApiDatabase
from cellgate.sql.budget import ConnectionBudgetExhausted
from cellgate.sql.engines import READ_ONLY, translate_errors
from cellgate.sql.registry import EngineRegistry
from cellgate.sql.retry import RetryPolicy, RetryStats, run_transaction
from cellgate.urls import DatabaseURL, StoredURL, TemplateDefaults, TransportURL

U = TypeVar("U")
T = TypeVar("T")

_RENDERED_LIMIT = 4096
_READ_ONLY: Final = {READ_ONLY: True}
_READ_WRITE: Final[dict[str, bool]] = {}


class _Rendered(Generic[U]):
    """Stored URL -> parsed URL, memoised: parsing is off the per-request path.

    Bounded by clearing when full: the stored values are few (one per cell)
    and a clear only costs re-parsing.
    """

    def __init__(self, render: Callable[[StoredURL], U]) -> None:
        self._render = render
        self._cache: dict[StoredURL, U] = {}

    def __call__(self, stored: StoredURL) -> U:
        url = self._cache.get(stored)
        if url is None:
            url = self._render(stored)
            if len(self._cache) >= _RENDERED_LIMIT:
                self._cache.clear()
            self._cache[stored] = url
        return url


class CellDatabases:
    """Sessions on cell databases, chosen per call from the context's cell."""

    def __init__(
        self,
        api: ApiDatabase,
        engines: EngineRegistry,
        defaults: TemplateDefaults,
        breakers: BreakerRegistry,
        *,
        retry_policy: RetryPolicy | None = None,
    ):
        self._api = api
        self._engines = engines
        self._rendered = _Rendered(defaults.database_url)
        self._breakers = breakers
        self._retry_policy = retry_policy or RetryPolicy()
        #: Shared with the API database: one set of counts per App.
        self.retries: RetryStats = api.retries

    def url_for(self, cell: CellMapping | StoredURL) -> DatabaseURL:
        """The cell's database URL, its template rendered (memoised per stored value)."""
        stored = cell.database_connection if isinstance(cell, CellMapping) else cell
        return self._rendered(stored)

    @contextmanager
    def engine_for(
        self, cell: CellMapping, *, timeout: float | None = None, create_missing: bool = False
    ) -> Iterator[Engine]:
        """An engine of its own on ``cell``'s database, for one operator task.

        For what a session cannot do: run a migration (Alembic wants an
        engine and its own transactions), or read a schema revision with a
        check's short ``timeout`` (both the connect and the per-query one;
        default: ``[database]``'s). ``create_missing`` lets a missing SQLite
        file be created, as a first ``db sync`` needs. The engine comes from
        this App's :class:`~cellgate.sql.registry.EngineRegistry`
        (``transient``: made by its factory, disposed when the block ends,
        never shared with the request path; the registry's docstring says
        why), and errors in the block are translated as a session's are:
        :class:`CellUnavailable` or :class:`CellTimeout`, the URL masked.
        The circuit breaker is not asked: an operator checking a cell wants
        the real answer, not the breaker's memory of the last one.
        """
        with self.engine_at(
            cell.database_connection,
            cell.label,
            timeout=timeout,
            create_missing=create_missing,
        ) as engine:
            yield engine

    @contextmanager
    def engine_at(
        self,
        stored: StoredURL,
        label: str,
        *,
        timeout: float | None = None,
        create_missing: bool = False,
        read_only: bool = False,
    ) -> Iterator[Engine]:
        """:meth:`engine_for` a database that need not be a mapped cell's.

        ``db sync --local`` migrates this host's ``[database] connection``;
        ``label`` names it in errors (``cell LABEL database``). ``read_only``:
        the server refuses writes (reading a Nova deployment's databases).
        """
        url = self.url_for(stored)
        with (
            self._engines.transient(
                url, timeout=timeout, create_missing=create_missing, read_only=read_only
            ) as engine,
            translate_errors(
                f"cell {label} database",
                address=str(url),
                unavailable=CellUnavailable,
                timeout=CellTimeout,
            ),
        ):
            yield engine

    @contextmanager
    def session(
        self, ctx: RequestContext, *, guarded: bool = True, read_only: bool = False
    ) -> Iterator[Session]:
        """A session in one transaction on ``ctx.cell``'s database.

        ``read_only=True`` promises the session only reads: on SQLite it then
        begins with a plain ``BEGIN`` instead of ``BEGIN IMMEDIATE``, so
        concurrent reads of one cell do not queue for its write lock. A write
        in such a session may fail at once with "database is locked" instead
        of waiting its turn. On MariaDB and PostgreSQL it changes nothing.

        :raises CellUnavailable: at once, without connecting, while the cell's
            circuit breaker is open (``cellgate.routing.breaker``).

        ``guarded=False`` skips the breaker, neither asking it nor telling it
        the outcome: for undoing a half-done operation, which must be tried
        even if the failure that made it necessary has just opened the breaker
        (a cell's broker and database share one breaker).
        """
        cell = ctx.cell
        if cell is None:
            raise UntargetedContext(what="a cell database session")
        url = self.url_for(cell)
        engine = self._engines.get(url)
        attempt = self._breakers.admit(cell) if guarded else UNGUARDED
        try:
            with (
                translate_errors(
                    f"cell {cell.label} database",
                    address=str(url),
                    unavailable=CellUnavailable,
                    timeout=CellTimeout,
                ),
                Session(
                    engine,
                    expire_on_commit=False,
                    execution_options=_READ_ONLY if read_only else _READ_WRITE,
                ) as session,
                session.begin(),
            ):
                try:
                    yield session
                except CellgateError:
                    # Raised by the caller's own code (a domain error, or another
                    # cell call that settles its own attempt): not this database's.
                    attempt.abandoned()
                    raise
        except BaseException as exc:
            if isinstance(exc.__cause__, ConnectionBudgetExhausted):
                attempt.abandoned()  # this process's bound ran out, not the cell
            else:
                attempt.settle(exc)
            raise
        attempt.succeeded()

    def write(
        self,
        ctx: RequestContext,
        transaction: Callable[[Session], T],
        *,
        guarded: bool = True,
    ) -> T:
        """Run ``transaction(session)`` on ``ctx.cell``'s database, whole again on a conflict.

        Each attempt is a fresh :meth:`session` (``guarded`` as there); see
        ``cellgate.sql.retry`` for what ``transaction`` may do.

        :raises TransactionConflict: refused as a conflict on every attempt
            (``[database] conflict_attempts``); nothing was written.
        """

        def attempt() -> T:
            with self.session(ctx, guarded=guarded) as session:
                return transaction(session)

        return self.retrying(ctx, attempt)

    def retrying(self, ctx: RequestContext, attempt: Callable[[], T]) -> T:
        """Call ``attempt`` again on a conflict; it opens (and ends) its own transactions.

        For a write that spans the cell database and the API database (an
        instance and its mapping): ``attempt`` must leave nothing behind when
        it raises.
        """
        cell = ctx.cell
        if cell is None:
            raise UntargetedContext(what="a cell database write")
        return run_transaction(
            attempt,
            component=f"cell {cell.label} database",
            database="cell",
            policy=self._retry_policy,
            stats=self.retries,
        )

    @contextmanager
    def api_session(self) -> Iterator[Session]:
        """A session in one transaction on the API database (for reads; writes: :meth:`api_write`)."""
        with self._api.session() as session:
            yield session

    def api_write(self, transaction: Callable[[Session], T]) -> T:
        """:meth:`ApiDatabase.write`: a write on the API database, retried on a conflict."""
        return self._api.write(transaction)


class CellRPC:
    """RPC clients and servers on cell transports, chosen per call from the cell."""

    def __init__(
        self,
        transports: TransportRegistry,
        defaults: TemplateDefaults,
        timeout: float,
        breakers: BreakerRegistry,
    ):
        self._transports = transports
        self._timeout = timeout
        self._breakers = breakers
        self._rendered = _Rendered(defaults.transport_url)
        self._servers: weakref.WeakSet[RPCServer] = weakref.WeakSet()

    def url_for(self, cell: CellMapping) -> TransportURL:
        """The cell's transport URL, its template rendered (memoised per stored value)."""
        return self._rendered(cell.transport_url)

    def client(self, ctx: RequestContext, target: Target) -> RPCClient:
        """A client reaching ``target`` in ``ctx.cell``, over that cell's transport."""
        if ctx.cell is None:
            raise UntargetedContext(what="an RPC client")
        transport = self._transports.get(self.url_for(ctx.cell), ctx.cell.label)
        return RPCClient(transport, target, ctx, timeout=self._timeout, breakers=self._breakers)

    def server(
        self,
        cell: CellMapping,
        target: Target,
        endpoints: Sequence[object],
        *,
        workers: int = DEFAULT_SERVER_WORKERS,
    ) -> RPCServer:
        """A server (not yet started) for ``target`` on ``cell``'s transport."""
        transport = self._transports.dedicated(self.url_for(cell), cell.label)
        server = RPCServer(
            transport, target, endpoints, cell, workers=workers, owns_transport=True
        )
        self._servers.add(server)
        return server

    def stop_servers(self) -> None:
        """Stop every server made here that is still running (App.close does this)."""
        for server in list(self._servers):
            server.stop()
