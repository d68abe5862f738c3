"""Tables of a cell database, the target of the ``cell`` migration line.

Deliberately minimal: instances that live in the cell, the actions taken on
each, and the services (hosts) that report from it. The reference service
extends it through new revisions of the cell line.

:data:`PER_INSTANCE` is the one place that says which tables hold rows that
belong to an instance: moving an instance to another cell copies them and
archiving a deleted instance moves them with it. A new per-instance table is
added there, or ``tests/unit/test_cell_schema.py`` fails.
"""

from __future__ import annotations

import datetime as dt
from typing import Final

from sqlalchemy import Boolean, ForeignKey, Index, Integer, String, UniqueConstraint, false, text
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
