"""``EngineRegistry``: one engine per cell database URL, created once, kept.

Engines are keyed by the *rendered* database URL, not by cell uuid (Nova's
``CELL_CACHE[uuid]``), so ``cell update --database-connection`` takes effect
without a restart: the new URL simply gets a new engine. Creation is guarded
by a lock per key: under any concurrency an engine is created exactly once
per URL.

What is bounded, and where (``cellgate.sql.budget`` says why these are two
bounds and not one):

- **Connections**, the expensive part, across every cell engine: at most
  ``[cells] max_connections`` open at once and ``[cells] max_idle_connections``
  open while idle (a :class:`~cellgate.sql.budget.ConnectionBudget` shared by
  every engine's pool). Per engine, at most ``pool_size`` idle and twice that
  open, as before.
- **Engines**, the cheap part (tens of kilobytes each, no socket once their
  connections are closed): at most ``[cells] max_engines``, least recently
  used first out; only engines with no connection checked out are disposed,
  so the count can briefly exceed the bound. The default is far above the
  cells a scatter-gather touches, so the working set's engines stay: an LRU
  smaller than a cyclic scan would dispose and re-create every one of them on
  every call.

SQLite ``:memory:`` databases keep SQLAlchemy's own pool (one connection per
thread, and the database lives only as long as it): they are outside the
budget.

After ``os.fork()`` the child must not reuse the parent's sockets; the
registry drops them without closing the parent's (see ``cellgate.forksafe``)
and the budget starts counting afresh.

:meth:`EngineRegistry.transient` is the registry's second product: an engine
for one task (a migration, a check), made by the same factory with the same
pool size, and disposed when the task ends. It is not kept in the LRU (nor in
the budget: it is closed within its task) because its options differ from the
shared engines': ``cell verify`` wants its own short ``[cells]
verify_timeout``, and ``db sync`` must be allowed to create a missing SQLite
file. Were those options part of the key instead, a 3-second verify engine or
a file-creating sync engine would sit in the registry next to the request
path's engine for the same URL, and a bug that handed one out for a request
would silently change its timeouts or create an empty cell.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy.engine import Engine

from cellgate import forksafe
from cellgate.sql.budget import BudgetPool, ConnectionBudget
from cellgate.sql.engines import make_engine
from cellgate.urls import DatabaseURL

#: SQLite files keep SQLAlchemy's own defaults per engine (5 idle, 15 open).
SQLITE_POOL_SIZE = 5
SQLITE_MAX_OVERFLOW = 10


class EngineRegistry:
    def __init__(
        self,
        *,
        max_engines: int,
        connect_timeout: float,
        query_timeout: float,
        pool_size: int = 2,
        max_connections: int = 128,
        max_idle_connections: int = 64,
        idle_grace: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_engines < 1:
            raise ValueError("max_engines must be at least 1")
        self.max_engines = max_engines
        self.budget = ConnectionBudget(
            max_open=max_connections, max_idle=max_idle_connections, grace=idle_grace, clock=clock
        )
        self._connect_timeout = connect_timeout
        self._query_timeout = query_timeout
        self._pool_size = pool_size
        self._engines: OrderedDict[str, Engine] = OrderedDict()
        self._lock = threading.Lock()
        self._key_locks: dict[str, threading.Lock] = {}
        self.created = 0
        self.evicted = 0
        self._closed = False
        forksafe.register(self)

    def get(self, url: DatabaseURL) -> Engine:
        """The engine for ``url``, created on first use."""
        key = url.key
        with self._lock:
            if self._closed:
                raise RuntimeError("the App owning this engine registry is closed")
            engine = self._engines.get(key)
            if engine is not None:
                self._engines.move_to_end(key)
                return engine
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                engine = self._engines.get(key)
            if engine is not None:
                return engine
            engine = make_engine(
                url,
                connect_timeout=self._connect_timeout,
                query_timeout=self._query_timeout,
                pool_size=self._pool_size,
                pool=self._pool_options(url),
            )
            with self._lock:
                self._engines[key] = engine
                self.created += 1
                self._key_locks.pop(key, None)
                victims = self._evict_locked(keep=key)
        for victim in victims:
            victim.dispose()
        return engine

    @contextmanager
    def transient(
        self,
        url: DatabaseURL,
        *,
        timeout: float | None = None,
        create_missing: bool = False,
        read_only: bool = False,
    ) -> Iterator[Engine]:
        """An engine of its own for one task, disposed when the block ends.

        ``timeout`` replaces both the connect and the per-query timeout (a
        check that must answer quickly); ``create_missing`` lets a SQLite file
        and its directory be created (a first migration); ``read_only``
        makes the server refuse writes (:func:`~cellgate.sql.engines.make_engine`). See the module
        docstring for why these engines are not shared.
        """
        with self._lock:
            if self._closed:
                raise RuntimeError("the App owning this engine registry is closed")
        engine = make_engine(
            url,
            connect_timeout=self._connect_timeout if timeout is None else timeout,
            query_timeout=self._query_timeout if timeout is None else timeout,
            pool_size=self._pool_size,
            create_missing=create_missing,
            read_only=read_only,
        )
        try:
            yield engine
        finally:
            engine.dispose()

    def _pool_options(self, url: DatabaseURL) -> dict[str, Any] | None:
        """``create_engine`` pool arguments drawing on the budget; None for ``:memory:``."""
        if url.backend == "sqlite" and url.database in (None, "", ":memory:"):
            return None
        size, overflow = (
            (SQLITE_POOL_SIZE, SQLITE_MAX_OVERFLOW)
            if url.backend == "sqlite"
            else (self._pool_size, self._pool_size)
        )
        return {
            "poolclass": BudgetPool,
            "budget": self.budget,
            "pool_size": size,
            "max_overflow": overflow,
            "pool_timeout": self._connect_timeout,
        }

    def __len__(self) -> int:
        return len(self._engines)

    def open_connections(self) -> int:
        """Connections the cell engines hold open now (in use or idle; ``:memory:`` not counted)."""
        return self.budget.open_count()

    def idle_connections(self) -> int:
        """Connections the cell engines hold open and unused now."""
        return self.budget.idle_count()

    def checked_out(self) -> int:
        """Connections currently lent out, over every engine."""
        with self._lock:
            engines = list(self._engines.values())
        return sum(_checked_out(e) for e in engines)

    def _evict_locked(self, keep: str) -> list[Engine]:
        """Pop least recently used idle engines until within the bound."""
        victims: list[Engine] = []
        for key in list(self._engines):
            if len(self._engines) <= self.max_engines:
                break
            engine = self._engines[key]
            if key == keep:
                continue
            if _checked_out(engine) == 0:
                victims.append(self._engines.pop(key))
                self.evicted += 1
        return victims

    def close(self) -> None:
        with self._lock:
            self._closed = True
            engines = list(self._engines.values())
            self._engines.clear()
        self.budget.close()
        for engine in engines:
            engine.dispose()

    def _after_fork_in_child(self) -> None:
        """Forget the parent's connections without closing them, and reset locks."""
        self._lock = threading.Lock()
        self._key_locks = {}
        self.budget.after_fork_in_child()  # before the pools are re-made below
        for engine in self._engines.values():
            engine.dispose(close=False)


def _checked_out(engine: Engine) -> int:
    checkedout = getattr(engine.pool, "checkedout", None)
    return int(checkedout()) if callable(checkedout) else 0
