"""``db archive-deleted`` and ``db purge``: keep soft-deleted rows from growing without limit.

Archiving moves each cell's soft-deleted instances, with every row that
belongs to them (:data:`~cellgate.celldb.schema.PER_INSTANCE`), into the
shadow tables, and removes their instance mappings from the API database.
Purging deletes shadow rows deleted before a date. Both run on every chosen
cell at once through :meth:`App.scatter_gather`, so one cell that is down or
slow is reported (``Failed`` / ``TimedOut``) while the others finish, unlike
Nova's ``archive_deleted_rows``, which walks cells one by one and stops at
the first that fails.

Bounded work: every transaction holds at most ``max_rows`` rows (one
instance and its children, or a chunk of a big instance's children; the
instance row goes in the transaction that moves its last children), and a run
moves at most ``max_rows`` rows per cell unless ``until_complete``; the
result says whether more remains (the CLI's exit 1, for cron loops). The
cell transaction commits before the mappings of its instances are removed:
a crash in between leaves a mapping queued for delete whose instance is gone,
which the next run prunes (see :func:`_prune_queued`). A timed-out cell's
work is told to stop at its next transaction boundary.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy
from sqlalchemy.engine import Engine

from cellgate.apidb import retention
from cellgate.apidb.mappings import CellMapping, get_cell, list_cells
from cellgate.app import App
from cellgate.celldb import archive
from cellgate.celldb.schema import SHADOW
from cellgate.context import RequestContext
from cellgate.dbtypes import utcnow
from cellgate.errors import ConfigError, Hint, SchemaMismatch
from cellgate.migrations.runner import MigrationLine, current, head
from cellgate.results import CellResult, Failed, Ok, TimedOut, raise_bugs

log = logging.getLogger(__name__)

DEFAULT_MAX_ROWS = 1000
#: Seconds each cell may take before it is reported ``TimedOut``.
DEFAULT_CELL_TIMEOUT = 600.0
#: How long a soft-deleted (scrubbed) cell mapping is kept before it is removed.
DEFAULT_CELL_RETENTION = dt.timedelta(days=30)


@dataclass(frozen=True)
class CellWork:
    """What one cell's run did (or, dry, would do)."""

    rows: dict[str, int] = field(default_factory=dict)  # per table
    mappings_removed: int = 0
    queued_pruned: int = 0
    more: bool = False  # stopped at max_rows (or asked to stop) with work left

    @property
    def total(self) -> int:
        return sum(self.rows.values())


@dataclass(frozen=True)
class CellOutcome:
    """One cell's result: its work, or why it failed or timed out."""

    cell: CellMapping
    result: CellResult[CellWork]

    def to_dict(self, describe: Callable[[BaseException], str] = str) -> dict[str, Any]:
        row: dict[str, Any] = {"uuid": self.cell.uuid, "name": self.cell.label}
        result = self.result
        if isinstance(result, Ok):
            work = result.value
            row.update(
                status="more" if work.more else "done",
                rows=dict(sorted(work.rows.items())),
                total=work.total,
                mappings_removed=work.mappings_removed,
                queued_pruned=work.queued_pruned,
                error=None,
            )
        elif isinstance(result, TimedOut):
            row.update(status="timed out", error=f"no answer within {result.timeout:g} s")
        else:
            row.update(status="failed", error=describe(result.error))
        return row


@dataclass(frozen=True)
class Report:
    """A whole run: one outcome per cell, and the expired cell mappings removed."""

    outcomes: list[CellOutcome]
    dry_run: bool
    cells_removed: list[str] = field(default_factory=list)

    @property
    def more_work(self) -> bool:
        return any(isinstance(o.result, Ok) and o.result.value.more for o in self.outcomes)

    @property
    def failures(self) -> list[CellOutcome]:
        return [o for o in self.outcomes if not isinstance(o.result, Ok)]

    def to_dict(self, describe: Callable[[BaseException], str] = str) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "more_work": self.more_work,
            "cells": [o.to_dict(describe) for o in self.outcomes],
            "cell_mappings_removed": self.cells_removed,
        }


#: Called (from the cell's worker thread) after each batch: cell label, work so far.
OnProgress = Callable[[str, CellWork], None]


