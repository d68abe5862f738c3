"""Cell mappings: the frozen value type and the functions that read and write them.

Every function takes an open :class:`~sqlalchemy.orm.Session` and leaves the
transaction to the caller, so one CLI command or one request is one
transaction: either all of its writes land or none do. Nothing here knows
about routing, config files or output formats.

Soft delete follows Nova: ``deleted`` is 0 for a live row and the row's id once
deleted, so the unique constraints on ``(uuid, deleted)`` and
``(name, deleted)`` let a deleted cell be re-created. A deleted row keeps no
credentials: both URL columns are overwritten with :data:`SCRUBBED_URL`.

Two more guarantees ride on every write. The session's :class:`KeyRing`
(``ApiDatabase`` puts it in ``session.info``) encrypts new URLs and decrypts
stored ones, so no caller handles ciphertext. And each write adds its
:mod:`~cellgate.apidb.audit` entry and bumps the row ``version`` in the same
transaction; ``expected_version`` turns a write based on a stale read into
:class:`StaleCell` instead of a lost update. Updates and re-sealing live in
:mod:`cellgate.apidb.updates`, built from the pieces here.
"""

from __future__ import annotations

import datetime as dt
import uuid as uuidlib
from dataclasses import dataclass
from typing import Any, Final

import sqlalchemy.exc
import sqlalchemy.orm.exc
from sqlalchemy import Select, delete, func, select, update
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from cellgate.apidb import audit
from cellgate.apidb.endpoints import refuse_shared_endpoints
from cellgate.apidb.schema import (
    ApiBase,
    CellMappingRow,
    HostMappingRow,
    InstanceMappingRow,
    MappingGenerationRow,
    MoveJobRow,
)
from cellgate.dbtypes import utcnow
from cellgate.errors import (
    CellInUse,
    CellNotFound,
    ConfigError,
    DuplicateCell,
    EncryptionKeyError,
    Hint,
    InvalidURL,
    StaleCell,
)
from cellgate.keyring import KeyRing, describe, session_ring, url_binding
from cellgate.urls import NO_TRANSPORT, StoredURL, TemplateDefaults
from cellgate.validation import control_character

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
    #: Bumped by every write; pass it back as ``expected_version``.
    version: int = 1
    #: How the URLs are stored: ``plaintext``, ``fernet:<key id>`` or ``mixed``.
    encryption: str = "plaintext"

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
            "version": self.version,
            "encryption": self.encryption,
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at),
        }


@dataclass(frozen=True)
class UnreadableCell:
    """A live cell mapping whose URLs do not decrypt with the configured keys.

    What is known without its credentials: who it is and why it cannot be
    read. ``reason`` is the :class:`EncryptionKeyError` message (the column
    and the key id the row names; never a stored value), ``hint`` its key.
    """

    uuid: str
    name: str | None
    disabled: bool
    version: int
    encryption: str
    reason: str
    hint: Hint | None
    created_at: dt.datetime | None
    updated_at: dt.datetime | None

    @property
    def is_cell0(self) -> bool:
        return self.uuid == CELL0_UUID

    @property
    def label(self) -> str:
        return self.name or self.uuid

    def to_dict(self) -> dict[str, Any]:
        """The shape of :meth:`CellMapping.to_dict`, URLs ``None``, plus ``unreadable``."""
        return {
            "uuid": self.uuid,
            "name": self.name,
            "transport_url": None,
            "database_connection": None,
            "disabled": self.disabled,
            "is_cell0": self.is_cell0,
            "version": self.version,
            "encryption": self.encryption,
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at),
            "unreadable": self.reason,
        }


@dataclass(frozen=True)
class CellRead:
    """Every live cell mapping: those that decrypt, and those that do not.

    :func:`read_cells` returns it so that one row sealed with a missing key,
    or altered, costs only that cell, never the others.
    """

    cells: list[CellMapping]
    unreadable: list[UnreadableCell]

    @property
    def complete(self) -> bool:
        return not self.unreadable


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() + "Z" if value else None


def keyring(session: Session) -> KeyRing:
    """The keys this session encrypts and decrypts cell URLs with (none: plaintext)."""
    return session_ring(session.info)


