"""Scatter-gather: run one function per cell in parallel, with one deadline.

:meth:`FanoutPool.scatter_gather` returns exactly one
:data:`~cellgate.results.CellResult` per key, in the order of the input:

- ``Ok(value)`` when the function returned;
- ``Failed(error)`` when it raised an ``Exception``, which is kept exactly
  as raised;
- ``TimedOut(deadline)`` when it had not finished by the deadline, including
  work that was still queued and therefore never started.

Wrap only what you mean
-----------------------
The pool never re-labels an error. A cell that cannot be used already
arrives as a :class:`~cellgate.errors.BackendError` (``CellUnavailable``,
``CellTimeout``): driver and transport errors are translated where they
happen (``cellgate.sql.engines``, ``cellgate.rpc.amqp``, the RPC client), and only
there does anyone know that a connection, not a query, failed. Anything else
``fn`` raises (a ``KeyError`` in the caller's own code, bad SQL, a domain
error such as ``InstanceNotFound``) says nothing about the cell's reachability.
Calling it "cannot be reached" would hide a bug behind a fake outage and,
wherever such a result is re-raised under a circuit breaker, count against a
healthy cell. So the caller decides by type:

- a ``BackendError`` in ``Failed`` (or a ``TimedOut``) is an outage: report
  the cell as down (the REST list puts it in ``down_cells`` with its
  ``public_message``);
- another :class:`~cellgate.errors.CellgateError` is an answer or a refusal
  the caller knows how to render;
- any other exception is a bug on this side of the wire: the REST API raises
  it, so the request is a 500 whose log line carries the request id, and
  never a down cell (``cellgate.service.instances``, ``.health``).

Nova's ``scatter_gather_cells`` (nova/context.py) returns a dict whose values
are a cell's result, ``raised_exception_sentinel`` (or, later, the raw
exception) or ``did_not_respond_sentinel``. Every caller must remember to
compare against two sentinels before using a value, the exception itself is
only logged, and a forgotten check turns a dead cell into a wrong answer.
Here the three outcomes are types, so a ``match`` (and mypy) make callers
handle each one.

Why an own thread pool, not ``concurrent.futures.ThreadPoolExecutor``
----------------------------------------------------------------------
A cell whose database or broker stops answering can block a call for far
longer than any deadline, and a thread cannot be killed. Two things follow:

1. *The process must still be able to exit.* ``ThreadPoolExecutor`` threads
   are joined at interpreter exit, so one hung cell would hang shutdown. Our
   workers are ``daemon`` threads and nothing ever joins them: not
   ``scatter_gather`` at its deadline, not :meth:`FanoutPool.close`.
2. *Hung calls must not starve later ones.* A worker still running a task
   when that task's caller reaches its deadline is *written off*: it stops
   counting against ``max_workers``, and a replacement thread is started at
   once if work is waiting. If the hung call ever returns, the thread rejoins
   the pool when there is room and exits otherwise, so the pool settles back
   to at most ``max_workers`` threads.

Writing off single threads is the per-thread form of "replace the executor
once all its workers hang". It is simpler than swapping executors because
there is only one queue: replacing an executor would strand, or cancel, work
that other callers had queued on the old one before their own deadlines.

How many threads, at most
-------------------------
Threads are started as work needs them, one per item up to ``max_workers``
(``[cells] scatter_workers``), so a scatter over 100 cells runs all 100 at
once instead of in waves; a thread idle for ``idle_timeout`` seconds exits.
Written-off threads are bounded too: at most ``max_hung`` of them
(``[cells] scatter_hung_threads``) are replaced. Past that bound a thread
stuck in a call is still written off, but no thread is started in its place:
the pool runs fewer items at once (``max_workers + max_hung`` minus the stuck
ones), work that finds no thread waits in the queue and, if none frees up by
its caller's deadline, is reported ``TimedOut`` like any late work, and a
warning is logged. So the process never holds more than ``max_workers +
max_hung`` fan-out threads, however many calls hang; a stuck call that
returns (a driver's own timeout ends it) gives its place back. Calls into a
cell database or broker carry their own timeouts (``[database]
query_timeout``, ``rpc_response_timeout``), so in practice a thread is
stuck only until the driver gives up.

The pool is a ``deque`` of pending work and one ``Condition``; workers take
work and count themselves idle under that lock, so "is a thread free for this
item?" is answered exactly. Results travel in ``concurrent.futures.Future``
objects, so the caller can use ``concurrent.futures.wait`` with a timeout
computed from one monotonic deadline, and ``Future.cancel`` for work that
never started. Every change of a future's state (running, cancelled, result
set) happens under the pool's lock, and the caller decides "answered" or
"overdue" under it too: a worker that has answered is never written off, and
an answer is never reported as ``TimedOut`` (an earlier version published the
result before taking the lock, and a caller that got the lock first saw the
answered work as running).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import itertools
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, Generic, TypeVar

from cellgate import forksafe
from cellgate.closing import Closing
from cellgate.errors import RoutingError
from cellgate.results import CellResult, Failed, Ok, TimedOut

K = TypeVar("K")
V = TypeVar("V")
T = TypeVar("T")

#: Default number of threads a pool runs at once (hung ones not counted).
DEFAULT_MAX_WORKERS: Final = 128
#: Default number of written-off (hung) threads that are replaced.
DEFAULT_MAX_HUNG: Final = 64
#: Seconds an idle worker thread waits for work before it exits.
DEFAULT_IDLE_TIMEOUT: Final = 60.0

_log = logging.getLogger(__name__)

_pool_numbers = itertools.count(1)  # only for readable thread names


class _Work(Generic[T]):
    """One call of ``fn(item)``; its future and flag change only under the pool's lock.

    ``future.done()`` is the one "finished" state: set with the result (or by
    a cancel), so the caller's settling can never see an answered call as
    still running.
    """

    __slots__ = ("abandoned", "call", "future")

    def __init__(self, call: Callable[[], T]) -> None:
        self.call = call
        self.future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self.abandoned = False  # its caller gave up while it was running


class FanoutPool(Closing):
    """Owns the worker threads for scatter-gather; one per App; close() releases them."""

    def __init__(
        self,
        max_workers: int = DEFAULT_MAX_WORKERS,
        *,
        max_hung: int = DEFAULT_MAX_HUNG,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    ) -> None:
        if max_workers < 1:
            raise ValueError(f"max_workers must be at least 1, not {max_workers}")
        if max_hung < 0:
            raise ValueError(f"max_hung must be at least 0, not {max_hung}")
        self._max_workers = max_workers
        self._max_threads = max_workers + max_hung
        self._idle_timeout = idle_timeout
        self._cond = threading.Condition()
        self._pending: deque[_Work[Any]] = deque()
        self._workers = 0  # threads counted against max_workers, busy or idle
        self._idle = 0  # counted threads waiting for work (or about to)
        self._hung = 0  # written-off threads still in their call
        self._warned_full = False
        self._closed = False
        self._name = f"cellgate-fanout-{next(_pool_numbers)}"
        self._thread_numbers = itertools.count(1)
        forksafe.register(self)

    def _after_fork_in_child(self) -> None:
        """Only the forking thread survives a fork: start from an empty pool."""
        self._cond = threading.Condition()
        self._pending = deque()
        self._workers = 0
        self._idle = 0
        self._hung = 0

    def threads(self) -> tuple[int, int]:
        """(threads counted as workers, written-off threads still in a call)."""
        with self._cond:
            return self._workers, self._hung

    def scatter_gather(
        self, items: Mapping[K, V], fn: Callable[[V], T], *, timeout: float
    ) -> dict[K, CellResult[T]]:
        """Run ``fn(item)`` for every item concurrently; one result per key.

        Returns no later than ``timeout`` seconds after the call (plus
        scheduling noise), however long any ``fn`` blocks. See the module
        docstring for the three kinds of result.

        :raises ValueError: ``timeout`` is not a finite number above zero.
        :raises RuntimeError: the pool is closed.
        """
        if not (timeout > 0 and math.isfinite(timeout)):
            raise ValueError(f"timeout must be a finite number of seconds above 0, not {timeout}")
        deadline = time.monotonic() + timeout
        works = {key: _Work(functools.partial(fn, item)) for key, item in items.items()}
        with self._cond:
            if self._closed:
                raise RuntimeError("scatter_gather() called on a closed FanoutPool")
            if not works:
                return {}
            self._pending.extend(works.values())
            new_threads = self._reserve_threads()
            self._cond.notify(len(works))
        try:
            self._start_threads(new_threads)
            remaining = max(0.0, deadline - time.monotonic())
            concurrent.futures.wait([w.future for w in works.values()], timeout=remaining)
        finally:
            overdue = self._settle(works.values())
        return {key: _result(key, work, timeout, overdue) for key, work in works.items()}

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has run (its owner is shutting down)."""
        return self._closed

    def close(self) -> None:
        """Cancel queued work and let idle threads exit; never waits for hung ones.

        Calls still waiting in :meth:`scatter_gather` report their cancelled
        items as failed. Closing twice is harmless.
        """
        with self._cond:
            self._closed = True
            while self._pending:
                self._pending.popleft().future.cancel()
            self._cond.notify_all()

    def _reserve_threads(self) -> int:
        """Count in the threads the pending work needs; call with the lock held.

        The caller starts them (outside the lock) with :meth:`_start_threads`.
        """
        wanted = len(self._pending) - self._idle
        room = min(
            self._max_workers - self._workers,
            self._max_threads - self._workers - self._hung,
        )
        new = max(0, min(wanted, room))
        past_bound = self._hung > self._max_threads - self._max_workers
        if wanted > new and past_bound and not self._warned_full:
            self._warned_full = True  # once per episode: the state is in threads()
            _log.warning(
                "fan-out pool %s: %d threads stuck in calls past their deadline; "
                "not replacing them (at most [cells] scatter_hung_threads), so fewer "
                "cells run at once until those calls return",
                self._name,
                self._hung,
            )
        self._workers += new
        self._idle += new  # a new thread starts out looking for work
        return new

    def _start_threads(self, count: int) -> None:
        for started in range(count):
            thread = threading.Thread(
                target=self._work_loop,
                name=f"{self._name}_{next(self._thread_numbers)}",
                daemon=True,
            )
            try:
                thread.start()
            except BaseException:  # e.g. "can't start new thread": undo the count
                with self._cond:
                    self._workers -= count - started
                    self._idle -= count - started
                raise

    def _settle(self, works: Iterable[_Work[Any]]) -> set[_Work[Any]]:
        """At the deadline: cancel queued work and write off running work.

        Returns the work that did not finish in time. A done future (answered,
        failed, or cancelled by :meth:`close`) is never overdue: every change
        of a future's state happens under the lock held here.
        """
        overdue: set[_Work[Any]] = set()
        with self._cond:
            for work in works:
                if work.future.done():
                    continue
                overdue.add(work)
                if work.future.cancel():  # still queued: it will never run
                    self._pending.remove(work)
                else:  # running: its thread no longer counts as a worker
                    work.abandoned = True
                    self._workers -= 1
                    self._hung += 1
            new_threads = self._reserve_threads() if overdue and not self._closed else 0
        # Best effort: if no thread can start, the waiting work runs on a freed
        # thread or times out.
        with contextlib.suppress(RuntimeError):
            self._start_threads(new_threads)
        return overdue

    def _work_loop(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    if not self._cond.wait(self._idle_timeout) and not self._pending:
                        break  # idle too long: exit
                self._idle -= 1
                if not self._pending:  # closed, or idle too long
                    self._workers -= 1
                    return
                work = self._pending.popleft()
                # Under the lock, so _settle sees "queued" or "running", never between.
                work.future.set_running_or_notify_cancel()
            publish = _run(work)
            with self._cond:
                # Published under the lock: _settle sees "done" or "running",
                # never an answer it would write off (issue 14: false TimedOut).
                publish()
                if work.abandoned:
                    self._hung -= 1
                    if self._hung <= self._max_threads - self._max_workers:
                        self._warned_full = False
                    if self._closed or self._workers >= self._max_workers:
                        return  # replaced while it hung; the pool is full again
                    self._workers += 1
                self._idle += 1


def _run(work: _Work[Any]) -> Callable[[], None]:
    """Run the call; return what publishes its outcome (the caller holds the lock)."""
    try:
        result = work.call()
    except BaseException as exc:  # delivered to the caller, never to this thread
        return functools.partial(work.future.set_exception, exc)
    return functools.partial(work.future.set_result, result)


def _result(
    key: object, work: _Work[T], timeout: float, overdue: set[_Work[Any]]
) -> CellResult[T]:
    if work in overdue:
        return TimedOut(timeout=timeout)
    if work.future.cancelled():
        return Failed(RoutingError(f"cell {key}: not run because the fan-out pool was closed"))
    exc = work.future.exception()
    if exc is None:
        return Ok(work.future.result())
    if not isinstance(exc, Exception):  # KeyboardInterrupt, SystemExit: not a cell failure
        raise exc
    return Failed(exc)  # as raised: see "Wrap only what you mean"
