"""Tables of a cell database, the target of the ``cell`` migration line.

Deliberately minimal: instances that live in the cell, the actions taken on
each, and the services (hosts) that report from it. The reference service
extends it through new revisions of the cell line.

:data:`PER_INSTANCE` is the one place that says which tables hold rows that
belong to an instance: moving an instance to another cell copies them and
archiving a deleted instance moves them with it. A new per-instance table is
added there, or ``tests/unit/test_cell_schema.py`` fails.

Each of those tables has a *shadow* table (:data:`SHADOW`, ``shadow_<name>``)
with the same columns and types: ``cellgate db archive-deleted`` moves a
soft-deleted instance and its rows there, ``cellgate db purge`` deletes them
for good. Shadow tables are derived here from their source tables, so a
column added to a model without adding it to the shadow table in the same
revision is drift that ``tests/migrations/test_lines.py`` (models against
migrations) and ``tests/migrations/test_shadow_tables.py`` (shadow against
source, on every backend) report. Shadow tables keep the primary key (a row
is archived once) but no unique constraint and no foreign key: an archived
row never blocks a live one, and a purge deletes in any order.
"""

from __future__ import annotations

import datetime as dt
from typing import Final

from sqlalchemy import (
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from cellgate.dbtypes import Timestamp, new_metadata, utcnow


class CellBase(DeclarativeBase):
    metadata = new_metadata()


class InstanceRow(CellBase):
    __tablename__ = "instances"
    __table_args__ = (UniqueConstraint("uuid"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    uuid: Mapped[str] = mapped_column(String(36), nullable=False)
    name: Mapped[str] = mapped_column(String(255), nullable=False)
    project_id: Mapped[str] = mapped_column(String(255), nullable=False)
    user_id: Mapped[str | None] = mapped_column(String(255))
    host: Mapped[str | None] = mapped_column(String(255))
    vm_state: Mapped[str] = mapped_column(String(32), nullable=False)
    task_state: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[dt.datetime | None] = mapped_column(Timestamp, default=utcnow)
    updated_at: Mapped[dt.datetime | None] = mapped_column(Timestamp, onupdate=utcnow)
    deleted_at: Mapped[dt.datetime | None] = mapped_column(Timestamp)
    deleted: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("0"))
    #: True while the row is a copy that is not (yet, or any more) the live
    #: instance: the target of a move before the mapping flips, or the source
    #: after it. Hidden rows are never listed or shown.
    hidden: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=false())


class InstanceActionRow(CellBase):
    """One action taken on an instance (create, reboot, ...), kept with it."""

    __tablename__ = "instance_actions"
    __table_args__ = (Index("ix_instance_actions_instance_uuid", "instance_uuid"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    instance_uuid: Mapped[str] = mapped_column(
        String(36),
        ForeignKey("instances.uuid", name="fk_instance_actions_instance"),
        nullable=False,
    )
    action: Mapped[str] = mapped_column(String(255), nullable=False)
    request_id: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[dt.datetime | None] = mapped_column(Timestamp, default=utcnow)
    updated_at: Mapped[dt.datetime | None] = mapped_column(Timestamp, onupdate=utcnow)
    deleted_at: Mapped[dt.datetime | None] = mapped_column(Timestamp)
    deleted: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("0"))


class ServiceRow(CellBase):
    __tablename__ = "services"
    __table_args__ = (UniqueConstraint("host", "binary", "deleted"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    host: Mapped[str] = mapped_column(String(255), nullable=False)
    binary: Mapped[str] = mapped_column(String(255), nullable=False)
    topic: Mapped[str | None] = mapped_column(String(255))
    report_count: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("0"))
    last_seen_at: Mapped[dt.datetime | None] = mapped_column(Timestamp)
    disabled: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=false())
    #: The RPC/service version the worker on this host runs, written with
    #: every heartbeat (0: a worker older than the column).
    version: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("0"))
    #: The RPC API version (``MAJOR.MINOR``) that worker serves, written with
    #: every heartbeat since cell_0004; NULL in rows of older workers until
    #: ``db migrate-data`` fills it from ``version`` (cellgate.celldb.versions).
    rpc_version: Mapped[str | None] = mapped_column(String(16))
    created_at: Mapped[dt.datetime | None] = mapped_column(Timestamp, default=utcnow)
    updated_at: Mapped[dt.datetime | None] = mapped_column(Timestamp, onupdate=utcnow)
    deleted_at: Mapped[dt.datetime | None] = mapped_column(Timestamp)
    deleted: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("0"))


#: Tables whose rows belong to one instance, parent first, each with the
#: column that names the instance. Moves copy and archives move exactly these.
PER_INSTANCE: Final[tuple[tuple[type[CellBase], str], ...]] = (
    (InstanceRow, "uuid"),
    (InstanceActionRow, "instance_uuid"),
)


#: The prefix of every shadow table's name.
SHADOW_PREFIX: Final = "shadow_"

#: Indexes a shadow table has, beyond its primary key: what archive and purge
#: look rows up by (the instance, and the age of a deleted instance).
_SHADOW_INDEXES: Final = {
    "instances": ("deleted_at", "uuid"),
    "instance_actions": ("instance_uuid",),
}


def _shadow_of(source: Table) -> Table:
    columns = [
        Column(
            c.name,
            c.type,
            primary_key=c.primary_key,
            autoincrement=False,
            nullable=c.nullable or False,
        )
        for c in source.columns
    ]
    indexes = [
        Index(f"ix_{SHADOW_PREFIX}{source.name}_{name}", name)
        for name in _SHADOW_INDEXES.get(source.name, ())
    ]
    return Table(SHADOW_PREFIX + source.name, CellBase.metadata, *columns, *indexes)


#: Source table name -> its shadow table, for every table in :data:`PER_INSTANCE`.
SHADOW: Final[dict[str, Table]] = {
    model.__tablename__: _shadow_of(CellBase.metadata.tables[model.__tablename__])
    for model, _ in PER_INSTANCE
}
