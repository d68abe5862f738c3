"""Add cell_mapping.disabled, host_mapping and instance_mapping.

Revision ID: api_0002
Revises: api_0001
"""

from __future__ import annotations

import sqlalchemy as sa

from cellgate.dbtypes import Timestamp
from cellgate.migrations import guarded

revision = "api_0002"
down_revision = "api_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    guarded.add_column(
        "cell_mapping",
        sa.Column("disabled", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    guarded.create_table(
        "host_mapping",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("cell_id", sa.Integer(), nullable=False),
        sa.Column("created_at", Timestamp, nullable=True),
        sa.Column("updated_at", Timestamp, nullable=True),
        sa.UniqueConstraint("host", name="uq_host_mapping_host"),
        sa.ForeignKeyConstraint(
            ["cell_id"], ["cell_mapping.id"], name="fk_host_mapping_cell_id_cell_mapping"
        ),
    )
    guarded.create_table(
        "instance_mapping",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("instance_uuid", sa.String(36), nullable=False),
        sa.Column("cell_id", sa.Integer(), nullable=True),
        sa.Column("project_id", sa.String(255), nullable=False),
        sa.Column("user_id", sa.String(255), nullable=True),
        sa.Column("queued_for_delete", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("created_at", Timestamp, nullable=True),
        sa.Column("updated_at", Timestamp, nullable=True),
        sa.UniqueConstraint("instance_uuid", name="uq_instance_mapping_instance_uuid"),
        sa.ForeignKeyConstraint(
            ["cell_id"], ["cell_mapping.id"], name="fk_instance_mapping_cell_id_cell_mapping"
        ),
    )


def downgrade() -> None:
    guarded.drop_table("instance_mapping")
    guarded.drop_table("host_mapping")
    guarded.drop_column("cell_mapping", "disabled")