def from_row(row: CellMappingRow, ring: KeyRing) -> CellMapping:
    label = row.name or row.uuid
    return CellMapping(
        uuid=row.uuid,
        name=row.name,
        transport_url=StoredURL(
            ring.decrypt(
                row.transport_url,
                what=f"cell {label} transport_url",
                bound_to=url_binding(row.uuid, "transport_url"),
            )
        ),
        database_connection=StoredURL(
            ring.decrypt(
                row.database_connection,
                what=f"cell {label} database_connection",
                bound_to=url_binding(row.uuid, "database_connection"),
            )
        ),
        disabled=row.disabled,
        created_at=row.created_at,
        updated_at=row.updated_at,
        version=row.version,
        encryption=encryption_of(row),
    )


def encryption_of(row: CellMappingRow) -> str:
    """``plaintext``, ``aesgcm:<key id>``, ``fernet:<key id>`` (the old form) or ``mixed``."""
    forms = {describe(row.transport_url), describe(row.database_connection)}
    if len(forms) > 1:
        return "mixed"
    (form,) = forms
    return form


def seal(ring: KeyRing, url: str, *, cell_uuid: str, column: str) -> str:
    """How a new URL is stored: encrypted (bound to cell and column) if the session has keys."""
    return ring.encrypt(url, bound_to=url_binding(cell_uuid, column)) if ring else url


def normalize_uuid(value: str) -> str | None:
    """The canonical lower-case form of ``value``, or ``None`` if it is no uuid."""
    try:
        return str(uuidlib.UUID(value))
    except ValueError:
        return None


def check_name(name: str, *, cell0: bool = False) -> str:
    """``name`` if it may name a cell; else :class:`ConfigError`, one line.

    Printable text only (:func:`~cellgate.validation.control_character`: no
    newline, ESC, NUL...), with no leading or trailing space (never stripped
    silently), not a uuid, and not ``cell0`` (any case) unless ``cell0``: the
    name belongs to the cell ``cell map-cell0`` creates.
    """
    if not name.strip():
        raise ConfigError("a cell name must not be empty")
    found = control_character(name)
    if found is not None:
        raise ConfigError(f"a cell name must not contain {found}")
    if name != name.strip():
        raise ConfigError(
            "a cell name must not start or end with a space",
            hint=Hint.STRIP_NAME,
            hint_args={"name": name.strip()},
        )
    if not cell0 and name.casefold() == CELL0_NAME:
        raise ConfigError(
            f"the cell name {name!r} is reserved for cell0",
            hint=Hint.CELL0_NAME_RESERVED,
        )
    if len(name) > 255:
        raise ConfigError("a cell name must be at most 255 characters")
    if normalize_uuid(name) is not None:
        raise ConfigError(
            f"cell name {name!r} looks like a uuid",
            hint=Hint.NAME_UUID_DIFFER,
        )
    return name


def check_urls(
    transport_url: str, database_connection: str, defaults: TemplateDefaults, *, cell0: bool
) -> None:
    """Reject a URL pair that could not be used, before anything is written.

    A cell's SQLite database must be a file named by an absolute path: an
    in-memory database (``sqlite://``) forgets everything when its engine
    closes, and a relative path moves with each process's working directory.
    """
    database = defaults.database_url(StoredURL(database_connection))
    transport = defaults.transport_url(StoredURL(transport_url))
    if transport.is_none and not cell0:
        raise ConfigError(
            f"{NO_TRANSPORT} is reserved for cell0",
            hint=Hint.TRANSPORT_SCHEME,
        )
    if cell0 and not transport.is_none:
        raise ConfigError(f"cell0 has no message queue; its transport URL must be {NO_TRANSPORT}")
    if database.backend == "sqlite":
        path = database.database or ""
        if path in ("", ":memory:") or path.startswith("file::memory:"):
            raise InvalidURL(
                url=str(database),
                reason="an in-memory SQLite database cannot be a cell's database "
                "(it forgets everything when it is closed); name a file by its absolute path",
            )
        if not (path.startswith("/") or path.startswith("file:/")):
            raise InvalidURL(
                url=str(database),
                reason=f"the SQLite path {path!r} is relative (it would move with the "
                "working directory); give an absolute path, sqlite:////abs/path.sqlite",
            )


