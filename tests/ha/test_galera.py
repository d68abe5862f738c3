"""cellgate on a real 3-node Galera cluster: several writers through different nodes.

Without the whole-transaction retry (``cellgate.sql.retry``), writers on
different nodes lose a third to half of their cell writes to Galera's
certification conflicts, raised as a raw 1213 (issue 15). With it every
write lands exactly once: the test replays 200 interleaved creates, updates
and deletes through 2 and then 3 nodes at once and compares the final mapping
table and the audit trail with what the same operations, applied one after
another, must give. Every cell write bumps one shared generation row, so
concurrent writers on different nodes do conflict: the test also checks that
retries happened (the cluster is exercised, not just present).
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pymysql
import pytest

from cellgate import App, admin, load_settings
from tests.ha.galera import SQL_PORTS, GaleraCluster, galera  # noqa: F401 (the fixture)

# The first test of a run also waits for the cluster to start (about 12 s, more
# on a loaded machine), and every test here waits on real nodes: generous bounds.
pytestmark = [pytest.mark.cluster, pytest.mark.xdist_group("galera"), pytest.mark.timeout(300)]

TOTAL_OPS = 200


@dataclass
class ApiOnGalera:
    """One API database on the cluster, and a config file per node to reach it."""

    cluster: GaleraCluster
    name: str
    password: str
    tmp: Path

    def config(self, port: int, *, attempts: int | None = None) -> Path:
        path = self.tmp / f"cellgate-{port}-{attempts}.conf"
        url = GaleraCluster.url(self.name, self.password, port).render(hide_password=False)
        path.write_text(
            "[DEFAULT]\n"
            f"state_path = {self.tmp / 'state'}\n"
            "[api_database]\n"
            f"connection = {url}\n"
            "connect_timeout = 3\n"
            "query_timeout = 20\n" + (f"conflict_attempts = {attempts}\n" if attempts else ""),
            encoding="utf-8",
        )
        return path

    def app(self, port: int, *, attempts: int | None = None) -> App:
        return App(load_settings(self.config(port, attempts=attempts)))

    def query(self, node: int, sql: str) -> list[tuple[object, ...]]:
        """A read on one node after it has applied every write certified so far."""
        with (
            pymysql.connect(
                host="127.0.0.1",
                port=SQL_PORTS[node],
                user=self.name,
                password=self.password,
                database=self.name,
                connect_timeout=5,
                read_timeout=30,
            ) as conn,
            conn.cursor() as cur,
        ):
            cur.execute("SET SESSION wsrep_sync_wait = 1")
            cur.execute(sql)
            return list(cur.fetchall())


@pytest.fixture
def api_db(galera: GaleraCluster, tmp_path: Path) -> Iterator[ApiOnGalera]:  # noqa: F811
    name, password = galera.new_database()
    db = ApiOnGalera(galera, name, password, tmp_path)
    with db.app(SQL_PORTS[0]) as app:
        admin.sync_api(app)
    # Galera applies a write on the other nodes a moment after it commits:
    # wait (bounded) until each has applied the migrations before using it.
    for node in range(3):
        assert db.query(node, "SELECT version_num FROM alembic_version_api")
    yield db
    galera.drop_database(name)


def test_the_cluster_has_three_synced_nodes_that_replicate(
    galera: GaleraCluster,  # noqa: F811
    api_db: ApiOnGalera,
    tmp_path: Path,
) -> None:
    for node in galera.nodes:
        assert node.status("wsrep_cluster_size") == "3"
        assert node.status("wsrep_local_state_comment") == "Synced"
    with api_db.app(SQL_PORTS[1]) as app:
        admin.create_cell(
            app,
            name="seen",
            transport_url="memory://seen",
            database_connection=f"sqlite:///{tmp_path}/seen.sqlite",  # never opened here
        )
    for node in range(3):  # written on node 2, read on each
        rows = api_db.query(node, "SELECT name FROM cell_mapping WHERE deleted = 0")
        assert ("seen",) in rows


def _plan(writer: int, ops: int) -> list[tuple[str, int]]:
    """Writer ``writer``'s operations: create j, update j-1, delete j-2 every other step."""
    plan: list[tuple[str, int]] = []
    j = 0
    while len(plan) < ops:
        plan.append(("create", j))
        if j >= 1 and len(plan) < ops:
            plan.append(("update", j - 1))
        if j >= 2 and j % 2 == 0 and len(plan) < ops:
            plan.append(("delete", j - 2))
        j += 1
    return plan


