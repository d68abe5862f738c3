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
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from cellgate.apidb import instances as instance_mappings
from cellgate.apidb.mappings import CellMapping
from cellgate.cellaccess import CellDatabases, CellRPC
from cellgate.closing import Closing
from cellgate.config import RPCSettings, Settings, template_defaults
from cellgate.context import RequestContext
from cellgate.errors import BackendError
from cellgate.keyset import SortKey
from cellgate.results import CellResult, Failed, Ok
from cellgate.routing.breaker import BreakerRegistry
from cellgate.routing.cache import MappingCache
from cellgate.routing.fanout import FanoutPool
from cellgate.routing.listing import Listing, list_across_cells
from cellgate.routing.locator import InstanceLocator
from cellgate.rpc.transport import Transport, TransportFactory, TransportRegistry
from cellgate.sql.api_database import ApiDatabase
from cellgate.sql.registry import EngineRegistry
from cellgate.sql.retry import RetryPolicy, RetryStats
from cellgate.urls import TransportURL

T = TypeVar("T")

#: The share of a listing's deadline that pruning to a project's cells may use.
PRUNE_SHARE = 0.25


def _rabbit_factory(rpc: RPCSettings) -> TransportFactory:
    """Makes RabbitMQ transports; kombu is imported on the first one.

    A function-local import for import cost, not a cycle: kombu takes longer
    to import than the rest of an ``App``, and a process whose cells all use
    ``memory://`` (the CLI's embedded default, tests) never needs it.
    """

    def make(url: TransportURL) -> Transport:
        from cellgate.rpc.amqp.rabbit import RabbitTransport

        return RabbitTransport(
            url,
            connect_timeout=rpc.connect_timeout,
            heartbeat=rpc.heartbeat,
            queue_type=rpc.queue_type,
            confirm_timeout=rpc.response_timeout,
        )

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
            max_connections=settings.cells.max_connections,
            max_idle_connections=settings.cells.max_idle_connections,
            idle_grace=settings.cells.idle_grace,
        )
        defaults = template_defaults(settings)
        self.db = CellDatabases(
            self.api,
            self.engines,
            defaults,
            self.breakers,
            retry_policy=RetryPolicy(attempts=settings.database.conflict_attempts),
        )
        #: Conflict retries of every write this App made (API and cell databases).
        self.retries: RetryStats = self.api.retries
        rpc = settings.rpc
        self.transports = TransportRegistry(
            max_transports=rpc.max_transports, rabbit=_rabbit_factory(rpc)
        )
        self.rpc = CellRPC(self.transports, defaults, rpc.response_timeout, self.breakers)
        self._fanout = FanoutPool(
            settings.cells.scatter_workers, max_hung=settings.cells.scatter_hung_threads
        )

    @property
    def fanout(self) -> FanoutPool:
        """The scatter-gather thread pool (``threads()`` tells how many it holds)."""
        return self._fanout

    @contextmanager
    def target_cell(
        self, ctx: RequestContext, cell: CellMapping | str
    ) -> Iterator[RequestContext]:
        """Yield a copy of ``ctx`` targeting ``cell`` (a mapping, name or uuid)."""
        (mapping,) = self.resolve_cells(ctx, [cell])
        yield ctx.for_cell(mapping)

    def resolve_cells(
        self, ctx: RequestContext, cells: Iterable[CellMapping | str]
    ) -> list[CellMapping]:
        """Mappings for ``cells``: mappings as given, names and uuids from the cache.

        :raises CellNotFound: a name or uuid is no live cell.
        :raises CellUnreadable: its mapping does not decrypt with the keys.
        :raises TypeError: an item is neither a mapping nor a string (a caller bug).
        """
        if isinstance(cells, str | CellMapping):
            raise TypeError(
                "cells must be an iterable of CellMapping or cell names/uuids, "
                f"not one {type(cells).__name__}"
            )
        out: list[CellMapping] = []
        for cell in cells:
            if isinstance(cell, CellMapping):
                out.append(cell)
            elif isinstance(cell, str):
                out.append(self.cells.get(ctx, cell))
            else:
                raise TypeError(
                    f"a cell is a CellMapping or a name or uuid, not {type(cell).__name__}"
                )
        return out

    def scatter_gather(
        self,
        ctx: RequestContext,
        cells: Iterable[CellMapping | str] | None,
        fn: Callable[[RequestContext], T],
        *,
        timeout: float | None = None,
        include_disabled: bool = False,
        include_cell0: bool = False,
    ) -> dict[str, CellResult[T]]:
        """Run ``fn(cell_ctx)`` on every cell at once; one result per cell uuid.

        ``cells=None`` means every live cell, less cell0 and disabled cells
        unless asked for; an explicit list is used as given, each item a
        :class:`CellMapping` or a cell name or uuid (resolved through the
        mapping cache first: :meth:`resolve_cells`, whose typed errors a bad
        name raises before any cell is asked). Returns by the deadline even
        if a cell hangs.
        """
        if cells is None:
            chosen = self.cells.list(
                ctx, include_disabled=include_disabled, include_cell0=include_cell0
            )
        else:
            chosen = self.resolve_cells(ctx, cells)
        targets = {c.uuid: ctx.for_cell(c) for c in chosen}
        deadline = timeout if timeout is not None else self.settings.cells.scatter_timeout
        return self._fanout.scatter_gather(targets, fn, timeout=deadline)

    def list_across_cells(
        self,
        ctx: RequestContext,
        fetch: Callable[[RequestContext, int, Sequence[Any] | None], Sequence[T]],
        *,
        values: Callable[[T], Sequence[Any]],
        sort: Sequence[SortKey],
        limit: int,
        after: Sequence[Any] | None = None,
        cells: Iterable[CellMapping | str] | None = None,
        prune_to_project: str | None = None,
        timeout: float | None = None,
    ) -> Listing[T]:
        """One page of rows sorted by ``sort`` across cells, merged as they stream.

        ``fetch(cell_ctx, limit, after)`` returns at most ``limit`` rows of
        that cell, sorted by ``sort`` (build the query with
        ``cellgate.keyset.order_by`` and ``after``), strictly after the key
        values ``after``; ``values(row)`` gives a row's key values in the
        order of ``sort``, whose last key must be unique (a uuid). Cells are
        queried concurrently, each for a small batch first and more only if
        the page needs it (``cellgate.routing.listing``); cells that fail or
        miss the one deadline are in ``Listing.down``. ``prune_to_project``
        asks only the cells that hold that project's instances (from the
        instance mappings). ``cells=None``: every enabled cell but cell0;
        given cells may be mappings, names or uuids (:meth:`resolve_cells`).
        """
        chosen = (
            self.resolve_cells(ctx, cells)
            if cells is not None
            else self.cells.list(ctx, include_cell0=False)
        )
        deadline = timeout if timeout is not None else self.settings.cells.scatter_timeout
        started = time.monotonic()
        if prune_to_project is not None:
            holding = self._cells_holding(prune_to_project, deadline * PRUNE_SHARE)
            if holding is not None:
                chosen = [c for c in chosen if c.uuid in holding]
        remaining = max(deadline - (time.monotonic() - started), 1e-3)
        contexts = {c.uuid: ctx.for_cell(c) for c in chosen}

        def scatter(
            work: Mapping[str, Callable[[], Sequence[T]]], remaining: float
        ) -> Mapping[str, CellResult[Sequence[T]]]:
            return self._fanout.scatter_gather(work, lambda call: call(), timeout=remaining)

        return list_across_cells(
            scatter,
            chosen,
            lambda cell, size, marker: fetch(contexts[cell.uuid], size, marker),
            values=values,
            keys=sort,
            limit=limit,
            after=after,
            timeout=remaining,
        )

    def _cells_holding(self, project_id: str, budget: float) -> set[str] | None:
        """The cells with ``project_id``'s mappings; ``None`` if the API database can't tell.

        Pruning only saves work, so it must never cost the listing its
        answer: the query gets a share of the listing's deadline, and when
        the API database fails or is slow every cell is asked instead.
        """

        def query(_: object) -> set[str]:
            with self.db.api_session() as session:
                return instance_mappings.cells_holding(session, project_id)

        result = self._fanout.scatter_gather({"api": None}, query, timeout=budget)["api"]
        if isinstance(result, Ok):
            return result.value
        if isinstance(result, Failed) and not isinstance(result.error, BackendError):
            raise result.error  # a bug, not an outage
        return None

    def reload(self, *, wait: float | None = None) -> bool:
        """Re-read every cell mapping in the background, serving the old ones meanwhile.

        What a service does on SIGHUP (see :meth:`install_sighup_handler`):
        no request waits for the reload (``MappingCache.revalidate``). The
        instance locator is emptied, so each instance is looked up afresh on
        its next request. ``wait``: block up to that many seconds for the
        reload. Returns whether the reload has finished. Engines and transports need no reload: they are keyed by URL, so a
        changed mapping simply reaches a new one.
        """
        self.cells.revalidate()
        self.locator.clear()
        return self.cells.wait_refreshed(wait if wait is not None else 0.0)

    def reload_in_background(self) -> None:
        """:meth:`reload` without waiting: what a SIGHUP handler calls."""
        self.reload()

    def install_sighup_handler(self) -> None:
        """Make SIGHUP call :meth:`reload` (main thread only, POSIX only)."""
        signal.signal(signal.SIGHUP, lambda _signum, _frame: self.reload_in_background())

    def close(self) -> None:
        """Release every engine, pool and thread this App owns."""
        self.rpc.stop_servers()
        self._fanout.close()
        self.transports.close()
        self.engines.close()
        self.cells.close()
        self.api.close()
