"""Open connections and memory after touching every mapped cell once.

Connections are counted two ways:

- ``open_connections_1000_cells``: connections held by the pools of the cell
  engines in ``app.engines`` (checked in plus checked out), after the calls
  settle: idle connections above ``[cells] max_idle_connections`` are closed
  once ``[cells] idle_grace`` has passed, so the count is taken when the
  registry reports it is within the bound (or grace + 2 s later, whichever
  comes first);
- ``db_fds_1000_cells``: this process's file descriptors that are database
  connections, read from ``/proc``: open ``.sqlite`` files plus TCP sockets to
  port 3306 or 5432. It includes the API database and counts what the
  kernel sees, so a pool that forgot a connection would show up here.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import text

from benchmarks.routing import CTX
from cellgate import App, CellMapping

DB_PORTS = (3306, 5432)


@dataclass(frozen=True)
class Capacity:
    cells: int
    pooled: int
    db_fds: int
    engines: int
    rss_before_mb: float
    rss_after_mb: float
    pool_kind: str
    settled_s: float


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _socket_inodes_to(ports: Sequence[int]) -> set[str]:
    inodes = set()
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            remote_port = int(fields[2].rsplit(":", 1)[1], 16)
            if remote_port in ports and fields[3] == "01":  # ESTABLISHED
                inodes.add(fields[9])
    return inodes


def db_fds() -> int:
    """Open .sqlite files and TCP connections to a database port, held by this process."""
    sockets = _socket_inodes_to(DB_PORTS)
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.endswith(".sqlite") or target.startswith("socket:[") and target[8:-1] in sockets:
            count += 1
    return count


def pooled_connections(app: App) -> tuple[int, int]:
    """(connections held by cell engine pools, number of engines).

    Reads the registry's private engine table: the registry has no public
    iterator, and a benchmark may look inside.
    """
    engines = list(getattr(app.engines, "_engines", {}).values())
    total = 0
    for engine in engines:
        pool = engine.pool
        checkedin = getattr(pool, "checkedin", None)
        checkedout = getattr(pool, "checkedout", None)
        total += (checkedin() if callable(checkedin) else 0) + (
            checkedout() if callable(checkedout) else 0
        )
    return total, len(engines)


def settle(app: App) -> float:
    """Wait until the idle connections are within their bound; the seconds waited."""
    start = time.monotonic()
    cells = app.settings.cells
    deadline = start + cells.idle_grace + 2.0
    while app.engines.idle_connections() > cells.max_idle_connections:
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    return time.monotonic() - start


def touch_all(app: App, cells: Sequence[CellMapping]) -> Capacity:
    before = rss_mb()
    for cell in cells:
        with app.db.session(CTX.for_cell(cell)) as session:
            session.execute(text("SELECT 1"))
    settled = settle(app)
    pooled, engines = pooled_connections(app)
    sample = app.engines.get(app.db.url_for(cells[-1]))
    pool_kind = f"{type(sample.pool).__name__} on {sample.dialect.name}"
    size = getattr(sample.pool, "size", None)
    overflow = getattr(sample.pool, "_max_overflow", None)
    if callable(size):
        pool_kind += f" (pool_size={size()}, max_overflow={overflow})"
    return Capacity(len(cells), pooled, db_fds(), engines, before, rss_mb(), pool_kind, settled)