def live_select() -> Select[CellMappingRow]:
    return select(CellMappingRow).where(CellMappingRow.deleted == 0)


def find_row(session: Session, ident: str, *, for_update: bool = False) -> CellMappingRow:
    as_uuid = normalize_uuid(ident)
    stmt = live_select().where(
        CellMappingRow.uuid == as_uuid if as_uuid else CellMappingRow.name == ident
    )
    if for_update:
        lock_mappings(session)
        stmt = stmt.with_for_update()
    row = session.scalars(stmt).first()
    if row is None:
        raise CellNotFound(ident=ident)
    return row


def live_rows(session: Session, ident: str | None = None) -> list[CellMappingRow]:
    """Raw live rows (still encrypted), all or the one ``ident`` names: for re-sealing."""
    if ident is not None:
        return [find_row(session, ident)]
    return list(session.scalars(live_select().order_by(CellMappingRow.id)).all())


def get_cell(session: Session, ident: str) -> CellMapping:
    """The live cell whose uuid or name is ``ident``."""
    return from_row(find_row(session, ident), keyring(session))


def list_cells(session: Session, *, include_disabled: bool = True) -> list[CellMapping]:
    """Live cells, cell0 first, then by name.

    Strict: a row that does not decrypt raises its :class:`EncryptionKeyError`
    (for tasks that must see every cell, such as ``db sync --all-cells``).
    :func:`read_cells` reports such rows instead.
    """
    read = read_cells(session, include_disabled=include_disabled)
    if read.unreadable:
        first = read.unreadable[0]
        raise EncryptionKeyError(first.reason, hint=first.hint)
    return read.cells


def read_cells(session: Session, *, include_disabled: bool = True) -> CellRead:
    """Live cells, cell0 first, then by name; rows that do not decrypt set apart."""
    stmt = live_select()
    if not include_disabled:
        stmt = stmt.where(CellMappingRow.disabled.is_(False))
    rows = session.scalars(stmt).all()
    ring = keyring(session)
    cells: list[CellMapping] = []
    unreadable: list[UnreadableCell] = []
    for row in rows:
        try:
            cells.append(from_row(row, ring))
        except EncryptionKeyError as exc:
            unreadable.append(unreadable_cell(row, exc))
    order = _cell_order
    return CellRead(sorted(cells, key=order), sorted(unreadable, key=order))


def _cell_order(c: CellMapping | UnreadableCell) -> tuple[bool, str, str]:
    return (not c.is_cell0, c.name or "", c.uuid)


def unreadable_cell(row: CellMappingRow, error: EncryptionKeyError) -> UnreadableCell:
    return UnreadableCell(
        uuid=row.uuid,
        name=row.name,
        disabled=row.disabled,
        version=row.version,
        encryption=encryption_of(row),
        reason=error.message,
        hint=error.hint if isinstance(error.hint, Hint) else None,
        created_at=row.created_at,
        updated_at=row.updated_at,
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
    actor: str | None = None,
    action: str = "create",
) -> CellMapping:
    """Validate and insert a new cell mapping.

    Raises :class:`DuplicateCell` if a live cell has the name or uuid, also
    when another process inserts it concurrently (the unique constraints
    decide the race), and :class:`EndpointInUse` if another cell or the API
    database already has its database or message queue. ``actor`` is who the
    audit trail names (default: this process's ``user@host``), ``action``
    what it calls the creation (``nova-import`` for a cell imported from
    Nova). cell0's name and uuid are refused: only :func:`map_cell0` creates cell0.
    """
    cell_uuid = _check_uuid(uuid) if uuid else str(uuidlib.uuid4())
    if cell_uuid == CELL0_UUID:
        raise ConfigError(
            f"the uuid {CELL0_UUID} is reserved for cell0",
            hint=Hint.CELL0_UUID_RESERVED,
        )
    return _insert_cell(
        session,
        name=check_name(name),
        uuid=cell_uuid,
        transport_url=transport_url,
        database_connection=database_connection,
        defaults=defaults,
        disabled=disabled,
        actor=actor,
        action=action,
    )


