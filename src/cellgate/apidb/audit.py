"""The audit trail of cell-mapping changes: who changed what, and when.

Every write in :mod:`cellgate.apidb.mappings` and :mod:`cellgate.apidb.updates`,
and every host mapped or unmapped (:mod:`cellgate.apidb.hosts`), adds one
``cell_mapping_audit`` row in the same transaction as the change, so the trail can never claim a
change that did not land, nor miss one that did. URLs are recorded masked;
a change that only touches a password is recorded as such
(``"... (secret changed)"``), never with either password.

Entries are keyed by cell uuid, so ``cellgate cell history NAME`` follows a
cell across renames and after its deletion.

Masked URLs still name hosts, users and databases, and host entries name
compute hosts, so with ``[api_database] encryption_keys`` set ``changes`` is
stored encrypted with the same keys as the URLs (:mod:`cellgate.keyring`),
bound to its entry (id and cell uuid): the entry is inserted, flushed for its
id, then sealed, all in the caller's transaction. ``cell rotate-key`` and
``cell encrypt`` rewrite old entries too. An entry that no configured key
opens is still listed, with :attr:`AuditEntry.unreadable` saying why instead
of its changes; one bad entry never hides the rest of the trail.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from cellgate.apidb.schema import CellMappingAuditRow
from cellgate.errors import EncryptionKeyError
from cellgate.keyring import KeyRing, audit_binding, session_ring
from cellgate.urls import mask_url

#: What a masked URL gets when only its secret part changed.
SECRET_CHANGED: Final = " (secret changed)"

#: One recorded field change: ``(before, after)``, both already safe to print.
Change = tuple[Any, Any]


def local_actor() -> str:
    """``user@host`` of this process: who a CLI or library change is recorded as."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry and no $USER, as in some containers
        user = f"uid {os.getuid()}"
    return f"{user}@{socket.gethostname()}"[:255]


def url_change(before: str | None, after: str | None) -> Change | None:
    """The masked ``(before, after)`` of a URL field, or ``None`` if it did not change."""
    if before == after:
        return None
    old = mask_url(before) if before is not None else None
    new = mask_url(after) if after is not None else None
    if old == new and new is not None:
        new += SECRET_CHANGED
    return (old, new)


@dataclass(frozen=True)
class AuditEntry:
    """One change, as ``cellgate cell history`` prints it."""

    at: dt.datetime
    cell_uuid: str
    cell_name: str | None
    action: str
    actor: str
    version: int | None
    changes: dict[str, list[Any]]
    #: Why ``changes`` could not be read (no configured key opens it), else ``None``.
    unreadable: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "at": self.at.isoformat() + "Z",
            "cell_uuid": self.cell_uuid,
            "cell_name": self.cell_name,
            "action": self.action,
            "actor": self.actor,
            "version": self.version,
            "changes": self.changes,
            "unreadable": self.unreadable,
        }


def record(
    session: Session,
    *,
    cell_uuid: str,
    cell_name: str | None,
    version: int | None,
    action: str,
    actor: str | None,
    changes: Mapping[str, Change],
) -> None:
    """Add one entry about a cell in the caller's transaction (``changes`` sealed if keyed)."""
    text = json.dumps({k: list(v) for k, v in changes.items()}, sort_keys=True)
    ring = session_ring(session.info)
    row = CellMappingAuditRow(
        cell_uuid=cell_uuid,
        cell_name=cell_name,
        action=action,
        actor=(actor or local_actor())[:255],
        version=version,
        changes="" if ring else text,
    )
    session.add(row)
    if ring:
        session.flush()  # for the id the ciphertext is bound to
        row.changes = seal_changes(ring, row, text)


def seal_changes(ring: KeyRing, row: CellMappingAuditRow, text: str) -> str:
    """``text`` (an entry's changes as JSON) encrypted for ``row``, which has its id."""
    return ring.encrypt(text, bound_to=audit_binding(row.id, row.cell_uuid))


def open_changes(ring: KeyRing, row: CellMappingAuditRow) -> str:
    """An entry's changes as JSON; :class:`EncryptionKeyError` (naming the entry) if sealed shut."""
    return ring.decrypt(
        row.changes,
        what=f"audit entry {row.id} of cell {row.cell_name or row.cell_uuid} changes",
        bound_to=audit_binding(row.id, row.cell_uuid),
    )


def history(session: Session, *, uuids: set[str], name: str | None) -> list[AuditEntry]:
    """Entries of the cells with these uuids, or that were ever called ``name``; oldest first."""
    named = (
        select(CellMappingAuditRow.cell_uuid).where(CellMappingAuditRow.cell_name == name)
        if name is not None
        else None
    )
    clauses = [CellMappingAuditRow.cell_uuid.in_(uuids)] if uuids else []
    if named is not None:
        clauses.append(CellMappingAuditRow.cell_uuid.in_(named))
    if not clauses:
        return []
    rows = session.scalars(
        select(CellMappingAuditRow).where(or_(*clauses)).order_by(CellMappingAuditRow.id)
    ).all()
    ring = session_ring(session.info)
    return [_entry(ring, r) for r in rows]


def _entry(ring: KeyRing, row: CellMappingAuditRow) -> AuditEntry:
    changes: dict[str, list[Any]] = {}
    unreadable: str | None = None
    try:
        changes = json.loads(open_changes(ring, row))
    except EncryptionKeyError as exc:
        unreadable = str(exc)
    return AuditEntry(
        at=row.created_at,
        cell_uuid=row.cell_uuid,
        cell_name=row.cell_name,
        action=row.action,
        actor=row.actor,
        version=row.version,
        changes=changes,
        unreadable=unreadable,
    )
