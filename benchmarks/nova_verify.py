"""``nova verify`` throughput and memory on a synthetic Nova deployment.

The tables are :mod:`cellgate.nova.schema`'s (the columns verify reads, as
Nova declares them, plus the unique indexes on the uuids Nova's migrations
make), created on the run's backend: an API database and
``CELLS`` cell databases at Nova's heads, each cell with compute services
(all mapped) and instances (all mapped), so a clean run reads every row and
finds nothing. Full mode: 100,000 instance mappings over 10 cells; quick
mode: 10,000.

Figures:

- ``nova_verify_rows_per_s``: rows verify read (instance mappings, cell
  instances, unscheduled mappings) per second of a whole ``verify_nova``
  (cells scanned at once, batches of 1,000);
- ``nova_verify_peak_mb``: the peak of Python allocations during the same
  verify (tracemalloc, a second run: tracing slows it down);
- ``nova_verify_peak_growth``: the peak with all the rows over the peak with
  a tenth of them, both with batches small enough that each cell takes at
  least 10 (``mappings / 1,000`` rows), so both peaks hold every cell's
  batch at once. Streaming keeps it near 1; loading every mapping would
  make it near 10.
"""

from __future__ import annotations

import gc
import time
import tracemalloc
import uuid as uuidlib
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy
from sqlalchemy import insert

from benchmarks.deploy import Servers
from cellgate import App, admin, load_settings
from cellgate.admin.nova_verify import DEFAULT_BATCH_SIZE
from cellgate.nova import schema as nova
from cellgate.urls import DatabaseURL

CELLS = 10
FULL_MAPPINGS = 100_000
QUICK_MAPPINGS = 10_000
HOSTS_PER_CELL = 20
_CHUNK = 5000
_WHEN = datetime(2026, 1, 5, 12, 0, 0)


_API_INDEXES = (
    "CREATE UNIQUE INDEX uniq_instance_mappings0instance_uuid"
    " ON instance_mappings (instance_uuid)",
    "CREATE INDEX instance_mappings_cell_id_fk ON instance_mappings (cell_id)",
    "CREATE UNIQUE INDEX uniq_host_mappings0host ON host_mappings (host)",
    "CREATE UNIQUE INDEX uniq_build_requests0instance_uuid ON build_requests (instance_uuid)",
)
_CELL_INDEX = "CREATE UNIQUE INDEX uniq_instances0uuid ON instances (uuid)"


