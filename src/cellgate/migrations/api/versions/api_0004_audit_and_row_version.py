"""Add cell_mapping.version (optimistic locking) and the cell_mapping_audit trail.

Existing rows start at version 1. Encryption at rest needs no schema change:
an encrypted URL is marked in the column value itself (``fernet:<key id>:``),
so plaintext and encrypted rows coexist until ``cellgate cell encrypt`` runs.

Revision ID: api_0004
Revises: api_0003
"""

from __future__ import annotations

import sqlalchemy as sa

from cellgate.dbtypes import LongText, Timestamp
from cellgate.migrations import guarded

revision = "api_0004"
down_revision = "api_0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    guarded.add_column(
        "cell_mapping",
        sa.Column("version", sa.Integer(), nullable=False, server_default=sa.text("1")),
    )
    guarded.create_table(
        "cell_mapping_audit",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("cell_uuid", sa.String(36), nullable=False),
        sa.Column("cell_name", sa.String(255), nullable=True),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("actor", sa.String(255), nullable=False),
        sa.Column("version", sa.Integer(), nullable=True),
        sa.Column("changes", LongText, nullable=False),
    )
    guarded.create_index("ix_cell_mapping_audit_cell_uuid", "cell_mapping_audit", ["cell_uuid"])


def downgrade() -> None:
    guarded.drop_index("ix_cell_mapping_audit_cell_uuid", "cell_mapping_audit")
    guarded.drop_table("cell_mapping_audit")
    guarded.drop_column("cell_mapping", "version")
