"""Both migration lines walk up and down on every backend, and match the models."""

from __future__ import annotations

import pytest
import sqlalchemy
from sqlalchemy.engine import Engine

from cellgate.cli.hints import cli_hint
from cellgate.errors import MigrationError
from cellgate.migrations import runner
from cellgate.migrations.runner import MigrationLine
from cellgate.sql.engines import make_engine
from cellgate.urls import DatabaseURL
from tests.support import Server


def _engine(url: DatabaseURL) -> Engine:
    return make_engine(url, connect_timeout=5, query_timeout=30, create_missing=True)


def _tables(engine: Engine) -> set[str]:
    return set(sqlalchemy.inspect(engine).get_table_names())


@pytest.mark.parametrize("line", list(MigrationLine), ids=lambda line: line.value)
def test_walk_every_revision_up_then_down_to_base(server: Server, line: MigrationLine) -> None:
    engine = _engine(server.new_database())
    try:
        revisions = runner.revisions(line)
        assert len(revisions) >= 1
        for rev in revisions:
            assert runner.upgrade(engine, line, rev) == rev
        assert runner.current(engine, line) == runner.head(line)
        runner.check(engine, line)  # models == migrations: raises on drift
        for rev in reversed(revisions[:-1]):
            assert runner.downgrade(engine, line, rev) == rev
        assert runner.downgrade(engine, line, "base") is None
        assert _tables(engine) <= {line.version_table}
    finally:
        engine.dispose()


def test_api_line_has_at_least_two_revisions() -> None:
    assert runner.revisions(MigrationLine.API)[:2] == ["api_0001", "api_0002"]


def test_both_lines_share_one_database_without_confusion(server: Server) -> None:
    engine = _engine(server.new_database())
    try:
        runner.upgrade(engine, MigrationLine.API)
        assert runner.current(engine, MigrationLine.CELL) is None
        runner.upgrade(engine, MigrationLine.CELL)
        assert runner.current(engine, MigrationLine.API) == runner.head(MigrationLine.API)
        assert runner.current(engine, MigrationLine.CELL) == runner.head(MigrationLine.CELL)
        for line in MigrationLine:
            runner.check(engine, line)  # the other line's tables are not "drift"
        runner.downgrade(engine, MigrationLine.CELL, "base")
        assert "cell_mapping" in _tables(engine)
        assert "instances" not in _tables(engine)
    finally:
        engine.dispose()


def test_unknown_revision_is_a_clear_error(tmp_path: object) -> None:
    engine = _engine(DatabaseURL.parse(f"sqlite:///{tmp_path}/x.sqlite"))
    with pytest.raises(MigrationError, match="unknown api revision 'nope'") as caught:
        runner.upgrade(engine, MigrationLine.API, "nope")
    assert "api_0001" in (cli_hint(caught.value) or "")
    assert runner.current(engine, MigrationLine.API) is None


def test_failed_revision_reports_where_the_database_was_left(tmp_path: object) -> None:
    engine = _engine(DatabaseURL.parse(f"sqlite:///{tmp_path}/x.sqlite"))
    runner.upgrade(engine, MigrationLine.API, "api_0001")
    with engine.begin() as conn:  # sabotage: a table the next revision wants to create
        conn.exec_driver_sql("CREATE TABLE host_mapping (id INTEGER)")
    with pytest.raises(MigrationError, match="left at revision api_0001"):
        runner.upgrade(engine, MigrationLine.API)
    assert runner.current(engine, MigrationLine.API) == "api_0001"
    engine.dispose()
