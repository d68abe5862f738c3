"""A sorted page of 100 across 10 and 100 cells: rows read and latency vs one cell.

Every cell in the measurement holds ``rows`` instances with random names (so
a page by name draws from every cell, the even case). The page goes through
``App.list_across_cells`` with ``celldb.queries.list_instances``, exactly as
the reference service's ``GET /v1/instances`` does. Two figures per cell
count:

- rows read per page, against Nova's ``limit * cells`` (Nova asks every cell
  for a whole page and sorts them all);
- the page's latency over N cells divided by a page from one of those cells
  alone, interleaved in one run.
"""

from __future__ import annotations

import secrets
import time
import uuid as uuidlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert

from benchmarks.deploy import PROJECT
from benchmarks.routing import CTX, Plan
from benchmarks.stats import Pair, interleaved_once
from cellgate import App, CellMapping, RequestContext, SortKey
from cellgate.celldb import queries
from cellgate.celldb.schema import InstanceRow

PAGE = 100
KEYS = queries.with_tiebreak([SortKey("name")])


def fill(app: App, cells: Sequence[CellMapping], rows: int) -> None:
    """``rows`` instances with random names in every cell, one bulk insert each."""
    for cell in cells:
        values = [
            {
                "uuid": str(uuidlib.uuid4()),
                "name": secrets.token_hex(6),
                "project_id": PROJECT,
                "vm_state": "active",
                "deleted": 0,
            }
            for _ in range(rows)
        ]
        with app.db.session(CTX.for_cell(cell)) as session:
            session.execute(insert(InstanceRow), values)


def _fetch(app: App) -> Any:
    def fetch(cctx: RequestContext, size: int, after: Sequence[Any] | None) -> list[Any]:
        with app.db.session(cctx) as session:
            return queries.list_instances(
                session, project_id=None, keys=KEYS, limit=size, after=after
            )

    return fetch


@dataclass(frozen=True)
class PageCost:
    rows_read: int
    fetches: int
    latency: Pair  # N cells vs one cell


def page_cost(app: App, cells: Sequence[CellMapping], plan: Plan) -> PageCost:
    """One page of 100 by name over ``cells`` vs over ``cells[:1]``."""
    fetch = _fetch(app)
    seen: dict[str, int] = {}

    def page(over: Sequence[CellMapping]) -> float:
        started = time.perf_counter()
        listing = app.list_across_cells(
            CTX,
            fetch,
            values=lambda i: i.sort_values(KEYS),
            sort=KEYS,
            limit=PAGE,
            cells=over,
        )
        elapsed = time.perf_counter() - started
        if listing.down or len(listing.items) != PAGE:
            raise RuntimeError(f"listing: {len(listing.items)} rows, down: {list(listing.down)}")
        if len(over) > 1:
            seen.update(rows=listing.rows_read, fetches=listing.fetches)
        return elapsed

    pair = interleaved_once(
        lambda: page(cells), lambda: page(cells[:1]), samples=plan.scatter_samples, warmup=2
    )
    return PageCost(seen["rows"], seen["fetches"], pair)
