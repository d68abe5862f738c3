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
