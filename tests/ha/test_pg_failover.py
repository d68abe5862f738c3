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
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine

from cellgate.errors import BackendError
from cellgate.sql.engines import make_engine, translate_errors
from cellgate.urls import DatabaseURL
from tests.ha.postgres import PRIMARY_PORT, STANDBY_PORT, PgCluster

pytestmark = [pytest.mark.cluster, pytest.mark.xdist_group("postgres-ha")]

QUERY_TIMEOUT = 3.0
CONNECT_TIMEOUT = 2.0
#: Writes must resume within this (a stuck client never would).
CAP = 60.0


@pytest.fixture
def cluster(pg_cluster: PgCluster) -> Iterator[PgCluster]:
    pg_cluster.rebuild()
    with pg_cluster.primary.connect() as conn:
        conn.execute("DROP TABLE IF EXISTS writes")
        conn.execute("CREATE TABLE writes (n integer PRIMARY KEY, port integer NOT NULL)")
    yield pg_cluster


def _engine(cluster: PgCluster) -> Engine:
    url = DatabaseURL.parse(cluster.multi_host_url())
    return make_engine(url, connect_timeout=CONNECT_TIMEOUT, query_timeout=QUERY_TIMEOUT)


def _write(engine: Engine, n: int) -> int:
    """One write transaction; the port of the server that took it."""
    with translate_errors("cluster database"), engine.begin() as conn:
        return int(
            conn.execute(
                text(
                    "INSERT INTO writes (n, port) VALUES (:n, inet_server_port()) RETURNING port"
                ),
                {"n": n},
            ).scalar_one()
        )


@dataclass
class WriteLoop:
    """Writes 1, 2, 3... one transaction each, until stopped; records what was acknowledged."""

    engine: Engine
    acked: dict[int, tuple[float, int]] = field(default_factory=dict)  # n -> (when, port)
    failed: list[tuple[float, str]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            try:
                port = _write(self.engine, n)
            except BackendError as exc:
                self.failed.append((time.monotonic(), type(exc).__name__))
                time.sleep(0.05)
                continue
            self.acked[n] = (time.monotonic(), port)
            time.sleep(0.01)

    def acked_on(self, port: int, since: float = 0.0) -> int:
        return sum(1 for when, p in list(self.acked.values()) if p == port and when >= since)

    def wait_for(self, count: int, port: int, since: float, cap: float) -> float:
        """Seconds from ``since`` until ``count`` writes were acknowledged on ``port``."""
        deadline = since + cap
        while time.monotonic() < deadline:
            if self.acked_on(port, since) >= count:
                return (
                    min(w for w, p in list(self.acked.values()) if p == port and w >= since)
                    - since
                )
            time.sleep(0.05)
        pytest.fail(f"fewer than {count} writes acknowledged on port {port} within {cap:g} s")


def test_the_multi_host_url_writes_to_the_primary_and_the_standby_follows(
    cluster: PgCluster,
) -> None:
    engine = _engine(cluster)
    try:
        assert {_write(engine, n) for n in range(1, 6)} == {PRIMARY_PORT}
    finally:
        engine.dispose()
    with cluster.standby.connect() as conn:  # synchronous: already there
        rows = conn.execute("SELECT n FROM writes ORDER BY n").fetchall()
        assert [r[0] for r in rows] == [1, 2, 3, 4, 5]
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)


def fail_over(cluster: PgCluster, old_primary: str) -> None:
    """Promote the standby; then the old primary is ``stopped`` (a crash) or ``frozen``."""
    cluster.broken = True
    cluster.standby.promote()
    if old_primary == "stopped":
        cluster.primary.stop("immediate")
    else:  # SIGSTOP of every process: its sockets stay open, nothing answers
        cluster.primary.freeze()


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
        loop.wait_for(20, PRIMARY_PORT, since=time.monotonic(), cap=CAP)
        started = time.monotonic()
        fail_over(cluster, old_primary)
        loop.wait_for(20, STANDBY_PORT, since=started, cap=CAP)
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
    assert loop.acked_on(PRIMARY_PORT) >= 20 and loop.acked_on(STANDBY_PORT) >= 20
