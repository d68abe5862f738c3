"""``App.list_across_cells`` on every backend: one order, exact pages, bounded reads.

The cells are real databases of the backend under test; the order every cell
returns (``cellgate.keyset``) must be the one the Python merge assumes, or
pages across cells would interleave wrongly. The names below are chosen to
disagree under the engines' default collations (case, accents, the empty
string) and the created_at values include NULLs, which PostgreSQL orders
last and MariaDB and SQLite first by default.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert

from cellgate import App, RequestContext, SortKey, TimedOut
from cellgate.apidb.instances import add_mapping
from cellgate.apidb.mappings import create_cell
from cellgate.celldb import queries
from cellgate.celldb.schema import InstanceRow
from cellgate.keyset import sort_key
from cellgate.routing.listing import first_batch
from tests.functional.test_routing import CELLS, DEFAULTS, Cells, _cells
from tests.support import Server, blackhole

CTX = RequestContext(request_id="req-listing")
NAMES = ("a", "B", "b", "Ä", "ä", "", "Z", "z", "aa", "a b", "A", "_x")
T0 = dt.datetime(2026, 1, 1, 12, 0, 0)


@pytest.fixture
def cells(server: Server, tmp_path: Path) -> Iterator[Cells]:
    yield from _cells(server, tmp_path)


def _insert(
    app: App, cell: str, rows: Sequence[tuple[str, dt.datetime | None]], project: str
) -> None:
    mapping = app.cells.get(CTX, cell)
    with app.db.session(CTX.for_cell(mapping)) as s:
        for name, created in rows:  # Core: an explicit NULL, not the column default
            s.execute(
                insert(InstanceRow).values(
                    uuid=str(uuid.uuid4()),
                    name=name,
                    project_id=project,
                    vm_state="active",
                    created_at=created,
                )
            )


def _fetch(app: App, keys: Sequence[SortKey], project: str | None = None) -> Any:
    """The fetch function ``App.list_across_cells`` takes: one cell's sorted rows."""

    def fetch(cctx: RequestContext, size: int, after: Sequence[Any] | None) -> list[Any]:
        with app.db.session(cctx) as s:
            return queries.list_instances(
                s, project_id=project, keys=keys, limit=size, after=after
            )

    return fetch


def _values(keys: Sequence[SortKey]) -> Any:
    return lambda instance: instance.sort_values(keys)


def _all_pages(app: App, keys: Sequence[SortKey], limit: int) -> list[queries.Instance]:
    seen: list[queries.Instance] = []
    after = None
    while True:
        listing = app.list_across_cells(
            CTX, _fetch(app, keys), values=_values(keys), sort=keys, limit=limit, after=after
        )
        assert listing.down == {}
        assert len(listing.items) <= limit
        seen += [item.row for item in listing.items]
        if listing.next_after is None:
            return seen
        after = listing.next_after


@pytest.mark.parametrize(
    "spec",
    [
        [SortKey("name")],
        [SortKey("name", "desc")],
        [SortKey("created_at"), SortKey("name", "desc")],
        [SortKey("created_at", "desc"), SortKey("name")],
    ],
    ids=["name", "name-desc", "created-name-desc", "created-desc-name"],
)
def test_pages_across_cells_follow_one_order(cells: Cells, spec: list[SortKey]) -> None:
    app = cells.app
    for i, cell in enumerate(CELLS):
        rows = [
            (name, None if (j + i) % 4 == 0 else T0 + dt.timedelta(minutes=(j * 7 + i) % 5))
            for j, name in enumerate(NAMES)
        ]
        _insert(app, cell, rows, "p1")
    keys = queries.with_tiebreak(spec)
    seen = _all_pages(app, keys, limit=5)
    expected = sorted(seen, key=lambda r: sort_key(keys, r.sort_values(keys)))
    assert [r.uuid for r in seen] == [r.uuid for r in expected]
    assert len({r.uuid for r in seen}) == len(NAMES) * len(CELLS)  # none twice, none lost
    if spec == [SortKey("name")]:  # code point order, the same on every engine
        assert [r.name for r in seen[:12:3]] == ["", "A", "B", "Z"]


