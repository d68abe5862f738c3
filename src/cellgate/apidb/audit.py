"""The audit trail of cell-mapping changes: who changed what, and when.

Every write in :mod:`cellgate.apidb.mappings` and :mod:`cellgate.apidb.updates`,
and every host mapped or unmapped (:mod:`cellgate.apidb.hosts`), adds one
``cell_mapping_audit`` row in the same transaction as the change, so the trail can never claim a
change that did not land, nor miss one that did. URLs are recorded masked;
a change that only touches a password is recorded as such
(``"... (secret changed)"``), never with either password.

Entries are keyed by cell uuid, so ``cellgate cell history NAME`` follows a
cell across renames and after its deletion.
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

    def to_dict(self) -> dict[str, Any]:
        return {
            "at": self.at.isoformat() + "Z",
            "cell_uuid": self.cell_uuid,
            "cell_name": self.cell_name,
            "action": self.action,
            "actor": self.actor,
            "version": self.version,
            "changes": self.changes,
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
    """Add one entry about a cell in the caller's transaction."""
    session.add(
        CellMappingAuditRow(
            cell_uuid=cell_uuid,
            cell_name=cell_name,
            action=action,
            actor=(actor or local_actor())[:255],
            version=version,
            changes=json.dumps({k: list(v) for k, v in changes.items()}, sort_keys=True),
        )
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
    return [
        AuditEntry(
            at=r.created_at,
            cell_uuid=r.cell_uuid,
            cell_name=r.cell_name,
            action=r.action,
            actor=r.actor,
            version=r.version,
            changes=json.loads(r.changes),
        )
        for r in rows
    ]
