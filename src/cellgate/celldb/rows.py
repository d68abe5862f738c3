"""An instance's rows as data: read, hash, copy, hide and delete them, on one cell.

Moving an instance between cells copies every row that belongs to it. Which
tables those are is declared once, in :data:`~cellgate.celldb.schema.PER_INSTANCE`;
nothing here names a table, so a per-instance table added there is copied,
verified and deleted with the others without a change here.

A row is copied as its columns' values without the surrogate key (an
autoincrement integer, which the target cell numbers itself) and without
``hidden`` (the copy's visibility, which differs by design). The same
projection is hashed, so "the copy matches the source" means every column
that carries data is equal, row for row, and the number of rows is equal.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from typing import Any, Final

from sqlalchemy import Column, Integer, Table, delete, insert, select, update
from sqlalchemy.orm import Session

from cellgate.celldb.schema import PER_INSTANCE, InstanceRow

#: Table name -> its rows (column -> value), in a canonical order.
InstanceRows = dict[str, list[dict[str, Any]]]

_VISIBILITY: Final = "hidden"


def _table(model: type[Any]) -> Table:
    table = model.__table__
    assert isinstance(table, Table)
    return table


def _copied(column: Column[Any]) -> bool:
    surrogate = column.primary_key and isinstance(column.type, Integer)
    return not surrogate and column.name != _VISIBILITY


def _canonical(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.isoformat()
    return value


def _row_text(row: dict[str, Any]) -> str:
    return json.dumps({k: _canonical(v) for k, v in row.items()}, sort_keys=True, default=str)


def read_rows(session: Session, uuid: str, *, for_update: bool = False) -> InstanceRows:
    """Every row of the instance in this cell, per table (parents first).

    ``for_update`` locks them (``SELECT ... FOR UPDATE``; SQLite's writer
    lock is taken by the session's ``BEGIN IMMEDIATE``) so that nothing
    changes them until the caller's transaction ends.
    """
    out: InstanceRows = {}
    for model, key in PER_INSTANCE:
        table = _table(model)
        columns = [c for c in table.columns if _copied(c)]
        stmt = select(*columns).where(table.c[key] == uuid)
        if for_update:
            stmt = stmt.with_for_update()
        rows = [dict(r._mapping) for r in session.execute(stmt)]
        out[table.name] = sorted(rows, key=_row_text)
    return out


def digest(rows: InstanceRows) -> tuple[int, str]:
    """(number of rows, SHA-256 over every row's values), the same on every backend."""
    h = hashlib.sha256()
    count = 0
    for name in sorted(rows):
        h.update(name.encode())
        for row in rows[name]:
            h.update(b"\n" + _row_text(row).encode())
            count += 1
        h.update(b"\0")
    return count, h.hexdigest()


def delete_rows(session: Session, uuid: str) -> int:
    """Delete every row of the instance here, children first; how many went."""
    gone = 0
    for model, key in reversed(PER_INSTANCE):
        table = _table(model)
        result = session.execute(delete(table).where(table.c[key] == uuid))
        gone += getattr(result, "rowcount", 0) or 0
    return gone


def write_copy(session: Session, uuid: str, rows: InstanceRows) -> None:
    """Replace whatever this cell has of the instance with ``rows``, hidden.

    Idempotent: a copy interrupted and re-run leaves exactly one copy.
    """
    delete_rows(session, uuid)
    for model, _key in PER_INSTANCE:
        table = _table(model)
        values = rows.get(table.name, [])
        if not values:
            continue
        if _VISIBILITY in table.c:
            values = [{**v, _VISIBILITY: True} for v in values]
        session.execute(insert(table), values)


def set_hidden(session: Session, uuid: str, hidden: bool) -> bool:
    """Hide or show the instance's row here; False if this cell has no row of it.

    ``updated_at`` is set to itself: visibility is not a change to the
    instance, and the column's ``onupdate`` would otherwise make the copy
    differ from its source.
    """
    result = session.execute(
        update(InstanceRow)
        .where(InstanceRow.uuid == uuid)
        .values(hidden=hidden, updated_at=InstanceRow.updated_at)
    )
    return bool(getattr(result, "rowcount", 0))


def visibility(session: Session, uuid: str) -> bool | None:
    """True if the instance's row here is visible, False if hidden, None if absent."""
    hidden = session.scalar(select(InstanceRow.hidden).where(InstanceRow.uuid == uuid))
    return None if hidden is None else not hidden
