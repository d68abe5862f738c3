"""Cell mappings: the frozen value type and the functions that read and write them.

Every function takes an open :class:`~sqlalchemy.orm.Session` and leaves the
transaction to the caller, so one CLI command or one request is one
transaction: either all of its writes land or none do. Nothing here knows
about routing, config files or output formats.

Soft delete follows Nova: ``deleted`` is 0 for a live row and the row's id once
deleted, so the unique constraints on ``(uuid, deleted)`` and
``(name, deleted)`` let a deleted cell be re-created. A deleted row keeps no
credentials: both URL columns are overwritten with :data:`SCRUBBED_URL`.
"""

from __future__ import annotations

import datetime as dt
import uuid as uuidlib
from dataclasses import dataclass
from typing import Any, Final

import sqlalchemy.exc
from sqlalchemy import Select, delete, func, select, update
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from cellgate.apidb.schema import (
    ApiBase,
    CellMappingRow,
    HostMappingRow,
    InstanceMappingRow,
    MappingGenerationRow,
)
from cellgate.dbtypes import utcnow
from cellgate.errors import CellInUse, CellNotFound, ConfigError, DuplicateCell
from cellgate.urls import NO_TRANSPORT, StoredURL, TemplateDefaults

CELL0_UUID: Final = "00000000-0000-0000-0000-000000000000"
CELL0_NAME: Final = "cell0"
#: What a deleted cell's URL columns hold instead of credentials.
SCRUBBED_URL: Final = "scrubbed:///"


@dataclass(frozen=True)
class CellMapping:
    """Where one cell lives. ``str``/``repr`` of the URLs are masked."""

    uuid: str
    name: str | None
    transport_url: StoredURL
    database_connection: StoredURL
    disabled: bool
    created_at: dt.datetime | None
    updated_at: dt.datetime | None

    @property
    def is_cell0(self) -> bool:
        return self.uuid == CELL0_UUID

    @property
    def label(self) -> str:
        """The name if there is one, else the uuid: for messages."""
        return self.name or self.uuid

    def to_dict(self, *, reveal_secrets: bool = False) -> dict[str, Any]:
        def url(value: StoredURL) -> str:
            return value.reveal() if reveal_secrets else str(value)

        return {
            "uuid": self.uuid,
            "name": self.name,
            "transport_url": url(self.transport_url),
            "database_connection": url(self.database_connection),
            "disabled": self.disabled,
            "is_cell0": self.is_cell0,
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at),
        }


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() + "Z" if value else None


