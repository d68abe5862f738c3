"""``cellgate db archive-deleted`` and ``db purge`` on every backend, through the CLI.

Instances, actions and mappings are written straight into the cell and API
databases, as the service would leave them; every check then reads the
tables back. The crash test SIGKILLs a real ``cellgate`` process paused
inside its transactions (``paused_cli.py``), again and again, and checks after
each kill that every row is in its table or its shadow table exactly once.
"""

from __future__ import annotations

import datetime as dt
import json
import signal
import socket
import subprocess
import sys
import time
import uuid as uuidlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select, text, update
from sqlalchemy.orm import Session

from cellgate.apidb.schema import CellMappingRow, InstanceMappingRow
from cellgate.celldb.schema import SHADOW, InstanceActionRow, InstanceRow
from cellgate.cli.exit_codes import ExitCode
from cellgate.dbtypes import utcnow
from cellgate.sql.engines import make_engine
from cellgate.urls import DatabaseURL
from tests.functional.conftest import Deployment
from tests.support import blackhole

SCRIPT = Path(__file__).with_name("paused_cli.py")
TABLES = ("instances", "instance_actions")


def closed_port(host: str = "127.0.0.2") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class Fleet:
    """A synced deployment with cell0, cell1 and cell2, and a way to seed instances."""

    def __init__(self, deployment: Deployment) -> None:
        self.d = deployment
        deployment.run("api-db", "sync")
        self.urls: dict[str, DatabaseURL] = {"cell0": deployment.new_cell_url()}
        raw0 = self.urls["cell0"].render(hide_password=False)
        deployment.run("cell", "map-cell0", "--database-connection", raw0)
        for name in ("cell1", "cell2"):
            self.create(name)
        deployment.run("db", "sync", "--all-cells")
        self._engines: dict[str, Engine] = {}

    def create(self, name: str, url: str | None = None) -> None:
        if url is None:
            made = self.d.new_cell_url()
            self.urls[name] = made
            url = made.render(hide_password=False)
        args = ["--name", name, "--transport-url", f"memory://{name}"]
        self.d.run("cell", "create", *args, "--database-connection", url)

    def engine(self, cell: str) -> Engine:
        if cell not in self._engines:
            url = self.d.api_url if cell == "api" else self.urls[cell]
            self._engines[cell] = make_engine(url, connect_timeout=5, query_timeout=30)
        return self._engines[cell]

    def close(self) -> None:
        for engine in self._engines.values():
            engine.dispose()

    def seed(
        self,
        cell: str,
        *,
        actions: int = 2,
        deleted: bool = False,
        deleted_at: dt.datetime | None = None,
        mapped_to: str | None = None,
        queued: bool | None = None,
    ) -> str:
        """One instance with ``actions`` actions in ``cell``, and its mapping (to ``mapped_to``)."""
        uuid = str(uuidlib.uuid4())
        with Session(self.engine(cell)) as session, session.begin():
            row = InstanceRow(uuid=uuid, name="vm", project_id="p", vm_state="active", deleted=0)
            session.add(row)
            session.flush()
            session.add_all(
                InstanceActionRow(instance_uuid=uuid, action=f"a{i}", deleted=0)
                for i in range(actions)
            )
            if deleted:
                row.deleted = row.id
                row.deleted_at = deleted_at or utcnow()
                row.vm_state = "deleted"
        self.map(uuid, mapped_to or cell, queued=deleted if queued is None else queued)
        return uuid

    def map(self, uuid: str, cell: str, *, queued: bool) -> None:
        with Session(self.engine("api")) as session, session.begin():
            cell_id = session.scalar(
                select(CellMappingRow.id).where(
                    CellMappingRow.name == cell, CellMappingRow.deleted == 0
                )
            )
            session.add(
                InstanceMappingRow(
                    instance_uuid=uuid, cell_id=cell_id, project_id="p", queued_for_delete=queued
                )
            )

    def delete_action(self, uuid: str) -> None:
        """Soft-delete one action of a live instance."""
        with self.engine_begin(self.cell_of(uuid)) as conn:
            first = conn.scalar(
                select(InstanceActionRow.id).where(InstanceActionRow.instance_uuid == uuid)
            )
            conn.execute(
                update(InstanceActionRow)
                .where(InstanceActionRow.id == first)
                .values(deleted=first, deleted_at=utcnow())
            )

    @contextmanager
    def engine_begin(self, cell: str) -> Iterator[Any]:
        with self.engine(cell).begin() as conn:
            yield conn

    def cell_of(self, uuid: str) -> str:
        for cell in ("cell0", "cell1", "cell2"):
            if uuid in self.rows(cell)["instances"]:
                return cell
        raise AssertionError(uuid)

    def rows(self, cell: str, *, shadow: bool = False) -> dict[str, list[str]]:
        """Per table, the instance uuid of every row (one entry per row)."""
        out: dict[str, list[str]] = {}
        with self.engine(cell).connect() as conn:
            for name, column in (("instances", "uuid"), ("instance_actions", "instance_uuid")):
                table = f"shadow_{name}" if shadow else name
                out[name] = sorted(conn.scalars(text(f"SELECT {column} FROM {table}")))
        return out

    def ids(self, cell: str) -> dict[str, tuple[list[int], list[int]]]:
        """Per table: the ids in the table, and the ids in its shadow table."""
        out = {}
        with self.engine(cell).connect() as conn:
            for name in TABLES:
                live = sorted(conn.scalars(text(f"SELECT id FROM {name}")))
                shadow = sorted(conn.scalars(text(f"SELECT id FROM {SHADOW[name].name}")))
                out[name] = (live, shadow)
        return out

    def mappings(self) -> dict[str, tuple[str | None, bool]]:
        with Session(self.engine("api")) as session:
            rows = session.execute(
                select(
                    InstanceMappingRow.instance_uuid,
                    CellMappingRow.name,
                    InstanceMappingRow.queued_for_delete,
                ).outerjoin(CellMappingRow, CellMappingRow.id == InstanceMappingRow.cell_id)
            )
            return {r[0]: (r[1], bool(r[2])) for r in rows}

    def archive(self, *args: str, code: int = 0) -> dict[str, Any]:
        result = self.d.run("db", "archive-deleted", "--json", *args, ok=False)
        assert result.exit_code == code, result.output
        data: dict[str, Any] = json.loads(result.stdout)
        return data


