"""``app.db.session`` under the connection budget, and read-only sessions, on every backend."""

from __future__ import annotations

import dataclasses

import pytest
from sqlalchemy import text

from cellgate import App, RequestContext
from cellgate.errors import CellTimeout
from cellgate.routing.breaker import BreakerState
from tests.functional.test_routing import CELLS, Cells, cells  # noqa: F401 - the fixture


def _app(base: App, **changes: object) -> App:
    settings = base.settings
    settings = dataclasses.replace(
        settings,
        cells=dataclasses.replace(settings.cells, **changes),  # type: ignore[arg-type]
        database=dataclasses.replace(settings.database, connect_timeout=0.5),
    )
    return App(settings)


def test_a_full_budget_is_a_timeout_that_does_not_trip_the_cells_breaker(
    cells: Cells,  # noqa: F811 - the fixture
) -> None:
    ctx = RequestContext()
    app = _app(cells.app, max_connections=1, max_idle_connections=1, breaker_threshold=1)
    with app, app.target_cell(ctx, CELLS[0]) as alpha, app.target_cell(ctx, CELLS[1]) as beta:
        with app.db.session(alpha) as held:
            held.execute(text("SELECT 1"))  # holds the only connection
            with pytest.raises(CellTimeout) as info, app.db.session(beta) as s:
                s.execute(text("SELECT 1"))
            assert "max_connections = 1" in str(info.value)
        assert beta.cell is not None
        status = app.breakers.status(beta.cell.uuid)
        assert (status.state, status.consecutive_failures) == (BreakerState.CLOSED, 0)
        with app.db.session(beta) as s:  # the budget has room again
            assert s.execute(text("SELECT 1")).scalar_one() == 1


def test_read_only_sessions_of_one_cell_run_together(cells: Cells) -> None:  # noqa: F811
    ctx = RequestContext()
    app = cells.app
    with app.target_cell(ctx, CELLS[0]) as alpha:
        # On SQLite a read-write session holds the write lock (BEGIN IMMEDIATE)
        # from its start; two read-only ones (plain BEGIN) share the file.
        with (
            app.db.session(alpha, read_only=True) as first,
            app.db.session(alpha, read_only=True) as second,
        ):
            assert first.execute(text("SELECT 1")).scalar_one() == 1
            assert second.execute(text("SELECT 1")).scalar_one() == 1
        with app.db.session(alpha) as writer:  # and a writer after them is not blocked
            assert writer.execute(text("SELECT 1")).scalar_one() == 1
