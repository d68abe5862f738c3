"""A PostgreSQL failover under a write loop, on a real primary and standby (issue 15.6).

The cluster (tests/ha/postgres.py) is a primary on 25432 and a synchronous
streaming standby on 25433; cellgate reaches it through one libpq multi-host
URL with ``target_session_attrs=read-write``. During a loop of writes, the
standby is promoted (``pg_ctl promote``) and the old primary is stopped (``pg_ctl stop -m
immediate``: a crash, no shutdown checkpoint) or frozen. Checked:
writes resume, on the new primary, before a generous cap; and every write
the loop saw succeed is in the new primary. Writes that failed meanwhile are
the client's to retry; a failed one may or may not be there (it may have
committed before its answer was lost), which is why only acknowledged writes
are counted.

How the engine gets there: a pooled connection to the dead primary fails
its pre-ping at the next checkout, and the reconnect walks the host list to
the server that now accepts writes; a commit on the old primary after the
promotion waits for a standby that is gone and ends at the client-side
deadline (tests/ha/test_pg_client_timeout.py) instead of hanging.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from click.testing import CliRunner
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from cellgate.cli import cli
from cellgate.config import ApiDatabaseSettings
from cellgate.sql.api_database import ApiDatabase
from cellgate.sql.engines import make_engine
from cellgate.sql.retry import CONNECT_CODE
from cellgate.urls import DatabaseURL
from tests.ha.postgres import (
    PRIMARY_PORT,
    STANDBY_PORT,
    PgCluster,
    WriteLoop,
    create_writes_table,
    fail_over,
    write,
)

pytestmark = [pytest.mark.cluster, pytest.mark.xdist_group("postgres-ha")]

QUERY_TIMEOUT = 3.0
CONNECT_TIMEOUT = 2.0
#: Writes must resume within this (a stuck client never would).
CAP = 60.0


@pytest.fixture
def cluster(pg_cluster: PgCluster) -> Iterator[PgCluster]:
    pg_cluster.rebuild()
    create_writes_table(pg_cluster)
    yield pg_cluster


def _engine(cluster: PgCluster) -> Engine:
    url = DatabaseURL.parse(cluster.multi_host_url())
    return make_engine(url, connect_timeout=CONNECT_TIMEOUT, query_timeout=QUERY_TIMEOUT)


def test_the_multi_host_url_writes_to_the_primary_and_the_standby_follows(
    cluster: PgCluster,
) -> None:
    engine = _engine(cluster)
    try:
        assert {write(engine, n) for n in range(1, 6)} == {PRIMARY_PORT}
    finally:
        engine.dispose()
    with cluster.standby.connect() as conn:  # synchronous: already there
        rows = conn.execute("SELECT n FROM writes ORDER BY n").fetchall()
        assert [r[0] for r in rows] == [1, 2, 3, 4, 5]
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("old_primary", ["stopped", "frozen"])
def test_writes_resume_on_the_promoted_standby_and_no_acknowledged_write_is_lost(
    cluster: PgCluster, old_primary: str
) -> None:
    engine = _engine(cluster)
    loop = WriteLoop(engine)
    writer = threading.Thread(target=loop.run, name="write-loop", daemon=True)
    writer.start()
    try:
        assert loop.wait_for(20, PRIMARY_PORT, since=time.monotonic(), cap=CAP) is not None
        started = time.monotonic()
        fail_over(cluster, old_primary)
        resumed = loop.wait_for(20, STANDBY_PORT, since=started, cap=CAP)
        assert resumed is not None, f"writes did not resume on the new primary in {CAP:g} s"
    finally:
        loop.stop.set()
        writer.join(CAP)
        engine.dispose()
    assert not writer.is_alive()
    with cluster.standby.connect() as conn:
        stored = {int(r[0]) for r in conn.execute("SELECT n FROM writes").fetchall()}
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (False,)
    lost = sorted(set(loop.acked) - stored)
    assert not lost, f"acknowledged writes missing on the new primary: {lost[:20]}"
    assert len(loop.acked_on(PRIMARY_PORT)) >= 20 and len(loop.acked_on(STANDBY_PORT)) >= 20


def _insert(n: int) -> Callable[[Session], int]:
    def transaction(session: Session) -> int:
        return int(
            session.execute(
                text(
                    "INSERT INTO writes (n, port) VALUES (:n, inet_server_port()) RETURNING port"
                ),
                {"n": n},
            ).scalar_one()
        )

    return transaction


@pytest.mark.timeout(300)
def test_a_write_that_finds_no_primary_at_its_start_waits_for_the_promotion(
    cluster: PgCluster,
) -> None:
    """Primary gone, standby not yet promoted: the write is retried, not failed (issue 15).

    The order of a real failover (Patroni promotes a standby only after the
    primary is gone): the old primary crashes first, so the next write's
    connection finds no server that takes writes (libpq tries both hosts of
    the URL; the standby refuses ``target_session_attrs=read-write``). That
    is a failure before any statement, which ``ApiDatabase.write`` retries on
    a fresh connection; the standby is promoted when the first retry is
    seen, and the retried attempt lands on it, with no error to the caller.
    """
    api = ApiDatabase(
        ApiDatabaseSettings(
            connection=DatabaseURL.parse(cluster.multi_host_url()),
            connect_timeout=CONNECT_TIMEOUT,
            query_timeout=QUERY_TIMEOUT,
        )
    )
    try:
        assert api.write(_insert(1)) == PRIMARY_PORT
        cluster.broken = True
        cluster.primary.stop("immediate")
        seen: list[str] = []

        def promote_once(retry: int, code: str) -> None:
            seen.append(code)
            if len(seen) == 1:
                cluster.standby.promote()  # pg_ctl promote -w: read-write when it returns

        assert api.write(_insert(2), on_retry=promote_once) == STANDBY_PORT
        assert seen and set(seen) == {CONNECT_CODE}
        assert api.retries.retries() == {("api", CONNECT_CODE): len(seen)}
    finally:
        api.close()
    with cluster.standby.connect() as conn:
        rows = conn.execute("SELECT n, port FROM writes ORDER BY n").fetchall()
    assert [tuple(r) for r in rows] == [(1, PRIMARY_PORT), (2, STANDBY_PORT)]


def test_the_cli_follows_the_primary_across_a_failover(cluster: PgCluster, tmp_path: Path) -> None:
    """The operator's view: the API database on the cluster, one URL, before and after."""
    for name in ("cg_api", "cg_cell1", "cg_cell2"):
        with cluster.primary.connect() as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name}")
            conn.execute(f"CREATE DATABASE {name}")
    conf = tmp_path / "cellgate.conf"
    conf.write_text(
        f"[api_database]\nconnection = {cluster.multi_host_url('cg_api')}\n"
        "connect_timeout = 2\nquery_timeout = 3\n",
        encoding="utf-8",
    )

    def cellgate(*args: str) -> str:
        result = CliRunner().invoke(cli, ["--config-file", str(conf), *args])
        assert result.exit_code == 0, result.output
        assert cluster.password not in result.output
        assert quote(cluster.password, safe="") not in result.output
        return result.output

    cellgate("api-db", "sync")
    cellgate(
        "cell", "create", "--name", "cell1", "--transport-url", "memory://cell1",
        "--database-connection", cluster.multi_host_url("cg_cell1"),
    )  # fmt: skip
    cellgate("db", "sync", "--all-cells")
    fail_over(cluster, "stopped")
    cellgate(
        "cell", "create", "--name", "cell2", "--transport-url", "memory://cell2",
        "--database-connection", cluster.multi_host_url("cg_cell2"),
    )  # fmt: skip
    cellgate("db", "sync", "--all-cells")
    listing = cellgate("cell", "list")
    assert "cell1" in listing and "cell2" in listing
    assert "target_session_attrs=read-write" in listing
    with cluster.standby.connect("cg_api") as conn:
        names = {r[0] for r in conn.execute("SELECT name FROM cell_mapping").fetchall()}
    assert {"cell1", "cell2"} <= names