def _expected(writer: int, plan: list[tuple[str, int]]) -> dict[str, str]:
    """Live cell name -> transport URL after ``plan``, applied in order."""
    live: dict[str, str] = {}
    for op, j in plan:
        name = f"w{writer}-c{j}"
        if op == "create":
            live[name] = f"memory://{name}"
        elif op == "update" and name in live:
            live[name] = f"memory://{name}-v2"
        elif op == "delete":
            live.pop(name, None)
    return live


def _run_writers(
    db: ApiOnGalera, writers: int, *, attempts: int | None = None
) -> dict[str, object]:
    """Each writer on its own node replays its plan; returns failures and retry counts."""
    plans = {w: _plan(w, TOTAL_OPS // writers) for w in range(writers)}
    failures: dict[int, list[str]] = {w: [] for w in range(writers)}
    retries: dict[int, int] = {}
    start = threading.Barrier(writers, timeout=30)

    def write(w: int) -> None:
        with db.app(SQL_PORTS[w % 3], attempts=attempts) as app:
            start.wait()
            for op, j in plans[w]:
                name = f"w{w}-c{j}"
                try:
                    if op == "create":
                        admin.create_cell(
                            app,
                            name=name,
                            transport_url=f"memory://{name}",
                            database_connection=f"sqlite:///{db.tmp}/{name}.sqlite",
                            actor=f"writer{w}",
                        )
                    elif op == "update":
                        admin.update_cell(
                            app, name, transport_url=f"memory://{name}-v2", actor=f"writer{w}"
                        )
                    else:
                        admin.delete_cell(app, name, actor=f"writer{w}")
                except Exception as exc:  # counted: the test says which and why
                    failures[w].append(f"{op} {name}: {type(exc).__name__}: {exc}")
            retries[w] = app.retries.total_retries

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not any(t.is_alive() for t in threads)
    return {
        "plans": plans,
        "failures": failures,
        "retries": retries,
        "seconds": time.monotonic() - started,
    }


@pytest.mark.parametrize("writers", [2, 3])
def test_writers_through_different_nodes_all_succeed_exactly_once(
    api_db: ApiOnGalera, writers: int
) -> None:
    # The default retry policy (``cellgate.sql.retry``): no case needs more.
    outcome = _run_writers(api_db, writers)
    failures: dict[int, list[str]] = outcome["failures"]  # type: ignore[assignment]
    assert failures == {w: [] for w in range(writers)}
    plans: dict[int, list[tuple[str, int]]] = outcome["plans"]  # type: ignore[assignment]
    expected: dict[str, str] = {}
    for w, plan in plans.items():
        expected.update(_expected(w, plan))
    # Every node holds exactly the expected live cells: no lost update, no duplicate.
    for node in range(3):
        rows = api_db.query(node, "SELECT name, transport_url FROM cell_mapping WHERE deleted = 0")
        assert len(rows) == len(expected)
        assert dict((str(n), str(u)) for n, u in rows) == expected  # noqa: C402
    # The audit trail has each operation once (a retried attempt left no entry).
    audit = collections.Counter(
        (str(name), str(action))
        for name, action in api_db.query(2, "SELECT cell_name, action FROM cell_mapping_audit")
    )
    wanted = collections.Counter((f"w{w}-c{j}", op) for w, plan in plans.items() for op, j in plan)
    assert audit == wanted
    retries: dict[int, int] = outcome["retries"]  # type: ignore[assignment]
    assert sum(retries.values()) > 0, "no conflict at all: the writers did not overlap"
    print(f"{writers} writers: {outcome['seconds']:.1f}s, retries {retries}")
