"""Add move_job: one row per instance move (or per instance of a drain), each step durable.

``move_batch`` records each batch of a drain (``cellgate cell drain``) and
its verdict, so a drain can be resumed and audited batch by batch.

A move copies an instance's rows from one cell database to another, then
flips its mapping. No transaction spans both cells and the API database, so
the mover records each step here after it has committed it in the cells; a
resumed mover starts from the recorded step, and every step is idempotent.
``active_instance`` holds the instance's uuid while the job is unfinished
and NULL after, so a unique constraint allows one unfinished move per
instance (every backend lets NULLs repeat under a unique constraint).

Revision ID: api_0006
Revises: api_0005
"""

from __future__ import annotations

import sqlalchemy as sa

from cellgate.dbtypes import LongText, Timestamp
from cellgate.migrations import guarded

revision = "api_0006"
down_revision = "api_0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    guarded.create_table(
        "move_job",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.String(36), nullable=False),
        sa.Column("instance_uuid", sa.String(36), nullable=False),
        sa.Column("active_instance", sa.String(36), nullable=True),
        sa.Column("source_cell", sa.String(36), nullable=False),
        sa.Column("target_cell", sa.String(36), nullable=False),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("step", sa.String(32), nullable=False),
        sa.Column("rollback", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("rows_copied", sa.Integer(), nullable=True),
        sa.Column("content_hash", sa.String(64), nullable=True),
        sa.Column("verdict", LongText, nullable=True),
        sa.Column("drain_id", sa.String(36), nullable=True),
        sa.Column("batch", sa.Integer(), nullable=True),
        sa.Column("grace_seconds", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("purge_after", Timestamp, nullable=True),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("updated_at", Timestamp, nullable=True),
        sa.Column("finished_at", Timestamp, nullable=True),
        sa.UniqueConstraint("job_id", name="uq_move_job_job_id"),
        sa.UniqueConstraint("active_instance", name="uq_move_job_active_instance"),
    )
    guarded.create_index("ix_move_job_instance_uuid", "move_job", ["instance_uuid"])
    guarded.create_index("ix_move_job_drain_id", "move_job", ["drain_id"])
    guarded.create_table(
        "move_batch",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("drain_id", sa.String(36), nullable=False),
        sa.Column("batch", sa.Integer(), nullable=False),
        sa.Column("canary", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("source_cell", sa.String(36), nullable=False),
        sa.Column("target_cell", sa.String(36), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("moved", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("verdict", LongText, nullable=True),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("finished_at", Timestamp, nullable=True),
        sa.UniqueConstraint("drain_id", "batch", name="uq_move_batch_drain_id_batch"),
    )


def downgrade() -> None:
    guarded.drop_table("move_batch")
    guarded.drop_index("ix_move_job_drain_id", "move_job")
    guarded.drop_index("ix_move_job_instance_uuid", "move_job")
    guarded.drop_table("move_job")
