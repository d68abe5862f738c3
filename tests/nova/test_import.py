"""``cellgate nova import`` on deployments nova-manage built: round trip, re-runs, refusals, kills.

cellgate's API database is a fresh one on the same server as Nova's; its
``[database] connection`` and ``[DEFAULT] transport_url`` are Nova's, so
Nova's templated cell URLs render the same on both sides. Every test proves
Nova was not written (a checksum of every Nova table), and every refusal that
cellgate was not either (a checksum of every cellgate table).

nova-manage's fixture gives cell2 a template that renders onto cell1's own
vhost: Nova allows two cells on one queue, cellgate does not, so the tests
that import successfully first give cell2 a vhost of its own in their copy
(``_own_vhost``), and one test proves the shared queue is refused.
"""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy
from sqlalchemy import text

from cellgate.admin.credentials import generate_key
from cellgate.apidb.instances import get_mapping
from cellgate.cli.exit_codes import ExitCode
from cellgate.config import load_settings
from cellgate.nova.urls import translate_database_url
from cellgate.sql.api_database import ApiDatabase
from tests.nova.cellgate_side import Cellgate, cellgate_beside
from tests.nova.conftest import CopyFactory
from tests.nova.deployment import BUILDING, CELL0_UUID, HOSTS, INSTANCES, Deployment
from tests.support import Server

pytestmark = [pytest.mark.nova, pytest.mark.timeout(1200)]

PAUSED_CLI = Path(__file__).parents[1] / "functional" / "paused_cli.py"


@pytest.fixture
def server(nova_base: Deployment, tmp_path: Path) -> Iterator[Server]:
    """Where cellgate's own API database lives: Nova's backend."""
    srv = Server(nova_base.kind, tmp_path)
    yield srv
    srv.drop_all()


def checksum(url: sqlalchemy.engine.URL | str) -> dict[str, str]:
    """``table`` -> digest of its rows, for cellgate's API database."""
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    sums: dict[str, str] = {}
    try:
        with engine.connect() as conn:
            for table in sorted(sqlalchemy.inspect(conn).get_table_names()):
                quoted = conn.dialect.identifier_preparer.quote(table)
                found = conn.execute(text(f"SELECT * FROM {quoted}")).all()
                digest = hashlib.sha256()
                for row in sorted(repr(tuple(r)) for r in found):
                    digest.update(row.encode())
                sums[table] = f"{len(found)}:{digest.hexdigest()}"
    finally:
        engine.dispose()
    return sums


def cellgate_sum(side: Cellgate) -> dict[str, str]:
    return checksum(side.api_url.sqlalchemy_url)


def _own_vhost(mine: Deployment) -> None:
    """Give the copy's cell2 a vhost of its own (its template rendered onto cell1's)."""
    with mine.api.connect() as conn:
        url = conn.execute(
            text("SELECT transport_url FROM cell_mappings WHERE name = 'cell2'")
        ).scalar_one()
        head, _, vhost = url.rpartition("/")
        conn.execute(
            text("UPDATE cell_mappings SET transport_url = :u WHERE name = 'cell2'"),
            {"u": f"{head}/{vhost}-cell2"},
        )


def _nova_rows(nova: Deployment) -> tuple[dict[str, tuple[str | None, str, str]], dict[str, str]]:
    """Nova's cells (uuid -> name, db, mq) and hosts (host -> cell uuid)."""
    with nova.api.connect() as conn:
        cells = {
            u: (n, db, mq)
            for u, n, db, mq in conn.execute(
                text("SELECT uuid, name, database_connection, transport_url FROM cell_mappings")
            )
        }
        hosts = {
            host: cell_uuid
            for host, cell_uuid in conn.execute(
                text(
                    "SELECT h.host, c.uuid FROM host_mappings h"
                    " JOIN cell_mappings c ON c.id = h.cell_id"
                )
            )
        }
    return cells, hosts


def _nova_instances(nova: Deployment) -> list[tuple[str, str | None, str, str | None, bool]]:
    """Nova's instance mappings by id: (uuid, cell uuid, project, user, queued)."""
    with nova.api.connect() as conn:
        return [
            (u, c, p, us, bool(q))
            for u, c, p, us, q in conn.execute(
                text(
                    "SELECT i.instance_uuid, c.uuid, i.project_id, i.user_id, i.queued_for_delete"
                    " FROM instance_mappings i LEFT JOIN cell_mappings c ON c.id = i.cell_id"
                    " ORDER BY i.id"
                )
            )
        ]


