"""A process-wide connection budget shared by every cell engine's pool.

Why not a bound on engines
--------------------------
What costs a process (and the database servers) is *open connections*,
above all idle ones: each is a socket, a server-side session (a thread on
MariaDB, a process on PostgreSQL) and some megabytes on both sides. An engine
without connections is a few tens of kilobytes of Python objects. Bounding
connections by bounding engines (an LRU of engines, each with its own pool)
conflates the two, and fails under the request pattern cells produce: a
scatter-gather over more cells than the LRU holds is a cyclic scan, which an
LRU serves with a hit rate of zero, so every call disposes and re-creates
every engine and reconnects every connection.

So the two are bounded apart. :class:`~cellgate.sql.registry.EngineRegistry`
keeps up to ``[cells] max_engines`` engines (memory only); this module bounds
what they hold, across all of them:

- ``max_open`` (``[cells] max_connections``): connections open at once, in
  use or idle. A checkout that would exceed it first closes the least
  recently used *idle* connection of any engine and takes its place; if every
  connection is in use, it waits for one to come back, at most the pool
  timeout (``[database] connect_timeout``), and then fails with
  :class:`ConnectionBudgetExhausted`.
- ``max_idle`` (``[cells] max_idle_connections``): connections kept open
  while nobody uses them. Idle connections above it are closed, least
  recently used first (of any engine), once they have been idle for
  ``grace`` seconds (``[cells] idle_grace``), by a reaper thread that exists
  only while there are such connections. So once a burst is over, at most
  ``max_idle`` stay open, whatever the number of cells touched; and a burst
  that recurs within the grace (a scatter-gather over more cells than
  ``max_idle``, every few seconds) reuses its connections instead of closing
  and reopening the surplus every time (an LRU of connections smaller than
  the cells of a scatter would churn ``cells - max_idle`` of them per call).
- per engine, as before: at most ``pool_size`` idle and ``2 * pool_size``
  open (SQLite files: 5 and 15, SQLAlchemy's defaults).

The bookkeeping is one lock and an ordered dict of idle connections (oldest
first), so a checkout or checkin is O(1) and closing a victim's socket
happens outside the lock.

:class:`BudgetPool` is a SQLAlchemy :class:`~sqlalchemy.pool.Pool` subclass
implementing the documented subclass methods (``_do_get``,
``_do_return_conn``, ``dispose``, ``recreate``, ``status``); SQLAlchemy's own
pre-ping, reset-on-return, invalidation and events work on it unchanged.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import sqlalchemy.exc
from sqlalchemy.pool import ConnectionPoolEntry, Pool


class ConnectionBudgetExhausted(sqlalchemy.exc.TimeoutError):
    """Every connection the budget allows is in use, past the pool timeout.

    A subclass of SQLAlchemy's pool timeout, so error translation treats it
    as the pool timeout it is (the cell is reported as timed out); the message
    says it was this process's bound, not the cell, that ran out.
    """


class ConnectionBudget:
    """Counts and bounds the connections of every :class:`BudgetPool` sharing it."""

    def __init__(
        self,
        *,
        max_open: int,
        max_idle: int,
        grace: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_open < 1:
            raise ValueError(f"max_open must be at least 1, not {max_open}")
        if not 0 <= max_idle <= max_open:
            raise ValueError(f"max_idle must be between 0 and max_open, not {max_idle}")
        self.max_open = max_open
        self.max_idle = max_idle
        self.grace = grace
        self._clock = clock
        self._reaper: threading.Timer | None = None
        self._closed = False
        self._cond = threading.Condition(threading.Lock())
        self._open = 0
        # Idle connections of every pool, least recently returned first, with
        # their pool and when they were returned.
        self._idle: OrderedDict[ConnectionPoolEntry, tuple[BudgetPool, float]] = OrderedDict()
        self._waiting = 0
        self.generation = 0  # bumped after fork: pools of an older one are forgotten
        self.opened = 0  # connections opened, ever (a figure: churn)
        self.closed_idle = 0  # idle connections closed to stay within a bound

    def open_count(self) -> int:
        """Connections open now, in use or idle."""
        return self._open

    def idle_count(self) -> int:
        """Connections open and idle now."""
        return len(self._idle)

    def checkout(self, pool: BudgetPool) -> ConnectionPoolEntry:
        """An idle connection of ``pool``, or a new one within both bounds."""
        victim: ConnectionPoolEntry | None = None
        deadline: float | None = None
        with self._cond:
            while True:
                if pool.idle:
                    record = pool.idle.pop()  # the most recent: warm, least likely stale
                    del self._idle[record]
                    return record
                if pool.open_count < pool.max_open:
                    if self._open < self.max_open:
                        self._open += 1
                        break
                    if self._idle:  # make room: close another engine's idle connection
                        victim = self._pop_oldest_idle_locked()
                        self._open += 1  # its place, taken
                        break
                now = self._clock()
                deadline = now + pool.timeout if deadline is None else deadline
                if now >= deadline:
                    raise ConnectionBudgetExhausted(
                        f"no cell database connection free within {pool.timeout:g} s: "
                        f"{self._open} of [cells] max_connections = {self.max_open} in use, "
                        f"{pool.open_count} of {pool.max_open} for this database",
                    )
                self._waiting += 1
                try:
                    self._cond.wait(deadline - now)
                finally:
                    self._waiting -= 1
            pool.open_count += 1
            self.opened += 1
        if victim is not None:
            _close(victim)
        try:
            return pool.new_record()
        except BaseException:
            with self._cond:
                pool.open_count -= 1
                self._open -= 1
                self._notify_locked()
            raise

    def checkin(self, pool: BudgetPool, record: ConnectionPoolEntry) -> None:
        """Keep ``record`` idle if the bounds allow, else close it; close the oldest above them."""
        victims: list[ConnectionPoolEntry] = []
        with self._cond:
            if pool.generation != self.generation:
                return  # a pool from before a fork: its connection is the parent's
            keep = (
                not pool.disposed
                and record.dbapi_connection is not None
                and len(pool.idle) < pool.max_idle
                and not self._closed
            )
            if keep:
                pool.idle.append(record)
                self._idle[record] = (pool, self._clock())
                victims = self._over_bound_locked()
            else:
                victims.append(record)
                pool.open_count -= 1
                self._open -= 1
            self._notify_locked()
        for victim in victims:
            _close(victim)

    def discard_idle(self, pool: BudgetPool) -> None:
        """Close every idle connection of ``pool`` (it is being disposed)."""
        with self._cond:
            if pool.generation != self.generation:
                pool.idle.clear()
                return
            victims = list(pool.idle)
            pool.idle.clear()
            for record in victims:
                del self._idle[record]
            pool.open_count -= len(victims)
            self._open -= len(victims)
            self._notify_locked()
        for victim in victims:
            _close(victim)

    def close(self) -> None:
        """Stop the reaper; connections returned from now on are closed (the App is closing)."""
        with self._cond:
            self._closed = True
            reaper, self._reaper = self._reaper, None
        if reaper is not None:
            reaper.cancel()

    def after_fork_in_child(self) -> None:
        """Start counting afresh; connections of existing pools are the parent's."""
        self._cond = threading.Condition(threading.Lock())
        self._open = 0
        self._idle = OrderedDict()
        self._waiting = 0
        self._reaper = None  # its thread did not survive the fork
        self.generation += 1

    def _over_bound_locked(self) -> list[ConnectionPoolEntry]:
        """Pop the idle connections above ``max_idle`` idle for ``grace``; time the rest."""
        victims: list[ConnectionPoolEntry] = []
        now = self._clock()
        while len(self._idle) > self.max_idle:
            _, since = next(iter(self._idle.values()))
            wait = since + self.grace - now
            if wait > 0:
                if self._reaper is None and not self._closed:
                    self._reaper = threading.Timer(wait, self._reap)
                    self._reaper.name = "cellgate-idle-reaper"
                    self._reaper.daemon = True
                    self._reaper.start()
                break
            victims.append(self._pop_oldest_idle_locked())
        return victims

    def _reap(self) -> None:
        with self._cond:
            self._reaper = None
            victims = self._over_bound_locked()
        for victim in victims:
            _close(victim)

    def _pop_oldest_idle_locked(self) -> ConnectionPoolEntry:
        record, (owner, _) = self._idle.popitem(last=False)
        owner.idle.remove(record)
        owner.open_count -= 1
        self._open -= 1
        self.closed_idle += 1
        return record

    def _notify_locked(self) -> None:
        if self._waiting:
            self._cond.notify_all()


