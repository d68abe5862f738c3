"""Scatter-gather: 1 cell vs 100 cells, a hung cell, and the curve for the plot.

Each cell's function waits 20 ms *in its database*: ``SELECT SLEEP(0.02)`` on
MariaDB, ``SELECT pg_sleep(0.02)`` on PostgreSQL, and on SQLite (which has no
server to wait in) ``time.sleep(0.02)`` inside the open session followed by a
trivial select. Either way the function holds a cell connection for 20 ms.
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
from cellgate.routing.fanout import FanoutPool

WAIT_S = 0.02
DEADLINE_S = 30.0
HUNG_DEADLINE_S = 1.0
CURVE = (1, 10, 50, 100, 200)
WORKERS = 128  # the what-if thread count
MAX_ENGINES = 256  # the what-if [cells] max_engines: more than the largest scatter


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
def variant(
    app: App, backend: str, *, max_engines: int, workers: int | None = None
) -> Iterator[Setup]:
    """A second App with ``[cells] max_engines`` changed and, if ``workers``, its own pool.

    ``App`` always fans out on ``FanoutPool()`` (32 threads); a different
    thread count needs a pool of the benchmark's own, as a code change would.
    """
    settings = dataclasses.replace(
        app.settings, cells=dataclasses.replace(app.settings.cells, max_engines=max_engines)
    )
    with App(settings) as other:
        if workers is None:
            yield default_setup(other, backend)
            return
        with FanoutPool(workers) as pool:

            def fan_out(
                cells: Sequence[CellMapping], fn: Callable[[RequestContext], int], timeout: float
            ) -> Results:
                items = {c.uuid: CTX.for_cell(c) for c in cells}
                return pool.scatter_gather(items, fn, timeout=timeout)

            yield Setup(
                f"{workers} workers, max_engines {max_engines}",
                other,
                wait_in_database(other, backend),
                fan_out,
            )


def single_vs_many(setup: Setup, cells: Sequence[CellMapping], plan: Plan) -> tuple[Pair, float]:
    """Seconds of a scatter over ``cells[:1]`` vs over all ``cells``; engines made per call."""
    one, many = list(cells[:1]), list(cells)
    created = {"calls": 0, "engines": 0}

    def hundred() -> float:
        before = setup.app.engines.created
        elapsed = setup.timed(many)
        created["calls"] += 1
        created["engines"] += setup.app.engines.created - before
        return elapsed

    pair = interleaved_once(
        hundred, lambda: setup.timed(one), samples=plan.scatter_samples, warmup=2
    )
    per_call = created["engines"] / created["calls"] if created["calls"] else 0.0
    return pair, per_call


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