def _assert_cellgate_agrees(side: Cellgate, nova: Deployment) -> None:
    """cell list/show, host list and instance lookups say what Nova's rows say."""
    cells, hosts = _nova_rows(nova)
    listed = {c["uuid"]: c for c in side.json("cell", "list")}
    assert set(listed) == set(cells)
    for cell_uuid, (name, db, mq) in cells.items():
        assert listed[cell_uuid]["name"] == name
        shown = side.revealed(cell_uuid)
        assert shown["database_connection"] == translate_database_url(db)
        if cell_uuid != CELL0_UUID:
            assert shown["transport_url"] == mq
    assert {h["host"]: h["cell_uuid"] for h in side.json("host", "list")} == hosts
    api = ApiDatabase(load_settings(side.config_file).api_database)
    try:
        with api.session() as session:
            for inst, cell_uuid, project, user, queued in _nova_instances(nova):
                found = get_mapping(session, inst)
                if cell_uuid is None:
                    assert found is None  # still being scheduled in Nova: skipped
                    continue
                assert found is not None, inst
                assert (found.cell_uuid, found.project_id, found.user_id) == (
                    cell_uuid,
                    project,
                    user,
                )
                assert found.queued_for_delete == queued
    finally:
        api.close()


def test_round_trip_then_idempotent_rerun_reporting_changes(
    nova_copy: CopyFactory, server: Server, tmp_path: Path
) -> None:
    mine = nova_copy()
    _own_vhost(mine)
    side = cellgate_beside(mine, server, tmp_path)
    args = ("nova", "import", "--nova-api-db", mine.api_url)
    nova_before = mine.checksum()

    # Dry run: the masked plan, and nothing written on either side.
    empty = cellgate_sum(side)
    plan = side.json(*args, "--dry-run")
    assert cellgate_sum(side) == empty
    assert [c["action"] for c in plan["cells"]] == ["create"] * 3 and plan["dry_run"]
    assert plan["hosts"]["imported"] == sum(len(h) for h in HOSTS.values())
    scheduled = sum(len(v) for v in INSTANCES.values())
    assert plan["instances"]["imported"] == scheduled and plan["unscheduled_skipped"] == 1
    text_plan = side.run(*args, "--dry-run").stdout
    assert "dry run: nothing was written" in text_plan and "***" in text_plan
    assert cellgate_sum(side) == empty

    # The import, in small batches.
    done = side.json(*args, "--batch-size", "2")
    assert not done["dry_run"] and done["conflicts"] == []
    assert done["instances"]["imported"] == scheduled
    assert done["batches"] == 2 + 4  # 3 hosts by 2, 8 instance mappings by 2
    _assert_cellgate_agrees(side, mine)
    history = side.json("cell", "history", "cell1")
    assert [e["action"] for e in history][:1] == ["nova-import"]
    assert mine.checksum() == nova_before

    # Again: nothing new, everything already there.
    after_first = cellgate_sum(side)
    again = side.json(*args)
    assert [c["action"] for c in again["cells"]] == ["unchanged"] * 3
    assert again["hosts"]["imported"] == 0 and again["hosts"]["unchanged"] == 3
    assert again["instances"]["imported"] == 0
    assert again["instances"]["unchanged"] == scheduled
    assert cellgate_sum(side) == after_first

    # Nova changes; the next run imports what is new and reports what differs.
    new_uuid = "11111111-0000-4000-8000-0000000000aa"
    with mine.api.connect() as conn:
        cell1_id = conn.execute(
            text("SELECT id FROM cell_mappings WHERE name = 'cell1'")
        ).scalar_one()
        conn.execute(
            text(
                "INSERT INTO instance_mappings (instance_uuid, cell_id, project_id, user_id,"
                " queued_for_delete) VALUES (:u, :c, 'p', 'u', :f)"
            ),
            {"u": new_uuid, "c": cell1_id, "f": False},
        )
        conn.execute(
            text("UPDATE instance_mappings SET queued_for_delete = :t WHERE instance_uuid = :u"),
            {"t": True, "u": INSTANCES["cell2"][0][0]},
        )
        conn.execute(text("DELETE FROM host_mappings WHERE host = 'compute-1b'"))
        conn.execute(
            text("UPDATE cell_mappings SET name = 'cell-two', disabled = :t WHERE name = 'cell2'"),
            {"t": True},
        )
    nova_before = mine.checksum()
    changed = side.json(*args)
    assert mine.checksum() == nova_before
    by_uuid = {c["uuid"]: c for c in changed["cells"]}
    cell2 = by_uuid[mine.cell_uuids["cell2"]]
    assert cell2["action"] == "changed" and cell2["name"] == "cell2"
    assert cell2["changes"] == {"name": ["cell2", "cell-two"], "disabled": [False, True]}
    assert changed["instances"]["imported"] == 1
    assert changed["instances"]["changed"] == 1
    assert changed["instances"]["changed_examples"][0]["instance_uuid"] == INSTANCES["cell2"][0][0]
    assert changed["hosts"]["only_in_cellgate_examples"] == ["compute-1b"]
    assert side.json("cell", "show", "cell2")["disabled"] is False  # reported, never applied
    out = side.run(*args).stdout
    assert "differs in Nova, left as it is in cellgate" in out


