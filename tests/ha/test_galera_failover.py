"""The node behind HAProxy dies (SIGKILL) during a read/write loop: requests go on elsewhere.

The topology docs/deployment.md recommends: every connection goes through
HAProxy to one Galera node (node 1) while it is up, the others as backups.
Killing node 1 makes requests fail for as long as HAProxy takes to mark it
down (its checks: 2 misses 0.5 s apart) and SQLAlchemy to replace the dead
pooled connections (``pool_pre_ping``), then the same ``App`` carries on
through node 2. Every write the loop was told had succeeded is then on the
surviving nodes. The node is started again at the end and rejoins.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pymysql
import pytest

from cellgate import App, admin, load_settings
from cellgate.errors import BackendError
from tests.ha.galera import (  # noqa: F401 (the fixture)
    HAPROXY,
    HAPROXY_PORT,
    SQL_PORTS,
    GaleraCluster,
    galera,
)

pytestmark = [pytest.mark.cluster, pytest.mark.xdist_group("galera")]

BEFORE = 20  # successful iterations before the kill
AFTER = 20  # ... and after it
DEADLINE = 120.0  # seconds: the loop always ends


@pytest.mark.timeout(300)
def test_requests_resume_on_another_node_when_the_node_behind_haproxy_dies(
    galera: GaleraCluster,  # noqa: F811
    tmp_path: Path,
) -> None:
    if not HAPROXY.exists():
        pytest.fail(f"{HAPROXY} is missing: run scripts/packages as root")
    name, password = galera.new_database()
    url = GaleraCluster.url(name, password, HAPROXY_PORT).render(hide_password=False)
    config = tmp_path / "c.conf"
    config.write_text(
        f"[DEFAULT]\nstate_path = {tmp_path / 'state'}\n"
        f"[api_database]\nconnection = {url}\nconnect_timeout = 2\nquery_timeout = 5\n",
        encoding="utf-8",
    )
    acknowledged: list[str] = []
    failures: list[str] = []
    killed_at: float | None = None
    resumed_at: float | None = None
    victim = galera.nodes[0]
    try:
        with App(load_settings(config)) as app:
            admin.sync_api(app)
            ok_after = 0
            i = 0
            deadline = time.monotonic() + DEADLINE
            while ok_after < AFTER and time.monotonic() < deadline:
                cell = f"c{i}"
                i += 1
                try:
                    admin.create_cell(
                        app,
                        name=cell,
                        transport_url=f"memory://{cell}",
                        database_connection=f"sqlite:///{tmp_path}/{cell}.sqlite",
                    )
                    acknowledged.append(cell)
                    listed = {c.name for c in admin.list_cells(app)}
                    assert cell in listed  # read your write, on whichever node serves
                except BackendError as exc:  # the outage: reported, not a crash
                    failures.append(f"{cell}: {type(exc).__name__}: {exc}")
                    continue
                if killed_at is None and len(acknowledged) >= BEFORE:
                    victim.kill(signal.SIGKILL)
                    killed_at = time.monotonic()
                elif killed_at is not None:
                    resumed_at = resumed_at or time.monotonic()
                    ok_after += 1
        assert killed_at is not None
        assert ok_after == AFTER, f"requests did not resume within {DEADLINE:g}s: {failures[-3:]}"
        print(
            f"node 1 killed: {len(failures)} failed requests, resumed after "
            f"{(resumed_at or killed_at) - killed_at:.2f}s"
        )
        # No acknowledged write is lost: node 2 and 3 have every one of them.
        for port in SQL_PORTS[1:]:
            with (
                pymysql.connect(
                    host="127.0.0.1",
                    port=port,
                    user=name,
                    password=password,
                    database=name,
                    connect_timeout=5,
                    read_timeout=30,
                ) as conn,
                conn.cursor() as cur,
            ):
                cur.execute("SET SESSION wsrep_sync_wait = 1")
                cur.execute("SELECT name FROM cell_mapping WHERE deleted = 0")
                stored = {str(row[0]) for row in cur.fetchall()}
            assert set(acknowledged) <= stored
    finally:
        galera.restart(victim)
        galera.wait_size(3, via=galera.nodes[1])
        galera.drop_database(name)
