"""Tables of the API database, the target of the ``api`` migration line.

``cell_mapping`` follows the cells v2 mapping spec column for column. One
deliberate tightening: ``deleted`` is NOT NULL (0 for live rows, the row id
once soft-deleted), because the unique constraints on ``(uuid, deleted)`` and
``(name, deleted)`` could not hold with NULLs, which every backend treats as
distinct.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    Boolean,
    ForeignKey,
    Index,
    Integer,
    String,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from cellgate.dbtypes import LongText, Timestamp, new_metadata, utcnow


class ApiBase(DeclarativeBase):
    metadata = new_metadata()


class CellMappingRow(ApiBase):
    __tablename__ = "cell_mapping"
    __table_args__ = (
        UniqueConstraint("uuid", "deleted"),
        UniqueConstraint("name", "deleted"),
    )

    created_at: Mapped[dt.datetime | None] = mapped_column(Timestamp, default=utcnow)
    updated_at: Mapped[dt.datetime | None] = mapped_column(Timestamp, onupdate=utcnow)
    deleted_at: Mapped[dt.datetime | None] = mapped_column(Timestamp)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    uuid: Mapped[str] = mapped_column(String(36), nullable=False)
    name: Mapped[str | None] = mapped_column(String(255))
    deleted: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("0"))
    transport_url: Mapped[str] = mapped_column(LongText, nullable=False)
    database_connection: Mapped[str] = mapped_column(LongText, nullable=False)
    disabled: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=false())
    # Bumped by every write; SQLAlchemy adds "AND version = <read>" to each
    # UPDATE, so a write based on a stale read fails instead of landing.
    version: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("1"))

    __mapper_args__ = {"version_id_col": version}


class HostMappingRow(ApiBase):
    __tablename__ = "host_mapping"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    host: Mapped[str] = mapped_column(String(255), nullable=False, unique=True)
    cell_id: Mapped[int] = mapped_column(ForeignKey("cell_mapping.id"), nullable=False)
    created_at: Mapped[dt.datetime | None] = mapped_column(Timestamp, default=utcnow)
    updated_at: Mapped[dt.datetime | None] = mapped_column(Timestamp, onupdate=utcnow)


class InstanceMappingRow(ApiBase):
    __tablename__ = "instance_mapping"
    #: A project-scoped listing asks only the cells this finds (api_0005).
    __table_args__ = (Index("ix_instance_mapping_project_cell", "project_id", "cell_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    instance_uuid: Mapped[str] = mapped_column(String(36), nullable=False, unique=True)
    cell_id: Mapped[int | None] = mapped_column(ForeignKey("cell_mapping.id"))
    project_id: Mapped[str] = mapped_column(String(255), nullable=False)
    user_id: Mapped[str | None] = mapped_column(String(255))
    queued_for_delete: Mapped[bool] = mapped_column(
        Boolean, nullable=False, server_default=false()
    )
    created_at: Mapped[dt.datetime | None] = mapped_column(Timestamp, default=utcnow)
    updated_at: Mapped[dt.datetime | None] = mapped_column(Timestamp, onupdate=utcnow)


class CellMappingAuditRow(ApiBase):
    """One change to a cell mapping: who, what, when. URLs in ``changes`` are masked.

    No foreign key to ``cell_mapping``: the trail must outlive the rows it
    describes, and it is keyed by uuid so a renamed cell keeps its history.
    """

    __tablename__ = "cell_mapping_audit"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[dt.datetime] = mapped_column(Timestamp, nullable=False, default=utcnow)
    cell_uuid: Mapped[str] = mapped_column(String(36), nullable=False, index=True)
    cell_name: Mapped[str | None] = mapped_column(String(255))
    action: Mapped[str] = mapped_column(String(32), nullable=False)
    actor: Mapped[str] = mapped_column(String(255), nullable=False)
    version: Mapped[int | None] = mapped_column(Integer)
    changes: Mapped[str] = mapped_column(LongText, nullable=False)


class MappingGenerationRow(ApiBase):
    """One row whose counter every cell-mapping write increments.

    A process holding cached mappings reads this single integer to learn,
    cheaply, whether anything changed since it last loaded them.
    """

    __tablename__ = "mapping_generation"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    generation: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("0"))


class MoveJobRow(ApiBase):
    """One instance move between cells, its progress recorded step by step.

    See :mod:`cellgate.apidb.moves` for the states and steps, and
    ``cellgate.admin.move`` for the mover that writes them.
    """

    __tablename__ = "move_job"
    __table_args__ = (
        UniqueConstraint("job_id"),
        UniqueConstraint("active_instance"),
        Index("ix_move_job_instance_uuid", "instance_uuid"),
        Index("ix_move_job_drain_id", "drain_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(36), nullable=False)
    instance_uuid: Mapped[str] = mapped_column(String(36), nullable=False)
    #: The instance's uuid while the job is unfinished, NULL after: at most
    #: one unfinished move per instance (the unique constraint).
    active_instance: Mapped[str | None] = mapped_column(String(36))
    source_cell: Mapped[str] = mapped_column(String(36), nullable=False)
    target_cell: Mapped[str] = mapped_column(String(36), nullable=False)
    state: Mapped[str] = mapped_column(String(32), nullable=False)
    step: Mapped[str] = mapped_column(String(32), nullable=False)
    rollback: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=false())
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("0"))
    rows_copied: Mapped[int | None] = mapped_column(Integer)
    content_hash: Mapped[str | None] = mapped_column(String(64))
    verdict: Mapped[str | None] = mapped_column(LongText)
    drain_id: Mapped[str | None] = mapped_column(String(36))
    batch: Mapped[int | None] = mapped_column(Integer)
    grace_seconds: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("0"))
    purge_after: Mapped[dt.datetime | None] = mapped_column(Timestamp)
    created_at: Mapped[dt.datetime] = mapped_column(Timestamp, nullable=False, default=utcnow)
    updated_at: Mapped[dt.datetime | None] = mapped_column(Timestamp, onupdate=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column(Timestamp)


class MoveBatchRow(ApiBase):
    """One batch of a drain: which cells, how many instances, and its verdict."""

    __tablename__ = "move_batch"
    __table_args__ = (UniqueConstraint("drain_id", "batch"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    drain_id: Mapped[str] = mapped_column(String(36), nullable=False)
    batch: Mapped[int] = mapped_column(Integer, nullable=False)
    canary: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=false())
    source_cell: Mapped[str] = mapped_column(String(36), nullable=False)
    target_cell: Mapped[str] = mapped_column(String(36), nullable=False)
    size: Mapped[int] = mapped_column(Integer, nullable=False)
    moved: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("0"))
    state: Mapped[str] = mapped_column(String(32), nullable=False)
    verdict: Mapped[str | None] = mapped_column(LongText)
    created_at: Mapped[dt.datetime] = mapped_column(Timestamp, nullable=False, default=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column(Timestamp)