def _insert_cell(
    session: Session,
    *,
    name: str,
    uuid: str,
    transport_url: str,
    database_connection: str,
    defaults: TemplateDefaults,
    disabled: bool,
    actor: str | None,
    action: str = "create",
) -> CellMapping:
    cell_uuid = uuid
    is_cell0 = cell_uuid == CELL0_UUID
    if is_cell0 and disabled:
        raise ConfigError("cell0 cannot be disabled")
    check_urls(transport_url, database_connection, defaults, cell0=is_cell0)
    lock_mappings(session)
    refuse_duplicates(session, name=name, uuid=cell_uuid)
    ring = keyring(session)
    refuse_shared_endpoints(
        session,
        label=name,
        transport_url=transport_url,
        database_connection=database_connection,
        defaults=defaults,
        ring=ring,
    )
    row = CellMappingRow(
        uuid=cell_uuid,
        name=name,
        transport_url=seal(ring, transport_url, cell_uuid=cell_uuid, column="transport_url"),
        database_connection=seal(
            ring, database_connection, cell_uuid=cell_uuid, column="database_connection"
        ),
        disabled=disabled,
        deleted=0,
    )
    try:
        # A savepoint, so losing the race undoes only this insert and the
        # transaction stays usable to find out which field collided.
        with session.begin_nested():
            session.add(row)
    except sqlalchemy.exc.IntegrityError:
        refuse_duplicates(session, name=name, uuid=cell_uuid)
        raise DuplicateCell(field="name", value=name) from None
    changes = {
        "name": (None, name),
        "transport_url": audit.url_change(None, transport_url),
        "database_connection": audit.url_change(None, database_connection),
        "disabled": (None, disabled),
    }
    record_write(session, row, action, actor, {k: v for k, v in changes.items() if v})
    return from_row(row, ring)


def _check_uuid(value: str) -> str:
    canonical = normalize_uuid(value)
    if canonical is None:
        raise ConfigError(f"{value!r} is not a uuid")
    return canonical


def refuse_duplicates(
    session: Session, *, name: str, uuid: str, exclude_id: int | None = None
) -> None:
    for field, column, value in (
        ("uuid", CellMappingRow.uuid, uuid),
        ("name", CellMappingRow.name, name),
    ):
        stmt = live_select().where(column == value)
        if exclude_id is not None:
            stmt = stmt.where(CellMappingRow.id != exclude_id)
        if session.scalars(stmt).first() is not None:
            raise DuplicateCell(field=field, value=value)


def record_write(
    session: Session,
    row: CellMappingRow,
    action: str,
    actor: str | None,
    changes: dict[str, audit.Change],
) -> None:
    """After a change to ``row``: its audit entry, and a new generation for caches."""
    audit.record(
        session,
        cell_uuid=row.uuid,
        cell_name=row.name,
        version=row.version,
        action=action,
        actor=actor,
        changes=changes,
    )
    bump_generation(session)


def flush_versioned(session: Session, row: CellMappingRow, ident: str, read_version: int) -> None:
    """Flush a change to ``row``; the version check and unique constraints decide races.

    Callers lock the row first, so these are the backstops: a writer that
    bypassed the lock, or a rename racing a create of the same name.
    """
    try:
        with session.begin_nested():
            session.flush()
    except sqlalchemy.orm.exc.StaleDataError:
        raise StaleCell(ident=ident, expected=read_version, found=None) from None
    except sqlalchemy.exc.IntegrityError:
        raise DuplicateCell(field="name", value=row.name or ident) from None


