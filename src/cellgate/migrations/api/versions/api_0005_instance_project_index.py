"""Index instance_mapping by (project_id, cell_id).

A project-scoped listing asks only the cells that hold the project's
instances (``apidb.instances.cells_holding``); without this index that
question is a scan of every mapping. MySQL/MariaDB need an index on
``cell_id`` for its foreign key anyway; this one, led by project_id, is an
addition, not a replacement.

Revision ID: api_0005
Revises: api_0004
"""

from __future__ import annotations

from cellgate.migrations import guarded

revision = "api_0005"
down_revision = "api_0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    guarded.create_index(
        "ix_instance_mapping_project_cell", "instance_mapping", ["project_id", "cell_id"]
    )


def downgrade() -> None:
    guarded.drop_index("ix_instance_mapping_project_cell", "instance_mapping")
