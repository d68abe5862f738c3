"""``cellgate host ...``: discovering, listing and deleting host mappings, on every backend.

The hosts come from rows written straight into each cell's ``services`` table,
the way a compute service would report; every CLI run goes through
:meth:`Deployment.run`, which fails on a leaked password or a traceback.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections import Counter

import pytest
from sqlalchemy.orm import Session

from cellgate.apidb.hosts import HostMapping, find_hosts, map_host
from cellgate.celldb.schema import ServiceRow
from cellgate.cli.exit_codes import ExitCode
from cellgate.sql.engines import make_engine
from cellgate.urls import DatabaseURL
from tests.functional.conftest import Deployment

CLOSED_PORT_DB = "mysql+pymysql://u:hunter2secret@127.0.0.1:1/x"


class Cells:
    """A synced deployment with cell0, cell1 and cell2, and their database URLs."""

    def __init__(self, deployment: Deployment) -> None:
        self.d = deployment
        deployment.run("api-db", "sync")
        self.urls: dict[str, DatabaseURL] = {"cell0": deployment.new_cell_url()}
        cell0_url = self.urls["cell0"].render(hide_password=False)
        deployment.run("cell", "map-cell0", "--database-connection", cell0_url)
        for name in ("cell1", "cell2"):
            self.urls[name] = self.create(name)
        deployment.run("db", "sync", "--all-cells")

    def create(self, name: str) -> DatabaseURL:
        url = self.d.new_cell_url()
        raw = url.render(hide_password=False)
        args = ["--name", name, "--transport-url", f"memory://{name}"]
        self.d.run("cell", "create", *args, "--database-connection", raw)
        return url

    def report(self, cell: str, *hosts: str, binary: str = "compute", **extra: object) -> None:
        """Write one ``services`` row per host into ``cell``'s database."""
        engine = make_engine(self.urls[cell], connect_timeout=5, query_timeout=30)
        try:
            with Session(engine) as session, session.begin():
                session.add_all(ServiceRow(host=h, binary=binary, **extra) for h in hosts)
        finally:
            engine.dispose()

    def discover(self, *args: str, ok: bool = True) -> tuple[int, dict[str, dict[str, object]]]:
        result = self.d.run("host", "discover", "--json", *args, ok=ok)
        return result.exit_code, {row["name"]: row for row in json.loads(result.stdout)}

    def mapped(self, *args: str) -> dict[str, str | None]:
        return {h["host"]: h["cell_name"] for h in self.d.json("host", "list", *args)}


@pytest.fixture
def cells(deployment: Deployment) -> Cells:
    c = Cells(deployment)
    c.report("cell0", "cell0-host")  # cell0 is never discovered
    c.report("cell1", "c1-a", "c1-b")
    c.report("cell1", "c1-a", binary="scheduler")  # a second service on the same host
    c.report("cell1", "c1-gone", deleted=7)  # a deleted service maps nothing
    c.report("cell2", "c2-a", disabled=True)  # a disabled service still belongs to its cell
    return c


def test_discover_maps_each_cells_hosts_once_and_skips_cell0(cells: Cells) -> None:
    code, rows = cells.discover()
    assert code == ExitCode.OK
    assert list(rows) == ["cell1", "cell2"]
    assert rows["cell1"]["mapped"] == ["c1-a", "c1-b"]
    assert rows["cell2"]["mapped"] == ["c2-a"]
    assert {r["status"] for r in rows.values()} == {"ok"}
    assert cells.mapped() == {"c1-a": "cell1", "c1-b": "cell1", "c2-a": "cell2"}
    again = cells.d.run("host", "discover")
    assert "cell1: ok, 0 new host(s) mapped" in again.stderr
    assert again.stdout.splitlines()[0].split() == ["CELL", "STATUS", "NEW", "HOSTS", "ERROR"]
    assert cells.discover()[1]["cell2"]["mapped"] == []
    assert len(cells.d.json("host", "list")) == 3