def delete_cell(
    session: Session, ident: str, *, force: bool = False, actor: str | None = None
) -> CellMapping:
    """Soft-delete a cell and scrub its URLs.

    Refused while hosts or instances are mapped to it, or while a move of an
    instance from or to it is unfinished (its rows are still there, hidden,
    until the move is purged or rolled back). With ``force``, host
    mappings and mappings of instances already queued for deletion are
    removed with it; live instances always block the delete.
    """
    row = find_row(session, ident, for_update=True)
    if row.uuid == CELL0_UUID and not force:
        raise CellInUse(
            ident=ident,
            reason="is cell0, which keeps the records of instances that failed to build",
            hint=Hint.FORCE_DELETE_CELL0,
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
            hint=Hint.MOVE_INSTANCES,
        )
    moving = _count(
        session,
        MoveJobRow,
        MoveJobRow.active_instance.is_not(None),
        (MoveJobRow.source_cell == row.uuid) | (MoveJobRow.target_cell == row.uuid),
    )
    if moving:  # even with force: rows of those instances are still in the cell
        raise CellInUse(
            ident=ident,
            reason=f"has {moving} unfinished instance move(s) from or to it",
            hint=Hint.FINISH_MOVES,
        )
    if (hosts or queued) and not force:
        raise CellInUse(
            ident=ident,
            reason=f"still has {hosts} host(s) and {queued} deleted instance(s) mapped to it",
            hint=Hint.FORCE_UNMAP_HOSTS,
        )
    changes: dict[str, audit.Change] = {"deleted": (False, True)}
    if force:
        session.execute(delete(HostMappingRow).where(HostMappingRow.cell_id == row.id))
        session.execute(delete(InstanceMappingRow).where(InstanceMappingRow.cell_id == row.id))
        changes.update(host_mappings=(hosts, 0), instance_mappings=(queued, 0))
    deleted = from_row(row, keyring(session))
    read_version = row.version
    row.deleted = row.id
    row.deleted_at = utcnow()
    row.transport_url = SCRUBBED_URL
    row.database_connection = SCRUBBED_URL
    flush_versioned(session, row, ident, read_version)
    record_write(session, row, "delete", actor, changes)
    return deleted


def map_cell0(
    session: Session,
    *,
    database_connection: str,
    defaults: TemplateDefaults,
    actor: str | None = None,
    action: str = "create",
) -> tuple[CellMapping, bool]:
    """Create the cell0 mapping if it is missing; return it and whether it was created.

    ``action`` is what the audit trail calls the creation (``nova-import``
    for a cell0 adopted from Nova).
    """
    existing = session.scalars(live_select().where(CellMappingRow.uuid == CELL0_UUID)).first()
    if existing is not None:
        return from_row(existing, keyring(session)), False
    cell = _insert_cell(
        session,
        name=CELL0_NAME,
        uuid=CELL0_UUID,
        transport_url=NO_TRANSPORT,
        database_connection=database_connection,
        defaults=defaults,
        disabled=False,
        actor=actor,
        action=action,
    )
    return cell, True


def cell_history(session: Session, ident: str) -> list[audit.AuditEntry]:
    """The audit trail of a cell by uuid or by any name it had (also once deleted)."""
    as_uuid = normalize_uuid(ident)
    live = session.scalars(
        live_select().where(
            CellMappingRow.uuid == as_uuid if as_uuid else CellMappingRow.name == ident
        )
    ).first()
    uuids = {as_uuid} if as_uuid else set()
    if live is not None:
        uuids.add(live.uuid)
    entries = audit.history(session, uuids=uuids, name=None if as_uuid else ident)
    if not entries and live is None:
        raise CellNotFound(ident=ident)
    return entries


def _count(session: Session, model: type[ApiBase], *where: ColumnElement[bool]) -> int:
    return session.scalar(select(func.count()).select_from(model).where(*where)) or 0


def lock_mappings(session: Session) -> None:
    """Wait for, then hold until commit, the right to write cell mappings.

    Every writer of ``cell_mapping`` takes this row lock first (the write bumps
    the same row anyway), so writers never take row locks in different orders
    (no deadlock) and checks that read other cells, such as
    :func:`~cellgate.apidb.endpoints.refuse_shared_endpoints`, cannot race.
    Readers are never blocked. On SQLite it is a no-op: ``BEGIN IMMEDIATE``
    already serialises writers.
    """
    session.execute(
        select(MappingGenerationRow.id).where(MappingGenerationRow.id == 1).with_for_update()
    )


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
