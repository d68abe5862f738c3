"""The migration lock across a Galera cluster (``cellgate.migrations.cluster_lock``).

``GET_LOCK`` is per node on Galera: two ``cellgate api-db sync`` runs through
two nodes both got it and failed half-way in 3 of 4 tries (issue 15). Here
real ``cellgate`` processes race through node 1 and node 2 on a fresh
database, ten times; a holder on one node makes a sync on another wait and
give up; and a holder that is gone, by lease expiry or because its
connection was killed on the sync's own node, is taken over.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import pytest
import sqlalchemy

from cellgate.cli.exit_codes import ExitCode
from cellgate.migrations.cluster_lock import TABLE
from cellgate.migrations.lock import migration_lock
from cellgate.migrations.runner import MigrationLine, current, head
from cellgate.sql.engines import make_engine
from cellgate.urls import DatabaseURL
from tests.ha.galera import SQL_PORTS, GaleraCluster, galera  # noqa: F401 (the fixture)

# The first test of a run also waits for the cluster to start (about 12 s, more
# on a loaded machine), and every test here waits on real nodes: generous bounds.
pytestmark = [pytest.mark.cluster, pytest.mark.xdist_group("galera"), pytest.mark.timeout(300)]

TRIES = 10
HANG = 120  # seconds: "did not hang", never a measurement


def _config(tmp: Path, url: DatabaseURL, tag: str) -> Path:
    path = tmp / f"{tag}.conf"
    path.write_text(
        f"[DEFAULT]\nstate_path = {tmp / 'state'}\n"
        f"[api_database]\nconnection = {url.render(hide_password=False)}\nconnect_timeout = 3\n",
        encoding="utf-8",
    )
    return path


def _sync(config: Path, *extra: str, debug: bool = False) -> subprocess.Popen[str]:
    """A ``cellgate api-db sync`` process; ``debug``: a failure shows where (--debug)."""
    front = ["--debug"] if debug else []
    return subprocess.Popen(
        [sys.executable, "-m", "cellgate", *front, "--config-file", str(config)]
        + ["api-db", "sync", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _outcome(proc: subprocess.Popen[str], password: str) -> tuple[int, str]:
    out, err = proc.communicate(timeout=HANG)
    for secret in {password, quote(password, safe="")}:
        assert secret not in out + err, "password leaked"
    assert "Traceback" not in out + err
    return proc.returncode, out + err


@contextmanager
def _engine(url: DatabaseURL) -> Iterator[sqlalchemy.Engine]:
    engine = make_engine(url, connect_timeout=5, query_timeout=30)
    try:
        yield engine
    finally:
        engine.dispose()


def _revision_everywhere(name: str, password: str) -> list[str | None]:
    found = []
    for port in SQL_PORTS:
        with _engine(GaleraCluster.url(name, password, port)) as engine, engine.connect() as c:
            c.exec_driver_sql("SET SESSION wsrep_sync_wait = 1")
            found.append(c.exec_driver_sql("SELECT version_num FROM alembic_version_api").scalar())
    return found


@pytest.mark.timeout(900)  # ten races of two processes: about 80 s alone, more under load
def test_two_syncs_through_different_nodes_end_at_head_every_time(
    galera: GaleraCluster,  # noqa: F811
    tmp_path: Path,
) -> None:
    for attempt in range(TRIES):
        name, password = galera.new_database()
        try:
            configs = [
                _config(
                    tmp_path, GaleraCluster.url(name, password, SQL_PORTS[n]), f"{attempt}-{n}"
                )
                for n in (0, 1)
            ]
            procs = [_sync(c, debug=True) for c in configs]
            outcomes = [_outcome(p, password) for p in procs]
            assert [code for code, _ in outcomes] == [0, 0], (
                attempt,
                [t[-3000:] for _, t in outcomes],
            )
            for _, text in outcomes:
                assert "error" not in text.lower(), (attempt, text)
            assert _revision_everywhere(name, password) == [head(MigrationLine.API)] * 3
            with (
                _engine(GaleraCluster.url(name, password, SQL_PORTS[2])) as engine,
                engine.connect() as conn,
            ):
                conn.exec_driver_sql("SET SESSION wsrep_sync_wait = 1")
                assert conn.exec_driver_sql(f"SELECT COUNT(*) FROM {TABLE}").scalar() == 0
        finally:
            galera.drop_database(name)


@contextmanager
def _held(url: DatabaseURL) -> Iterator[int]:
    """Hold the API line's lock through ``url``'s node; yields the holder's connection id."""
    with _engine(url) as engine, engine.connect() as conn:
        cid = int(conn.exec_driver_sql("SELECT CONNECTION_ID()").scalar_one())
        conn.commit()
        with migration_lock(conn, MigrationLine.API.value, timeout=10, component="the test"):
            yield cid


def test_a_holder_on_another_node_blocks_a_sync_until_its_lease_expires(
    galera: GaleraCluster,  # noqa: F811
    tmp_path: Path,
) -> None:
    name, password = galera.new_database()
    try:
        node1 = GaleraCluster.url(name, password, SQL_PORTS[0])
        via_node2 = _config(tmp_path, GaleraCluster.url(name, password, SQL_PORTS[1]), "n2")
        with _held(node1):
            code, text = _outcome(_sync(via_node2, "--lock-timeout", "2"), password)
            assert code == ExitCode.SCHEMA, text
            *where, line = (
                text.strip().splitlines()
            )  # "API database ...: upgrading", then the error
            assert all(w.startswith("API database ") for w in where), text
            assert "holds the migration lock of the api line (waited 2s)" in line
            with _engine(node1) as engine:
                assert current(engine, MigrationLine.API) is None  # nothing migrated
            # The holder "crashes" on its node: its lease runs out (in the server's clock).
            with galera.nodes[0].root() as conn, conn.cursor() as cur:
                cur.execute(
                    f"UPDATE `{name}`.{TABLE} SET expires_at = UTC_TIMESTAMP(6) - INTERVAL 1 SECOND"
                )
            code, text = _outcome(_sync(via_node2, "--lock-timeout", "10"), password)
            assert code == 0, text
        assert _revision_everywhere(name, password) == [head(MigrationLine.API)] * 3
    finally:
        galera.drop_database(name)


def test_a_killed_holder_on_the_same_node_is_taken_over_at_once(
    galera: GaleraCluster,  # noqa: F811
    tmp_path: Path,
) -> None:
    name, password = galera.new_database()
    try:
        node1 = GaleraCluster.url(name, password, SQL_PORTS[0])
        via_node1 = _config(tmp_path, node1, "n1")
        with _held(node1) as holder:
            with galera.nodes[0].root() as conn, conn.cursor() as cur:
                cur.execute(f"KILL CONNECTION {holder}")  # what a killed process amounts to
            # Well inside the lease: only the dead connection lets the sync in.
            code, text = _outcome(_sync(via_node1, "--lock-timeout", "10"), password)
            assert code == 0, text
        assert _revision_everywhere(name, password) == [head(MigrationLine.API)] * 3
    finally:
        galera.drop_database(name)
