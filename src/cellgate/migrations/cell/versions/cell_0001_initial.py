"""Create the minimal cell schema: instances and services.

Revision ID: cell_0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa

from cellgate.dbtypes import Timestamp
from cellgate.migrations import guarded

revision = "cell_0001"
down_revision = None
branch_labels = None
depends_on = None


def _soft_delete_columns() -> list[sa.Column[object]]:
    return [
        sa.Column("created_at", Timestamp, nullable=True),
        sa.Column("updated_at", Timestamp, nullable=True),
        sa.Column("deleted_at", Timestamp, nullable=True),
        sa.Column("deleted", sa.Integer(), nullable=False, server_default=sa.text("0")),
    ]


def upgrade() -> None:
    guarded.create_table(
        "instances",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("uuid", sa.String(36), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("project_id", sa.String(255), nullable=False),
        sa.Column("user_id", sa.String(255), nullable=True),
        sa.Column("host", sa.String(255), nullable=True),
        sa.Column("vm_state", sa.String(32), nullable=False),
        sa.Column("task_state", sa.String(32), nullable=True),
        *_soft_delete_columns(),
        sa.UniqueConstraint("uuid", name="uq_instances_uuid"),
    )
    guarded.create_table(
        "services",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("binary", sa.String(255), nullable=False),
        sa.Column("topic", sa.String(255), nullable=True),
        sa.Column("report_count", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("last_seen_at", Timestamp, nullable=True),
        sa.Column("disabled", sa.Boolean(), nullable=False, server_default=sa.false()),
        *_soft_delete_columns(),
        sa.UniqueConstraint("host", "binary", "deleted", name="uq_services_host_binary_deleted"),
    )


def downgrade() -> None:
    guarded.drop_table("services")
    guarded.drop_table("instances")
