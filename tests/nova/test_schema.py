"""cellgate's reading of Nova's schema matches what Nova's own nova-manage builds."""

from __future__ import annotations

import pytest
import sqlalchemy
from sqlalchemy import text

from cellgate.nova import schema
from tests.nova.deployment import Database, Deployment

pytestmark = [pytest.mark.nova, pytest.mark.timeout(1200)]


def _check_columns(db: Database, metadata: sqlalchemy.MetaData) -> None:
    with db.connect() as conn:
        inspector = sqlalchemy.inspect(conn)
        for table in metadata.tables.values():
            real = {c["name"]: c for c in inspector.get_columns(table.name)}
            for column in table.columns:
                assert column.name in real, f"{table.name}.{column.name} is not in Nova's schema"
                assert bool(real[column.name]["nullable"]) == column.nullable or column.primary_key


def test_api_tables_match_novas(nova_base: Deployment) -> None:
    _check_columns(nova_base.api, schema.api_metadata)


def test_cell_tables_match_novas(nova_base: Deployment) -> None:
    _check_columns(nova_base.cells["cell1"], schema.cell_metadata)


def test_heads_are_what_nova_manage_wrote(nova_base: Deployment) -> None:
    with nova_base.api.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == (
            schema.API_HEAD
        )
    with nova_base.cells["cell1"].connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == (
            schema.CELL_HEAD
        )