def test_list_by_cell_and_unknown_cell(cells: Cells) -> None:
    cells.discover()
    assert cells.mapped("--cell", "cell2") == {"c2-a": "cell2"}
    cell1_uuid = cells.d.json("cell", "show", "cell1")["uuid"]
    by_uuid = cells.d.json("host", "list", "--cell", cell1_uuid)
    assert [h["host"] for h in by_uuid] == ["c1-a", "c1-b"]
    assert {h["cell_uuid"] for h in by_uuid} == {cell1_uuid}
    assert by_uuid[0]["created_at"].endswith("Z")
    table = cells.d.run("host", "list").stdout.splitlines()
    assert table[0].split() == ["HOST", "CELL", "CELL", "UUID", "CREATED"]
    assert table[1].startswith("c1-a") and "cell1" in table[1]
    unknown = cells.d.run("host", "list", "--cell", "nope", ok=False)
    assert unknown.exit_code == ExitCode.NOT_FOUND
    assert "no cell named or with uuid 'nope'" in unknown.stderr
    # The CLI renders the hint key in its own words, as it always printed it.
    assert unknown.stderr.endswith(
        "cellgate: error: no cell named or with uuid 'nope'; see 'cellgate cell list'\n"
    )


def test_delete_then_rediscover(cells: Cells) -> None:
    cells.discover()
    deleted = cells.d.json("host", "delete", "c1-b")
    assert deleted == {
        "deleted": "c1-b",
        "cell_name": "cell1",
        "cell_uuid": cells.d.json("cell", "show", "cell1")["uuid"],
    }
    assert "c1-b" not in cells.mapped()
    again = cells.d.run("host", "delete", "c1-b", ok=False)
    assert again.exit_code == ExitCode.NOT_FOUND
    assert again.stderr.strip() == "cellgate: error: host 'c1-b' is not mapped to a cell"
    _, rows = cells.discover()
    assert rows["cell1"]["mapped"] == ["c1-b"] and rows["cell2"]["mapped"] == []
    assert cells.d.run("host", "delete", "c2-a").stdout.strip() == (
        "deleted host mapping c2-a (cell cell2)"
    )


def test_an_unreachable_cell_fails_alone_with_exit_5(cells: Cells) -> None:
    cells.d.secrets.append("hunter2secret")
    cells.d.run("cell", "update", "cell1", "--database-connection", CLOSED_PORT_DB)
    code, rows = cells.discover(ok=False)
    assert code == ExitCode.UNAVAILABLE
    assert rows["cell1"]["status"] == "failed" and rows["cell1"]["mapped"] == []
    assert "127.0.0.1:1" in str(rows["cell1"]["error"])
    assert rows["cell2"]["status"] == "ok" and rows["cell2"]["mapped"] == ["c2-a"]
    assert cells.mapped() == {"c2-a": "cell2"}
    text = cells.d.run("host", "discover", ok=False)
    assert "cell1: FAILED" in text.stderr and "Traceback" not in text.output


def test_an_unmigrated_cell_fails_alone(cells: Cells) -> None:
    cells.create("cell3")  # mapped, but db sync never ran on it
    code, rows = cells.discover(ok=False)
    if cells.d.server.kind == "sqlite":  # no file yet, and discovery must not create one
        assert code == ExitCode.UNAVAILABLE
        assert "does not exist" in str(rows["cell3"]["error"])
    else:
        assert code == ExitCode.SCHEMA
        assert "run 'cellgate db sync --cell cell3'" in str(rows["cell3"]["error"])
    assert rows["cell1"]["mapped"] == ["c1-a", "c1-b"]


def test_disabled_cells_are_skipped_unless_named(cells: Cells) -> None:
    cells.d.run("cell", "update", "cell2", "--disable")
    _, rows = cells.discover()
    assert list(rows) == ["cell1"]
    _, named = cells.discover("--cell", "cell2", "--cell", "cell2")
    assert list(named) == ["cell2"] and named["cell2"]["mapped"] == ["c2-a"]
    cell0 = cells.d.run("host", "discover", "--cell", "cell0", ok=False)
    assert cell0.exit_code == ExitCode.USAGE and "cell0 has no hosts" in cell0.stderr
    unknown = cells.d.run("host", "discover", "--cell", "nope", ok=False)
    assert unknown.exit_code == ExitCode.NOT_FOUND
    assert "cell0-host" not in cells.mapped()


