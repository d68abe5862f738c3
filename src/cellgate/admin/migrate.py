"""The two migration lines: ``api-db sync | version`` and ``db sync | version``.

A run over many cell databases keeps going past a failed one and reports a
:data:`~cellgate.results.CellResult` per database, so one broken cell never
stops the others from being upgraded. Each database is reached through
``app.db.engine_at`` (an engine of its own from the App's registry, errors
translated and URLs masked as on the request path); nothing here builds an
engine.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Engine

from cellgate.apidb.mappings import CellMapping, get_cell, list_cells
from cellgate.app import App
from cellgate.errors import CellgateError, ConfigError, MigrationInterrupted
from cellgate.migrations.lock import DEFAULT_LOCK_TIMEOUT
from cellgate.migrations.runner import MigrationLine, apply, current, head
from cellgate.results import CellResult, Failed, Ok
from cellgate.urls import StoredURL

log = logging.getLogger(__name__)

#: The key of this host's own ``[database] connection`` among cell uuids.
LOCAL_KEY = "local"


@dataclass(frozen=True)
class CellDatabase:
    """One cell database to migrate or inspect: a mapped cell's, or this host's own."""

    key: str  # the cell uuid, or LOCAL_KEY
    label: str
    stored: StoredURL


@dataclass(frozen=True)
class VersionInfo:
    """A database's revision of one line, and this code's head of it."""

    current: str | None
    head: str
    #: A sync that found the database already at its target (read under the lock).
    unchanged: bool = False

    @property
    def at_head(self) -> bool:
        return self.current == self.head

    def to_dict(self) -> dict[str, Any]:
        return {"current": self.current, "head": self.head, "at_head": self.at_head}


@dataclass(frozen=True)
class DatabaseOutcome:
    """What a run did on one cell database: its revisions, or why it failed."""

    database: CellDatabase
    result: CellResult[VersionInfo]

    def to_dict(self, describe: Callable[[BaseException], str] = str) -> dict[str, Any]:
        """``describe`` renders a failure (the CLI passes its own words for hints)."""
        row: dict[str, Any] = {"uuid": self.database.key, "name": self.database.label}
        result = self.result
        if isinstance(result, Ok):
            info = result.value
            status = "ok" if info.at_head else "behind head"
            row.update(status=status, current=info.current, head=info.head, error=None)
        else:
            error = result.error if isinstance(result, Failed) else None
            text = describe(error) if error is not None else str(error)
            row.update(status="failed", current=None, head=None, error=text)
        return row


#: Called after each database with its outcome, e.g. to print progress.
OnDatabase = Callable[[DatabaseOutcome], None]


def sync_api(
    app: App,
    revision: str = "head",
    *,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    stop: threading.Event | None = None,
) -> VersionInfo:
    """Upgrade the API database to ``revision``; a missing SQLite file is created.

    Waits up to ``lock_timeout`` seconds for another run's migration lock
    (then :class:`~cellgate.errors.MigrationLocked`). Setting ``stop`` ends the
    run after the revision in progress (:class:`~cellgate.errors.MigrationInterrupted`).
    """
    applied = app.api.upgrade(revision, lock_timeout=lock_timeout, stop=stop)
    return VersionInfo(applied.reached, head(MigrationLine.API), unchanged=not applied.changed)


def api_version(app: App) -> VersionInfo:
    """The API database's revision and this code's head (``None``: empty or missing)."""
    return VersionInfo(app.api.revision(), head(MigrationLine.API))


def select_databases(
    app: App, *, cells: Sequence[str] = (), all_cells: bool = False, local: bool = False
) -> list[CellDatabase]:
    """The cell databases a run acts on: named cells, every cell, or this host's own.

    With none of them, ``local`` is meant (Nova's ``db sync`` habit), and the
    API database is not read.
    """
    if sum(bool(x) for x in (cells, all_cells, local)) > 1:
        raise ConfigError("choose one of --cell, --all-cells and --local")
    if not cells and not all_cells:
        local_url = app.settings.database.connection.render(hide_password=False)
        return [CellDatabase(LOCAL_KEY, "local ([database] connection)", StoredURL(local_url))]
    app.api.require_current()
    with app.api.session() as session:
        found: list[CellMapping] = (
            list_cells(session) if all_cells else [get_cell(session, i) for i in cells]
        )
    unique: dict[str, CellMapping] = {}
    for cell in found:  # a cell named twice is migrated once
        unique.setdefault(cell.uuid, cell)
    return [cell_database(c) for c in unique.values()]


def cell_database(cell: CellMapping) -> CellDatabase:
    return CellDatabase(cell.uuid, cell.label, cell.database_connection)


def sync_cells(
    app: App,
    *,
    cells: Sequence[str] = (),
    all_cells: bool = False,
    local: bool = False,
    revision: str = "head",
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    on_progress: OnDatabase | None = None,
    stop: threading.Event | None = None,
) -> list[DatabaseOutcome]:
    """Upgrade cell databases to ``revision``, one at a time, continuing past failures.

    Chooses databases as :func:`select_databases`; each sync waits up to
    ``lock_timeout`` seconds for another run's migration lock on it. A
    missing SQLite file is created. Setting ``stop`` ends the sync in progress
    after its current revision and starts no further database: the outcomes
    then end with that database's :class:`~cellgate.errors.MigrationInterrupted`.
    """
    databases = select_databases(app, cells=cells, all_cells=all_cells, local=local)
    return sync_databases(
        app,
        databases,
        revision=revision,
        lock_timeout=lock_timeout,
        on_progress=on_progress,
        stop=stop,
    )


def sync_databases(
    app: App,
    databases: Sequence[CellDatabase],
    *,
    revision: str = "head",
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    on_progress: OnDatabase | None = None,
    stop: threading.Event | None = None,
) -> list[DatabaseOutcome]:
    """:func:`sync_cells` on databases already chosen (e.g. a cell just created)."""

    def run(engine: Engine, component: str) -> VersionInfo:
        applied = apply(
            engine,
            MigrationLine.CELL,
            "upgrade",
            revision,
            lock_timeout=lock_timeout,
            component=component,
            stop=stop,
        )
        return VersionInfo(
            applied.reached, head(MigrationLine.CELL), unchanged=not applied.changed
        )

    return _for_each(app, databases, run, create_missing=True, on_progress=on_progress)


def cell_versions(
    app: App,
    *,
    cells: Sequence[str] = (),
    all_cells: bool = False,
    local: bool = False,
    on_progress: OnDatabase | None = None,
) -> list[DatabaseOutcome]:
    """Each chosen cell database's revision of the cell line; reads only."""
    databases = select_databases(app, cells=cells, all_cells=all_cells, local=local)

    def run(engine: Engine, _component: str) -> VersionInfo:
        return VersionInfo(current(engine, MigrationLine.CELL), head(MigrationLine.CELL))

    return _for_each(app, databases, run, create_missing=False, on_progress=on_progress)


def _for_each(
    app: App,
    databases: Sequence[CellDatabase],
    action: Callable[[Engine, str], VersionInfo],
    *,
    create_missing: bool,
    on_progress: OnDatabase | None,
) -> list[DatabaseOutcome]:
    outcomes: list[DatabaseOutcome] = []
    for database in databases:
        result: CellResult[VersionInfo]
        try:
            url = app.db.url_for(database.stored)
            component = f"cell {database.label} database {url}"
            with app.db.engine_at(
                database.stored, database.label, create_missing=create_missing
            ) as engine:
                result = Ok(action(engine, component))
        except CellgateError as exc:
            log.warning("%s", exc)
            result = Failed(exc)
        outcome = DatabaseOutcome(database, result)
        outcomes.append(outcome)
        if on_progress is not None:
            on_progress(outcome)
        if isinstance(result, Failed) and isinstance(result.error, MigrationInterrupted):
            break  # asked to stop: start no further database
    return outcomes
