"""``cellgate db migrate-data``: batched, resumable online data migrations across cells.

The data is what older code really left: service rows written by workers
before cell_0004, with ``rpc_version`` NULL (``services.version`` 0 or 1, and
one of a newer release, 7). Each run with ``--max-count`` migrates at most
that many rows per cell and exits 1 while any are left, 0 once none are; the
rows end with the RPC version their service version serves. A cell that is
down, and one behind the cell head, are reported while the others are
migrated. On SQLite, MariaDB and PostgreSQL.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from cellgate import App, admin
from cellgate.celldb.schema import ServiceRow
from cellgate.celldb.versions import RPC_VERSION
from tests.functional.conftest import Deployment
from tests.functional.test_archive import Fleet, closed_port


@pytest.fixture
def fleet(deployment: Deployment) -> Iterator[Fleet]:
    f = Fleet(deployment)
    yield f
    f.close()


def _old_rows(fleet: Fleet, cell: str, versions: list[int]) -> None:
    """Service rows as workers of releases before cell_0004 wrote them: no rpc_version."""
    with Session(fleet.engine(cell)) as session, session.begin():
        for n, version in enumerate(versions):
            session.add(ServiceRow(host=f"{cell}-h{n}", binary="cellgate-worker", version=version))


def _rpc_versions(fleet: Fleet, cell: str) -> dict[str, str | None]:
    with Session(fleet.engine(cell)) as session:
        rows = session.execute(select(ServiceRow.host, ServiceRow.rpc_version)).all()
    return {str(h): v for h, v in rows}


def _run(fleet: Fleet, *args: str, code: int) -> dict[str, Any]:
    result = fleet.d.run("db", "migrate-data", *args, "--json", ok=False)
    assert result.exit_code == code, result.output
    data: dict[str, Any] = json.loads(result.stdout)
    return {row["name"]: row for row in data["cells"]}


def test_batches_migrate_rows_of_older_code_until_nothing_is_left(fleet: Fleet) -> None:
    _old_rows(fleet, "cell1", [0, 0, 1, 7, 0])
    _old_rows(fleet, "cell2", [1, 0])

    first = _run(fleet, "--all-cells", "--max-count", "2", code=1)
    assert first["cell1"]["status"] == "more"
    assert first["cell1"]["migrations"] == {"service_rpc_versions": {"found": 2, "done": 2}}
    assert first["cell2"]["status"] == "more"  # exactly 2: it cannot know none are left
    assert first["cell0"]["status"] == "done"
    assert sum(v is None for v in _rpc_versions(fleet, "cell1").values()) == 3

    second = _run(fleet, "--all-cells", "--max-count", "2", code=1)
    assert second["cell1"]["migrations"]["service_rpc_versions"] == {"found": 2, "done": 2}
    assert second["cell2"]["migrations"]["service_rpc_versions"] == {"found": 0, "done": 0}
    assert second["cell2"]["status"] == "done"

    third = _run(fleet, "--cell", "cell1", "--max-count", "2", code=0)
    assert list(third) == ["cell1"]
    assert third["cell1"]["migrations"]["service_rpc_versions"] == {"found": 1, "done": 1}
    assert _rpc_versions(fleet, "cell1") == {
        "cell1-h0": "1.0",
        "cell1-h1": "1.0",
        "cell1-h2": "1.1",
        "cell1-h3": RPC_VERSION,  # a newer worker: at least what this release speaks
        "cell1-h4": "1.0",
    }
    assert _rpc_versions(fleet, "cell2") == {"cell2-h0": "1.1", "cell2-h1": "1.0"}
    again = _run(fleet, "--all-cells", code=0)  # nothing left: nothing changes
    assert {c: r["migrations"]["service_rpc_versions"]["found"] for c, r in again.items()} == {
        "cell0": 0,
        "cell1": 0,
        "cell2": 0,
    }


def test_without_max_count_each_cell_is_migrated_to_the_end_through_the_library(
    fleet: Fleet,
) -> None:
    _old_rows(fleet, "cell1", [0] * 7)
    with App(fleet.d.settings()) as app:
        report = admin.migrate_data(app, all_cells=True)
    assert not report.more_work and not report.failures
    counts = {c.label: r.value.counts["service_rpc_versions"] for c, r in report.outcomes}
    assert (counts["cell1"].found, counts["cell1"].done) == (7, 7)
    assert set(_rpc_versions(fleet, "cell1").values()) == {"1.0"}


def test_a_down_cell_and_a_cell_behind_head_are_reported_and_the_others_migrated(
    fleet: Fleet,
) -> None:
    _old_rows(fleet, "cell1", [0, 1])
    fleet.create("stale")
    fleet.d.run("db", "sync", "--cell", "stale", "--revision", "cell_0003")
    fleet.d.secrets.append("hunter2secret")
    fleet.create("downcell", f"mysql+pymysql://u:hunter2secret@127.0.0.2:{closed_port()}/x")

    result = fleet.d.run("db", "migrate-data", "--all-cells", ok=False)
    assert result.exit_code in (5, 6), result.output  # a failed cell's code comes first
    assert "Traceback" not in result.output
    rows = _run(fleet, "--all-cells", code=result.exit_code)
    assert rows["downcell"]["status"] == "failed" and rows["downcell"]["error"]
    assert rows["stale"]["status"] == "failed" and "cell_0003" in rows["stale"]["error"]
    assert rows["cell1"]["status"] == "done"
    assert set(_rpc_versions(fleet, "cell1").values()) == {"1.0", "1.1"}

    text = fleet.d.run("db", "migrate-data", "--cell", "cell1").stdout  # the table
    assert "service_rpc_versions" in text and "done" in text


def test_the_cells_must_be_named_or_all(fleet: Fleet) -> None:
    result = fleet.d.run("db", "migrate-data", ok=False)
    assert result.exit_code == 2, result.output
    assert result.output.startswith("cellgate: error: ")
    assert len(result.output.strip().splitlines()) == 1
