"""Instance mappings: which cell each instance lives in.

Looking an instance up is the first step of every per-instance request
("nova show <uuid>" in the spec), so the read is one indexed join.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from cellgate.apidb.mappings import CellMapping
from cellgate.apidb.schema import CellMappingRow, InstanceMappingRow
from cellgate.dbtypes import utcnow


@dataclass(frozen=True)
class InstanceMapping:
    instance_uuid: str
    cell_uuid: str | None
    project_id: str
    user_id: str | None
    queued_for_delete: bool
    created_at: dt.datetime | None

    def minimal(self) -> dict[str, Any]:
        """What is known without the cell: Nova's 2.69 record for a down cell."""
        return {
            "uuid": self.instance_uuid,
            "project_id": self.project_id,
            "status": "UNKNOWN",
            "created_at": self.created_at.isoformat() + "Z" if self.created_at else None,
            "cell_down": True,
        }


_SELECT = select(
    InstanceMappingRow.instance_uuid,
    CellMappingRow.uuid,
    InstanceMappingRow.project_id,
    InstanceMappingRow.user_id,
    InstanceMappingRow.queued_for_delete,
    InstanceMappingRow.created_at,
).outerjoin(CellMappingRow, CellMappingRow.id == InstanceMappingRow.cell_id)


def add_mapping(
    session: Session,
    *,
    instance_uuid: str,
    cell: CellMapping,
    project_id: str,
    user_id: str | None,
) -> None:
    cell_id = session.scalars(
        select(CellMappingRow.id).where(
            CellMappingRow.uuid == cell.uuid, CellMappingRow.deleted == 0
        )
    ).one()
    session.add(
        InstanceMappingRow(
            instance_uuid=instance_uuid,
            cell_id=cell_id,
            project_id=project_id,
            user_id=user_id,
            queued_for_delete=False,
            created_at=utcnow(),
        )
    )
    session.flush()


def get_mapping(session: Session, instance_uuid: str) -> InstanceMapping | None:
    row = session.execute(_SELECT.where(InstanceMappingRow.instance_uuid == instance_uuid)).first()
    return InstanceMapping(*row) if row else None


def mappings_in_cells(
    session: Session, cell_uuids: Sequence[str], *, project_id: str | None
) -> list[InstanceMapping]:
    """Live mappings of instances in the given cells (for down-cell records)."""
    if not cell_uuids:
        return []
    stmt = _SELECT.where(
        CellMappingRow.uuid.in_(cell_uuids), InstanceMappingRow.queued_for_delete.is_(False)
    )
    if project_id is not None:
        stmt = stmt.where(InstanceMappingRow.project_id == project_id)
    return [InstanceMapping(*row) for row in session.execute(stmt)]


def cells_holding(session: Session, project_id: str) -> set[str]:
    """Uuids of the cells that hold at least one live instance of ``project_id``.

    What a project-scoped listing needs to ask only those cells; one index
    range scan (``ix_instance_mapping_project_cell``).
    """
    stmt = (
        select(CellMappingRow.uuid)
        .join(InstanceMappingRow, CellMappingRow.id == InstanceMappingRow.cell_id)
        .where(
            InstanceMappingRow.project_id == project_id,
            InstanceMappingRow.queued_for_delete.is_(False),
        )
        .distinct()
    )
    return set(session.scalars(stmt))


def queue_for_delete(session: Session, instance_uuid: str) -> None:
    session.execute(
        update(InstanceMappingRow)
        .where(InstanceMappingRow.instance_uuid == instance_uuid)
        .values(queued_for_delete=True, updated_at=utcnow())
    )


def remove_mapping(session: Session, instance_uuid: str) -> None:
    """Undo :func:`add_mapping` (compensation when the cell write fails)."""
    session.query(InstanceMappingRow).filter(
        InstanceMappingRow.instance_uuid == instance_uuid
    ).delete()


def flip_mapping(session: Session, instance_uuid: str, *, from_cell: str, to_cell: str) -> bool:
    """Point the instance's mapping at ``to_cell`` if it still points at ``from_cell``.

    The compare-and-set is the version check of a move: the ``WHERE`` names
    the cell the mover read, so a mapping changed meanwhile (deleted, or
    moved by someone else) is not overwritten. True if the mapping now
    points at ``to_cell`` (flipped here, or by an earlier run of the same
    move); False if it points anywhere else.
    """
    pairs = session.execute(
        select(CellMappingRow.uuid, CellMappingRow.id).where(
            CellMappingRow.uuid.in_((from_cell, to_cell)), CellMappingRow.deleted == 0
        )
    )
    ids = {uuid: cell_id for uuid, cell_id in pairs}
    if from_cell not in ids or to_cell not in ids:
        return False
    result = session.execute(
        update(InstanceMappingRow)
        .where(
            InstanceMappingRow.instance_uuid == instance_uuid,
            InstanceMappingRow.cell_id == ids[from_cell],
            InstanceMappingRow.queued_for_delete.is_(False),
        )
        .values(cell_id=ids[to_cell], updated_at=utcnow())
    )
    if getattr(result, "rowcount", 0) == 1:
        return True
    found = get_mapping(session, instance_uuid)
    return found is not None and found.cell_uuid == to_cell


def live_in_cell(session: Session, cell_uuid: str, *, limit: int | None = None) -> list[str]:
    """Uuids of the live (not queued for delete) instances mapped to the cell, sorted."""
    stmt = (
        select(InstanceMappingRow.instance_uuid)
        .join(CellMappingRow, CellMappingRow.id == InstanceMappingRow.cell_id)
        .where(CellMappingRow.uuid == cell_uuid, InstanceMappingRow.queued_for_delete.is_(False))
        .order_by(InstanceMappingRow.instance_uuid)
    )
    if limit is not None:
        stmt = stmt.limit(limit)
    return list(session.scalars(stmt))
