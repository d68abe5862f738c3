"""``services.rpc_version``: the RPC API version each worker serves, as it reports it.

``services.version`` (cell_0002) is a worker's service version, an integer
that only this release's table turns into an RPC version; a worker now also
writes the RPC version it serves (``"1.1"``), so an API of another release
caps its calls without knowing that table. Rows written by older workers
have it NULL: readers fall back to the table until ``cellgate db
migrate-data`` has filled it in (``cellgate.admin.datamigrations``).

Revision ID: cell_0004
Revises: cell_0003
"""

from __future__ import annotations

import sqlalchemy as sa

from cellgate.migrations import guarded

revision = "cell_0004"
down_revision = "cell_0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    guarded.add_column("services", sa.Column("rpc_version", sa.String(16), nullable=True))


def downgrade() -> None:
    guarded.drop_column("services", "rpc_version")
