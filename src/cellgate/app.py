"""``App``: the composition root, and the per-call cell targeting it offers.

One ``App`` per process owns every long-lived resource: the API database
engine, the mapping cache, the cell engine registry and the scatter-gather
thread pool. ``App.close()`` (or leaving ``with App(settings) as app``)
releases them all. Nothing is global: two ``App`` objects in one process (as
in tests) share nothing.

The request path (database and RPC)::

    ctx = RequestContext(project_id=...)
    with app.target_cell(ctx, "cell1") as cctx:      # cached mapping lookup
        with app.db.session(cctx) as session:         # that cell's engine
            session.execute(...)
        app.rpc.client(cctx, Target("compute")).call("reboot", instance=uuid)

Cell-level access with an untargeted context raises ``UntargetedContext``;
there is no default cell to fall back to.
"""

from __future__ import annotations

import signal
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Generic, TypeVar

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from cellgate.apidb.mappings import CellMapping
from cellgate.closing import Closing
from cellgate.config import RPCSettings, Settings, template_defaults
from cellgate.context import RequestContext
from cellgate.errors import CellgateError, CellTimeout, CellUnavailable, UntargetedContext
from cellgate.results import CellResult
from cellgate.routing.breaker import UNGUARDED, BreakerRegistry
from cellgate.routing.cache import MappingCache
from cellgate.routing.fanout import FanoutPool
from cellgate.routing.locator import InstanceLocator
from cellgate.rpc.client import RPCClient
from cellgate.rpc.server import DEFAULT_SERVER_WORKERS, RPCServer
from cellgate.rpc.target import Target
from cellgate.rpc.transport import Transport, TransportFactory, TransportRegistry
from cellgate.sql.api_database import ApiDatabase
from cellgate.sql.engines import translate_errors
from cellgate.sql.registry import EngineRegistry
from cellgate.urls import DatabaseURL, StoredURL, TemplateDefaults, TransportURL

T = TypeVar("T")
U = TypeVar("U")

_RENDERED_LIMIT = 4096


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
    ):
        self._api = api
        self._engines = engines
        self._rendered = _Rendered(defaults.database_url)
        self._breakers = breakers

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
    ) -> Iterator[Engine]:
        """:meth:`engine_for` a database that need not be a mapped cell's.

        ``db sync --local`` migrates this host's ``[database] connection``;
        ``label`` names it in errors (``cell LABEL database``).
        """
        url = self.url_for(stored)
        with (
            self._engines.transient(url, timeout=timeout, create_missing=create_missing) as engine,
            translate_errors(
                f"cell {label} database",
                address=str(url),
                unavailable=CellUnavailable,
                timeout=CellTimeout,
            ),
        ):
            yield engine

    @contextmanager
    def session(self, ctx: RequestContext, *, guarded: bool = True) -> Iterator[Session]:
        """A session in one transaction on ``ctx.cell``'s database.

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
                Session(engine, expire_on_commit=False) as session,
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
            attempt.settle(exc)
            raise
        attempt.succeeded()

    @contextmanager
    def api_session(self) -> Iterator[Session]:
        """A session in one transaction on the API database."""
        with self._api.session() as session:
            yield session


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


def _rabbit_factory(rpc: RPCSettings) -> TransportFactory:
    """Makes RabbitMQ transports; kombu is imported on the first one.

    A function-local import for import cost, not a cycle: kombu takes longer
    to import than the rest of an ``App``, and a process whose cells all use
    ``memory://`` (the CLI's embedded default, tests) never needs it.
    """

    def make(url: TransportURL) -> Transport:
        from cellgate.rpc.amqp.rabbit import RabbitTransport

        return RabbitTransport(url, connect_timeout=rpc.connect_timeout, heartbeat=rpc.heartbeat)

    return make


class App(Closing):
    """Owns every engine, cache and pool of one process; see the module docstring.

    ``clock`` is what the cells' circuit breakers (``app.breakers``) read to
    time their cool-downs: a monotonic clock in seconds; tests pass a fake one.
    """

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.breakers = BreakerRegistry(
            threshold=settings.cells.breaker_threshold,
            cooldown=settings.cells.breaker_cooldown,
            clock=clock,
        )
        self.api = ApiDatabase(settings.api_database)
        self.cells = MappingCache(self.api, settings.cells.cache_ttl)
        self.locator = InstanceLocator(self.api)
        self.engines = EngineRegistry(
            max_engines=settings.cells.max_engines,
            connect_timeout=settings.database.connect_timeout,
            query_timeout=settings.database.query_timeout,
            pool_size=settings.database.pool_size,
        )
        defaults = template_defaults(settings)
        self.db = CellDatabases(self.api, self.engines, defaults, self.breakers)
        rpc = settings.rpc
        self.transports = TransportRegistry(
            max_transports=rpc.max_transports, rabbit=_rabbit_factory(rpc)
        )
        self.rpc = CellRPC(self.transports, defaults, rpc.response_timeout, self.breakers)
        self._fanout = FanoutPool()

    @contextmanager
    def target_cell(
        self, ctx: RequestContext, cell: CellMapping | str
    ) -> Iterator[RequestContext]:
        """Yield a copy of ``ctx`` targeting ``cell`` (a mapping, name or uuid)."""
        mapping = cell if isinstance(cell, CellMapping) else self.cells.get(ctx, cell)
        yield ctx.for_cell(mapping)

    def scatter_gather(
        self,
        ctx: RequestContext,
        cells: Iterable[CellMapping] | None,
        fn: Callable[[RequestContext], T],
        *,
        timeout: float | None = None,
        include_disabled: bool = False,
        include_cell0: bool = False,
    ) -> dict[str, CellResult[T]]:
        """Run ``fn(cell_ctx)`` on every cell at once; one result per cell uuid.

        ``cells=None`` means every live cell, less cell0 and disabled cells
        unless asked for; an explicit list is used as given. Returns by the
        deadline even if a cell hangs.
        """
        if cells is None:
            cells = self.cells.list(
                ctx, include_disabled=include_disabled, include_cell0=include_cell0
            )
        targets = {c.uuid: ctx.for_cell(c) for c in cells}
        deadline = timeout if timeout is not None else self.settings.cells.scatter_timeout
        return self._fanout.scatter_gather(targets, fn, timeout=deadline)

    def reload(self) -> None:
        """Drop cached cell mappings; the next lookup re-reads the API database.

        What a service does on SIGHUP (see :meth:`install_sighup_handler`).
        Engines and transports need no reload: they are keyed by URL, so a
        changed mapping simply reaches a new one.
        """
        self.cells.invalidate()
        self.locator.clear()

    def install_sighup_handler(self) -> None:
        """Make SIGHUP call :meth:`reload` (main thread only, POSIX only)."""
        signal.signal(signal.SIGHUP, lambda _signum, _frame: self.reload())

    def close(self) -> None:
        """Release every engine, pool and thread this App owns."""
        self.rpc.stop_servers()
        self._fanout.close()
        self.transports.close()
        self.engines.close()
        self.cells.close()
        self.api.close()