def test_a_shared_queue_is_refused_and_nothing_is_written(
    nova_base: Deployment, server: Server, tmp_path: Path
) -> None:
    side = cellgate_beside(nova_base, server, tmp_path)
    before, nova_before = cellgate_sum(side), nova_base.checksum()
    args = ("nova", "import", "--nova-api-db", nova_base.api_url)
    refused = side.run(*args, ok=False)
    assert refused.exit_code == ExitCode.CONFLICT, refused.output
    lines = refused.output.strip().splitlines()
    assert lines[-1].startswith("cellgate: error: Nova import refused, nothing was written")
    assert "message queue" in lines[-1] and "cell cell2" in lines[-1]
    plan = side.run(*args, "--dry-run", "--json", ok=False)
    assert plan.exit_code == ExitCode.CONFLICT
    assert cellgate_sum(side) == before and nova_base.checksum() == nova_before


def test_conflicting_names_are_refused_or_resolved_explicitly(
    nova_copy: CopyFactory, server: Server, tmp_path: Path
) -> None:
    mine = nova_copy()
    _own_vhost(mine)
    mine.api.execute("UPDATE cell_mappings SET name = NULL WHERE name = 'cell2'")
    mine.api.execute(
        "UPDATE host_mappings SET cell_id = (SELECT id FROM cell_mappings WHERE uuid = :u)"
        " WHERE host = 'compute-2a'",
        u=CELL0_UUID,
    )
    side = cellgate_beside(mine, server, tmp_path)
    # A cellgate cell already named cell1, somewhere else.
    other = server.new_database()
    side.secrets += [p for p in [other.sqlalchemy_url.password] if p]
    side.run(
        "cell",
        "create",
        "--name",
        "cell1",
        "--transport-url",
        "memory://elsewhere",
        "--database-connection",
        other.render(hide_password=False),
    )
    args = ("nova", "import", "--nova-api-db", mine.api_url)
    before = cellgate_sum(side)
    refused = side.run(*args, ok=False)
    assert refused.exit_code == ExitCode.CONFLICT
    message = refused.output.strip().splitlines()[-1]
    assert "3 conflict(s)" in message
    assert "host 'compute-2a' is mapped to cell0 in Nova" in message
    assert "has the name of the cellgate cell 'cell1'" in message
    assert f"cell {mine.cell_uuids['cell2']} has no name in Nova (NULL)" in message
    assert "--name-from-uuid" in message
    assert cellgate_sum(side) == before
    # Not a name: only fixed in Nova (here, as nova-manage cell_v2 delete_host would).
    mine.api.execute("DELETE FROM host_mappings WHERE host = 'compute-2a'")

    done = side.json(*args, "--name-from-uuid")
    names = {c["uuid"]: c["name"] for c in done["cells"]}
    for cell in ("cell1", "cell2"):
        assert names[mine.cell_uuids[cell]] == f"nova-{mine.cell_uuids[cell]}"
    listed = {c["name"] for c in side.json("cell", "list")}
    assert listed == {
        "cell0",
        "cell1",
        *(f"nova-{mine.cell_uuids[c]}" for c in ("cell1", "cell2")),
    }
    # Re-run without the option: the cells are matched by uuid, nothing to refuse.
    again = side.json(*args)
    assert {c["action"] for c in again["cells"]} == {"unchanged"}


