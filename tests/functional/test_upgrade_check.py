"""``cellgate upgrade check``: a clean deployment passes, and each check fails for real.

On every backend: the API database behind head, a cell behind head, a cell
down, a cell whose schema drifted from the models, no cell0, no enabled
cell, an unmapped service host, an orphaned mapping, a worker too old,
credentials sealed with a key no longer configured, and a template this
host cannot render. Exit code = verdict (0 ok, 1 warning, 2 failure).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy.orm import Session

from cellgate import admin
from cellgate.admin.upgrade import Status
from cellgate.app import App
from cellgate.celldb.schema import ServiceRow
from cellgate.dbtypes import utcnow
from cellgate.migrations import runner
from cellgate.migrations.runner import MigrationLine
from tests.functional.conftest import Deployment
from tests.functional.test_archive import Fleet, closed_port


@pytest.fixture
def fleet(deployment: Deployment) -> Iterator[Fleet]:
    f = Fleet(deployment)
    yield f
    f.close()


def _check(fleet: Fleet, code: int) -> dict[str, tuple[str, list[str]]]:
    result = fleet.d.run("upgrade", "check", "--json", ok=False)
    assert result.exit_code == code, result.output
    data: dict[str, Any] = json.loads(result.stdout)
    assert data["verdict"] == ["ok", "warning", "failure"][code]
    return {c["check"]: (c["status"], c["details"]) for c in data["checks"]}


def _failing(checks: dict[str, tuple[str, list[str]]]) -> dict[str, str]:
    return {name: status for name, (status, _) in checks.items() if status != "ok"}


def _service(fleet: Fleet, cell: str, host: str, version: int = 0, *, live: bool = True) -> None:
    """A worker's service row, as its heartbeat writes it (``live``: it beat just now)."""
    seen = utcnow() - dt.timedelta(seconds=0 if live else 3600)
    with Session(fleet.engine(cell)) as session, session.begin():
        session.add(ServiceRow(host=host, binary="compute", version=version, last_seen_at=seen))


def test_a_clean_deployment_passes_and_cell_problems_fail(fleet: Fleet) -> None:
    checks = _check(fleet, 0)
    assert list(checks) == list(admin.upgrade.CHECKS)
    text = fleet.d.run("upgrade", "check")
    assert "verdict: ok" in text.stdout

    _service(fleet, "cell1", "c1-host")  # reports, but never discovered: a warning
    assert _failing(_check(fleet, 1)) == {"service_hosts_mapped": "warning"}
    fleet.d.run("host", "discover")
    uuid = "11111111-2222-3333-4444-555555555555"
    fleet.map(uuid, "cell1", queued=False)  # mapped to cell1, not in it
    checks = _check(fleet, 1)
    assert _failing(checks) == {"no_orphaned_mappings": "warning"}
    assert uuid in checks["no_orphaned_mappings"][1][0]
    with fleet.engine_begin("api") as conn:
        conn.exec_driver_sql(f"DELETE FROM instance_mapping WHERE instance_uuid = '{uuid}'")

    with fleet.engine_begin("cell2") as conn:  # drift: a column no revision made
        conn.exec_driver_sql("ALTER TABLE instances ADD COLUMN flavor VARCHAR(64)")
    checks = _check(fleet, 2)
    assert _failing(checks) == {"cell_db_revisions": "failure"}
    assert "cell cell2: schema drift" in checks["cell_db_revisions"][1][0]
    with fleet.engine_begin("cell2") as conn:
        conn.exec_driver_sql("DROP TABLE instance_actions")
    fleet.create("stale")
    fleet.d.run("db", "sync", "--cell", "stale", "--revision", "cell_0002")
    fleet.d.secrets.append("hunter2secret")
    port = closed_port()
    fleet.create("downcell", f"mysql+pymysql://u:hunter2secret@127.0.0.2:{port}/x")
    checks = _check(fleet, 2)
    details = " | ".join(checks["cell_db_revisions"][1])
    assert "cell stale: at cell_0002" in details and f"127.0.0.2:{port}" in details
    assert "cell cell2" in details
    assert checks["worker_versions"][0] == "failure"  # the down cell's workers are unknown
    unread = [d for d in checks["worker_versions"][1] if "cell downcell" in d]
    assert len(unread) == 1 and unread[0].endswith("; last-known RPC version none")


