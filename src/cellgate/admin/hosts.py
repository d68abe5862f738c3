"""Host mappings: ``host discover | list | delete``.

Discovery is Nova's ``nova-manage cell_v2 discover_hosts``, made safe to run
anywhere, any time, and more than once at a time:

- A cell whose database cannot be reached, or is not migrated, fails alone:
  its result is :class:`~cellgate.results.Failed` and the other cells are
  still discovered.
- Each cell's new mappings are written in one API transaction, so a cell is
  either discovered completely or not at all (run whole again if the
  database refuses it as a conflict).
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
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from cellgate.apidb import hosts
from cellgate.apidb.hosts import HostMapping, find_hosts, map_host
from cellgate.apidb.mappings import CellMapping, get_cell
from cellgate.apidb.mappings import list_cells as list_cell_rows
from cellgate.app import App
from cellgate.celldb.schema import ServiceRow
from cellgate.errors import CellgateError, ConfigError, Hint, SchemaMismatch
from cellgate.migrations.runner import MigrationLine, current, head
from cellgate.results import CellResult, Failed, Ok

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HostDiscovery:
    """One cell's discovery: the hosts this run mapped (``Ok``), or why it failed."""

    cell: CellMapping
    result: CellResult[list[str]]

    @property
    def mapped(self) -> list[str]:
        return self.result.value if isinstance(self.result, Ok) else []

    def to_dict(self, describe: Callable[[BaseException], str] = str) -> dict[str, Any]:
        """``describe`` renders a failure (the CLI passes its own words for hints)."""
        error = self.result.error if isinstance(self.result, Failed) else None
        return {
            "uuid": self.cell.uuid,
            "name": self.cell.label,
            "status": "ok" if isinstance(self.result, Ok) else "failed",
            "mapped": self.mapped,
            "error": None if error is None else describe(error),
        }


@dataclass(frozen=True)
class DeletedHost:
    """A host mapping that :func:`delete_host` removed."""

    host: HostMapping

    def to_dict(self) -> dict[str, Any]:
        return {
            "deleted": self.host.host,
            "cell_uuid": self.host.cell_uuid,
            "cell_name": self.host.cell_name,
        }


def discover_hosts(
    app: App,
    cells: Sequence[str] = (),
    on_progress: Callable[[HostDiscovery], None] | None = None,
) -> list[HostDiscovery]:
    """Map each cell's unmapped service hosts to it; one outcome per cell visited.

    Without ``cells``, every enabled cell but cell0 is discovered; with them
    (names or uuids), exactly those, disabled or not, since naming a cell is
    an explicit choice. Unknown cells raise :class:`CellNotFound` and naming
    cell0 raises :class:`ConfigError` before anything is written.

    Outcomes are :class:`Ok` with the newly mapped hosts (sorted; empty when
    there was nothing new) or :class:`Failed`; cells are visited one at a
    time, in the order they were named, or cell-list order.
    """
    app.api.require_current()
    outcomes: list[HostDiscovery] = []
    for cell in select_cells(app, cells):
        result: CellResult[list[str]]
        try:
            result = Ok(_discover_cell(app, cell))
        except CellgateError as exc:
            log.warning("%s", exc)
            result = Failed(exc)
        outcome = HostDiscovery(cell, result)
        outcomes.append(outcome)
        if on_progress is not None:
            on_progress(outcome)
    return outcomes


def select_cells(app: App, idents: Sequence[str] = ()) -> list[CellMapping]:
    """The cells :func:`discover_hosts` visits for ``idents`` (see there)."""
    with app.api.session() as session:
        if not idents:
            return [c for c in list_cell_rows(session, include_disabled=False) if not c.is_cell0]
        chosen: dict[str, CellMapping] = {}
        for ident in idents:
            cell = get_cell(session, ident)
            if cell.is_cell0:
                raise ConfigError(
                    "cell0 has no hosts to discover",
                    hint=Hint.CELL0_NO_HOSTS,
                )
            chosen.setdefault(cell.uuid, cell)
    return list(chosen.values())


def _discover_cell(app: App, cell: CellMapping) -> list[str]:
    found = service_hosts(app, cell)

    def transaction(session: Session) -> tuple[list[str], list[HostMapping]]:
        # Fresh lists per attempt: a refused attempt's hosts were not mapped.
        mapped: list[str] = []
        elsewhere: list[HostMapping] = []
        existing = find_hosts(session, found)
        for host in found:
            mapping = existing.get(host)
            if mapping is None:
                mapping, created = map_host(session, host, cell.uuid)
                if created:
                    mapped.append(host)
            if mapping.cell_uuid != cell.uuid:
                elsewhere.append(mapping)
        return mapped, elsewhere

    mapped, elsewhere = app.api.write(transaction)  # one transaction per cell
    for mapping in elsewhere:
        log.warning(
            "host %r reports in cell %s but is mapped to cell %s; left as it is",
            mapping.host,
            cell.label,
            mapping.cell_name or mapping.cell_uuid,
        )
    return mapped


def service_hosts(app: App, cell: CellMapping) -> list[str]:
    """The distinct hosts of the cell's live (not deleted) services, sorted.

    Disabled services count: a disabled host still belongs to its cell.
    The cell database is opened with the ``[database]`` timeouts, never
    created, and its engine disposed again before this returns.
    """
    with app.db.engine_for(cell) as engine:
        revision = current(engine, MigrationLine.CELL)
        if revision is None:
            raise SchemaMismatch(
                component=f"cell {cell.label} database",
                current=None,
                expected=head(MigrationLine.CELL),
                hint=Hint.SYNC_CELL_DB,
                hint_args={"cell": cell.label},
            )
        stmt = select(ServiceRow.host).where(ServiceRow.deleted == 0).distinct()
        with engine.connect() as conn:
            found = set(conn.scalars(stmt))
    # Sorted, so concurrent runs insert in the same order and wait, not deadlock.
    return sorted(h for h in found if h.strip())


def list_hosts(app: App, cell: str | None = None) -> list[HostMapping]:
    """Host mappings by host name; with ``cell`` (name or uuid), only that cell's."""
    app.api.require_current()
    with app.api.session() as session:
        return hosts.list_hosts(session, cell)


def delete_host(app: App, host: str) -> DeletedHost:
    """Remove a host's mapping (:class:`HostNotMapped` if it has none).

    Only the API database changes: the next discover maps the host again if
    its cell still lists it.
    """
    app.api.require_current()
    return DeletedHost(app.api.write(lambda session: hosts.delete_host(session, host)))
