"""Scatter-gather: 1 cell vs 100 cells, a hung cell, and the curve for the plot.

Each cell's function waits 20 ms *in its database*: ``SELECT SLEEP(0.02)`` on
MariaDB, ``SELECT pg_sleep(0.02)`` on PostgreSQL, and on SQLite (which has no
server to wait in) ``time.sleep(0.02)`` on the session's connection (checked
out and in its transaction) followed by a trivial select. Either way the
function holds a cell connection for 20 ms, and the checkout comes before the
wait. (Before issue 14 the SQLite function slept before the session's lazy
checkout, so it held no connection while it waited and every cell's checkout
happened at the same moment, after the wait: unlike the servers' functions.)
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from sqlalchemy import text

from benchmarks.routing import CTX, Plan
from benchmarks.stats import Pair, Series, interleaved_once
from cellgate import App, CellMapping, Ok, RequestContext

WAIT_S = 0.02
DEADLINE_S = 30.0
HUNG_DEADLINE_S = 1.0
CURVE = (1, 10, 50, 100, 200)
REPEATED_HUNG = 12  # calls in a row while one cell stays hung through all of them
REPEATED_DEADLINE_S = 0.5  # their deadline: 25 times the cells' 20 ms


def wait_in_database(app: App, backend: str) -> Callable[[RequestContext], int]:
    if backend == "mariadb":
        statement = text(f"SELECT SLEEP({WAIT_S})")
    elif backend == "postgresql":
        statement = text(f"SELECT pg_sleep({WAIT_S})")
    else:
        statement = None

    def fn(cctx: RequestContext) -> int:
        with app.db.session(cctx) as session:
            if statement is not None:
                session.execute(statement)
            else:
                session.connection()  # check out and begin, as the servers' statement does
                time.sleep(WAIT_S)
                session.execute(text("SELECT 1"))
        return 1

    return fn


def _checked(results: dict[str, Any], expected: int) -> None:
    ok = sum(isinstance(r, Ok) for r in results.values())
    if ok != expected:
        failed = next((r for r in results.values() if not isinstance(r, Ok)), None)
        raise RuntimeError(f"scatter-gather: {ok} of {expected} cells Ok; first other: {failed}")


Results = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Setup:
    """One way of running scatter-gather: an App, how it fans out, and the cell function."""

    label: str
    app: App
    fn: Callable[[RequestContext], int]
    fan_out: Callable[[Sequence[CellMapping], Callable[[RequestContext], int], float], Results]

    def timed(self, cells: Sequence[CellMapping]) -> float:
        start = time.perf_counter()
        results = self.fan_out(cells, self.fn, DEADLINE_S)
        elapsed = time.perf_counter() - start
        _checked(results, len(cells))
        return elapsed


def default_setup(app: App, backend: str) -> Setup:
    """``app.scatter_gather`` as it is."""
    return Setup(
        "App defaults",
        app,
        wait_in_database(app, backend),
        lambda cells, fn, timeout: app.scatter_gather(CTX, cells, fn, timeout=timeout),
    )


@contextlib.contextmanager
def variant(app: App, backend: str, label: str, **cells: float) -> Iterator[Setup]:
    """A second App with some ``[cells]`` settings changed (e.g. ``idle_grace``)."""
    settings = dataclasses.replace(
        app.settings, cells=dataclasses.replace(app.settings.cells, **cells)
    )
    with App(settings) as other:
        yield dataclasses.replace(default_setup(other, backend), label=label)


@dataclasses.dataclass(frozen=True)
class Churn:
    """What a 100-cell call made, per call, in the steady state (after the warm-up)."""

    engines: float
    connections: float


def single_vs_many(setup: Setup, cells: Sequence[CellMapping], plan: Plan) -> tuple[Pair, Churn]:
    """Seconds of a scatter over ``cells[:1]`` vs over all ``cells``; what each call made."""
    one, many = list(cells[:1]), list(cells)
    made = {"calls": 0, "engines": 0, "connections": 0}
    engines = setup.app.engines

    def hundred() -> float:
        before = engines.created, engines.budget.opened
        elapsed = setup.timed(many)
        made["calls"] += 1
        made["engines"] += engines.created - before[0]
        made["connections"] += engines.budget.opened - before[1]
        return elapsed

    for _ in range(2):  # warm-up, not counted: the first calls create every engine
        setup.timed(many)
        setup.timed(one)
    pair = interleaved_once(
        hundred, lambda: setup.timed(one), samples=plan.scatter_samples, warmup=0
    )
    calls = made["calls"] or 1
    return pair, Churn(made["engines"] / calls, made["connections"] / calls)


def hung(setup: Setup, cells: Sequence[CellMapping], plan: Plan) -> tuple[Series, int]:
    """Milliseconds past a 1 s deadline with one cell blocked forever; fewest Ok seen."""
    stuck = cells[0].uuid
    overruns: list[float] = []
    fewest_ok = len(cells)
    setup.timed(cells)  # warm-up
    for _ in range(plan.hung_samples):
        release, returned = threading.Event(), threading.Event()

        def maybe_hang(
            cctx: RequestContext,
            release: threading.Event = release,
            returned: threading.Event = returned,
        ) -> int:
            assert cctx.cell is not None
            if cctx.cell.uuid == stuck:
                try:
                    release.wait()  # "forever": until the measurement is over
                finally:
                    returned.set()
                return 0
            return setup.fn(cctx)

        start = time.perf_counter()
        results = setup.fan_out(cells, maybe_hang, HUNG_DEADLINE_S)
        elapsed = time.perf_counter() - start
        release.set()
        returned.wait(10)
        overruns.append((elapsed - HUNG_DEADLINE_S) * 1000)
        fewest_ok = min(fewest_ok, sum(isinstance(r, Ok) for r in results.values()))
    return Series(tuple(overruns)), fewest_ok


def repeated_hung(setup: Setup, cells: Sequence[CellMapping]) -> tuple[int, int]:
    """``REPEATED_HUNG`` calls in a row, one cell hung through all of them.

    Returns the fewest ``Ok`` in any call and the most fan-out threads seen
    alive (workers plus written-off ones) after a call.
    """
    stuck = cells[0].uuid
    release = threading.Event()
    returned = threading.Semaphore(0)

    def maybe_hang(cctx: RequestContext) -> int:
        assert cctx.cell is not None
        if cctx.cell.uuid == stuck:
            try:
                release.wait()
            finally:
                returned.release()
            return 0
        return setup.fn(cctx)

    fewest_ok, most_threads = len(cells), 0
    pool = setup.app.fanout
    try:
        for _ in range(REPEATED_HUNG):
            results = setup.fan_out(cells, maybe_hang, REPEATED_DEADLINE_S)
            fewest_ok = min(fewest_ok, sum(isinstance(r, Ok) for r in results.values()))
            most_threads = max(most_threads, sum(pool.threads()))
    finally:
        release.set()
        for _ in range(REPEATED_HUNG):
            returned.acquire(timeout=10)
    return fewest_ok, most_threads


def _median_ms(run: Callable[[], float], samples: int, *, warm: bool = True) -> float:
    if warm:
        run()
    return round(Series(tuple(run() for _ in range(samples))).median * 1000, 3)


def curve(setup: Setup, cells: Sequence[CellMapping], plan: Plan) -> dict[str, Any]:
    """Median ms of scatter-gather vs a sequential loop, per number of cells (``CURVE``)."""
    out: dict[str, Any] = {"cells": [], "scatter_ms": [], "sequential_ms": []}

    def sequential(subset: Sequence[CellMapping]) -> float:
        start = time.perf_counter()
        for cell in subset:
            setup.fn(CTX.for_cell(cell))
        return time.perf_counter() - start

    for n in CURVE:
        subset = list(cells[:n])
        out["cells"].append(n)
        out["scatter_ms"].append(_median_ms(lambda s=subset: setup.timed(s), plan.plot_samples))
        out["sequential_ms"].append(
            _median_ms(lambda s=subset: sequential(s), plan.sequential_samples, warm=False)
        )
    return out


def curve_tuned(
    setup: Setup, cells: Sequence[CellMapping], plan: Plan, *, room: int | None
) -> dict[str, Any]:
    """Another setup's line of the curve; a point that needs more connections at once
    than the database server has ``room`` for (``max_connections``) is null."""
    out: dict[str, Any] = {"tuned_ms": [], "tuned_label": setup.label}
    for n in CURVE:
        subset = list(cells[:n])
        fits = room is None or n + 10 <= room
        out["tuned_ms"].append(
            _median_ms(lambda s=subset: setup.timed(s), plan.plot_samples) if fits else None
        )
    return out
