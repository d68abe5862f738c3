"""``MappingCache``: cell mappings served from memory, refreshed safely.

The spec notes that every request pays an extra lookup and that the data
"could be cached quite easily". Nova cached it in a module global that was
never refreshed. Here the cache:

- answers by uuid or by name from an immutable snapshot (a dict read, no lock);
- after ``ttl`` seconds, one caller re-checks the API database while every
  other caller keeps using the current snapshot; the re-check reads the single
  ``mapping_generation`` integer and reloads the mappings only if it moved;
- on a miss, reloads once before answering :class:`CellNotFound`, so a cell
  created a moment ago resolves at once; the answer "no such cell" is then
  remembered for a second, so a flood of bad names cannot turn into a flood of
  reloads;
- keeps resolving a cell deleted elsewhere until the TTL re-check or
  ``invalidate()`` (the staleness bound is the TTL);
- keeps serving the last snapshot if a TTL refresh fails (the API database
  being down must not take down requests the cache can answer), logging the
  failure; a miss during an outage raises the outage, never a false
  :class:`CellNotFound`;
- is owned by ``App``; ``invalidate()`` (or SIGHUP in services) drops it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from cellgate import forksafe
from cellgate.apidb.database import ApiDatabase
from cellgate.apidb.mappings import CellMapping, list_cells, normalize_uuid, read_generation
from cellgate.context import RequestContext
from cellgate.errors import CellgateError, CellNotFound

log = logging.getLogger(__name__)

_NEGATIVE_TTL = 1.0  # seconds a "no such cell" answer is remembered
_NEGATIVE_LIMIT = 1024


@dataclass(frozen=True)
class _Snapshot:
    generation: int
    loaded_at: float
    cells: tuple[CellMapping, ...]
    by_uuid: dict[str, CellMapping] = field(default_factory=dict)
    by_name: dict[str, CellMapping] = field(default_factory=dict)

    @classmethod
    def build(cls, generation: int, loaded_at: float, cells: list[CellMapping]) -> _Snapshot:
        return cls(
            generation,
            loaded_at,
            tuple(cells),
            {c.uuid: c for c in cells},
            {c.name: c for c in cells if c.name},
        )


class MappingCache:
    """A TTL cache of live cell mappings; see the module docstring."""

    def __init__(
        self, api: ApiDatabase, ttl: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._api = api
        self._ttl = ttl
        self._clock = clock
        self._snapshot: _Snapshot | None = None
        self._refresh_lock = threading.Lock()
        self._negative: dict[str, float] = {}
        self._closed = False
        self._schema_checked = False
        forksafe.register(self)
        self.hits = 0
        self.misses = 0

    def _after_fork_in_child(self) -> None:
        self._refresh_lock = threading.Lock()

    @property
    def generation(self) -> int:
        """The mapping generation of the snapshot in use (-1 before the first load)."""
        snap = self._snapshot
        return snap.generation if snap else -1

    def get(self, ctx: RequestContext, ident: str) -> CellMapping:
        """The live cell whose uuid or name is ``ident``.

        ``ctx`` names the request in the log line of a miss; lookups are not
        scoped by project (cell mappings are global).
        """
        found = self._lookup(self._current(), ident)
        if found is not None:
            self.hits += 1
            return found
        self.misses += 1
        now = self._clock()
        if self._negative.get(ident, 0.0) > now:
            raise CellNotFound(ident=ident)
        log.debug("%s: cell %r not cached; reloading mappings", ctx.request_id, ident)
        found = self._lookup(self._refresh(force=True), ident)
        if found is None:
            if len(self._negative) >= _NEGATIVE_LIMIT:
                self._negative.clear()
            self._negative[ident] = now + min(self._ttl, _NEGATIVE_TTL)
            raise CellNotFound(ident=ident)
        return found

    def list(
        self, ctx: RequestContext, *, include_disabled: bool = False, include_cell0: bool = True
    ) -> list[CellMapping]:
        """Live cells, cell0 first; disabled ones only if asked for."""
        return [
            c
            for c in self._current().cells
            if (include_disabled or not c.disabled) and (include_cell0 or not c.is_cell0)
        ]

    def invalidate(self) -> None:
        """Forget everything; the next lookup reloads from the API database."""
        self._snapshot = None
        self._negative = {}

    def close(self) -> None:
        """Forget everything and refuse further lookups (the App is closing)."""
        self._closed = True
        self.invalidate()

    @staticmethod
    def _lookup(snap: _Snapshot, ident: str) -> CellMapping | None:
        found = snap.by_uuid.get(ident)  # the usual case: a canonical uuid, no parsing
        if found is not None:
            return found
        as_uuid = normalize_uuid(ident)
        return snap.by_uuid.get(as_uuid) if as_uuid else snap.by_name.get(ident)

    def _current(self) -> _Snapshot:
        if self._closed:
            raise RuntimeError("the App owning this mapping cache is closed")
        snap = self._snapshot
        if snap is not None and self._clock() - snap.loaded_at < self._ttl:
            return snap
        return self._refresh(force=False)

    def _refresh(self, *, force: bool) -> _Snapshot:
        snap = self._snapshot
        if snap is not None and not force:
            # Expired: one caller refreshes, the others use what we have.
            if not self._refresh_lock.acquire(blocking=False):
                return snap
        else:
            self._refresh_lock.acquire()
        try:
            # A forced reload answers a miss: failing it must raise, not fall back.
            return self._reload(self._snapshot if not force else None, None if force else snap)
        finally:
            self._refresh_lock.release()

    def _reload(self, current: _Snapshot | None, fallback: _Snapshot | None) -> _Snapshot:
        if not self._schema_checked:  # a clear SchemaMismatch, not "no such table"
            self._api.require_current()
            self._schema_checked = True
        try:
            with self._api.session() as session:
                generation = read_generation(session)
                if current is not None and current.generation == generation:
                    fresh = _Snapshot(
                        generation, self._clock(), current.cells, current.by_uuid, current.by_name
                    )
                else:
                    fresh = _Snapshot.build(generation, self._clock(), list_cells(session))
        except CellgateError as exc:
            if fallback is None:
                raise
            log.warning("serving cached cell mappings; refresh failed: %s", exc)
            return fallback
        self._snapshot = fresh
        return fresh
