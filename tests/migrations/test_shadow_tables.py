"""Every shadow table has its source table's columns and types, on every backend.

A column added to ``instances`` (or any table in ``PER_INSTANCE``) must be
added to its shadow table in the same revision, or archiving would drop the
column's values. This test migrates a real database to head and compares
what the server reports for each pair; the sabotage test shows the
comparison notices a column added to one side only.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy
from sqlalchemy.engine import Engine

from cellgate.celldb.schema import PER_INSTANCE, SHADOW, SHADOW_PREFIX, CellBase
from cellgate.migrations import runner
from cellgate.migrations.runner import MigrationLine
from cellgate.sql.engines import make_engine
from tests.support import Server


def _columns(engine: Engine, table: str) -> dict[str, tuple[str, bool]]:
    """Column name -> (type as this server spells it, nullable)."""
    dialect = engine.dialect
    found: list[dict[str, Any]] = sqlalchemy.inspect(engine).get_columns(table)  # type: ignore[assignment]
    return {c["name"]: (str(c["type"].compile(dialect=dialect)), c["nullable"]) for c in found}


def _differences(engine: Engine) -> list[str]:
    out = []
    for model, _ in PER_INSTANCE:
        source = model.__tablename__
        live, shadow = _columns(engine, source), _columns(engine, SHADOW_PREFIX + source)
        for name in sorted(set(live) | set(shadow)):
            if live.get(name) != shadow.get(name):
                out.append(f"{source}.{name}: {live.get(name)} vs shadow {shadow.get(name)}")
    return out


def test_every_per_instance_table_has_a_shadow_in_the_models() -> None:
    declared = {model.__tablename__ for model, _ in PER_INSTANCE}
    assert set(SHADOW) == declared
    for source, shadow in SHADOW.items():
        assert shadow.name in CellBase.metadata.tables
        live = CellBase.metadata.tables[source]
        assert [c.name for c in shadow.c] == [c.name for c in live.c]
        assert not shadow.foreign_keys  # archived rows never block live ones


def test_shadow_tables_match_their_sources_on_the_server(server: Server) -> None:
    engine = make_engine(
        server.new_database(), connect_timeout=5, query_timeout=30, create_missing=True
    )
    try:
        runner.upgrade(engine, MigrationLine.CELL)
        assert _differences(engine) == []
        with engine.begin() as conn:  # a column added to the source only is drift
            conn.exec_driver_sql("ALTER TABLE instances ADD COLUMN flavor VARCHAR(64)")
        assert _differences(engine) == ["instances.flavor: ('VARCHAR(64)', True) vs shadow None"]
    finally:
        engine.dispose()
