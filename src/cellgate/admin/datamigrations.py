"""``db migrate-data``: run the online data migrations on cells, batched and resumable.

Online data migrations move data a new schema needs while the deployment runs
(after ``db sync``, before the release that stops reading the old form), as
Nova's ``nova-manage db online_data_migrations`` does. What differs from
Nova: cells run at once through :meth:`App.scatter_gather` with one deadline,
and a cell that is down or fails is reported while the others finish (Nova
runs cells one after another and stops at a failing one).

:data:`MIGRATIONS` is the registry: each entry's function
(:mod:`cellgate.celldb.datamigrations`) takes a session and a row limit and
returns ``(found, done)``. Each batch is one transaction of at most
:data:`BATCH_SIZE` rows (retried whole on a conflict), so no lock is held
long; ``max_count`` bounds the rows per cell and run (every migration
together). Without it a cell is migrated until nothing is found. Since every
function selects what still needs migrating, a run cut off anywhere resumes
at the next run. A cell must be at the cell head (the columns exist); one
behind is a failure of that cell (``db sync`` first).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from sqlalchemy.orm import Session

from cellgate.admin.archive import select_cells
from cellgate.apidb.mappings import CellMapping
from cellgate.app import App
from cellgate.celldb import datamigrations
from cellgate.context import RequestContext
from cellgate.errors import ConfigError, Hint, SchemaMismatch
from cellgate.migrations.runner import MigrationLine, current, head
from cellgate.results import CellResult, Ok, TimedOut, raise_bugs

#: Rows per migration and transaction at most.
BATCH_SIZE: Final = 500
#: Seconds one cell may take (the others are not waited on past it).
DEFAULT_CELL_TIMEOUT: Final = 600.0


@dataclass(frozen=True)
class DataMigration:
    """One online data migration: a stable name, and its batch function."""

    name: str
    migrate: Callable[[Session, int], tuple[int, int]]


#: Every data migration, in the order they run.
MIGRATIONS: Final = (DataMigration("service_rpc_versions", datamigrations.service_rpc_versions),)


@dataclass
class Counts:
    found: int = 0
    done: int = 0


@dataclass
class CellMigrations:
    """What one cell's run did, per migration; ``more``: stopped with rows left."""

    counts: dict[str, Counts] = field(default_factory=dict)
    more: bool = False


@dataclass(frozen=True)
class MigrateDataReport:
    """One result per cell (the migrations, or why the cell failed or timed out)."""

    outcomes: list[tuple[CellMapping, CellResult[CellMigrations]]]

    @property
    def more_work(self) -> bool:
        return any(isinstance(r, Ok) and r.value.more for _, r in self.outcomes)

    @property
    def failures(self) -> list[tuple[CellMapping, CellResult[CellMigrations]]]:
        return [(c, r) for c, r in self.outcomes if not isinstance(r, Ok)]

    def to_dict(self, describe: Callable[[BaseException], str] = str) -> dict[str, Any]:
        cells = []
        for cell, result in self.outcomes:
            row: dict[str, Any] = {"uuid": cell.uuid, "name": cell.label}
            if isinstance(result, Ok):
                row.update(
                    status="more" if result.value.more else "done",
                    migrations={
                        name: {"found": c.found, "done": c.done}
                        for name, c in result.value.counts.items()
                    },
                    error=None,
                )
            elif isinstance(result, TimedOut):
                row.update(
                    status="timed out",
                    migrations={},
                    error=f"no answer within {result.timeout:g} s",
                )
            else:
                row.update(status="failed", migrations={}, error=describe(result.error))
            cells.append(row)
        return {"more_work": self.more_work, "cells": cells}


def migrate_data(
    app: App,
    *,
    cells: Sequence[str] = (),
    all_cells: bool = False,
    max_count: int | None = None,
    cell_timeout: float = DEFAULT_CELL_TIMEOUT,
    migrations: Sequence[DataMigration] = MIGRATIONS,
) -> MigrateDataReport:
    """Run ``migrations`` on the named cells, or on every mapped cell (cell0 included).

    ``max_count``: rows per cell at most in this run (``None``: until done).

    :raises ConfigError: neither or both of ``cells`` and ``all_cells``, or
        ``max_count`` below 1.
    """
    if max_count is not None and max_count < 1:
        raise ConfigError(f"--max-count must be at least 1, not {max_count}")
    chosen = select_cells(app, cells=cells, all_cells=all_cells)

    def run(ctx: RequestContext) -> CellMigrations:
        cell = ctx.cell
        assert cell is not None
        _require_head(app, cell, cell_timeout)
        work = CellMigrations({m.name: Counts() for m in migrations})
        budget = max_count
        for migration in migrations:
            counts = work.counts[migration.name]
            while budget is None or budget > 0:
                limit = BATCH_SIZE if budget is None else min(BATCH_SIZE, budget)
                found, done = app.db.write(ctx, _batch(migration, limit))
                counts.found += found
                counts.done += done
                if budget is not None:
                    budget -= done
                if found < limit or done == 0:
                    break  # nothing left (or rows it cannot migrate: never loop on them)
            else:
                work.more = True  # the budget ran out: there may be rows left
                break
            if counts.found > counts.done:
                work.more = True
        return work

    results = app.scatter_gather(RequestContext(), chosen, run, timeout=cell_timeout)
    raise_bugs(results.values())
    return MigrateDataReport([(c, results[c.uuid]) for c in chosen])


def _batch(migration: DataMigration, limit: int) -> Callable[[Session], tuple[int, int]]:
    return lambda session: migration.migrate(session, limit)


def _require_head(app: App, cell: CellMapping, timeout: float) -> None:
    with app.db.engine_for(cell, timeout=timeout) as engine:
        found = current(engine, MigrationLine.CELL)
    expected = head(MigrationLine.CELL)
    if found != expected:
        raise SchemaMismatch(
            component=f"cell {cell.label} database",
            current=found,
            expected=expected,
            hint=Hint.SYNC_CELL_DB,
            hint_args={"cell": cell.label},
        )
