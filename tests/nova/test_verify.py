"""``cellgate nova verify`` on real Nova deployments: clean, then broken one way at a time.

Every finding code is produced by breaking a copy of a deployment that Nova's
own ``nova-manage`` built (tests/nova/deployment.py) in exactly one way, and
the run must report that code, and only it, with its severity and exit code
(0 clean, 1 warnings only, 2 errors). Nothing is ever written to Nova: the
checksum of every table is equal before and after.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from cellgate.cli import cli
from cellgate.nova import schema
from cellgate.urls import url_passwords
from tests.nova.conftest import CopyFactory
from tests.nova.deployment import BUILDING, Database, Deployment

pytestmark = [pytest.mark.nova, pytest.mark.timeout(1200)]

CELL1_LIVE = "11111111-0000-4000-8000-000000000001"
CELL1_OTHER = "11111111-0000-4000-8000-000000000002"
CELL2_LIVE = "22222222-0000-4000-8000-000000000001"
NOT_ANYWHERE = "deadbeef-0000-4000-8000-000000000001"


@dataclass
class Run:
    result: Result
    data: dict[str, Any]

    @property
    def codes(self) -> dict[str, dict[str, Any]]:
        return {f["code"]: f for f in self.data["findings"]}


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "cellgate.conf"
    if not path.exists():
        path.write_text(
            f"[api_database]\nconnection = sqlite:///{tmp_path}/cellgate-api.sqlite\n"
            "[cells]\nverify_timeout = 3\n"
        )
    return path


def _secrets(d: Deployment) -> list[str]:
    found = []
    for db in d.all_databases().values():
        found += [p for p in url_passwords(db.nova_url) if len(p) > 3]
    found += [p for p in url_passwords(d.default_transport) if len(p) > 3]
    return found


def verify(d: Deployment, tmp_path: Path, *args: str, as_json: bool = True) -> Run:
    result = CliRunner().invoke(
        cli,
        [
            "--config-file",
            str(_config(tmp_path)),
            "nova",
            "verify",
            "--nova-api-db",
            d.api_url,
            "--nova-database",
            d.default_database,
            "--nova-transport-url",
            d.default_transport,
            *args,
            *(["--json"] if as_json else []),
        ],
    )
    assert "Traceback" not in result.output, result.output
    for secret in _secrets(d):
        assert secret not in result.output, "a password leaked into verify's output"
    data = json.loads(result.stdout) if as_json and result.exit_code in (0, 1, 2) else {}
    return Run(result, data)


def _ids(d: Deployment) -> dict[str, int]:
    with d.api.connect() as conn:
        rows = conn.exec_driver_sql("SELECT name, id FROM cell_mappings").all()
    return {name: cell_id for name, cell_id in rows}


# ------------------------------------------------------------------ clean


def test_a_clean_deployment_has_no_finding_and_is_not_written(
    nova_base: Deployment, tmp_path: Path
) -> None:
    before = nova_base.checksum()
    run = verify(nova_base, tmp_path)
    assert run.result.exit_code == 0, run.result.output
    assert run.data["verdict"] == "ok" and run.data["findings"] == []
    assert run.data["api_revision"] == schema.API_HEAD
    cells = {c["name"]: c for c in run.data["cells"]}
    assert set(cells) == {"cell0", "cell1", "cell2"}
    assert all(c["database_ok"] and c["revision"] == schema.CELL_HEAD for c in cells.values())
    assert cells["cell0"]["transport_ok"] is None  # none:///
    assert cells["cell1"]["transport_ok"] and cells["cell2"]["transport_ok"]
    assert cells["cell1"]["mappings_checked"] == 4 and cells["cell2"]["instances_checked"] == 2
    text = verify(nova_base, tmp_path, as_json=False)
    assert text.result.exit_code == 0
    assert "no findings" in text.result.stdout and "verdict: ok" in text.result.stdout
    assert nova_base.checksum() == before


# ----------------------------------------------------------- one break each


def _sql(db: Database, *statements: str) -> None:
    with db.connect() as conn:
        for statement in statements:
            conn.exec_driver_sql(statement)


def _binary(d: Deployment) -> str:
    return "`binary`" if d.kind == "mariadb" else '"binary"'


#: code -> (cells to copy, how to break the copy, severity). One break, one code.
BREAKS: dict[str, tuple[tuple[str, ...], Any, str]] = {
    "api_db_behind": (
        (),
        lambda d, ids: _sql(
            d.api, f"UPDATE alembic_version SET version_num = '{schema.API_REVISIONS[-2]}'"
        ),
        "warning",
    ),
    "api_db_revision_unknown": (
        (),
        lambda d, ids: _sql(d.api, "UPDATE alembic_version SET version_num = 'ffffffffffff'"),
        "error",
    ),
    "cell_db_behind": (
        ("cell1",),
        lambda d, ids: _sql(
            d.cells["cell1"],
            f"UPDATE alembic_version SET version_num = '{schema.CELL_REVISIONS[-2]}'",
        ),
        "warning",
    ),
    "cell_db_revision_unknown": (
        ("cell1",),
        lambda d, ids: _sql(
            d.cells["cell1"], "UPDATE alembic_version SET version_num = 'ffffffffffff'"
        ),
        "error",
    ),
    "cell_name_duplicate": (
        (),
        lambda d, ids: _sql(d.api, "UPDATE cell_mappings SET name = 'cell1' WHERE name = 'cell2'"),
        "warning",
    ),
    "cell_name_missing": (
        (),
        lambda d, ids: _sql(d.api, "UPDATE cell_mappings SET name = NULL WHERE name = 'cell2'"),
        "warning",
    ),
    "cell_template_unrenderable": (
        (),
        lambda d, ids: _sql(
            d.api,
            "UPDATE cell_mappings SET transport_url ="
            " '{scheme}://{username}:{password}@{hostname9}:{port}/x' WHERE name = 'cell2'",
        ),
        "error",
    ),
    "cell_url_unsupported": (
        (),
        lambda d, ids: _sql(
            d.api,
            "UPDATE cell_mappings SET transport_url = 'amqp://guest:guest@127.0.0.1:5672/'"
            " WHERE name = 'cell1'",
        ),
        "error",
    ),
    "cell_mq_unreachable": (
        (),
        lambda d, ids: _sql(
            d.api,
            "UPDATE cell_mappings SET transport_url = 'rabbit://guest:guest@127.0.0.3:1/'"
            " WHERE name = 'cell1'",
        ),
        "error",
    ),
    "host_not_mapped": (
        (),
        lambda d, ids: _sql(d.api, "DELETE FROM host_mappings WHERE host = 'compute-1a'"),
        "warning",
    ),
    "host_mapping_stale": (
        (),
        lambda d, ids: _sql(
            d.api,
            "INSERT INTO host_mappings (created_at, cell_id, host)"
            f" VALUES ('2026-01-05 12:00:00', {ids['cell1']}, 'compute-gone')",
        ),
        "warning",
    ),
    "host_in_wrong_cell": (
        (),
        lambda d, ids: _sql(
            d.api,
            f"UPDATE host_mappings SET cell_id = {ids['cell2']} WHERE host = 'compute-1a'",
        ),
        "error",
    ),
    "instance_missing_from_cell": (
        (),
        lambda d, ids: _sql(
            d.api,
            "INSERT INTO instance_mappings (created_at, instance_uuid, cell_id, project_id,"
            f" queued_for_delete, user_id) VALUES ('2026-01-05 12:00:00', '{NOT_ANYWHERE}',"
            f" {ids['cell1']}, 'project-a', {_false(d)}, 'user-a')",
        ),
        "error",
    ),
    "instance_deleted_not_queued": (
        ("cell1",),
        lambda d, ids: _sql(
            d.cells["cell1"], f"UPDATE instances SET deleted = id WHERE uuid = '{CELL1_LIVE}'"
        ),
        "warning",
    ),
    "instance_not_mapped": (
        (),
        lambda d, ids: _sql(
            d.api, f"DELETE FROM instance_mappings WHERE instance_uuid = '{CELL1_OTHER}'"
        ),
        "warning",
    ),
    "unscheduled_without_build_request": (
        (),
        lambda d, ids: _sql(
            d.api, f"DELETE FROM build_requests WHERE instance_uuid = '{BUILDING}'"
        ),
        "warning",
    ),
    "unscheduled_too_long": (
        (),
        lambda d, ids: _sql(
            d.api,
            "UPDATE instance_mappings SET created_at = '2026-01-01 00:00:00'"
            f" WHERE instance_uuid = '{BUILDING}'",
        ),
        "warning",
    ),
    "online_migrations_pending": (
        (),
        lambda d, ids: _sql(
            d.api,
            f"UPDATE instance_mappings SET user_id = NULL WHERE instance_uuid = '{CELL2_LIVE}'",
        ),
        "warning",
    ),
}


def _false(d: Deployment) -> str:
    return "false" if d.kind == "postgresql" else "0"


@pytest.mark.parametrize("code", sorted(BREAKS))
def test_each_break_gives_exactly_its_finding(
    code: str, nova_copy: CopyFactory, tmp_path: Path
) -> None:
    cells, breaker, severity = BREAKS[code]
    d = nova_copy(cells=cells)
    breaker(d, _ids(d))
    before = d.checksum()
    run = verify(d, tmp_path)
    assert list(run.codes) == [code], run.result.output
    finding = run.codes[code]
    assert finding["severity"] == severity and finding["count"] == 1
    assert len(finding["examples"]) == 1 and finding["fix"]
    assert run.result.exit_code == (2 if severity == "error" else 1)
    assert run.data["verdict"] == severity
    assert d.checksum() == before


def test_a_down_cell_is_reported_and_the_others_are_checked(
    nova_copy: CopyFactory, tmp_path: Path
) -> None:
    d = nova_copy()
    # cell1's database on a closed port; an instance mapped to cell2 without its instance.
    _sql(
        d.api,
        "UPDATE cell_mappings SET database_connection ="
        " 'mysql+pymysql://nova:n0va-s3cret@127.0.0.2:1/nova_cell1' WHERE name = 'cell1'",
    )
    ids = _ids(d)
    _sql(
        d.api,
        "INSERT INTO instance_mappings (created_at, instance_uuid, cell_id, project_id,"
        f" queued_for_delete, user_id) VALUES ('2026-01-05 12:00:00', '{NOT_ANYWHERE}',"
        f" {ids['cell2']}, 'project-a', {_false(d)}, 'user-a')",
    )
    run = verify(d, tmp_path)
    assert set(run.codes) == {"cell_db_unreachable", "instance_missing_from_cell"}
    down = run.codes["cell_db_unreachable"]
    assert down["severity"] == "error" and down["count"] == 1
    assert "cell1" in down["examples"][0] and "127.0.0.2" in down["examples"][0]
    assert "n0va-s3cret" not in run.result.output
    assert NOT_ANYWHERE in run.codes["instance_missing_from_cell"]["examples"][0]
    cells = {c["name"]: c for c in run.data["cells"]}
    assert not cells["cell1"]["database_ok"]
    assert cells["cell2"]["database_ok"] and cells["cell2"]["mappings_checked"] == 3
    assert run.result.exit_code == 2


def test_a_cell_whose_tables_cannot_be_read_is_reported(
    nova_copy: CopyFactory, tmp_path: Path
) -> None:
    d = nova_copy(cells=("cell1",))
    _sql(d.cells["cell1"], "DROP TABLE services" + (" CASCADE" if d.kind == "postgresql" else ""))
    run = verify(d, tmp_path)
    assert list(run.codes) == ["cell_db_unreachable"], run.result.output
    assert "cell cell1 database: a read failed" in run.codes["cell_db_unreachable"]["examples"][0]
    assert run.result.exit_code == 2


def test_examples_are_capped_and_the_text_output_names_the_fix(
    nova_copy: CopyFactory, tmp_path: Path
) -> None:
    d = nova_copy()
    _sql(d.api, "UPDATE instance_mappings SET queued_for_delete = NULL WHERE cell_id IS NOT NULL")
    run = verify(d, tmp_path, "--examples", "2")
    pending = run.codes["online_migrations_pending"]
    assert pending["count"] == 7 and len(pending["examples"]) == 2
    text = verify(d, tmp_path, "--examples", "2", as_json=False)
    assert text.result.exit_code == 1
    assert "online_migrations_pending" in text.result.stdout
    assert "... and 5 more" in text.result.stdout
    assert "fix: nova-manage db online_data_migrations" in text.result.stdout


def test_unscheduled_after_sets_the_threshold(nova_copy: CopyFactory, tmp_path: Path) -> None:
    d = nova_copy()
    two_hours_ago = datetime.now() - timedelta(hours=2)  # the fixture's clock: UTC
    _sql(
        d.api,
        f"UPDATE instance_mappings SET created_at = '{two_hours_ago:%Y-%m-%d %H:%M:%S}'"
        f" WHERE instance_uuid = '{BUILDING}'",
    )
    assert verify(d, tmp_path, "--unscheduled-after", "3h").result.exit_code == 0
    late = verify(d, tmp_path, "--unscheduled-after", "90m")
    assert list(late.codes) == ["unscheduled_too_long"] and late.result.exit_code == 1


def test_small_batches_give_the_same_answer(nova_copy: CopyFactory, tmp_path: Path) -> None:
    d = nova_copy()
    _sql(d.api, f"DELETE FROM instance_mappings WHERE instance_uuid = '{CELL1_OTHER}'")
    run = verify(d, tmp_path, "--batch-size", "1")
    assert list(run.codes) == ["instance_not_mapped"]
    assert CELL1_OTHER in run.codes["instance_not_mapped"]["examples"][0]
    cells = {c["name"]: c for c in run.data["cells"]}
    assert cells["cell1"]["mappings_checked"] == 3 and cells["cell1"]["instances_checked"] == 3
