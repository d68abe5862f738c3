"""``cellgate nova inspect`` describes a deployment nova-manage built, and writes nothing.

Every figure is compared with Nova's own rows (read here with plain SQL),
and a checksum of every table of every Nova database is equal before and
after (the engine is read-only at the server, so a write would fail anyway).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import text

from cellgate.admin.nova_inspect import nova_api_engine, read_cells, read_hosts, read_revision
from cellgate.app import App
from cellgate.cli.exit_codes import ExitCode
from cellgate.config import load_settings
from tests.nova.cellgate_side import cellgate_beside
from tests.nova.conftest import CopyFactory
from tests.nova.deployment import API_HEAD, CELL0_UUID, HOSTS, INSTANCES, Deployment
from tests.support import Server

pytestmark = [pytest.mark.nova, pytest.mark.timeout(1200)]


def test_inspect_describes_the_deployment_and_writes_nothing(
    nova_base: Deployment, tmp_path: Path
) -> None:
    side = cellgate_beside(nova_base, Server("sqlite", tmp_path), tmp_path, sync=False)
    before = nova_base.checksum()
    found = side.json("nova", "inspect", "--nova-api-db", nova_base.api_url)
    text_out = side.run("nova", "inspect", "--nova-api-db", nova_base.api_url).stdout
    assert nova_base.checksum() == before

    assert found["schema"]["revision"] == API_HEAD
    assert found["schema"]["head"] is True and found["schema"]["known"] is True
    scheduled = sum(len(v) for v in INSTANCES.values())
    assert found["counts"] == {
        "cells": 3,
        "host_mappings": sum(len(h) for h in HOSTS.values()),
        "instance_mappings": scheduled + 1,
        "unscheduled_instance_mappings": 1,
        "queued_for_delete_null": 0,
        "user_id_null": 0,
        "build_requests": 1,
        "request_specs": 1,
    }
    cells = {c["name"]: c for c in found["cells"]}
    assert [c["name"] for c in found["cells"]][0] == "cell0"
    assert cells["cell0"]["uuid"] == CELL0_UUID and cells["cell0"]["is_cell0"]
    for name in ("cell1", "cell2"):
        assert cells[name]["uuid"] == nova_base.cell_uuids[name]
        assert cells[name]["hosts"] == sorted(HOSTS[name])
        assert cells[name]["instance_mappings"] == len(INSTANCES[name])
    assert cells["cell1"]["queued_for_delete"] == 1
    # Templates are shown as templates, the literal multi-host URL masked.
    assert cells["cell2"]["template"] is True and cells["cell1"]["template"] is False
    assert "{hostname1}" in cells["cell2"]["transport_url"]
    assert "{scheme}" in cells["cell2"]["database_connection"]
    assert "***" in cells["cell1"]["transport_url"]
    if nova_base.kind == "postgresql":
        assert cells["cell1"]["database_driver"] == "postgresql+psycopg2 -> postgresql+psycopg"
    # The text form says the same in words.
    assert f"alembic revision {API_HEAD} (Nova's API head)" in text_out
    assert "instance mappings: 8 (1 unscheduled)" in text_out
    assert "hosts of cell1: compute-1a, compute-1b" in text_out


def test_inspect_reports_what_it_finds_in_a_changed_deployment(
    nova_copy: CopyFactory, tmp_path: Path
) -> None:
    mine = nova_copy()
    mine.api.execute(
        "INSERT INTO cell_mappings (created_at, uuid, name, transport_url, database_connection)"
        " VALUES (:t, :u, NULL, 'rabbit://u:topsecret1@mq:5672/x', 'mysql://u:topsecret2@db/x')",
        t=None,
        u="99999999-0000-4000-8000-000000000009",
    )
    mine.api.execute("UPDATE instance_mappings SET queued_for_delete = NULL")
    mine.api.execute("UPDATE alembic_version SET version_num = 'b30f573d3377'")
    side = cellgate_beside(mine, Server("sqlite", tmp_path), tmp_path, sync=False)
    side.secrets += ["topsecret1", "topsecret2"]
    found = side.json("nova", "inspect", "--nova-api-db", mine.api_url)
    assert found["schema"] == {
        "version_table": "alembic_version",
        "revision": "b30f573d3377",
        "known": True,
        "head": False,
        "expected_head": API_HEAD,
    }
    nameless = [c for c in found["cells"] if c["name"] is None]
    assert len(nameless) == 1 and nameless[0]["database_driver"] == "mysql -> mysql+pymysql"
    assert nameless[0]["host_count"] == 0 and nameless[0]["disabled"] is False
    assert found["counts"]["queued_for_delete_null"] == found["counts"]["instance_mappings"]
    out = side.run("nova", "inspect", "--nova-api-db", mine.api_url).stdout
    assert "a known older revision" in out and "online data migrations" in out


def test_inspect_of_a_database_that_is_not_novas(nova_base: Deployment, tmp_path: Path) -> None:
    server = Server(nova_base.kind, tmp_path)
    side = cellgate_beside(nova_base, server, tmp_path, sync=True)
    # cellgate's own API database is a database, but not Nova's.
    raw = side.api_url.render(hide_password=False)
    result = side.run("nova", "inspect", "--nova-api-db", raw, ok=False)
    assert result.exit_code == ExitCode.SCHEMA, result.output
    assert result.output.startswith("cellgate: error: Nova API database")
    assert len(result.output.strip().splitlines()) == 1
    server.drop_all()


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("postgresql+psycopg2://nova:s3cretpw@127.0.0.2:1/nova_api", ExitCode.UNAVAILABLE),
        ("mysql://nova:s3cretpw@127.0.0.2:1/nova_api?charset=utf8", ExitCode.UNAVAILABLE),
        ("sqlite:////nonexistent/dir/nova_api.sqlite", ExitCode.UNAVAILABLE),
        ("oracle://nova:s3cretpw@db/nova_api", ExitCode.USAGE),
    ],
)
def test_a_wrong_or_unreachable_url_is_one_line(
    nova_base: Deployment, tmp_path: Path, url: str, code: ExitCode
) -> None:
    side = cellgate_beside(nova_base, Server("sqlite", tmp_path), tmp_path, sync=False)
    side.secrets.append("s3cretpw")
    for extra in ((), ("--json",)):
        result = side.run("nova", "inspect", "--nova-api-db", url, *extra, ok=False)
        assert result.exit_code == code, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("cellgate: error: "), result.output
        if extra:  # and the same error as one JSON line on stdout (docs/cli.md)
            (line,) = result.stdout.strip().splitlines()
            assert json.loads(line)["error"]["exit_code"] == code
        else:
            assert result.stdout == ""


def test_inspect_takes_no_lock_a_writer_would_wait_on(
    nova_base: Deployment, nova_copy: CopyFactory, tmp_path: Path
) -> None:
    """While inspect's read transaction is open Nova can still write every table it reads."""
    if nova_base.kind == "sqlite":
        pytest.skip("SQLite readers share the file lock by design; checked on the servers")
    mine = nova_copy()
    side = cellgate_beside(mine, Server("sqlite", tmp_path), tmp_path, sync=False)
    with (
        App(load_settings(side.config_file)) as app,
        nova_api_engine(app, mine.api_url) as engine,
        engine.connect() as conn,
        conn.begin(),
    ):
        read_revision(conn)
        read_cells(conn)
        read_hosts(conn)
        # A Nova writer, in another session, is not blocked (a lock would time out here).
        with mine.api.connect() as writer:
            if mine.kind == "mariadb":
                writer.execute(text("SET SESSION innodb_lock_wait_timeout = 2"))
            else:
                writer.execute(text("SET lock_timeout = '2s'"))
            writer.execute(text("UPDATE cell_mappings SET disabled = disabled"))
            writer.execute(text("DELETE FROM host_mappings WHERE host = 'compute-2a'"))
