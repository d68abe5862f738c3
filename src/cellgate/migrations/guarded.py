"""Migration operations that may run twice: how an interrupted sync resumes on MariaDB.

MariaDB and MySQL commit every DDL statement as it runs. A revision stopped
half-way (Ctrl-C, ``kill -9``, a lost connection, a crashed host) leaves some
of its tables and columns in place while the version table still names the
revision before it, so the next run applies the revision again from its
first statement and, with plain ``op.*`` calls, fails on "already exists":
the operator would have to undo the half by hand.

Every operation in cellgate's revisions therefore goes through these
functions, which look at the live schema first and do only what is missing.
Applying a revision again finishes it. On SQLite and PostgreSQL, where DDL is
transactional and an interrupted revision was rolled back whole, the checks
find nothing done and cost one catalogue query each.

Each function is the ``alembic.op`` call of the same name, guarded; the
checks ask SQLAlchemy's inspector, so they work on every backend alike. A
guard never takes a *different* object for the one it would create: a table
that exists with other columns than the revision gives it is a conflict
(:class:`~cellgate.errors.MigrationError`), not something to build on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

from cellgate.errors import MigrationError


def _inspector() -> sa.Inspector:
    # A fresh inspector every time: inspectors cache what they have read.
    return sa.inspect(op.get_bind())


def has_table(name: str) -> bool:
    return _inspector().has_table(name)


def has_column(table: str, column: str) -> bool:
    return has_table(table) and column in {c["name"] for c in _inspector().get_columns(table)}


def has_index(table: str, name: str) -> bool:
    return has_table(table) and name in {i["name"] for i in _inspector().get_indexes(table)}


def create_table(name: str, *elements: Any) -> sa.Table:
    """``op.create_table`` unless the table exists; the table either way (for inserts)."""
    if has_table(name):
        table = sa.Table(name, sa.MetaData(), *elements)
        found = {c["name"] for c in _inspector().get_columns(name)}
        if found != set(table.c.keys()):
            raise MigrationError(
                f"table {name} already exists with other columns than this revision creates "
                f"(found {', '.join(sorted(found))})"
            )
        return table
    table = op.create_table(name, *elements)
    assert table is not None
    return table


def add_column(table: str, column: sa.Column[Any]) -> None:
    if not has_column(table, column.name):
        op.add_column(table, column)


def create_index(name: str, table: str, columns: Sequence[str]) -> None:
    if not has_index(table, name):
        op.create_index(name, table, list(columns))


def insert_missing(table: sa.Table, rows: Sequence[dict[str, Any]], *, key: str) -> None:
    """Insert the rows whose ``key`` column value is not in ``table`` yet."""
    column = table.c[key]
    bind = op.get_bind()
    present = set(bind.scalars(sa.select(column).where(column.in_([r[key] for r in rows]))))
    missing = [r for r in rows if r[key] not in present]
    if missing:
        op.bulk_insert(table, missing)


def drop_table(name: str) -> None:
    if has_table(name):
        op.drop_table(name)


def drop_index(name: str, table: str) -> None:
    if has_index(table, name):
        op.drop_index(name, table_name=table)


def drop_column(table: str, column: str) -> None:
    if has_column(table, column):
        with op.batch_alter_table(table) as batch:
            batch.drop_column(column)
