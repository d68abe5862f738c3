"""``pg_failover_recovery_s``: how long writes stop when a PostgreSQL standby takes over.

On the primary + synchronous standby that the cluster tests start
(tests/ha/postgres.py, ports 25432-25433), a loop writes one row per
transaction through cellgate's engine and a libpq multi-host URL with
``target_session_attrs=read-write``. Each trial promotes the standby and
crashes the old primary (``pg_ctl stop -m immediate``); the figure is the
time from the start of the promotion to the first write acknowledged by the
new primary (so it includes ``pg_ctl promote`` itself), median over the
trials. The same trial with the old primary frozen (SIGSTOP) instead is in
the note: there every pooled connection must first reach its client-side
deadline. The figure is ``null`` when the cluster cannot start here (no
PostgreSQL binaries, ports held by a test run), with the reason.
"""

from __future__ import annotations

import threading
import time

from tests.ha.postgres import (
    PRIMARY_PORT,
    STANDBY_PORT,
    PgCluster,
    WriteLoop,
    create_writes_table,
    fail_over,
    ports_locked,
    running_cluster,
)

from benchmarks.stats import Series
from cellgate.sql.engines import make_engine
from cellgate.urls import DatabaseURL

QUERY_TIMEOUT = 3.0
CONNECT_TIMEOUT = 2.0
CAP = 60.0  # a trial whose writes have not resumed by then is reported as failed
LOCK_WAIT = 10.0  # the ports may be held by a test run: then null, not a wait


def _trial(cluster: PgCluster, old_primary: str) -> float:
    cluster.rebuild()
    create_writes_table(cluster)
    url = DatabaseURL.parse(cluster.multi_host_url())
    engine = make_engine(url, connect_timeout=CONNECT_TIMEOUT, query_timeout=QUERY_TIMEOUT)
    loop = WriteLoop(engine)
    writer = threading.Thread(target=loop.run, name="bench-write-loop", daemon=True)
    writer.start()
    try:
        if loop.wait_for(10, PRIMARY_PORT, since=time.monotonic(), cap=CAP) is None:
            raise RuntimeError("no writes on the primary before the failover")
        started = time.monotonic()
        fail_over(cluster, old_primary)
        recovery = loop.wait_for(1, STANDBY_PORT, since=started, cap=CAP)
    finally:
        loop.stop.set()
        writer.join(CAP)
        engine.dispose()
    if recovery is None:
        raise RuntimeError(f"writes did not resume within {CAP:g} s ({old_primary} old primary)")
    return recovery


def pg_failover_recovery(trials: int) -> tuple[Series, Series]:
    """Recovery seconds per trial: old primary crashed, and old primary frozen."""
    with ports_locked(LOCK_WAIT), running_cluster() as cluster:
        crashed = tuple(_trial(cluster, "stopped") for _ in range(trials))
        frozen = tuple(_trial(cluster, "frozen") for _ in range(trials))
    return Series(crashed), Series(frozen)