def archive_deleted(
    app: App,
    *,
    cells: Sequence[str] = (),
    all_cells: bool = False,
    before: dt.datetime | None = None,
    max_rows: int = DEFAULT_MAX_ROWS,
    until_complete: bool = False,
    dry_run: bool = False,
    cell_timeout: float = DEFAULT_CELL_TIMEOUT,
    cell_retention: dt.timedelta = DEFAULT_CELL_RETENTION,
    on_progress: OnProgress | None = None,
    stop: threading.Event | None = None,
) -> Report:
    """Archive soft-deleted instances (deleted before ``before``) of the chosen cells.

    Cells are named (``cells``) or all mapped ones (``all_cells``, cell0 and
    disabled cells included); with ``all_cells``, soft-deleted cell mappings
    deleted more than ``cell_retention`` ago are removed too. ``dry_run``
    counts and writes nothing. ``stop`` ends each cell's run at its next
    transaction boundary (the outcome then says ``more``).
    """
    _check_rows(max_rows)
    chosen = select_cells(app, cells=cells, all_cells=all_cells)
    halt = threading.Event()

    def run(ctx: RequestContext) -> CellWork:
        assert ctx.cell is not None
        halted = _halted(halt, stop)
        with app.db.engine_for(ctx.cell) as engine:
            _require_shadow_tables(engine, ctx.cell)
            if dry_run:
                return _count_cell(app, engine, ctx.cell, before, max_rows)
            return _archive_cell(
                app, engine, ctx.cell, before, max_rows, until_complete, halted, on_progress
            )

    outcomes = _scatter(app, chosen, run, cell_timeout, halt)
    removed: list[str] = []
    if all_cells:
        removed = _remove_expired_cells(app, utcnow() - cell_retention, max_rows, dry_run)
    return Report(outcomes, dry_run, removed)


def purge_deleted(
    app: App,
    *,
    before: dt.datetime,
    cells: Sequence[str] = (),
    all_cells: bool = False,
    max_rows: int = DEFAULT_MAX_ROWS,
    dry_run: bool = False,
    cell_timeout: float = DEFAULT_CELL_TIMEOUT,
    on_progress: OnProgress | None = None,
    stop: threading.Event | None = None,
) -> Report:
    """Delete shadow rows deleted before ``before``, ``max_rows`` per transaction, to the end."""
    _check_rows(max_rows)
    chosen = select_cells(app, cells=cells, all_cells=all_cells)
    halt = threading.Event()

    def run(ctx: RequestContext) -> CellWork:
        assert ctx.cell is not None
        halted = _halted(halt, stop)
        with app.db.engine_for(ctx.cell) as engine:
            _require_shadow_tables(engine, ctx.cell)
            if dry_run:
                with engine.connect() as conn:
                    return CellWork(rows=archive.count_purgeable(conn, before=before).rows)
            totals = archive.Moved()
            while True:
                if halted():
                    return CellWork(rows=totals.rows, more=True)
                with engine.begin() as conn:
                    batch = archive.purge_batch(conn, before=before, limit=max_rows)
                if batch.done:
                    return CellWork(rows=totals.rows)
                for table, count in batch.rows.items():
                    totals.add(table, count)
                if on_progress is not None:
                    on_progress(ctx.cell.label, CellWork(rows=dict(totals.rows)))

    return Report(_scatter(app, chosen, run, cell_timeout, halt), dry_run)


def select_cells(app: App, *, cells: Sequence[str], all_cells: bool) -> list[CellMapping]:
    """The named cells (each once), or every mapped cell; exactly one of the two."""
    if bool(cells) == all_cells:
        raise ConfigError("choose --all-cells or one or more --cell")
    app.api.require_current()
    with app.api.session() as session:
        found = list_cells(session) if all_cells else [get_cell(session, c) for c in cells]
    return list({c.uuid: c for c in found}.values())


def _check_rows(max_rows: int) -> None:
    if max_rows < 1:
        raise ConfigError(f"--max-rows must be at least 1, not {max_rows}")


def _halted(halt: threading.Event, stop: threading.Event | None) -> Callable[[], bool]:
    return lambda: halt.is_set() or (stop is not None and stop.is_set())


def _scatter(
    app: App,
    chosen: list[CellMapping],
    run: Callable[[RequestContext], CellWork],
    cell_timeout: float,
    halt: threading.Event,
) -> list[CellOutcome]:
    try:
        results = app.scatter_gather(RequestContext(), chosen, run, timeout=cell_timeout)
    finally:
        halt.set()  # work still running past its deadline stops at its next transaction
    raise_bugs(results.values())
    for cell in chosen:
        result = results[cell.uuid]
        if isinstance(result, Failed):
            log.warning("cell %s: %s", cell.label, result.error)
    return [CellOutcome(c, results[c.uuid]) for c in chosen]


def _require_shadow_tables(engine: Engine, cell: CellMapping) -> None:
    with engine.connect() as conn:
        inspector = sqlalchemy.inspect(conn)
        if all(inspector.has_table(t.name) for t in SHADOW.values()):
            return
    raise SchemaMismatch(
        component=f"cell {cell.label} database",
        current=current(engine, MigrationLine.CELL),
        expected=head(MigrationLine.CELL),
        hint=Hint.SYNC_CELL_DB,
        hint_args={"cell": cell.label},
    )