@pytest.fixture
def fleet(deployment: Deployment) -> Iterator[Fleet]:
    f = Fleet(deployment)
    yield f
    f.close()


def _by_cell(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["name"]: row for row in report["cells"]}


def test_archive_moves_deleted_instances_with_their_rows_and_removes_their_mappings(
    fleet: Fleet,
) -> None:
    live = [fleet.seed("cell1") for _ in range(3)]
    gone = [fleet.seed("cell1", actions=3, deleted=True) for _ in range(4)]
    gone2 = [fleet.seed("cell2", actions=1, deleted=True) for _ in range(2)]
    # the deleted copy of an instance that moved to cell2: its mapping stays
    moved = fleet.seed("cell1", actions=1, deleted=True, mapped_to="cell2", queued=False)
    # a mapping queued for delete whose instance is gone from the cell: pruned
    orphan = str(uuidlib.uuid4())
    fleet.map(orphan, "cell1", queued=True)
    fleet.delete_action(live[0])  # a deleted action of a live instance is archived alone
    before = {c: (fleet.rows(c), fleet.rows(c, shadow=True)) for c in ("cell1", "cell2")}
    mappings = fleet.mappings()

    dry = _by_cell(fleet.archive("--all-cells", "--dry-run"))
    assert dry["cell1"]["rows"] == {"instances": 5, "instance_actions": 14}
    assert dry["cell1"]["mappings_removed"] == 4 and dry["cell1"]["queued_pruned"] == 1
    assert dry["cell2"]["rows"] == {"instances": 2, "instance_actions": 2}
    assert {c: (fleet.rows(c), fleet.rows(c, shadow=True)) for c in before} == before
    assert fleet.mappings() == mappings  # a dry run writes nothing

    report = fleet.archive("--all-cells")
    rows = _by_cell(report)
    assert report["more_work"] is False and report["dry_run"] is False
    assert {r["status"] for r in rows.values()} == {"done"}
    assert rows["cell1"]["rows"] == {"instances": 5, "instance_actions": 14}
    assert rows["cell1"]["mappings_removed"] == 4 and rows["cell1"]["queued_pruned"] == 1
    shadow = fleet.rows("cell1", shadow=True)
    assert shadow["instances"] == sorted([*gone, moved])
    assert shadow["instance_actions"] == sorted(
        [*(g for g in gone for _ in range(3)), moved, live[0]]
    )
    assert fleet.rows("cell1")["instances"] == sorted(live)
    assert (
        fleet.rows("cell2")["instances"] == []
        and len(fleet.rows("cell2", shadow=True)["instances"]) == 2
    )
    after = fleet.mappings()
    assert set(after) == {*live, moved}  # exactly the archived instances' mappings went
    assert after[moved] == ("cell2", False)
    assert not set(gone2) & set(after)

    again = _by_cell(fleet.archive("--all-cells"))
    assert again["cell1"]["total"] == 0 and again["cell1"]["mappings_removed"] == 0