def test_amqp_1_0_is_refused_mysql_is_translated_and_keys_encrypt(
    nova_copy: CopyFactory, server: Server, tmp_path: Path
) -> None:
    mine = nova_copy()
    _own_vhost(mine)
    with mine.api.connect() as conn:
        mq = conn.execute(
            text("SELECT transport_url FROM cell_mappings WHERE name = 'cell1'")
        ).scalar_one()
        conn.execute(
            text("UPDATE cell_mappings SET transport_url = :u WHERE name = 'cell1'"),
            {"u": "amqp://" + mq.partition("://")[2]},
        )
    key = generate_key()
    side = cellgate_beside(mine, server, tmp_path, api_options=f"encryption_keys = {key}\n")
    side.secrets.append(key)
    args = ("nova", "import", "--nova-api-db", mine.api_url)
    before = cellgate_sum(side)
    refused = side.run(*args, ok=False)
    assert refused.exit_code == ExitCode.CONFLICT
    assert "AMQP 1.0" in refused.output and cellgate_sum(side) == before

    mine.api.execute(
        "UPDATE cell_mappings SET transport_url = :u WHERE name = 'cell1'",
        u=mq,
    )
    if mine.kind == "mariadb":  # the plain mysql:// spelling (mysqlclient) is translated
        mine.api.execute(
            "UPDATE cell_mappings SET database_connection ="
            " REPLACE(database_connection, 'mysql+pymysql://', 'mysql://') WHERE name = 'cell1'"
        )
    done = side.json(*args)
    translated = {c["name"]: c["translation"] for c in done["cells"]}
    if mine.kind == "mariadb":
        assert translated["cell1"] == "mysql -> mysql+pymysql"
    elif mine.kind == "postgresql":
        assert translated["cell1"] == "postgresql+psycopg2 -> postgresql+psycopg"
    _assert_cellgate_agrees(side, mine)
    engine = sqlalchemy.create_engine(
        side.api_url.sqlalchemy_url, poolclass=sqlalchemy.pool.NullPool
    )
    try:
        with engine.connect() as conn:
            stored = conn.execute(
                text("SELECT transport_url, database_connection FROM cell_mapping")
            ).all()
    finally:
        engine.dispose()
    assert len(stored) == 3 and all("://" not in value for row in stored for value in row)
    encryption = {c["encryption"] for c in side.json("cell", "list")}
    assert len(encryption) == 1 and encryption.pop().startswith("aesgcm:")


def _start(side: Cellgate, nth: int, ready: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            str(PAUSED_CLI),
            str(nth),
            str(ready),
            "--config-file",
            str(side.config_file),
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _paused(ready: Path, proc: subprocess.Popen[str]) -> bool:
    deadline = time.monotonic() + 120
    while not ready.exists():
        if proc.poll() is not None:
            return ready.exists()
        assert time.monotonic() < deadline, "the import never reached its pause"
        time.sleep(0.02)
    return True


def _imported(side: Cellgate) -> set[str]:
    engine = sqlalchemy.create_engine(
        side.api_url.sqlalchemy_url, poolclass=sqlalchemy.pool.NullPool
    )
    try:
        with engine.connect() as conn:
            return set(conn.scalars(text("SELECT instance_uuid FROM instance_mapping")))
    finally:
        engine.dispose()


def test_a_killed_import_resumes_on_the_next_run(
    nova_copy: CopyFactory, server: Server, tmp_path: Path
) -> None:
    mine = nova_copy()
    _own_vhost(mine)
    side = cellgate_beside(mine, server, tmp_path)
    args = ("nova", "import", "--nova-api-db", mine.api_url, "--batch-size", "2")
    nova_before = mine.checksum()
    order = [(u, c) for u, c, *_ in _nova_instances(mine)]
    # What may be in cellgate after a kill: the scheduled rows of whole batches, a prefix.
    prefixes = [
        {u for u, c in order[: 2 * k] if c is not None} for k in range(len(order) // 2 + 1)
    ]
    kills = 0
    # The first run's first transaction (three cells) is 9 writes; the rest are shorter.
    for trial, nth in enumerate([4, 11, 3, 2, 4, 3, 2, 3, 2, 2, 2, 2, 2, 2, 2, 2]):
        ready = tmp_path / f"ready-{trial}"
        proc = _start(side, nth, ready, *args)
        if not _paused(ready, proc):
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
            break
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        kills += 1
        assert _imported(side) in prefixes, ready.read_text()
    assert kills >= 3
    final = side.json(*args)
    assert final["conflicts"] == []
    _assert_cellgate_agrees(side, mine)
    assert _imported(side) == prefixes[-1] and BUILDING not in _imported(side)
    assert mine.checksum() == nova_before
