"""Add mapping_generation: a counter bumped by every cell-mapping write.

Revision ID: api_0003
Revises: api_0002
"""

from __future__ import annotations

import sqlalchemy as sa

from cellgate.migrations import guarded

revision = "api_0003"
down_revision = "api_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    table = guarded.create_table(
        "mapping_generation",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("generation", sa.Integer(), nullable=False, server_default=sa.text("0")),
    )
    guarded.insert_missing(table, [{"id": 1, "generation": 0}], key="id")


def downgrade() -> None:
    guarded.drop_table("mapping_generation")