def test_before_archives_only_older_deletions(fleet: Fleet) -> None:
    old = fleet.seed("cell1", deleted=True, deleted_at=dt.datetime(2020, 1, 1))
    new = fleet.seed("cell1", deleted=True)
    rows = _by_cell(fleet.archive("--cell", "cell1", "--before", "2021-01-01"))
    assert rows["cell1"]["rows"] == {"instances": 1, "instance_actions": 2}
    assert fleet.rows("cell1", shadow=True)["instances"] == [old]
    assert fleet.rows("cell1")["instances"] == [new]
    assert set(fleet.mappings()) == {new}


def test_max_rows_bounds_a_run_and_exit_1_says_more_remains(fleet: Fleet) -> None:
    gone = [fleet.seed("cell1", actions=5, deleted=True) for _ in range(3)]  # 18 rows
    runs = 0
    while True:
        runs += 1
        report = fleet.d.run(
            "db", "archive-deleted", "--cell", "cell1", "--max-rows", "4", "--json", ok=False
        )
        data = _by_cell(json.loads(report.stdout))["cell1"]
        assert data["total"] <= 4
        for table, (live, shadow) in fleet.ids("cell1").items():
            assert not set(live) & set(shadow), table
        if report.exit_code == ExitCode.OK:
            break
        assert report.exit_code == 1 and data["status"] == "more", report.output
        assert "more remains" in report.stderr
    assert runs == 5  # 18 rows, 4 at a time
    assert fleet.rows("cell1", shadow=True)["instances"] == sorted(gone)
    assert fleet.mappings() == {}

    more = [fleet.seed("cell2", actions=5, deleted=True) for _ in range(3)]
    rows = _by_cell(fleet.archive("--cell", "cell2", "--max-rows", "4", "--until-complete"))
    assert rows["cell2"]["total"] == 18 and rows["cell2"]["status"] == "done"
    assert fleet.rows("cell2", shadow=True)["instances"] == sorted(more)


def test_a_down_cell_is_reported_and_the_others_are_archived(fleet: Fleet) -> None:
    fleet.d.secrets.append("hunter2secret")
    port = closed_port()
    fleet.create("downcell", f"mysql+pymysql://u:hunter2secret@127.0.0.2:{port}/x")
    gone = fleet.seed("cell1", deleted=True)
    gone2 = fleet.seed("cell2", deleted=True)
    report = fleet.archive("--all-cells", code=ExitCode.UNAVAILABLE)
    rows = _by_cell(report)
    assert rows["downcell"]["status"] == "failed"
    assert f"127.0.0.2:{port}" in rows["downcell"]["error"]
    assert rows["cell1"]["status"] == rows["cell2"]["status"] == "done"
    assert fleet.rows("cell1", shadow=True)["instances"] == [gone]
    assert fleet.rows("cell2", shadow=True)["instances"] == [gone2]
    text_run = fleet.d.run("db", "archive-deleted", "--all-cells", ok=False)
    assert text_run.exit_code == ExitCode.UNAVAILABLE
    assert "downcell" in text_run.stdout and "failed" in text_run.stdout


def test_a_cell_that_never_answers_times_out_alone(fleet: Fleet) -> None:
    gone = fleet.seed("cell1", deleted=True)
    with blackhole() as port:
        fleet.create("silent", f"mysql+pymysql://u:pw@127.0.0.1:{port}/x")
        rows = _by_cell(
            fleet.archive("--all-cells", "--cell-timeout", "1", code=ExitCode.UNAVAILABLE)
        )
    assert rows["silent"]["status"] == "timed out"
    assert rows["cell1"]["status"] == "done"
    assert fleet.rows("cell1", shadow=True)["instances"] == [gone]


def test_purge_deletes_archived_rows_older_than_a_date(fleet: Fleet) -> None:
    old = fleet.seed("cell1", deleted=True, deleted_at=dt.datetime(2020, 1, 1))
    new = fleet.seed("cell1", deleted=True)
    fleet.archive("--cell", "cell1")
    dry = fleet.d.json("db", "purge", "--cell", "cell1", "--before", "2021-01-01", "--dry-run")
    assert _by_cell(dry)["cell1"]["rows"] == {"shadow_instances": 1, "shadow_instance_actions": 2}
    assert fleet.rows("cell1", shadow=True)["instances"] == sorted([old, new])
    args = ("--before", "2021-01-01", "--max-rows", "1")
    done = fleet.d.json("db", "purge", "--all-cells", *args)
    assert _by_cell(done)["cell1"]["total"] == 3
    assert fleet.rows("cell1", shadow=True) == {"instances": [new], "instance_actions": [new, new]}
    assert fleet.d.run("db", "purge", "--cell", "cell1", ok=False).exit_code == ExitCode.USAGE


