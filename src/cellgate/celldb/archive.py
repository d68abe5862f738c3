"""Moving soft-deleted rows into shadow tables, and purging shadow rows: on one cell.

Each function takes a ``Connection`` already in a transaction on that cell and
does a bounded amount of work; the caller (``cellgate.admin.archive``) commits
after each call, so no transaction ever holds more than ``limit`` rows.

A soft-deleted instance has ``deleted != 0`` (its own id: see
``celldb.queries.soft_delete_instance``) and ``deleted_at`` set. Its rows in
the other :data:`~cellgate.celldb.schema.PER_INSTANCE` tables move with it:
:func:`archive_instance` moves children first and the parent last, and the
parent only in a transaction that also moves its last children, so a crash
(the transaction rolled back) never leaves a live child whose parent was
archived. A row is copied to its shadow table and deleted from its table in
the same transaction: it is always in exactly one of the two.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import ColumnElement, Connection, Table, delete, func, insert, select

from cellgate.celldb.schema import PER_INSTANCE, SHADOW, CellBase, InstanceRow

_INSTANCES: Table = CellBase.metadata.tables["instances"]


def _children() -> list[tuple[Table, str]]:
    return [(CellBase.metadata.tables[m.__tablename__], column) for m, column in PER_INSTANCE[1:]]


@dataclass
class Moved:
    """Rows moved (or, dry, that would move) per table; ``done`` once the parent moved."""

    rows: dict[str, int] = field(default_factory=dict)
    done: bool = False

    def add(self, table: str, count: int) -> None:
        if count:
            self.rows[table] = self.rows.get(table, 0) + count

    @property
    def total(self) -> int:
        return sum(self.rows.values())


def deleted_instances(
    conn: Connection, *, before: dt.datetime | None, limit: int, after_id: int = 0
) -> list[tuple[int, str]]:
    """``(id, uuid)`` of soft-deleted instances (deleted before ``before``), oldest id first."""
    stmt = select(InstanceRow.id, InstanceRow.uuid).where(
        InstanceRow.deleted != 0, InstanceRow.id > after_id
    )
    if before is not None:
        stmt = stmt.where(InstanceRow.deleted_at < before)
    rows = conn.execute(stmt.order_by(InstanceRow.id).limit(limit))
    return [(row[0], row[1]) for row in rows]


def _move(conn: Connection, table: Table, where: Sequence[object], limit: int | None) -> int:
    """Copy up to ``limit`` rows matching ``where`` to the shadow table, then delete them."""
    ids_stmt = select(table.c.id).where(*where).order_by(table.c.id)  # type: ignore[arg-type]
    if limit is not None:
        ids_stmt = ids_stmt.limit(limit)
    ids = list(conn.scalars(ids_stmt))
    if not ids:
        return 0
    shadow = SHADOW[table.name]
    names = [c.name for c in table.columns]
    chosen = select(*(table.c[n] for n in names)).where(table.c.id.in_(ids))
    conn.execute(insert(shadow).from_select(names, chosen))
    conn.execute(delete(table).where(table.c.id.in_(ids)))
    return len(ids)


def archive_instance(conn: Connection, uuid: str, *, limit: int) -> Moved:
    """Move at most ``limit`` rows of the deleted instance ``uuid`` to the shadow tables.

    Children go first; the instance row itself only when it and all its
    remaining children fit in ``limit``, so call again until ``done``.
    """
    moved = Moved()
    parent = select(_INSTANCES.c.id).where(_INSTANCES.c.uuid == uuid, _INSTANCES.c.deleted != 0)
    if conn.scalar(parent.with_for_update()) is None:  # gone, or never deleted: nothing to do
        moved.done = True
        return moved
    budget = limit
    for table, column in _children():
        count = _move(conn, table, [table.c[column] == uuid], budget)
        moved.add(table.name, count)
        budget -= count
        if budget <= 0:
            return moved  # the parent waits for the next transaction
    count = _move(conn, _INSTANCES, [_INSTANCES.c.uuid == uuid, _INSTANCES.c.deleted != 0], 1)
    moved.add(_INSTANCES.name, count)
    moved.done = True
    return moved


def count_archivable(conn: Connection, *, before: dt.datetime | None) -> Moved:
    """What archiving everything would move, per table; reads only (``--dry-run``)."""
    deleted = _INSTANCES.c.deleted != 0
    if before is not None:
        deleted = deleted & (_INSTANCES.c.deleted_at < before)
    counted = Moved(done=True)
    counted.add(_INSTANCES.name, _count(conn, _INSTANCES, deleted))
    parents = select(_INSTANCES.c.uuid).where(deleted)
    for table, column in _children():
        own = table.c.deleted != 0
        if before is not None:
            own = own & (table.c.deleted_at < before)
        counted.add(table.name, _count(conn, table, table.c[column].in_(parents) | own))
    return counted


def _count(conn: Connection, table: Table, where: ColumnElement[bool]) -> int:
    return conn.scalar(select(func.count()).select_from(table).where(where)) or 0


def deleted_children(
    conn: Connection, *, before: dt.datetime | None, limit: int
) -> list[tuple[Table, list[int]]]:
    """Ids of soft-deleted child rows (of live instances), up to ``limit`` in all."""
    found: list[tuple[Table, list[int]]] = []
    for table, _ in _children():
        stmt = select(table.c.id).where(table.c.deleted != 0)
        if before is not None:
            stmt = stmt.where(table.c.deleted_at < before)
        ids = list(conn.scalars(stmt.order_by(table.c.id).limit(limit)))
        if ids:
            found.append((table, ids))
            limit -= len(ids)
        if limit <= 0:
            break
    return found


def archive_rows(conn: Connection, table: Table, ids: Sequence[int]) -> int:
    """Move the given rows of a child table (found by :func:`deleted_children`)."""
    return _move(conn, table, [table.c.id.in_(ids), table.c.deleted != 0], None)


def present_uuids(conn: Connection, uuids: Sequence[str]) -> set[str]:
    """Which of ``uuids`` still have a row in ``instances`` (live or soft-deleted)."""
    if not uuids:
        return set()
    return set(conn.scalars(select(InstanceRow.uuid).where(InstanceRow.uuid.in_(uuids))))


def purge_batch(conn: Connection, *, before: dt.datetime, limit: int) -> Moved:
    """Delete at most ``limit`` shadow rows deleted before ``before``; ``done`` when none were left.

    Children of old archived instances (and child rows deleted on their own
    before the date) go first, the instances last, so a crash between two
    batches never leaves archived children whose instance is purged (and
    which no later purge would then find).
    """
    shadow_instances = SHADOW["instances"]
    old = shadow_instances.c.deleted_at < before
    parents = select(shadow_instances.c.uuid).where(old)
    purged = Moved()
    for table, column in _children():
        shadow = SHADOW[table.name]
        where = shadow.c[column].in_(parents) | (shadow.c.deleted_at < before)
        purged.add(shadow.name, _delete_some(conn, shadow, where, limit))
        if purged.total:
            return purged
    purged.add(shadow_instances.name, _delete_some(conn, shadow_instances, old, limit))
    purged.done = purged.total == 0
    return purged


def _delete_some(conn: Connection, table: Table, where: ColumnElement[bool], limit: int) -> int:
    ids = list(conn.scalars(select(table.c.id).where(where).order_by(table.c.id).limit(limit)))
    if ids:
        conn.execute(delete(table).where(table.c.id.in_(ids)))
    return len(ids)


def count_purgeable(conn: Connection, *, before: dt.datetime) -> Moved:
    """What purging everything deleted before ``before`` would delete; reads only."""
    shadow_instances = SHADOW["instances"]
    old = shadow_instances.c.deleted_at < before
    counted = Moved(done=True)
    counted.add(shadow_instances.name, _count(conn, shadow_instances, old))
    parents = select(shadow_instances.c.uuid).where(old)
    for table, column in _children():
        shadow = SHADOW[table.name]
        where = shadow.c[column].in_(parents) | (shadow.c.deleted_at < before)
        counted.add(shadow.name, _count(conn, shadow, where))
    return counted
