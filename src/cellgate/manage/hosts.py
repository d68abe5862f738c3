"""Host discovery: map every host that reports in a cell's database to that cell.

This is Nova's ``nova-manage cell_v2 discover_hosts``, made safe to run
anywhere, any time, and more than once at a time:

- A cell whose database cannot be reached, or is not migrated, fails alone:
  its result is :class:`~cellgate.results.Failed` and the other cells are
  still discovered.
- Each cell's new mappings are written in one API transaction, so a cell is
  either discovered completely or not at all.
- Running it again maps nothing new, and concurrent runs each map whatever
  they get to first: :func:`~cellgate.apidb.hosts.map_host` lets the unique
  constraint on ``host_mapping.host`` decide, so no host is mapped twice and
  no run fails for having lost a race.
- A host already mapped to another cell is never moved; it is logged as a
  warning, because the same host name in two cells needs an operator.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from sqlalchemy import select

from cellgate.apidb.database import ApiDatabase
from cellgate.apidb.hosts import find_hosts, map_host
from cellgate.apidb.mappings import CellMapping, get_cell, list_cells
from cellgate.celldb.schema import ServiceRow
from cellgate.config import Settings
from cellgate.engines import make_engine, translate_errors
from cellgate.errors import (
    CellgateError,
    CellTimeout,
    CellUnavailable,
    ConfigError,
    SchemaMismatch,
)
from cellgate.manage.migrate import template_defaults
from cellgate.migrations.runner import MigrationLine, current, head
from cellgate.results import CellResult, Failed, Ok

log = logging.getLogger(__name__)

#: Called after each cell with its result, e.g. to print progress.
ProgressCallback = Callable[[CellMapping, CellResult[list[str]]], None]


def discover_hosts(
    settings: Settings,
    api: ApiDatabase,
    cells: Sequence[str] = (),
    on_progress: ProgressCallback | None = None,
) -> dict[str, CellResult[list[str]]]:
    """Map each cell's unmapped service hosts to it; return the new hosts per cell uuid.

    Without ``cells``, every enabled cell but cell0 is discovered; with them
    (names or uuids), exactly those, disabled or not, since naming a cell is
    an explicit choice. Unknown cells raise :class:`CellNotFound` and naming
    cell0 raises :class:`ConfigError` before anything is written. ``api``
    must already be at its schema head (``ApiDatabase.require_current``).

    Results are :class:`Ok` with the newly mapped hosts (sorted; empty when
    there was nothing new) or :class:`Failed`; cells are visited one at a
    time, in the order they were named, or cell-list order.
    """
    results: dict[str, CellResult[list[str]]] = {}
    for cell in select_cells(api, cells):
        result: CellResult[list[str]]
        try:
            result = Ok(_discover_cell(settings, api, cell))
        except CellgateError as exc:
            log.warning("%s", exc)
            result = Failed(exc)
        results[cell.uuid] = result
        if on_progress is not None:
            on_progress(cell, result)
    return results


def select_cells(api: ApiDatabase, idents: Sequence[str] = ()) -> list[CellMapping]:
    """The cells :func:`discover_hosts` visits for ``idents`` (see there)."""
    with api.session() as session:
        if not idents:
            return [c for c in list_cells(session, include_disabled=False) if not c.is_cell0]
        chosen: dict[str, CellMapping] = {}
        for ident in idents:
            cell = get_cell(session, ident)
            if cell.is_cell0:
                raise ConfigError(
                    "cell0 has no hosts to discover",
                    hint="it only keeps instances that failed to build",
                )
            chosen.setdefault(cell.uuid, cell)
    return list(chosen.values())


def _discover_cell(settings: Settings, api: ApiDatabase, cell: CellMapping) -> list[str]:
    hosts = service_hosts(settings, cell)
    mapped: list[str] = []
    with api.session() as session:  # one transaction per cell
        existing = find_hosts(session, hosts)
        for host in hosts:
            mapping = existing.get(host)
            if mapping is None:
                mapping, created = map_host(session, host, cell.uuid)
                if created:
                    mapped.append(host)
            if mapping.cell_uuid != cell.uuid:
                log.warning(
                    "host %r reports in cell %s but is mapped to cell %s; left as it is",
                    host,
                    cell.label,
                    mapping.cell_name or mapping.cell_uuid,
                )
    return mapped


def service_hosts(settings: Settings, cell: CellMapping) -> list[str]:
    """The distinct hosts of the cell's live (not deleted) services, sorted.

    Disabled services count: a disabled host still belongs to its cell.
    The cell database is opened with the ``[database]`` timeouts, never
    created, and closed again before this returns.
    """
    db = settings.database
    url = template_defaults(settings).database_url(cell.database_connection)
    component = f"cell {cell.label} database {url}"
    engine = make_engine(
        url, connect_timeout=db.connect_timeout, query_timeout=db.query_timeout, pool_size=1
    )
    try:
        with translate_errors(component, unavailable=CellUnavailable, timeout=CellTimeout):
            revision = current(engine, MigrationLine.CELL)
            if revision is None:
                raise SchemaMismatch(
                    component=f"cell {cell.label} database",
                    current=None,
                    expected=head(MigrationLine.CELL),
                    hint=f"run 'cellgate db sync --cell {cell.label}'",
                )
            stmt = select(ServiceRow.host).where(ServiceRow.deleted == 0).distinct()
            with engine.connect() as conn:
                hosts = set(conn.scalars(stmt))
    finally:
        engine.dispose()
    # Sorted, so concurrent runs insert in the same order and wait, not deadlock.
    return sorted(h for h in hosts if h.strip())