def _archive_cell(
    app: App,
    engine: Engine,
    cell: CellMapping,
    before: dt.datetime | None,
    max_rows: int,
    until_complete: bool,
    halted: Callable[[], bool],
    on_progress: OnProgress | None,
) -> CellWork:
    totals = archive.Moved()
    budget = max_rows
    removed = 0
    after_id = 0

    def progress(more: bool = False) -> CellWork:
        return CellWork(rows=dict(totals.rows), mappings_removed=removed, more=more)

    def out_of_budget() -> bool:
        return halted() or (budget <= 0 and not until_complete)

    while True:
        with engine.connect() as conn:
            batch = archive.deleted_instances(
                conn, before=before, limit=max_rows, after_id=after_id
            )
        if not batch:
            break
        archived: list[str] = []
        for instance_id, uuid in batch:
            while True:
                if out_of_budget():
                    removed += _remove_mappings(app, cell, archived)
                    return progress(more=True)
                limit = max_rows if until_complete else min(max_rows, budget)
                with engine.begin() as conn:
                    moved = archive.archive_instance(conn, uuid, limit=limit)
                for table, count in moved.rows.items():
                    totals.add(table, count)
                budget -= moved.total
                if moved.done:
                    break
            archived.append(uuid)
            after_id = instance_id
        removed += _remove_mappings(app, cell, archived)
        if on_progress is not None:
            on_progress(cell.label, progress())
    more = _archive_children(engine, before, max_rows, until_complete, budget, halted, totals)
    queued = _prune_queued(app, engine, cell, max_rows, dry_run=False)
    work = progress(more=more)
    return CellWork(work.rows, work.mappings_removed, queued, more)


def _archive_children(
    engine: Engine,
    before: dt.datetime | None,
    max_rows: int,
    until_complete: bool,
    budget: int,
    halted: Callable[[], bool],
    totals: archive.Moved,
) -> bool:
    """Archive soft-deleted rows of live instances; True if stopped with some left."""
    while True:
        if halted() or (budget <= 0 and not until_complete):
            with engine.connect() as conn:
                return bool(archive.deleted_children(conn, before=before, limit=1))
        limit = max_rows if until_complete else min(max_rows, budget)
        with engine.begin() as conn:
            found = archive.deleted_children(conn, before=before, limit=limit)
            for table, ids in found:
                count = archive.archive_rows(conn, table, ids)
                totals.add(table.name, count)
                budget -= count
        if not found:
            return False


def _remove_mappings(app: App, cell: CellMapping, uuids: list[str]) -> int:
    if not uuids:
        return 0
    with app.api.session() as session:
        return retention.remove_instance_mappings(session, cell.uuid, uuids)


def _prune_queued(
    app: App, engine: Engine, cell: CellMapping, max_rows: int, *, dry_run: bool
) -> int:
    """Remove mappings queued for delete whose instance row is gone from the cell.

    Such a mapping is left by a crash between an archive batch's cell commit
    and its mapping removal, or by an instance removed from the cell by hand.
    """
    pruned = 0
    after = ""
    while True:
        with app.api.session() as session:
            queued = retention.queued_for_delete(session, cell.uuid, after=after, limit=max_rows)
        if not queued:
            return pruned
        with engine.connect() as conn:
            present = archive.present_uuids(conn, queued)
        gone = [u for u in queued if u not in present]
        with app.api.session() as session:
            pruned += retention.remove_instance_mappings(session, cell.uuid, gone, dry_run=dry_run)
        after = queued[-1]


def _count_cell(
    app: App, engine: Engine, cell: CellMapping, before: dt.datetime | None, max_rows: int
) -> CellWork:
    """What archiving everything would do in ``cell``: counts only, nothing written."""
    with engine.connect() as conn:
        counted = archive.count_archivable(conn, before=before)
    mappings = 0
    after_id = 0
    while True:
        with engine.connect() as conn:
            batch = archive.deleted_instances(
                conn, before=before, limit=max_rows, after_id=after_id
            )
        if not batch:
            break
        with app.api.session() as session:
            uuids = [u for _, u in batch]
            mappings += retention.remove_instance_mappings(session, cell.uuid, uuids, dry_run=True)
        after_id = batch[-1][0]
    queued = _prune_queued(app, engine, cell, max_rows, dry_run=True)
    return CellWork(rows=counted.rows, mappings_removed=mappings, queued_pruned=queued)


def _remove_expired_cells(
    app: App, deleted_before: dt.datetime, max_rows: int, dry_run: bool
) -> list[str]:
    removed: list[str] = []
    while True:
        with app.api.session() as session:
            found = retention.expired_cells(session, deleted_before=deleted_before, limit=max_rows)
            if dry_run:
                return found
            if found:
                retention.remove_expired_cells(session, found, actor=None)
        removed += found
        if len(found) < max_rows:
            return removed