def _close(record: ConnectionPoolEntry) -> None:
    """Close one connection's socket; a failure to say goodbye is not an error."""
    with contextlib.suppress(Exception):  # the server may be gone; the socket goes anyway
        record.close()


class BudgetPool(Pool):
    """One engine's pool, drawing its connections from a shared :class:`ConnectionBudget`."""

    # Not keyword-only: create_engine() finds a pool class's arguments by
    # reading its __init__'s positional parameters (sqlalchemy.util.get_cls_kwargs).
    def __init__(
        self,
        creator: Any,
        budget: ConnectionBudget,
        pool_size: int = 2,
        max_overflow: int = 2,
        timeout: float = 30.0,
        **kw: Any,
    ) -> None:
        Pool.__init__(self, creator, **kw)
        self.budget = budget
        self.generation = budget.generation
        self.max_idle = pool_size
        self.max_open = pool_size + max_overflow
        self.timeout = timeout
        self.idle: list[ConnectionPoolEntry] = []  # guarded by the budget's lock
        self.open_count = 0  # idle plus checked out; guarded by the budget's lock
        self.disposed = False

    def new_record(self) -> ConnectionPoolEntry:
        return self._create_connection()

    def _do_get(self) -> ConnectionPoolEntry:
        return self.budget.checkout(self)

    def _do_return_conn(self, record: ConnectionPoolEntry) -> None:
        self.budget.checkin(self, record)

    def dispose(self) -> None:
        self.disposed = True
        self.budget.discard_idle(self)

    def recreate(self) -> BudgetPool:
        return self.__class__(
            self._creator,
            budget=self.budget,
            pool_size=self.max_idle,
            max_overflow=self.max_open - self.max_idle,
            timeout=self.timeout,
            recycle=self._recycle,
            echo=self.echo,
            logging_name=self._orig_logging_name,
            reset_on_return=self._reset_on_return,
            pre_ping=self._pre_ping,
            _dispatch=self.dispatch,
            dialect=self._dialect,
        )

    def status(self) -> str:
        return (
            f"BudgetPool: {self.checkedout()} checked out, {self.checkedin()} idle "
            f"(at most {self.max_open} open, {self.max_idle} idle); process: "
            f"{self.budget.open_count()} of {self.budget.max_open} open, "
            f"{self.budget.idle_count()} of {self.budget.max_idle} idle"
        )

    def checkedin(self) -> int:
        """Idle connections (the name QueuePool uses)."""
        return len(self.idle)

    def checkedout(self) -> int:
        """Connections in use (the name QueuePool uses)."""
        return self.open_count - len(self.idle)