class NovaDeployment:
    """The synthetic deployment: URLs of the API and cell databases, filled in steps."""

    def __init__(self, servers: Servers) -> None:
        self.servers = servers
        urls = servers.new_databases(["nova_api", *(f"nova_cell{i}" for i in range(CELLS))])
        self.api_url, self.cell_urls = urls[0], urls[1:]
        self.instances = 0  # per cell, so far
        self._engines = [self._engine(u) for u in urls]
        nova.api_metadata.create_all(self._engines[0])
        for engine in self._engines[1:]:
            nova.cell_metadata.create_all(engine)
        # The indexes Nova's own migrations make that verify's lookups use.
        with self._engines[0].begin() as conn:
            for ddl in _API_INDEXES:
                conn.exec_driver_sql(ddl)
        for engine in self._engines[1:]:
            with engine.begin() as conn:
                conn.exec_driver_sql(_CELL_INDEX)
        with self._engines[0].begin() as conn:
            conn.execute(insert(nova.alembic_version_api).values(version_num=nova.API_HEAD))
            conn.execute(
                insert(nova.cell_mappings),
                [
                    {
                        "uuid": str(uuidlib.uuid4()),
                        "name": f"cell{i + 1}",
                        "transport_url": "none:///",
                        "database_connection": url,
                        "disabled": False,
                        "created_at": _WHEN,
                    }
                    for i, url in enumerate(self.cell_urls)
                ],
            )
            ids = [row[0] for row in conn.execute(sqlalchemy.text("SELECT id FROM cell_mappings"))]
            self.cell_ids = sorted(ids)
            conn.execute(
                insert(nova.host_mappings),
                [
                    {"cell_id": cell_id, "host": f"c{i}-h{h}", "created_at": _WHEN}
                    for i, cell_id in enumerate(self.cell_ids)
                    for h in range(HOSTS_PER_CELL)
                ],
            )
        for i, engine in enumerate(self._engines[1:]):
            with engine.begin() as conn:
                conn.execute(insert(nova.alembic_version_cell).values(version_num=nova.CELL_HEAD))
                conn.execute(
                    insert(nova.services),
                    [
                        {"host": f"c{i}-h{h}", "binary": "nova-compute", "deleted": 0}
                        for h in range(HOSTS_PER_CELL)
                    ],
                )

    @staticmethod
    def _engine(url: str) -> sqlalchemy.Engine:
        return sqlalchemy.create_engine(
            DatabaseURL.parse(url).sqlalchemy_url, poolclass=sqlalchemy.pool.NullPool
        )

    def fill_to(self, total: int) -> None:
        """Instances and their mappings, spread evenly, up to ``total`` mappings."""
        per_cell = total // CELLS
        for i, engine in enumerate(self._engines[1:]):
            start = self.instances
            for low in range(start, per_cell, _CHUNK):
                rows = [
                    {
                        "uuid": f"{i:08x}-0000-4000-8000-{n:012x}",
                        "project_id": "bench",
                        "user_id": "bench",
                        "host": f"c{i}-h{n % HOSTS_PER_CELL}",
                        "hidden": False,
                        "deleted": 0,
                        "created_at": _WHEN,
                    }
                    for n in range(low, min(per_cell, low + _CHUNK))
                ]
                with engine.begin() as conn:
                    conn.execute(insert(nova.instances), rows)
                with self._engines[0].begin() as conn:
                    conn.execute(
                        insert(nova.instance_mappings),
                        [
                            {
                                "instance_uuid": r["uuid"],
                                "cell_id": self.cell_ids[i],
                                "project_id": "bench",
                                "user_id": "bench",
                                "queued_for_delete": False,
                                "created_at": _WHEN,
                            }
                            for r in rows
                        ],
                    )
        self.instances = per_cell

    def close(self) -> None:
        for engine in self._engines:
            engine.dispose()


def _verify(app: App, d: NovaDeployment, batch: int) -> admin.NovaVerifyReport:
    report = admin.verify_nova(app, d.api_url, batch_size=batch)
    if report.findings:  # the deployment is clean: a finding means the benchmark is wrong
        raise RuntimeError(f"unexpected findings: {[f.code for f in report.findings]}")
    return report


def _peak_mb(fn: Callable[[], Any]) -> float:
    gc.collect()
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def measure(backend: str, tmp: Path, *, quick: bool) -> dict[str, Any]:
    """The three figures (and what they were measured on)."""
    total = QUICK_MAPPINGS if quick else FULL_MAPPINGS
    # The growth runs use batches small enough that even the tenth takes 10 per cell.
    small_batch = max(1, total // 100 // CELLS)
    servers = Servers(backend, tmp)
    servers.check()
    config = tmp / "nova-verify.conf"
    config.write_text(f"[api_database]\nconnection = sqlite:///{tmp / 'cellgate-api.sqlite'}\n")
    try:
        d = NovaDeployment(servers)
        try:
            with App(load_settings(config)) as app:
                d.fill_to(total // 10)
                tenth = _peak_mb(lambda: _verify(app, d, small_batch))
                d.fill_to(total)
                start = time.perf_counter()
                report = _verify(app, d, DEFAULT_BATCH_SIZE)
                seconds = time.perf_counter() - start
                peak = _peak_mb(lambda: _verify(app, d, DEFAULT_BATCH_SIZE))
                whole = _peak_mb(lambda: _verify(app, d, small_batch))
        finally:
            d.close()
    finally:
        servers.drop_all()
    return {
        "nova_verify_rows_per_s": report.rows_checked / seconds,
        "nova_verify_peak_mb": peak,
        "nova_verify_peak_growth": whole / tenth,
        "rows": report.rows_checked,
        "mappings": total,
        "seconds": seconds,
        "growth_batch": small_batch,
    }
