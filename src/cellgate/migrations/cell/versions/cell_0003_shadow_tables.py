"""Shadow tables for archived instances: ``shadow_instances``, ``shadow_instance_actions``.

``cellgate db archive-deleted`` moves a soft-deleted instance and its actions
here, so the live tables stay small; ``cellgate db purge`` deletes them for
good. Each has its source table's columns and types, its primary key, and no
unique constraint or foreign key (``cellgate.celldb.schema`` says why).

Revision ID: cell_0003
Revises: cell_0002
"""

from __future__ import annotations

import sqlalchemy as sa

from cellgate.dbtypes import Timestamp
from cellgate.migrations import guarded

revision = "cell_0003"
down_revision = "cell_0002"
branch_labels = None
depends_on = None


def _soft_delete_columns() -> list[sa.Column[object]]:
    return [
        sa.Column("created_at", Timestamp, nullable=True),
        sa.Column("updated_at", Timestamp, nullable=True),
        sa.Column("deleted_at", Timestamp, nullable=True),
        sa.Column("deleted", sa.Integer(), nullable=False),
    ]


def upgrade() -> None:
    guarded.create_table(
        "shadow_instances",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("uuid", sa.String(36), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("project_id", sa.String(255), nullable=False),
        sa.Column("user_id", sa.String(255), nullable=True),
        sa.Column("host", sa.String(255), nullable=True),
        sa.Column("vm_state", sa.String(32), nullable=False),
        sa.Column("task_state", sa.String(32), nullable=True),
        *_soft_delete_columns(),
        sa.Column("hidden", sa.Boolean(), nullable=False),
    )
    guarded.create_index("ix_shadow_instances_deleted_at", "shadow_instances", ["deleted_at"])
    guarded.create_index("ix_shadow_instances_uuid", "shadow_instances", ["uuid"])
    guarded.create_table(
        "shadow_instance_actions",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("instance_uuid", sa.String(36), nullable=False),
        sa.Column("action", sa.String(255), nullable=False),
        sa.Column("request_id", sa.String(255), nullable=True),
        *_soft_delete_columns(),
    )
    guarded.create_index(
        "ix_shadow_instance_actions_instance_uuid", "shadow_instance_actions", ["instance_uuid"]
    )


def downgrade() -> None:
    guarded.drop_table("shadow_instance_actions")
    guarded.drop_table("shadow_instances")