def test_a_host_in_two_cells_stays_with_the_first_and_warns(cells: Cells) -> None:
    cells.report("cell2", "c1-a")
    result = cells.d.run("host", "discover", "--json")
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert rows["cell2"]["mapped"] == ["c2-a"]
    assert "host 'c1-a' reports in cell cell2 but is mapped to cell cell1" in result.stderr
    assert cells.mapped()["c1-a"] == "cell1"


def test_cell_delete_refuses_while_discovered_hosts_are_mapped(cells: Cells) -> None:
    cells.discover()
    refused = cells.d.run("cell", "delete", "cell1", ok=False)
    assert refused.exit_code == ExitCode.CONFLICT and "2 host(s)" in refused.stderr
    cells.d.run("cell", "delete", "cell1", "--force")
    assert cells.mapped() == {"c2-a": "cell2"}
    _, rows = cells.discover()
    assert list(rows) == ["cell2"]


def test_no_cells_to_discover(deployment: Deployment) -> None:
    deployment.run("api-db", "sync")
    result = deployment.run("host", "discover", "--json")
    assert json.loads(result.stdout) == [] and "no cells to discover" in result.stderr


@pytest.mark.timeout(180)
def test_concurrent_discovers_all_succeed_and_map_each_host_once(cells: Cells) -> None:
    extra = {
        "cell1": [f"c1-{i:02}" for i in range(25)],
        "cell2": [f"c2-{i:02}" for i in range(25)],
    }
    for cell, hosts in extra.items():
        cells.report(cell, *hosts)
    args = [sys.executable, "-m", "cellgate", "--config-file", str(cells.d.config_file)]
    procs = [
        subprocess.Popen(
            [*args, "host", "discover", "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    outcomes = [(p.wait(timeout=150), *p.communicate()) for p in procs]
    assert [code for code, _, _ in outcomes] == [ExitCode.OK] * 3, outcomes
    created: Counter[str] = Counter()
    for _, out, err in outcomes:
        cells.d.assert_no_secret(out + err)
        assert "Traceback" not in err
        created.update(h for row in json.loads(out) for h in row["mapped"])
    expected = {"c1-a", "c1-b", "c2-a", *extra["cell1"], *extra["cell2"]}
    assert set(created) == expected and set(created.values()) == {1}
    mapped = cells.mapped()
    assert set(mapped) == expected
    assert all(cell == ("cell1" if h.startswith("c1-") else "cell2") for h, cell in mapped.items())


def test_map_host_that_loses_a_race_returns_the_winners_mapping(cells: Cells) -> None:
    # The loser's transaction reads before the winner commits, so on MariaDB its
    # snapshot cannot see the winning row: only the locking re-read finds it.
    cell1 = cells.d.json("cell", "show", "cell1")["uuid"]
    loser: list[tuple[HostMapping, bool]] = []
    started = threading.Event()
    with cells.d.api() as winner_api, cells.d.api() as loser_api:

        def lose() -> None:
            with loser_api.session() as session:
                find_hosts(session, ["racy"])
                started.set()
                loser.append(map_host(session, "racy", cell1))

        with winner_api.session() as session:
            assert map_host(session, "racy", cell1)[1] is True
            thread = threading.Thread(target=lose)
            thread.start()
            started.wait(timeout=2)  # SQLite's loser waits at BEGIN instead
            thread.join(timeout=0.5)
        thread.join(timeout=30)
    [(mapping, created)] = loser
    assert created is False and (mapping.host, mapping.cell_name) == ("racy", "cell1")
    assert cells.mapped() == {"racy": "cell1"}
