"""What archiving removes from the API database: mappings of archived instances, old cells.

``cellgate db archive-deleted`` moves a cell's soft-deleted instances into
shadow tables; their instance mappings then point at nothing and are removed
here, in batches, each batch one transaction. Only mappings that name *that*
cell are touched: the deleted copy of an instance moved to another cell is
archived in the old cell while its mapping (to the new one) stays.

A soft-deleted ``cell_mapping`` row holds no credentials (its URLs are
scrubbed) but blocks nothing either; it is kept for ``retention`` so that
``cell history`` and audits can still name it, then deleted. Its audit trail
is keyed by uuid and stays.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from sqlalchemy import ColumnElement, delete, exists, func, select
from sqlalchemy.orm import Session

from cellgate.apidb import audit
from cellgate.apidb.mappings import bump_generation
from cellgate.apidb.schema import CellMappingRow, HostMappingRow, InstanceMappingRow


def _in_cell(cell_uuid: str) -> ColumnElement[bool]:
    cell_id = select(CellMappingRow.id).where(CellMappingRow.uuid == cell_uuid)
    return InstanceMappingRow.cell_id.in_(cell_id.scalar_subquery())


def remove_instance_mappings(
    session: Session, cell_uuid: str, uuids: Sequence[str], *, dry_run: bool = False
) -> int:
    """Delete (or count) the mappings of ``uuids`` that point at cell ``cell_uuid``."""
    if not uuids:
        return 0
    where = (InstanceMappingRow.instance_uuid.in_(uuids), _in_cell(cell_uuid))
    if dry_run:
        return (
            session.scalar(select(func.count()).select_from(InstanceMappingRow).where(*where)) or 0
        )
    return session.execute(delete(InstanceMappingRow).where(*where)).rowcount  # type: ignore[attr-defined, no-any-return]


def queued_for_delete(session: Session, cell_uuid: str, *, after: str, limit: int) -> list[str]:
    """Instance uuids in cell ``cell_uuid`` queued for delete, after ``after`` in uuid order."""
    stmt = (
        select(InstanceMappingRow.instance_uuid)
        .where(
            _in_cell(cell_uuid),
            InstanceMappingRow.queued_for_delete.is_(True),
            InstanceMappingRow.instance_uuid > after,
        )
        .order_by(InstanceMappingRow.instance_uuid)
        .limit(limit)
    )
    return list(session.scalars(stmt))


def expired_cells(session: Session, *, deleted_before: dt.datetime, limit: int) -> list[str]:
    """Uuids of soft-deleted cell rows deleted before the cutoff that nothing refers to."""
    stmt = (
        select(CellMappingRow.uuid)
        .where(
            CellMappingRow.deleted != 0,
            CellMappingRow.deleted_at < deleted_before,
            ~exists().where(HostMappingRow.cell_id == CellMappingRow.id),
            ~exists().where(InstanceMappingRow.cell_id == CellMappingRow.id),
        )
        .order_by(CellMappingRow.id)
        .limit(limit)
    )
    return list(session.scalars(stmt))


def remove_expired_cells(session: Session, uuids: Sequence[str], *, actor: str | None) -> None:
    """Delete soft-deleted cell rows (from :func:`expired_cells`), each with an audit entry."""
    rows = session.scalars(
        select(CellMappingRow).where(CellMappingRow.uuid.in_(uuids), CellMappingRow.deleted != 0)
    ).all()
    for row in rows:
        audit.record(
            session,
            cell_uuid=row.uuid,
            cell_name=row.name,
            version=row.version,
            action="purge",
            actor=actor,
            changes={"row": ("soft-deleted", "removed")},
        )
        session.delete(row)
    if rows:
        session.flush()
        bump_generation(session)
