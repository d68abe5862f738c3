"""Tables of a cell database, the target of the ``cell`` migration line.

Deliberately minimal: instances that live in the cell and the services
(hosts) that report from it. The reference service extends it through new
revisions of the cell line.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Boolean, Integer, String, UniqueConstraint, false, text
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
    created_at: Mapped[dt.datetime | None] = mapped_column(Timestamp, default=utcnow)
    updated_at: Mapped[dt.datetime | None] = mapped_column(Timestamp, onupdate=utcnow)
    deleted_at: Mapped[dt.datetime | None] = mapped_column(Timestamp)
    deleted: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("0"))
