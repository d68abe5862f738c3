"""Changing a live cell mapping: updates (with a masked preview) and re-sealing its URLs.

Split from :mod:`cellgate.apidb.mappings`, whose building blocks this uses,
because both operations follow the same pattern there is no point repeating
per caller: lock the row, decrypt it with the session's key ring, compute the
change, write it through the row's version check, and record it in the audit
trail in the same transaction. ``update_cell`` never writes when nothing
changes, and ``reseal_cell`` re-checks under the lock, so an interrupted
``rotate-key`` can simply be run again. ``reseal_audit`` does the same for
the audit trail's ``changes``, a batch of entries per transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from cellgate.apidb import audit
from cellgate.apidb.endpoints import refuse_shared_endpoints
from cellgate.apidb.mappings import (
    CELL0_NAME,
    CELL0_UUID,
    CellMapping,
    check_name,
    check_urls,
    encryption_of,
    find_row,
    flush_versioned,
    from_row,
    keyring,
    live_select,
    lock_mappings,
    record_write,
    refuse_duplicates,
    seal,
)
from cellgate.apidb.schema import CellMappingAuditRow, CellMappingRow
from cellgate.errors import ConfigError, EncryptionKeyError, Hint, StaleCell
from cellgate.keyring import KeyRing, is_current, is_encrypted
from cellgate.urls import TemplateDefaults


@dataclass(frozen=True)
class CellUpdate:
    """What an update would change, masked: ``cell update --dry-run`` prints this."""

    cell: CellMapping  # as read, before the change
    changes: dict[str, audit.Change]

    def to_dict(self) -> dict[str, Any]:
        return {
            "uuid": self.cell.uuid,
            "name": self.cell.name,
            "version": self.cell.version,
            "changes": {k: list(v) for k, v in self.changes.items()},
        }


def preview_update(
    session: Session,
    ident: str,
    *,
    defaults: TemplateDefaults,
    name: str | None = None,
    transport_url: str | None = None,
    database_connection: str | None = None,
    disabled: bool | None = None,
    expected_version: int | None = None,
) -> CellUpdate:
    """Validate an update like :func:`update_cell` would, and return its masked diff."""
    _, plan = _plan_update(
        session,
        ident,
        defaults=defaults,
        name=name,
        transport_url=transport_url,
        database_connection=database_connection,
        disabled=disabled,
        expected_version=expected_version,
    )
    return plan


def _plan_update(
    session: Session,
    ident: str,
    *,
    defaults: TemplateDefaults,
    name: str | None,
    transport_url: str | None,
    database_connection: str | None,
    disabled: bool | None,
    expected_version: int | None,
) -> tuple[CellMappingRow, CellUpdate]:
    row = find_row(session, ident, for_update=True)
    current = from_row(row, keyring(session))
    if expected_version is not None and expected_version != row.version:
        raise StaleCell(ident=ident, expected=expected_version, found=row.version)
    is_cell0 = row.uuid == CELL0_UUID
    if name is not None:
        name = check_name(name, cell0=is_cell0)
        if is_cell0 and name != CELL0_NAME:
            raise ConfigError(f"cell0 must keep the name {CELL0_NAME!r}")
        refuse_duplicates(session, name=name, uuid=row.uuid, exclude_id=row.id)
    if disabled and is_cell0:
        raise ConfigError("cell0 cannot be disabled", hint=Hint.CELL0_CANNOT_BE_DISABLED)
    old_transport = current.transport_url.reveal()
    old_database = current.database_connection.reveal()
    if transport_url is not None or database_connection is not None:
        check_urls(
            old_transport if transport_url is None else transport_url,
            old_database if database_connection is None else database_connection,
            defaults,
            cell0=is_cell0,
        )
        refuse_shared_endpoints(
            session,
            label=current.label,
            transport_url=old_transport if transport_url is None else transport_url,
            database_connection=old_database
            if database_connection is None
            else database_connection,
            defaults=defaults,
            ring=keyring(session),
            exclude_id=row.id,
        )
    changes: dict[str, audit.Change | None] = {
        "name": None if name in (None, row.name) else (row.name, name),
        "transport_url": None
        if transport_url is None
        else audit.url_change(old_transport, transport_url),
        "database_connection": None
        if database_connection is None
        else audit.url_change(old_database, database_connection),
        "disabled": None if disabled in (None, row.disabled) else (row.disabled, disabled),
    }
    return row, CellUpdate(current, {k: v for k, v in changes.items() if v is not None})


def update_cell(
    session: Session,
    ident: str,
    *,
    defaults: TemplateDefaults,
    name: str | None = None,
    transport_url: str | None = None,
    database_connection: str | None = None,
    disabled: bool | None = None,
    expected_version: int | None = None,
    actor: str | None = None,
) -> CellMapping:
    """Change the given fields of a live cell; fields left as ``None`` keep their value.

    With ``expected_version`` (the ``version`` the caller read), the update is
    refused with :class:`StaleCell` if anyone changed the cell since. An
    update that changes nothing writes nothing.
    """
    row, plan = _plan_update(
        session,
        ident,
        defaults=defaults,
        name=name,
        transport_url=transport_url,
        database_connection=database_connection,
        disabled=disabled,
        expected_version=expected_version,
    )
    if not plan.changes:
        return plan.cell
    ring = keyring(session)
    if "name" in plan.changes and name is not None:
        row.name = name
    if "transport_url" in plan.changes and transport_url is not None:
        row.transport_url = seal(ring, transport_url, cell_uuid=row.uuid, column="transport_url")
    if "database_connection" in plan.changes and database_connection is not None:
        row.database_connection = seal(
            ring, database_connection, cell_uuid=row.uuid, column="database_connection"
        )
    if disabled is not None:
        row.disabled = disabled
    flush_versioned(session, row, ident, row.version)
    record_write(session, row, "update", actor, plan.changes)
    return from_row(row, ring)


#: What ``cellgate cell rotate-key`` / ``encrypt`` / ``decrypt`` do to one column value.
ResealMode = Literal["rotate-key", "encrypt", "decrypt"]


def reseal_needed(row: CellMappingRow, ring: KeyRing, mode: ResealMode) -> bool:
    """Whether ``mode`` would rewrite either URL column of ``row``."""
    return any(
        value_needs_reseal(v, ring, mode) for v in (row.transport_url, row.database_connection)
    )


def value_needs_reseal(stored: str, ring: KeyRing, mode: ResealMode) -> bool:
    """Whether ``mode`` rewrites one stored value (a URL column or an audit entry).

    ``rotate-key`` rewrites every encrypted value not in the current form
    under the first key (so old ``fernet`` values too); ``encrypt`` every
    value not in the current form (plaintext and ``fernet``) ; ``decrypt``
    every encrypted one.
    """
    if mode == "rotate-key":
        return ring.needs_rotation(stored)
    if mode == "encrypt":
        return not is_current(stored, ring.primary_id)
    return is_encrypted(stored)


def reseal_cell(
    session: Session, uuid: str, *, mode: ResealMode, actor: str | None = None
) -> bool:
    """Re-store one live cell's URLs per ``mode``; ``False`` if there was nothing to do.

    The row is locked and re-checked here, so runs that overlap, or resume
    after an interruption, never redo or undo each other's work.
    """
    lock_mappings(session)
    row = session.scalars(
        live_select().where(CellMappingRow.uuid == uuid).with_for_update()
    ).first()
    ring = keyring(session)
    if row is None or not reseal_needed(row, ring, mode):
        return False
    cell = from_row(row, ring)  # decrypts, or raises EncryptionKeyError naming the key
    before = encryption_of(row)
    read_version = row.version

    def restore(stored: str, plaintext: str, column: str) -> str:
        if not value_needs_reseal(stored, ring, mode):
            return stored
        if mode == "decrypt":
            return plaintext
        return seal(ring, plaintext, cell_uuid=row.uuid, column=column)

    row.transport_url = restore(row.transport_url, cell.transport_url.reveal(), "transport_url")
    row.database_connection = restore(
        row.database_connection, cell.database_connection.reveal(), "database_connection"
    )
    flush_versioned(session, row, cell.label, read_version)
    record_write(session, row, mode, actor, {"encryption": (before, encryption_of(row))})
    return True


@dataclass
class AuditReseal:
    """What one batch of :func:`reseal_audit` did (or, with ``write=False``, would do)."""

    last_id: int | None = None
    changed: int = 0
    unchanged: int = 0
    #: Entries ``mode`` would rewrite but no configured key opens: left as they are.
    unreadable: int = 0


def reseal_audit(
    session: Session,
    *,
    mode: ResealMode,
    after_id: int,
    limit: int,
    cell_uuid: str | None = None,
    write: bool = True,
) -> AuditReseal:
    """Re-store the ``changes`` of up to ``limit`` audit entries with ids above ``after_id``.

    Entries are walked in id order and locked, so a run that is interrupted
    resumes where it stopped, and overlapping runs never undo each other.
    An entry no configured key opens is counted in ``unreadable`` and left
    alone: it cannot be rewritten, and refusing the whole run over it would
    make a lost key block every later rotation (``cell history`` marks it).
    ``last_id`` is ``None`` once there are no more entries.
    """
    ring = keyring(session)
    stmt = (
        select(CellMappingAuditRow)
        .where(CellMappingAuditRow.id > after_id)
        .order_by(CellMappingAuditRow.id)
        .limit(limit)
    )
    if cell_uuid is not None:
        stmt = stmt.where(CellMappingAuditRow.cell_uuid == cell_uuid)
    if write:
        stmt = stmt.with_for_update()
    result = AuditReseal()
    for row in session.scalars(stmt):
        result.last_id = row.id
        if not value_needs_reseal(row.changes, ring, mode):
            result.unchanged += 1
            continue
        try:
            text = audit.open_changes(ring, row)
        except EncryptionKeyError:
            result.unreadable += 1
            continue
        result.changed += 1
        if write:
            row.changes = text if mode == "decrypt" else audit.seal_changes(ring, row, text)
    return result
