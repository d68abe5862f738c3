"""Migrating and inspecting the API database and many cell databases.

A multi-cell run keeps going past a failed cell and reports a
:data:`~cellgate.results.CellResult` per cell, so one broken cell never stops
the others from being upgraded.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cellgate.apidb.database import ApiDatabase
from cellgate.apidb.mappings import CellMapping, get_cell, list_cells
from cellgate.config import Settings
from cellgate.engines import make_engine, translate_errors
from cellgate.errors import CellgateError, ConfigError, MigrationInterrupted
from cellgate.migrations.lock import DEFAULT_LOCK_TIMEOUT
from cellgate.migrations.runner import MigrationLine, apply, current, head
from cellgate.results import CellResult, Failed, Ok
from cellgate.urls import DatabaseURL, StoredURL, TemplateDefaults

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Target:
    """One cell database to act on: a mapped cell, or this host's own database."""

    key: str  # the cell uuid, or "local"
    label: str
    stored: StoredURL


@dataclass(frozen=True)
class VersionInfo:
    current: str | None
    head: str
    #: A sync that found the database already at its target (read under the lock).
    unchanged: bool = False

    @property
    def at_head(self) -> bool:
        return self.current == self.head


def template_defaults(settings: Settings) -> TemplateDefaults:
    return TemplateDefaults(
        database=settings.database.connection.render(hide_password=False),
        transport=settings.transport_url.render(hide_password=False),
    )


def select_targets(
    settings: Settings,
    api: ApiDatabase | None,
    *,
    idents: Sequence[str] = (),
    all_cells: bool = False,
    local: bool = False,
) -> list[Target]:
    """Resolve the CLI's ``--cell``/``--all-cells``/``--local`` choice.

    With none of them, ``--local`` is meant (Nova's ``db sync`` habit).
    """
    if sum(bool(x) for x in (idents, all_cells, local)) > 1:
        raise ConfigError("choose one of --cell, --all-cells and --local")
    if not idents and not all_cells:
        local_url = settings.database.connection.render(hide_password=False)
        return [Target("local", "local ([database] connection)", StoredURL(local_url))]
    assert api is not None
    api.require_current()
    with api.session() as session:
        cells: list[CellMapping] = (
            list_cells(session) if all_cells else [get_cell(session, i) for i in idents]
        )
    return [Target(c.uuid, c.label, c.database_connection) for c in _unique(cells)]


def _unique(cells: list[CellMapping]) -> list[CellMapping]:
    seen: dict[str, CellMapping] = {}
    for cell in cells:
        seen.setdefault(cell.uuid, cell)
    return list(seen.values())


def sync_api(
    api: ApiDatabase,
    revision: str = "head",
    *,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    stop: threading.Event | None = None,
) -> VersionInfo:
    api.create_file()
    with translate_errors(api.component):
        applied = apply(
            api.engine,
            MigrationLine.API,
            "upgrade",
            revision,
            lock_timeout=lock_timeout,
            component=api.component,
            stop=stop,
        )
    return VersionInfo(applied.reached, head(MigrationLine.API), unchanged=not applied.changed)


def api_version(api: ApiDatabase) -> VersionInfo:
    return VersionInfo(api.revision(), head(MigrationLine.API))


def for_each_cell(
    settings: Settings,
    targets: Sequence[Target],
    action: Callable[[DatabaseURL, str], VersionInfo],
    on_progress: Callable[[Target, CellResult[VersionInfo]], None] | None = None,
) -> dict[str, CellResult[VersionInfo]]:
    """Run ``action(url, component)`` on each target's database, one at a time.

    Errors are captured per cell and the loop goes on, unless a sync was
    asked to stop (:class:`MigrationInterrupted`): then the cells not yet
    started are left alone.
    """
    defaults = template_defaults(settings)
    results: dict[str, CellResult[VersionInfo]] = {}
    for target in targets:
        result: CellResult[VersionInfo]
        try:
            url = defaults.database_url(target.stored)
            result = Ok(action(url, f"cell {target.label} database {url}"))
        except CellgateError as exc:
            log.warning("%s", exc)
            result = Failed(exc)
        results[target.key] = result
        if on_progress is not None:
            on_progress(target, result)
        if isinstance(result, Failed) and isinstance(result.error, MigrationInterrupted):
            break
    return results


def cell_action(
    settings: Settings,
    verb: str,
    revision: str = "head",
    *,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    stop: threading.Event | None = None,
) -> Callable[[DatabaseURL, str], VersionInfo]:
    """``sync`` (upgrade to ``revision``) or ``version`` (read only) of the cell line.

    ``sync`` waits up to ``lock_timeout`` seconds for another run's migration
    lock on each database.
    """
    db = settings.database

    def run(url: DatabaseURL, component: str) -> VersionInfo:
        engine = make_engine(
            url,
            connect_timeout=db.connect_timeout,
            query_timeout=db.query_timeout,
            create_missing=verb == "sync",
        )
        try:
            with translate_errors(component):
                if verb != "sync":
                    return VersionInfo(
                        current(engine, MigrationLine.CELL), head(MigrationLine.CELL)
                    )
                applied = apply(
                    engine,
                    MigrationLine.CELL,
                    "upgrade",
                    revision,
                    lock_timeout=lock_timeout,
                    component=component,
                    stop=stop,
                )
        finally:
            engine.dispose()
        return VersionInfo(
            applied.reached, head(MigrationLine.CELL), unchanged=not applied.changed
        )

    return run