def test_mapping_problems_fail(fleet: Fleet) -> None:
    fleet.d.run("cell", "update", "cell1", "--disable")
    fleet.d.run("cell", "update", "cell2", "--disable")
    assert _failing(_check(fleet, 2)) == {"enabled_cell": "failure"}
    fleet.d.run("cell", "update", "cell2", "--enable")
    fleet.d.run("cell", "delete", "cell0", "--force")
    assert _failing(_check(fleet, 2)) == {"cell0_present": "failure"}
    fleet.d.run(
        "cell",
        "map-cell0",
        "--database-connection",
        fleet.urls["cell0"].render(hide_password=False),
    )

    _service(fleet, "cell2", "gone-host", version=0, live=False)  # stopped long ago
    fleet.d.run("host", "discover")
    with App(fleet.d.settings()) as app:
        report = admin.upgrade_check(app, min_service_version=1)
    assert {f.name: f for f in report.findings}["worker_versions"].status == Status.OK
    _service(fleet, "cell2", "old-host", version=0)
    fleet.d.run("host", "discover")
    with App(fleet.d.settings()) as app:
        report = admin.upgrade_check(app, min_service_version=1)
    found = {f.name: f for f in report.findings}
    assert found["worker_versions"].status == admin.upgrade.Status.FAILURE
    assert found["worker_versions"].details == [
        "cell cell2: host old-host runs service version 0, older than 1"
    ]
    assert report.verdict == admin.upgrade.Status.FAILURE

    previous = runner.revisions(MigrationLine.API)[-2]
    with fleet.engine_begin("api") as conn:  # as an API database one release behind reads
        conn.exec_driver_sql(f"UPDATE alembic_version_api SET version_num = '{previous}'")
    checks = _check(fleet, 2)
    assert checks["api_db_at_head"][0] == "failure"
    assert previous in checks["api_db_at_head"][1][0]


def test_credentials_and_templates_fail(fleet: Fleet) -> None:
    config = fleet.d.config_file
    original = config.read_text(encoding="utf-8")
    key = fleet.d.run("cell", "generate-key").stdout.strip()
    other = fleet.d.run("cell", "generate-key").stdout.strip()
    fleet.d.secrets += [key, other]
    config.write_text(
        original.replace("[api_database]\n", f"[api_database]\nencryption_keys = {key}\n"),
        encoding="utf-8",
    )
    fleet.d.run("cell", "encrypt", "--all")
    assert _failing(_check(fleet, 0)) == {}
    config.write_text(
        original.replace("[api_database]\n", f"[api_database]\nencryption_keys = {other}\n"),
        encoding="utf-8",
    )
    checks = _check(fleet, 2)
    assert checks["credentials_decryptable"][0] == "failure"

    config.write_text(
        original.replace("transport_url = memory://local", "transport_url = memory://u:pw@local"),
        encoding="utf-8",
    )
    fleet.d.secrets.append("pw")
    fleet.d.run(
        "cell",
        "create",
        "--name",
        "tpl",
        "--transport-url",
        "memory://{username}@tpl",
        "--database-connection",
        fleet.d.new_cell_url().render(hide_password=False),
    )
    fleet.d.run("db", "sync", "--cell", "tpl")
    config.write_text(original, encoding="utf-8")  # this host has no transport username now
    checks = _check(fleet, 2)
    assert checks["templates_renderable"][0] == "failure"
    assert "cell tpl" in checks["templates_renderable"][1][0]
