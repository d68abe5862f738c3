"""Host mappings: which cell each compute host belongs to.

A request that names only a host (a migration target, a service action) needs
the host's cell before it can touch any cell database; ``host_mapping`` in the
API database answers that. Like :mod:`cellgate.apidb.mappings`, every function
takes an open :class:`~sqlalchemy.orm.Session` and leaves the transaction to
the caller.

Mapping is idempotent and safe to race: :func:`map_host` never fails because
another process mapped the same host first. It reports the mapping that won and
whether this call created it, and the caller decides whether "already mapped
to another cell" is worth a warning. There is deliberately no error for that
case: a host that two cells both list is an operator's problem to report, not
a reason to stop mapping the others.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import sqlalchemy.exc
from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from cellgate.apidb import audit
from cellgate.apidb.mappings import CELL0_UUID, get_cell
from cellgate.apidb.schema import CellMappingRow, HostMappingRow
from cellgate.errors import CellNotFound, ConfigError, Hint, HostNotMapped


@dataclass(frozen=True)
class HostMapping:
    """One compute host and the live cell it is mapped to."""

    host: str
    cell_uuid: str
    cell_name: str | None
    created_at: dt.datetime | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "cell_uuid": self.cell_uuid,
            "cell_name": self.cell_name,
            "created_at": self.created_at.isoformat() + "Z" if self.created_at else None,
        }


def _select() -> Select[str, str, str | None, dt.datetime | None]:
    return (
        select(
            HostMappingRow.host,
            CellMappingRow.uuid,
            CellMappingRow.name,
            HostMappingRow.created_at,
        )
        .join(CellMappingRow, HostMappingRow.cell_id == CellMappingRow.id)
        .order_by(HostMappingRow.host)
    )


def _from_columns(columns: Any) -> HostMapping:
    host, cell_uuid, cell_name, created_at = columns
    return HostMapping(host=host, cell_uuid=cell_uuid, cell_name=cell_name, created_at=created_at)


def list_hosts(session: Session, cell: str | None = None) -> list[HostMapping]:
    """Every host mapping, by host name; only those of ``cell`` (a name or uuid) if given.

    Raises :class:`CellNotFound` if ``cell`` names no live cell.
    """
    stmt = _select()
    if cell is not None:
        found = get_cell(session, cell)
        stmt = stmt.where(CellMappingRow.uuid == found.uuid, CellMappingRow.deleted == 0)
    return [_from_columns(row) for row in session.execute(stmt)]


def find_hosts(session: Session, hosts: list[str]) -> dict[str, HostMapping]:
    """The existing mappings of ``hosts``, keyed by host; unmapped hosts are absent.

    One query per 500 hosts, so discovering a large cell does not issue one
    read per host. Keys are the hosts as stored: on MariaDB, whose default
    collation ignores case and trailing spaces, a stored host may differ
    from the one asked for in exactly those ways.
    """
    found: dict[str, HostMapping] = {}
    for start in range(0, len(hosts), 500):
        chunk = hosts[start : start + 500]
        for row in session.execute(_select().where(HostMappingRow.host.in_(chunk))):
            mapping = _from_columns(row)
            found[mapping.host] = mapping
    return found


def get_host(session: Session, host: str) -> HostMapping:
    """The mapping of ``host``; :class:`HostNotMapped` if it has none."""
    row = session.execute(_select().where(HostMappingRow.host == host)).first()
    if row is None:
        raise HostNotMapped(host=host)
    return _from_columns(row)


def map_host(
    session: Session, host: str, cell_uuid: str, *, actor: str | None = None
) -> tuple[HostMapping, bool]:
    """Map ``host`` to the live cell ``cell_uuid`` unless it is mapped already.

    Returns the host's mapping and whether this call created it, like
    :func:`~cellgate.apidb.mappings.map_cell0`. ``created`` is ``False`` when
    the host was already mapped, to this cell or to another one (compare
    ``mapping.cell_uuid``; an existing mapping is never moved), including when
    a concurrent transaction mapped it first: the unique constraint on
    ``host`` decides that race inside a savepoint, and the winner's row is
    read back with a locking read, which sees it even under MariaDB's
    repeatable-read snapshot.

    Raises :class:`CellNotFound` if the cell is not live (also when it is
    deleted concurrently: the cell row is share-locked, so a concurrent
    ``cell delete`` either waits for this transaction or wins before it) and
    :class:`ConfigError` for cell0, which never has hosts. A mapping this
    call creates is recorded in the cell's audit trail as ``map-host``.
    """
    host = _check_host(host)
    if cell_uuid == CELL0_UUID:
        raise ConfigError(
            f"cannot map host {host!r} to cell0",
            hint=Hint.CELL0_KEEPS_FAILED_BUILDS,
        )
    cell_id = session.scalar(
        select(CellMappingRow.id)
        .where(CellMappingRow.uuid == cell_uuid, CellMappingRow.deleted == 0)
        .with_for_update(read=True)
    )
    if cell_id is None:
        raise CellNotFound(ident=cell_uuid)
    # A plain read first: a locking read of a missing row would take a gap
    # lock on MariaDB, and two such locks on one gap deadlock both inserts.
    existing = session.execute(_select().where(HostMappingRow.host == host)).first()
    if existing is not None:
        return _from_columns(existing), False
    try:
        with session.begin_nested():
            session.add(HostMappingRow(host=host, cell_id=cell_id))
    except sqlalchemy.exc.IntegrityError:
        winner = _locked_read(session, host)
        if winner is None:  # not a duplicate host after all: a real integrity error
            raise
        return winner, False
    created = get_host(session, host)
    _audit(session, created, "map-host", actor, (None, host))
    return created, True


def _audit(
    session: Session, mapping: HostMapping, action: str, actor: str | None, change: audit.Change
) -> None:
    audit.record(
        session,
        cell_uuid=mapping.cell_uuid,
        cell_name=mapping.cell_name,
        version=None,
        action=action,
        actor=actor,
        changes={"host": change},
    )


def _check_host(host: str) -> str:
    if not host.strip():
        raise ConfigError("a host name must not be empty")
    if len(host) > 255:
        raise ConfigError(f"host name {host[:40]!r}... is longer than 255 characters")
    return host


def _locked_read(session: Session, host: str) -> HostMapping | None:
    stmt = _select().where(HostMappingRow.host == host).with_for_update(read=True)
    row = session.execute(stmt).first()
    return None if row is None else _from_columns(row)


def delete_host(session: Session, host: str, *, actor: str | None = None) -> HostMapping:
    """Remove the mapping of ``host`` and return it; :class:`HostNotMapped` if it has none.

    Only the API database is touched. The host's services and instances stay
    in its cell, and the next discovery maps it again if it still reports.
    """
    mapping = get_host(session, host)
    row = session.scalars(select(HostMappingRow).where(HostMappingRow.host == mapping.host)).one()
    session.delete(row)
    session.flush()
    _audit(session, mapping, "unmap-host", actor, (mapping.host, None))
    return mapping
