"""The ``cellgate cell`` and migration commands, end to end on every backend.

Every CLI run goes through :meth:`Deployment.run`, which fails the test if a
database password shows up in the output or a traceback is printed.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from cellgate.apidb.mappings import CELL0_UUID, SCRUBBED_URL, get_cell
from cellgate.apidb.schema import CellMappingRow, HostMappingRow, InstanceMappingRow
from cellgate.cli import cli
from cellgate.cli.exit_codes import ExitCode
from cellgate.migrations.runner import MigrationLine, head
from tests.functional.conftest import Deployment

CLOSED_PORT_DB = "mysql+pymysql://cg:hunter2secret@127.0.0.1:1/nowhere"


@pytest.fixture
def synced(deployment: Deployment) -> Deployment:
    deployment.run("api-db", "sync")
    return deployment


def _create(d: Deployment, name: str, *extra: str) -> str:
    url = d.new_cell_url().render(hide_password=False)
    result = d.run(
        "cell",
        "create",
        "--name",
        name,
        "--transport-url",
        f"memory://{name}",
        "--database-connection",
        url,
        *extra,
    )
    return result.stdout.strip()


def test_commands_refuse_an_unmigrated_api_database(deployment: Deployment) -> None:
    result = deployment.run("cell", "list", ok=False)
    assert result.exit_code == ExitCode.SCHEMA
    assert "run 'cellgate api-db sync'" in result.stderr
    assert deployment.json("api-db", "version")["current"] is None


def test_api_db_sync_and_version(deployment: Deployment) -> None:
    info = deployment.json("api-db", "sync")
    api_head = head(MigrationLine.API)
    assert info == {"current": api_head, "head": api_head, "at_head": True}
    assert deployment.json("api-db", "version")["at_head"] is True


def test_create_list_show_masks_passwords(synced: Deployment) -> None:
    cell_uuid = _create(synced, "cell1")
    assert uuid.UUID(cell_uuid)
    cells = synced.json("cell", "list")
    assert [c["name"] for c in cells] == ["cell1"]
    assert ":***@" in cells[0]["database_connection"] or synced.server.kind == "sqlite"
    shown = synced.json("cell", "show", "cell1")
    assert shown["uuid"] == cell_uuid
    assert synced.json("cell", "show", cell_uuid)["name"] == "cell1"
    text = synced.run("cell", "show", "cell1").stdout
    assert cell_uuid in text


def test_reveal_secrets_is_the_only_way_to_print_a_password(synced: Deployment) -> None:
    url = synced.new_cell_url().render(hide_password=False)
    synced.run(
        "cell",
        "create",
        "--name",
        "c",
        "--transport-url",
        "memory://c",
        "--database-connection",
        url,
    )
    assert synced.revealed("c")["database_connection"] == url


def test_duplicate_name_and_uuid_are_conflicts(synced: Deployment) -> None:
    cell_uuid = _create(synced, "dup")
    url = synced.new_cell_url().render(hide_password=False)
    again = synced.run(
        "cell",
        "create",
        "--name",
        "dup",
        "--transport-url",
        "memory://x",
        "--database-connection",
        url,
        ok=False,
    )
    assert again.exit_code == ExitCode.CONFLICT
    assert "name 'dup' already exists" in again.stderr
    same_uuid = synced.run(
        "cell",
        "create",
        "--name",
        "other",
        "--transport-url",
        "memory://x",
        "--database-connection",
        url,
        "--uuid",
        cell_uuid,
        ok=False,
    )
    assert same_uuid.exit_code == ExitCode.CONFLICT
    assert len(synced.json("cell", "list")) == 1


@pytest.mark.parametrize(
    ("transport", "database", "message"),
    [
        ("memory://x", "mysql://u:hunter2secret@127.0.0.1/db", "use mysql+pymysql://"),
        ("memory://x", "not a url", "not a database URL"),
        ("http://u:hunter2secret@127.0.0.1/", "sqlite:///x.db", "unsupported scheme 'http'"),
        ("rabbit://u:hunter2secret@127.0.0.1:99999/", "sqlite:///x.db", "not 1-65535"),
        ("none:///", "sqlite:///x.db", "reserved for cell0"),
        ("memory://x", "sqlite:///{nope}", "unknown placeholder {nope}"),
        # Issue 13.5: one set of rules for both URL kinds, and usable SQLite cells.
        ("rabbit://u:hunter2@secret@127.0.0.1:5672/v", "sqlite:////tmp/n.db", "unencoded '@'"),
        ("memory://x", "mysql+pymysql://u:hunter2secret@127.0.0.1:99999/db", "not 1-65535"),
        ("memory://x", "postgresql://u:hunter2secret@127.0.0.1:0/db", "not 1-65535"),
        ("memory://x", "sqlite://", "in-memory SQLite database cannot be a cell's"),
        ("memory://x", "sqlite:///:memory:", "in-memory SQLite database cannot be a cell's"),
        ("memory://x", "sqlite:///cells/x.db", "'cells/x.db' is relative"),
    ],
)
def test_invalid_input_is_one_line_exit_2_and_writes_nothing(
    synced: Deployment, transport: str, database: str, message: str
) -> None:
    synced.secrets.append("hunter2secret")
    result = synced.run(
        "cell",
        "create",
        "--name",
        "bad",
        "--transport-url",
        transport,
        "--database-connection",
        database,
        ok=False,
    )
    assert result.exit_code == ExitCode.USAGE, result.output
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert synced.json("cell", "list") == []


def test_uuid_shaped_name_is_refused(synced: Deployment) -> None:
    result = synced.run(
        "cell",
        "create",
        "--name",
        str(uuid.uuid4()),
        "--transport-url",
        "memory://x",
        "--database-connection",
        "sqlite:///x.db",
        ok=False,
    )
    assert result.exit_code == ExitCode.USAGE
    assert "looks like a uuid" in result.stderr


def test_update_changes_only_the_given_fields(synced: Deployment) -> None:
    _create(synced, "u1")
    before = synced.revealed("u1")
    synced.run("cell", "update", "u1", "--transport-url", "memory://moved")
    after = synced.revealed("u1")
    assert after["transport_url"] == "memory://moved"
    assert after["database_connection"] == before["database_connection"]
    assert after["name"] == "u1" and after["disabled"] is False
    synced.run("cell", "update", "u1", "--disable", "--name", "u2")
    renamed = synced.json("cell", "show", "u2")
    assert renamed["disabled"] is True and renamed["transport_url"] == "memory://moved"
    assert [c["name"] for c in synced.json("cell", "list", "--enabled-only")] == []


def test_update_errors(synced: Deployment) -> None:
    _create(synced, "a")
    _create(synced, "b")
    assert synced.run("cell", "update", "nope", "--disable", ok=False).exit_code == 3
    assert synced.run("cell", "update", "a", "--name", "b", ok=False).exit_code == 4
    bad = synced.run("cell", "update", "a", "--database-connection", "mysql://x@h/d", ok=False)
    assert bad.exit_code == ExitCode.USAGE
    assert synced.json("cell", "show", "a")["name"] == "a"


def test_cell0_is_idempotent_and_cannot_be_disabled(synced: Deployment) -> None:
    first = synced.json("cell", "map-cell0")
    second = synced.json("cell", "map-cell0")
    assert first["created"] is True and second["created"] is False
    assert first["uuid"] == CELL0_UUID and first["transport_url"] == "none:///"
    expected = synced.local_url.with_database(f"{synced.local_url.database}_cell0")
    if synced.server.kind == "sqlite":
        assert first["database_connection"].endswith("_cell0.sqlite")
    else:
        assert first["database_connection"] == str(expected)
    result = synced.run("cell", "update", "cell0", "--disable", ok=False)
    assert result.exit_code == ExitCode.USAGE
    assert "cell0 cannot be disabled" in result.stderr
    assert (
        synced.run("cell", "update", "cell0", "--transport-url", "memory://x", ok=False).exit_code
        == ExitCode.USAGE
    )


def test_delete_refuses_while_mapped_and_scrubs_urls(synced: Deployment) -> None:
    cell_uuid = _create(synced, "d1")
    with synced.api() as api:
        with api.session() as s:
            cell_id = s.scalars(
                select(CellMappingRow.id).where(CellMappingRow.uuid == cell_uuid)
            ).one()
            s.add(HostMappingRow(host="compute1", cell_id=cell_id))
            s.add(
                InstanceMappingRow(
                    instance_uuid=str(uuid.uuid4()),
                    cell_id=cell_id,
                    project_id="p",
                    queued_for_delete=True,
                )
            )
        refused = synced.run("cell", "delete", "d1", ok=False)
        assert refused.exit_code == ExitCode.CONFLICT
        assert "1 host(s)" in refused.stderr and "--force" in refused.stderr
        with api.session() as s:
            s.add(
                InstanceMappingRow(
                    instance_uuid=str(uuid.uuid4()), cell_id=cell_id, project_id="p"
                )
            )
        live = synced.run("cell", "delete", "d1", "--force", ok=False)
        assert live.exit_code == ExitCode.CONFLICT and "1 instance(s)" in live.stderr
        with api.session() as s:
            s.query(InstanceMappingRow).filter_by(queued_for_delete=False).delete()
        synced.run("cell", "delete", "d1", "--force")
        with api.session() as s:
            row = s.scalars(select(CellMappingRow).where(CellMappingRow.uuid == cell_uuid)).one()
            assert row.deleted == row.id and row.deleted_at is not None
            assert row.transport_url == row.database_connection == SCRUBBED_URL
            assert s.query(HostMappingRow).count() == 0
    assert synced.run("cell", "show", "d1", ok=False).exit_code == ExitCode.NOT_FOUND
    _create(synced, "d1")  # the name is free again
    assert [c["name"] for c in synced.json("cell", "list")] == ["d1"]


def test_db_sync_all_cells_keeps_going_past_a_broken_cell(synced: Deployment) -> None:
    _create(synced, "good1")
    synced.secrets.append("hunter2secret")
    synced.run(
        "cell",
        "create",
        "--name",
        "broken",
        "--transport-url",
        "memory://b",
        "--database-connection",
        CLOSED_PORT_DB,
    )
    _create(synced, "good2")
    args = ["db", "sync", "--cell", "good1", "--cell", "broken", "--cell", "good2", "--json"]
    result = synced.run(*args, ok=False)
    assert result.exit_code == ExitCode.UNAVAILABLE
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert rows["good1"]["status"] == rows["good2"]["status"] == "ok"
    assert rows["good2"]["current"] == head(MigrationLine.CELL)
    assert rows["broken"]["status"] == "failed"
    assert "127.0.0.1" in rows["broken"]["error"]
    (failed,) = [line for line in result.stderr.splitlines() if line.startswith("broken ")]
    assert failed.endswith(": FAILED") and "127.0.0.1" in failed  # names where (masked)
    versions = synced.json("db", "version", "--cell", "good1", "--cell", "good2")
    assert {v["current"] for v in versions} == {head(MigrationLine.CELL)}


def test_db_sync_local_is_the_default(synced: Deployment) -> None:
    rows = synced.json("db", "sync")
    assert rows[0]["uuid"] == "local" and rows[0]["current"] == head(MigrationLine.CELL)
    assert synced.json("db", "version", "--local")[0]["status"] == "ok"
    both = synced.run("db", "sync", "--local", "--all-cells", ok=False)
    assert both.exit_code == ExitCode.USAGE


def test_verify_reports_each_component(synced: Deployment) -> None:
    cell_uuid = _create(synced, "v1")
    missing = synced.run("cell", "verify", "v1", "--json", ok=False)
    if synced.server.kind == "sqlite":  # no file yet: verify must not create one
        assert missing.exit_code == ExitCode.UNAVAILABLE
        assert "does not exist" in missing.stdout
        url = synced.revealed(cell_uuid)["database_connection"]
        Path(url.removeprefix("sqlite:///")).touch()
    behind = synced.run("cell", "verify", "v1", "--json", ok=False)
    assert behind.exit_code == ExitCode.SCHEMA
    synced.run("db", "sync", "--cell", "v1")
    report = synced.json("cell", "verify", "v1")
    assert report[0]["ok"] is True
    assert [c["component"] for c in report[0]["checks"]] == ["database", "transport"]
    synced.secrets.append("hunter2secret")
    synced.run("cell", "update", "v1", "--database-connection", CLOSED_PORT_DB)
    down = synced.run("cell", "verify", "--all", ok=False)
    assert down.exit_code == ExitCode.UNAVAILABLE
    assert "FAILED" in down.stdout


def test_templated_urls_render_against_this_hosts_config(synced: Deployment) -> None:
    # The cell shares this host's database and credentials: every field but the
    # fragment comes from [database] connection, none is stored in the API database.
    if synced.server.kind == "sqlite":
        template = "{scheme}:////{path}"
    else:
        template = "{scheme}://{username}:{password}@{hostname}:{port}/{path}"
    synced.run(
        "cell",
        "create",
        "--name",
        "t",
        "--transport-url",
        "memory://t",
        "--database-connection",
        template,
    )
    assert synced.json("cell", "show", "t")["database_connection"] == template
    synced.run("db", "sync", "--cell", "t")
    assert synced.json("cell", "verify", "t")[0]["ok"] is True
    with synced.api() as api, api.session() as s:
        assert get_cell(s, "t").database_connection.is_template


def test_unreachable_api_database_is_exit_5_without_traceback(tmp_path: object) -> None:
    config = f"{tmp_path}/c.conf"
    with open(config, "w") as fh:
        fh.write(
            "[api_database]\nconnection = postgresql://u:hunter2secret@127.0.0.1:1/api\n"
            "connect_timeout = 2\n"
        )
    for extra in ([], ["--debug"]):
        result = CliRunner().invoke(cli, [*extra, "--config-file", config, "cell", "list"])
        assert result.exit_code == ExitCode.UNAVAILABLE
        assert "hunter2secret" not in result.output
        assert "API database postgresql+psycopg://u:***@127.0.0.1:1/api" in result.stderr
        assert ("Traceback" in result.stderr) == bool(extra)