def test_even_spread_reads_one_batch_per_cell(cells: Cells) -> None:
    app = cells.app
    for cell in CELLS:
        _insert(app, cell, [(f"{cell}-{j:03d}", T0) for j in range(60)], "p1")
    keys = queries.with_tiebreak([SortKey("name")])
    listing = app.list_across_cells(
        CTX, _fetch(app, keys), values=_values(keys), sort=keys, limit=60
    )
    assert [i.row.name for i in listing.items] == [f"alpha-{j:03d}" for j in range(60)]
    # Nova reads limit rows from every cell (180); the merge asks each cell for
    # twice its share first, and alpha again for the rest of the page.
    assert listing.rows_read <= 60 + 2 * first_batch(60, 3)
    assert listing.rows_read < 60 * len(CELLS)


def test_one_cell_holding_every_row_costs_a_few_fetches(cells: Cells) -> None:
    app = cells.app
    _insert(app, "beta", [(f"vm-{j:03d}", T0) for j in range(120)], "p1")
    keys = queries.with_tiebreak([SortKey("name", "desc")])
    listing = app.list_across_cells(
        CTX, _fetch(app, keys), values=_values(keys), sort=keys, limit=100
    )
    assert [i.row.name for i in listing.items] == [f"vm-{j:03d}" for j in range(119, 19, -1)]
    assert {i.cell.name for i in listing.items} == {"beta"}
    assert listing.rows_read == 100  # never more than the page past the marker
    assert listing.fetches <= len(CELLS) + 3  # batches double: 67, then the last 33
    assert listing.next_after == listing.items[-1].values


def test_a_hung_cell_is_reported_and_the_others_answer(cells: Cells) -> None:
    app = cells.app
    for cell in CELLS:
        _insert(app, cell, [(f"{cell}-{j}", T0) for j in range(3)], "p1")
    keys = queries.with_tiebreak([SortKey("name")])
    with blackhole() as port:  # accepts TCP, never answers
        with app.db.api_session() as s:
            create_cell(
                s,
                name="hung",
                transport_url="memory://hung",
                database_connection=f"mysql+pymysql://u:pw@127.0.0.1:{port}/x",
                defaults=DEFAULTS,
            )
        app.reload(wait=30)
        listing = app.list_across_cells(
            CTX, _fetch(app, keys), values=_values(keys), sort=keys, limit=50, timeout=1.0
        )
    hung = app.cells.get(CTX, "hung")
    assert set(listing.down) == {hung.uuid}
    assert isinstance(listing.down[hung.uuid], TimedOut)
    assert [i.row.name for i in listing.items] == sorted(
        f"{c}-{j}" for c in CELLS for j in range(3)
    )
    assert listing.next_after is None


def test_project_scoped_listing_asks_only_the_cells_holding_it(cells: Cells) -> None:
    app = cells.app
    _insert(app, "alpha", [("theirs", T0)], "p1")
    _insert(app, "gamma", [("mine-1", T0), ("mine-2", None)], "p2")
    gamma = app.cells.get(CTX, "gamma")
    with app.db.session(CTX.for_cell(gamma)) as s:
        mine = [
            i.uuid
            for i in queries.list_instances(s, project_id="p2", keys=[SortKey("uuid")], limit=10)
        ]
    with app.db.api_session() as s:
        for instance_uuid in mine:
            add_mapping(s, instance_uuid=instance_uuid, cell=gamma, project_id="p2", user_id=None)
    keys = queries.with_tiebreak([SortKey("created_at")])
    asked: list[str] = []

    def fetch(cctx: RequestContext, size: int, after: Sequence[Any] | None) -> list[Any]:
        assert cctx.cell is not None
        asked.append(cctx.cell.name or "")
        with app.db.session(cctx) as s:
            return queries.list_instances(s, project_id="p2", keys=keys, limit=size, after=after)

    listing = app.list_across_cells(
        CTX, fetch, values=_values(keys), sort=keys, limit=10, prune_to_project="p2"
    )
    assert asked == ["gamma"] and listing.cells == 1
    assert [i.row.name for i in listing.items] == ["mine-2", "mine-1"]  # NULL first ascending
    unpruned = app.list_across_cells(CTX, fetch, values=_values(keys), sort=keys, limit=10)
    assert unpruned.cells == len(CELLS) and len(unpruned.items) == 2