def test_deleted_cell_mappings_past_retention_are_removed(fleet: Fleet) -> None:
    for name in ("old", "recent"):
        fleet.create(name)
        fleet.d.run("cell", "delete", name)
    with fleet.engine_begin("api") as conn:
        conn.execute(
            update(CellMappingRow)
            .where(CellMappingRow.name == "old", CellMappingRow.deleted != 0)
            .values(deleted_at=utcnow() - dt.timedelta(days=40))
        )
    assert fleet.archive("--all-cells", "--dry-run")["cell_mappings_removed"]
    assert fleet.archive("--cell", "cell1")["cell_mappings_removed"] == []
    removed = fleet.archive("--all-cells")["cell_mappings_removed"]
    with Session(fleet.engine("api")) as session:
        names = set(
            session.scalars(select(CellMappingRow.name).where(CellMappingRow.deleted != 0))
        )
    assert len(removed) == 1 and names == {"recent"}
    history = fleet.d.json("cell", "history", removed[0])
    assert history[-1]["action"] == "purge"


def test_bad_input_and_unmigrated_cells(fleet: Fleet) -> None:
    for args, code in (
        ((), ExitCode.USAGE),
        (("--all-cells", "--cell", "cell1"), ExitCode.USAGE),
        (("--cell", "nope"), ExitCode.NOT_FOUND),
        (("--all-cells", "--before", "yesterday"), ExitCode.USAGE),
        (("--all-cells", "--max-rows", "0"), ExitCode.USAGE),
    ):
        result = fleet.d.run("db", "archive-deleted", *args, ok=False)
        assert result.exit_code == code, (args, result.output)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    fleet.create("stale")
    fleet.d.run("db", "sync", "--cell", "stale", "--revision", "cell_0002")
    rows = _by_cell(fleet.archive("--all-cells", code=ExitCode.SCHEMA))
    assert (
        "expected" in rows["stale"]["error"] and "db sync --cell stale" in rows["stale"]["error"]
    )
    assert rows["cell1"]["status"] == "done"


def _start(d: Deployment, nth: int, ready: Path, *args: str) -> subprocess.Popen[str]:
    command = ["--config-file", str(d.config_file), "db", "archive-deleted", *args]
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), str(nth), str(ready), *command],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _paused(ready: Path, proc: subprocess.Popen[str]) -> bool:
    """Wait until the process pauses (True) or ends without pausing (False)."""
    deadline = time.monotonic() + 60
    while not ready.exists():
        if proc.poll() is not None:
            return ready.exists()
        assert time.monotonic() < deadline, "the command never reached its pause"
        time.sleep(0.02)
    return True


@pytest.mark.timeout(600)
def test_a_killed_archive_leaves_every_row_exactly_once(fleet: Fleet, tmp_path: Path) -> None:
    live = [fleet.seed("cell1", actions=2) for _ in range(2)]
    gone = [fleet.seed("cell1", actions=n, deleted=True) for n in (0, 1, 2, 7, 2)]
    fleet.delete_action(live[1])
    original = {t: sorted(a + b) for t, (a, b) in fleet.ids("cell1").items()}
    args = ("--cell", "cell1", "--max-rows", "3", "--until-complete")
    kills = 0
    for trial, nth in enumerate([1, 2, 3, 4, 2, 5, 3, 6, 1, 4, 2, 7, 3, 5]):
        ready = tmp_path / f"ready-{trial}"
        proc = _start(fleet.d, nth, ready, *args)
        if not _paused(ready, proc):
            _, err = proc.communicate(timeout=30)
            assert proc.returncode == 0, err
            break  # finished before its nth write: nothing left to interrupt
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
        kills += 1
        for table, (in_table, in_shadow) in fleet.ids("cell1").items():
            assert not set(in_table) & set(in_shadow), (table, ready.read_text())
            assert sorted(in_table + in_shadow) == original[table], (table, ready.read_text())
        rows = fleet.rows("cell1")
        assert set(rows["instance_actions"]) <= set(rows["instances"])  # no child without parent
        mapped = fleet.mappings()
        for uuid in set(mapped) - set(rows["instances"]):  # left by a kill: queued, pruned later
            assert uuid in gone and mapped[uuid][1] is True
    assert kills >= 5
    fleet.archive(*args)
    assert fleet.rows("cell1")["instances"] == sorted(live)
    assert fleet.rows("cell1", shadow=True)["instances"] == sorted(gone)
    for table, (in_table, in_shadow) in fleet.ids("cell1").items():
        assert sorted(in_table + in_shadow) == original[table]
    assert set(fleet.mappings()) == set(live)
