"""One sorted page across many cells: a streaming k-way merge with one deadline.

Every cell returns its rows already sorted (``cellgate.keyset``), so a page
of ``limit`` rows is the first ``limit`` rows of a merge of the cells'
streams. Nova's list reads ``limit`` rows from *every* cell and sorts them
all in memory: a page of 1,000 over 10 cells reads up to 10,000 rows. Here
each cell is first asked for a small batch, about twice its fair share
(``2 * ceil(limit / cells)``, at least 10, at most ``limit``), the batches
are merged with a heap, and a cell is asked again only when its batch runs
out while the page still needs rows. A refetch doubles the batch, capped at
what the page still needs, so a cell holding every row costs a few round
trips and never more than ``limit`` rows past the marker; evenly spread
data costs one round trip and about ``2 * limit`` rows in all.

Cells are queried concurrently through the caller's scatter function (the
``App``'s pool, breakers and deadline): the first round goes to every cell
at once, a refetch to one cell, all within one deadline for the whole page.
A cell that fails or misses it is reported in :attr:`Listing.down`, never
dropped silently; the rows it returned before are kept.
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from cellgate.apidb.mappings import CellMapping
from cellgate.keyset import SortKey, sort_key
from cellgate.results import CellResult, Failed, Ok, TimedOut

Row = TypeVar("Row")

#: ``fetch(cell, limit, after)``: at most ``limit`` rows of ``cell`` sorted by
#: the keys, strictly after the key values ``after`` (all rows if ``None``).
Fetch = Callable[[CellMapping, int, Sequence[Any] | None], Sequence[Row]]

#: ``scatter({uuid: work}, timeout)`` runs every work at once and returns one
#: outcome per uuid by the deadline (``App`` passes its fan-out pool).
Scatter = Callable[
    [Mapping[str, Callable[[], Sequence[Row]]], float], Mapping[str, CellResult[Sequence[Row]]]
]

MIN_BATCH = 10


@dataclass(frozen=True)
class Item(Generic[Row]):
    """One row of the page, with the cell it came from and its key values."""

    cell: CellMapping
    row: Row
    values: tuple[Any, ...]


@dataclass(frozen=True)
class Listing(Generic[Row]):
    """A page: ``items`` in order, the cells that did not answer, and its cost."""

    items: list[Item[Row]]
    down: dict[str, Failed | TimedOut]
    #: key values of the last item when the page is full (pass as ``after``).
    next_after: tuple[Any, ...] | None
    cells: int
    #: uuids of the cells asked (after pruning): those in ``down`` did not answer.
    asked: frozenset[str]
    rows_read: int
    fetches: int


@dataclass
class _Stream(Generic[Row]):
    cell: CellMapping
    rows: list[Row] = field(default_factory=list)
    position: int = 0
    exhausted: bool = False
    last: tuple[Any, ...] | None = None


def first_batch(limit: int, cells: int) -> int:
    """Rows asked of each cell in the first round."""
    return min(limit, max(MIN_BATCH, 2 * math.ceil(limit / max(cells, 1))))


def list_across_cells(
    scatter: Scatter[Row],
    cells: Sequence[CellMapping],
    fetch: Fetch[Row],
    *,
    values: Callable[[Row], Sequence[Any]],
    keys: Sequence[SortKey],
    limit: int,
    after: Sequence[Any] | None = None,
    timeout: float,
) -> Listing[Row]:
    """Merge the cells' sorted rows into one page of at most ``limit``.

    ``values(row)`` gives a row's sort key values in the order of ``keys``;
    the last key must be unique across cells (a uuid) so that the page
    boundary ``after`` is exact.
    """
    if limit < 1:
        raise ValueError("limit must be at least 1")
    deadline = time.monotonic() + timeout
    streams = {c.uuid: _Stream[Row](c) for c in cells}
    down: dict[str, Failed | TimedOut] = {}
    counters = {"rows": 0, "fetches": 0}
    marker = tuple(after) if after is not None else None

    def load(batch: dict[str, int]) -> None:
        work = {
            uuid: _bound(fetch, streams[uuid].cell, size, streams[uuid].last or marker)
            for uuid, size in batch.items()
        }
        remaining = deadline - time.monotonic()
        results: Mapping[str, CellResult[Sequence[Row]]] = (
            scatter(work, remaining) if remaining > 0 else dict.fromkeys(work, TimedOut(timeout))
        )
        for uuid, result in results.items():
            counters["fetches"] += 1
            stream = streams[uuid]
            if isinstance(result, Ok):
                rows = list(result.value)
                counters["rows"] += len(rows)
                stream.rows, stream.position = rows, 0
                stream.exhausted = len(rows) < batch[uuid]
            else:
                down[uuid] = result
                stream.rows, stream.position, stream.exhausted = [], 0, True

    size = first_batch(limit, len(streams))
    load({uuid: size for uuid in streams})
    sizes = dict.fromkeys(streams, size)
    heap: list[tuple[tuple[Any, ...], int, str]] = []
    order = 0

    def push(uuid: str) -> None:
        nonlocal order
        stream = streams[uuid]
        if stream.position < len(stream.rows):
            row = stream.rows[stream.position]
            heapq.heappush(heap, (sort_key(keys, tuple(values(row))), order, uuid))
            order += 1

    for uuid in streams:
        push(uuid)
    items: list[Item[Row]] = []
    while heap and len(items) < limit:
        _, _, uuid = heapq.heappop(heap)
        stream = streams[uuid]
        row = stream.rows[stream.position]
        stream.last = tuple(values(row))
        items.append(Item(stream.cell, row, stream.last))
        stream.position += 1
        if stream.position == len(stream.rows) and not stream.exhausted:
            need = limit - len(items)
            if need == 0:
                break
            sizes[uuid] = min(sizes[uuid] * 2, need)
            load({uuid: sizes[uuid]})
        push(uuid)
    full = len(items) == limit
    return Listing(
        items=items,
        down=down,
        next_after=items[-1].values if full else None,
        cells=len(streams),
        asked=frozenset(streams),
        rows_read=counters["rows"],
        fetches=counters["fetches"],
    )


def _bound(
    fetch: Fetch[Row], cell: CellMapping, size: int, after: tuple[Any, ...] | None
) -> Callable[[], Sequence[Row]]:
    return lambda: fetch(cell, size, after)