def _from_row(row: CellMappingRow) -> CellMapping:
    return CellMapping(
        uuid=row.uuid,
        name=row.name,
        transport_url=StoredURL(row.transport_url),
        database_connection=StoredURL(row.database_connection),
        disabled=row.disabled,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def normalize_uuid(value: str) -> str | None:
    """The canonical lower-case form of ``value``, or ``None`` if it is no uuid."""
    try:
        return str(uuidlib.UUID(value))
    except ValueError:
        return None


def _check_name(name: str) -> str:
    name = name.strip()
    if not name:
        raise ConfigError("a cell name must not be empty")
    if len(name) > 255:
        raise ConfigError("a cell name must be at most 255 characters")
    if normalize_uuid(name) is not None:
        raise ConfigError(
            f"cell name {name!r} looks like a uuid",
            hint="names and uuids are both accepted wherever a cell is named, so they must differ",
        )
    return name


def _check_urls(
    transport_url: str, database_connection: str, defaults: TemplateDefaults, *, cell0: bool
) -> None:
    """Reject a URL pair that could not be used, before anything is written."""
    defaults.database_url(StoredURL(database_connection))
    transport = defaults.transport_url(StoredURL(transport_url))
    if transport.is_none and not cell0:
        raise ConfigError(
            f"{NO_TRANSPORT} is reserved for cell0",
            hint="give the cell a rabbit://, amqp:// or memory:// transport URL",
        )
    if cell0 and not transport.is_none:
        raise ConfigError(f"cell0 has no message queue; its transport URL must be {NO_TRANSPORT}")


def _live() -> Select[CellMappingRow]:
    return select(CellMappingRow).where(CellMappingRow.deleted == 0)


def _find_row(session: Session, ident: str, *, for_update: bool = False) -> CellMappingRow:
    as_uuid = normalize_uuid(ident)
    stmt = _live().where(
        CellMappingRow.uuid == as_uuid if as_uuid else CellMappingRow.name == ident
    )
    if for_update:
        stmt = stmt.with_for_update()
    row = session.scalars(stmt).first()
    if row is None:
        raise CellNotFound(ident=ident)
    return row


def get_cell(session: Session, ident: str) -> CellMapping:
    """The live cell whose uuid or name is ``ident``."""
    return _from_row(_find_row(session, ident))


def list_cells(session: Session, *, include_disabled: bool = True) -> list[CellMapping]:
    """Live cells, cell0 first, then by name."""
    stmt = _live()
    if not include_disabled:
        stmt = stmt.where(CellMappingRow.disabled.is_(False))
    rows = session.scalars(stmt).all()
    return sorted(
        (_from_row(r) for r in rows), key=lambda c: (not c.is_cell0, c.name or "", c.uuid)
    )


def create_cell(
    session: Session,
    *,
    name: str,
    transport_url: str,
    database_connection: str,
    defaults: TemplateDefaults,
    uuid: str | None = None,
    disabled: bool = False,
) -> CellMapping:
    """Validate and insert a new cell mapping.

    Raises :class:`DuplicateCell` if a live cell has the name or uuid, also
    when another process inserts it concurrently (the unique constraints
    decide the race).
    """
    name = _check_name(name)
    cell_uuid = _check_uuid(uuid) if uuid else str(uuidlib.uuid4())
    is_cell0 = cell_uuid == CELL0_UUID
    if is_cell0 and disabled:
        raise ConfigError("cell0 cannot be disabled")
    _check_urls(transport_url, database_connection, defaults, cell0=is_cell0)
    _refuse_duplicates(session, name=name, uuid=cell_uuid)
    row = CellMappingRow(
        uuid=cell_uuid,
        name=name,
        transport_url=transport_url,
        database_connection=database_connection,
        disabled=disabled,
        deleted=0,
    )
    try:
        # A savepoint, so losing the race undoes only this insert and the
        # transaction stays usable to find out which field collided.
        with session.begin_nested():
            session.add(row)
    except sqlalchemy.exc.IntegrityError:
        _refuse_duplicates(session, name=name, uuid=cell_uuid)
        raise DuplicateCell(field="name", value=name) from None
    bump_generation(session)
    return _from_row(row)


def _check_uuid(value: str) -> str:
    canonical = normalize_uuid(value)
    if canonical is None:
        raise ConfigError(f"{value!r} is not a uuid")
    return canonical


def _refuse_duplicates(
    session: Session, *, name: str, uuid: str, exclude_id: int | None = None
) -> None:
    for field, column, value in (
        ("uuid", CellMappingRow.uuid, uuid),
        ("name", CellMappingRow.name, name),
    ):
        stmt = _live().where(column == value)
        if exclude_id is not None:
            stmt = stmt.where(CellMappingRow.id != exclude_id)
        if session.scalars(stmt).first() is not None:
            raise DuplicateCell(field=field, value=value)


def update_cell(
    session: Session,
    ident: str,
    *,
    defaults: TemplateDefaults,
    name: str | None = None,
    transport_url: str | None = None,
    database_connection: str | None = None,
    disabled: bool | None = None,
) -> CellMapping:
    """Change the given fields of a live cell; fields left as ``None`` keep their value."""
    row = _find_row(session, ident, for_update=True)
    is_cell0 = row.uuid == CELL0_UUID
    if name is not None:
        name = _check_name(name)
        if is_cell0 and name != CELL0_NAME:
            raise ConfigError(f"cell0 must keep the name {CELL0_NAME!r}")
        _refuse_duplicates(session, name=name, uuid=row.uuid, exclude_id=row.id)
    if disabled and is_cell0:
        raise ConfigError(
            "cell0 cannot be disabled", hint="it holds instances that failed to build"
        )
    new_transport = transport_url if transport_url is not None else row.transport_url
    new_database = (
        database_connection if database_connection is not None else row.database_connection
    )
    if transport_url is not None or database_connection is not None:
        _check_urls(new_transport, new_database, defaults, cell0=is_cell0)
    if name is not None:
        row.name = name
    row.transport_url = new_transport
    row.database_connection = new_database
    if disabled is not None:
        row.disabled = disabled
    try:
        with session.begin_nested():
            session.flush()
    except sqlalchemy.exc.IntegrityError:
        raise DuplicateCell(field="name", value=name or "") from None
    bump_generation(session)
    return _from_row(row)


def delete_cell(session: Session, ident: str, *, force: bool = False) -> CellMapping:
    """Soft-delete a cell and scrub its URLs.

    Refused while hosts or instances are mapped to it. With ``force``, host
    mappings and mappings of instances already queued for deletion are
    removed with it; live instances always block the delete.
    """
    row = _find_row(session, ident, for_update=True)
    if row.uuid == CELL0_UUID and not force:
        raise CellInUse(
            ident=ident,
            reason="is cell0, which keeps the records of instances that failed to build",
            hint="pass --force to delete it anyway; 'cell map-cell0' re-creates it",
        )
    hosts = _count(session, HostMappingRow, HostMappingRow.cell_id == row.id)
    mapped = InstanceMappingRow.cell_id == row.id
    queued_for_delete = InstanceMappingRow.queued_for_delete
    live = _count(session, InstanceMappingRow, mapped, queued_for_delete.is_(False))
    queued = _count(session, InstanceMappingRow, mapped, queued_for_delete.is_(True))
    if live:
        raise CellInUse(
            ident=ident,
            reason=f"still has {live} instance(s) mapped to it",
            hint="delete or move its instances first",
        )
    if (hosts or queued) and not force:
        raise CellInUse(
            ident=ident,
            reason=f"still has {hosts} host(s) and {queued} deleted instance(s) mapped to it",
            hint="pass --force to remove those mappings with the cell",
        )
    if force:
        session.execute(delete(HostMappingRow).where(HostMappingRow.cell_id == row.id))
        session.execute(delete(InstanceMappingRow).where(InstanceMappingRow.cell_id == row.id))
    deleted = _from_row(row)
    row.deleted = row.id
    row.deleted_at = utcnow()
    row.transport_url = SCRUBBED_URL
    row.database_connection = SCRUBBED_URL
    session.flush()
    bump_generation(session)
    return deleted


def map_cell0(
    session: Session, *, database_connection: str, defaults: TemplateDefaults
) -> tuple[CellMapping, bool]:
    """Create the cell0 mapping if it is missing; return it and whether it was created."""
    existing = session.scalars(_live().where(CellMappingRow.uuid == CELL0_UUID)).first()
    if existing is not None:
        return _from_row(existing), False
    cell = create_cell(
        session,
        name=CELL0_NAME,
        uuid=CELL0_UUID,
        transport_url=NO_TRANSPORT,
        database_connection=database_connection,
        defaults=defaults,
    )
    return cell, True


def _count(session: Session, model: type[ApiBase], *where: ColumnElement[bool]) -> int:
    return session.scalar(select(func.count()).select_from(model).where(*where)) or 0


def bump_generation(session: Session) -> None:
    """Increment the mapping generation in the caller's transaction."""
    session.execute(
        update(MappingGenerationRow)
        .where(MappingGenerationRow.id == 1)
        .values(generation=MappingGenerationRow.generation + 1)
    )


def read_generation(session: Session) -> int:
    """The current mapping generation: one primary-key read."""
    value = session.scalar(
        select(MappingGenerationRow.generation).where(MappingGenerationRow.id == 1)
    )
    return value or 0
