"""Instance actions, the ``hidden`` flag on instances, service versions.

``instance_actions`` is the first table whose rows belong to an instance
(moves copy them, archives move them); ``instances.hidden`` marks a copy that
is not the live instance; ``services.version`` carries each worker's RPC
version in its heartbeat, so the API can cap calls at the oldest one.

Revision ID: cell_0002
Revises: cell_0001
"""

from __future__ import annotations

import sqlalchemy as sa

from cellgate.dbtypes import Timestamp
from cellgate.migrations import guarded

revision = "cell_0002"
down_revision = "cell_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    guarded.add_column(
        "instances", sa.Column("hidden", sa.Boolean(), nullable=False, server_default=sa.false())
    )
    guarded.add_column(
        "services", sa.Column("version", sa.Integer(), nullable=False, server_default=sa.text("0"))
    )
    guarded.create_table(
        "instance_actions",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("instance_uuid", sa.String(36), nullable=False),
        sa.Column("action", sa.String(255), nullable=False),
        sa.Column("request_id", sa.String(255), nullable=True),
        sa.Column("created_at", Timestamp, nullable=True),
        sa.Column("updated_at", Timestamp, nullable=True),
        sa.Column("deleted_at", Timestamp, nullable=True),
        sa.Column("deleted", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.ForeignKeyConstraint(
            ["instance_uuid"], ["instances.uuid"], name="fk_instance_actions_instance"
        ),
    )
    guarded.create_index(
        "ix_instance_actions_instance_uuid", "instance_actions", ["instance_uuid"]
    )


def downgrade() -> None:
    guarded.drop_table("instance_actions")
    guarded.drop_column("services", "version")
    guarded.drop_column("instances", "hidden")
