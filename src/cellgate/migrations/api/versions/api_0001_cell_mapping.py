"""Create cell_mapping, as the cells v2 mapping spec gives it.

Revision ID: api_0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa

from cellgate.dbtypes import LongText, Timestamp
from cellgate.migrations import guarded

revision = "api_0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    guarded.create_table(
        "cell_mapping",
        sa.Column("created_at", Timestamp, nullable=True),
        sa.Column("updated_at", Timestamp, nullable=True),
        sa.Column("deleted_at", Timestamp, nullable=True),
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("uuid", sa.String(36), nullable=False),
        sa.Column("name", sa.String(255), nullable=True),
        sa.Column("deleted", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("transport_url", LongText, nullable=False),
        sa.Column("database_connection", LongText, nullable=False),
        sa.UniqueConstraint("uuid", "deleted", name="uq_cell_mapping_uuid_deleted"),
        sa.UniqueConstraint("name", "deleted", name="uq_cell_mapping_name_deleted"),
    )


def downgrade() -> None:
    guarded.drop_table("cell_mapping")
