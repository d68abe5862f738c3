"""``MappingCache``: cell mappings served from memory, refreshed safely.

The spec notes that every request pays an extra lookup and that the data
"could be cached quite easily". Nova cached it in a module global that was
never refreshed. Here the cache:

- answers by uuid or by name from an immutable snapshot (a dict read, no lock);
- after ``ttl`` seconds, keeps answering from that snapshot at once
  (stale-while-revalidate) and starts one background refresh, a daemon
  thread; the refresh reads the single ``mapping_generation`` integer and
  reloads the mappings only if it moved. No lookup ever waits for the API
  database to re-confirm what the snapshot already holds;
- on a miss, reloads once, synchronously, before answering
  :class:`CellNotFound`, so a cell created a moment ago resolves at once; the
  answer "no such cell" is then remembered for a second, so a flood of bad
  names cannot turn into a flood of reloads;
- keeps resolving a cell deleted elsewhere until a refresh after the TTL, or
  ``invalidate()`` (the staleness bound is the TTL plus that refresh);
- keeps serving the last snapshot if a background refresh fails (the API
  database being down must not take down, or slow down, requests the cache
  can answer), logging a warning at most once per TTL and trying again no
  sooner than a second later; a miss during an outage raises the outage, never
  a false :class:`CellNotFound`;
- says how old its snapshot is (``age``) and whether the last refresh failed
  (``refresh_failed``);
- isolates a mapping that does not decrypt with the configured keys (a key
  removed too early, an altered row): that one cell answers
  :class:`CellUnreadable` (a 503 in the service) and is left out of
  :meth:`MappingCache.list`; every other cell serves. Each load that finds
  such a row logs a warning naming the row and why;
- is owned by ``App``; ``invalidate()`` (what an in-process write does) drops
  the snapshot, so the next lookup loads synchronously, and a background
  refresh that started before the drop cannot bring the old answer back;
- ``revalidate()`` (SIGHUP in services: ``App.reload``) reloads every
  mapping in the background *now*, whether or not the generation moved,
  while lookups keep answering from the snapshot: a full reload at 1,000
  cells costs about 10 ms and an API database that hangs costs its timeouts,
  and neither stalls a request. A failed reload keeps being retried (as a
  background refresh, at most once a second) until one succeeds.
"""

from __future__ import annotations

import builtins
import itertools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from cellgate import forksafe
from cellgate.apidb.mappings import (
    CellMapping,
    UnreadableCell,
    normalize_uuid,
    read_cells,
    read_generation,
)
from cellgate.context import RequestContext
from cellgate.errors import CellgateError, CellNotFound, CellUnreadable
from cellgate.sql.api_database import ApiDatabase
from cellgate.urls import redact

log = logging.getLogger(__name__)

_NEGATIVE_TTL = 1.0  # seconds a "no such cell" answer is remembered
_NEGATIVE_LIMIT = 1024
_RETRY_AFTER = 1.0  # seconds (or the TTL, if shorter) between failed background refreshes
_CLOSE_WAIT = 1.0  # seconds close() waits for a background refresh in flight

#: The name of the background refresh thread (one per cache at most).
REFRESH_THREAD = "cellgate-mapping-refresh"


@dataclass(frozen=True)
class _Snapshot:
    generation: int
    loaded_at: float
    cells: tuple[CellMapping, ...]
    by_uuid: dict[str, CellMapping] = field(default_factory=dict)
    by_name: dict[str, CellMapping] = field(default_factory=dict)
    #: Live mappings that do not decrypt, by uuid and by name.
    unreadable: dict[str, UnreadableCell] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        generation: int,
        loaded_at: float,
        cells: list[CellMapping],
        unreadable: Sequence[UnreadableCell] = (),
    ) -> _Snapshot:
        bad = {c.uuid: c for c in unreadable}
        bad.update({c.name: c for c in unreadable if c.name})
        return cls(
            generation,
            loaded_at,
            tuple(cells),
            {c.uuid: c for c in cells},
            {c.name: c for c in cells if c.name},
            bad,
        )

    def confirmed(self, loaded_at: float) -> _Snapshot:
        """The same mappings, confirmed current at ``loaded_at``."""
        return _Snapshot(
            self.generation, loaded_at, self.cells, self.by_uuid, self.by_name, self.unreadable
        )


class MappingCache:
    """A TTL cache of live cell mappings; see the module docstring.

    ``clock`` is a monotonic clock in seconds (tests pass a fake one).
    """

    def __init__(
        self, api: ApiDatabase, ttl: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._api = api
        self._ttl = ttl
        self._clock = clock
        self._snapshot: _Snapshot | None = None
        # Serialises synchronous loads (first load, after invalidate, a miss).
        self._refresh_lock = threading.Lock()
        # Guards installing a snapshot and starting the background refresher.
        # Never taken by invalidate(), which a SIGHUP handler calls.
        self._state_lock = threading.Lock()
        self._epochs = itertools.count(1)
        self._epoch = 0  # moved by invalidate(): loads begun before it are discarded
        self._refresher: threading.Thread | None = None
        self._retry_at = 0.0  # no background refresh before this (after a failure)
        self._warned_at: float | None = None
        self._failed = False
        self._full_reload = False  # set by revalidate(): the next refresh reads everything
        self._negative: dict[str, float] = {}
        self._closed = False
        self._schema_checked = False
        forksafe.register(self)
        self.hits = 0
        self.misses = 0

    def _after_fork_in_child(self) -> None:
        self._refresh_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._refresher = None  # the thread did not survive the fork

    @property
    def generation(self) -> int:
        """The mapping generation of the snapshot in use (-1 before the first load)."""
        snap = self._snapshot
        return snap.generation if snap else -1

    @property
    def age(self) -> float | None:
        """Seconds since the snapshot was loaded or last confirmed; ``None`` if there is none."""
        snap = self._snapshot
        return max(0.0, self._clock() - snap.loaded_at) if snap else None

    @property
    def refresh_failed(self) -> bool:
        """Whether the last read of the API database for this cache failed."""
        return self._failed

    def get(self, ctx: RequestContext, ident: str) -> CellMapping:
        """The live cell whose uuid or name is ``ident``.

        ``ctx`` names the request in the log line of a miss; lookups are not
        scoped by project (cell mappings are global).
        """
        snap = self._current()
        found = self._lookup(snap, ident)
        if found is not None:
            self.hits += 1
            return found
        self._refuse_unreadable(snap, ident)
        self.misses += 1
        now = self._clock()
        if self._negative.get(ident, 0.0) > now:
            raise CellNotFound(ident=ident)
        log.debug("%s: cell %r not cached; reloading mappings", ctx.request_id, ident)
        snap = self._load_now(force=True)
        found = self._lookup(snap, ident)
        if found is None:
            self._refuse_unreadable(snap, ident)
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

    def unreadable(self, ctx: RequestContext) -> builtins.list[UnreadableCell]:
        """Live mappings that do not decrypt with the configured keys (cell0 first)."""
        seen = {c.uuid: c for c in self._current().unreadable.values()}
        return sorted(seen.values(), key=lambda c: (not c.is_cell0, c.name or "", c.uuid))

    def invalidate(self) -> None:
        """Forget everything; the next lookup reloads from the API database, synchronously."""
        self._epoch = next(self._epochs)  # first: a load in flight can no longer install
        self._snapshot = None
        self._negative = {}

    def revalidate(self) -> None:
        """Reload every mapping in the background now; lookups keep the snapshot meanwhile.

        With no snapshot yet there is nothing to keep: the next lookup loads,
        synchronously, as always. :meth:`wait_refreshed` waits for the reload.
        """
        self._negative = {}
        self._full_reload = True
        if self._snapshot is not None:
            self._refresh_in_background(now=True)

    def wait_refreshed(self, timeout: float | None = None) -> bool:
        """Wait for the background refresh in flight, if any; ``False`` if it is still running."""
        thread = self._refresher
        if thread is not None:
            thread.join(timeout)
            return not thread.is_alive()
        return True

    def close(self) -> None:
        """Forget everything and refuse further lookups (the App is closing).

        A background refresh in flight is waited for briefly; one stuck on a
        hung API database is left to end on its own timeout, and what it
        reads is discarded.
        """
        self._closed = True
        self.invalidate()
        self.wait_refreshed(_CLOSE_WAIT)

    @staticmethod
    def _refuse_unreadable(snap: _Snapshot, ident: str) -> None:
        as_uuid = normalize_uuid(ident)
        bad = snap.unreadable.get(as_uuid or ident) or snap.unreadable.get(ident)
        if bad is not None:
            raise CellUnreadable(cell=bad.label, reason=bad.reason)

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
        if snap is None:
            return self._load_now(force=False)
        if self._refresher is None and (
            self._full_reload or self._clock() - snap.loaded_at >= self._ttl
        ):
            self._refresh_in_background()
        return snap

    # -- synchronous loads -------------------------------------------------------------------

    def _load_now(self, *, force: bool) -> _Snapshot:
        """Read the API database now: no snapshot to serve, or a miss (``force``).

        Failing raises: there is nothing to fall back on, or (a miss) the
        snapshot has already said it does not know the cell.
        """
        with self._refresh_lock:
            epoch = self._epoch
            current = self._snapshot
            if current is not None and not force:
                return current  # loaded by another caller while this one waited
            if not self._schema_checked:  # a clear SchemaMismatch, not "no such table"
                self._api.require_current()
                self._schema_checked = True
            try:
                fresh = self._read(None)
            except CellgateError:
                self._failed = True
                raise
            self._install(fresh, epoch)
            return fresh

    # -- the background refresh --------------------------------------------------------------

    def _refresh_in_background(self, *, now: bool = False) -> None:
        with self._state_lock:
            if self._closed or self._refresher is not None:
                return
            if not now and self._clock() < self._retry_at:
                return
            thread = threading.Thread(
                target=self._background_refresh,
                args=(self._epoch,),
                name=REFRESH_THREAD,
                daemon=True,
            )
            try:
                thread.start()
            except RuntimeError as exc:  # no threads left, or the interpreter is exiting
                self._retry_at = self._clock() + min(self._ttl, _RETRY_AFTER)
                log.warning("cannot refresh cell mappings in the background: %s", exc)
                return
            # Set after start() (so wait_refreshed() can join it); the thread
            # clears it under this lock, so not before this.
            self._refresher = thread

    def _background_refresh(self, epoch: int) -> None:
        try:
            current = self._snapshot
            if self._closed or current is None or epoch != self._epoch:
                return  # closed or invalidated since: the next lookup loads for itself
            full, self._full_reload = self._full_reload, False
            try:
                fresh = self._read(None if full else current)
            except Exception as exc:  # a thread must not raise: logged here
                if full:
                    self._full_reload = True  # still owed: the next refresh reads everything
                self._background_failed(exc)
                return
            recovered = self._failed
            if self._install(fresh, epoch) and recovered:
                log.info("cell mappings refreshed from the API database again")
        finally:
            with self._state_lock:
                self._refresher = None
                # revalidate() while this read ran (it found this thread busy): go again.
                again = self._full_reload and not self._closed and not self._failed
        if again:
            self._refresh_in_background(now=True)

    def _background_failed(self, exc: Exception) -> None:
        if self._closed:
            log.debug("mapping refresh ended after close: %s", redact(str(exc)))
            return
        now = self._clock()
        self._failed = True
        self._retry_at = now + min(self._ttl, _RETRY_AFTER)
        text = str(exc) if isinstance(exc, CellgateError) else f"{type(exc).__name__}: {exc}"
        message = redact(text)
        age = self.age
        if self._warned_at is None or now - self._warned_at >= self._ttl:
            self._warned_at = now
            log.warning(
                "serving cached cell mappings (%.0f s old); refreshing them failed: %s",
                age or 0.0,
                message,
            )
        else:
            log.debug("refreshing cell mappings failed again: %s", message)

    # -- shared ------------------------------------------------------------------------------

    def _read(self, current: _Snapshot | None) -> _Snapshot:
        """One read of the API database: the generation, and the mappings if it moved."""
        with self._api.session() as session:
            generation = read_generation(session)
            if current is not None and current.generation == generation:
                return current.confirmed(self._clock())
            read = read_cells(session)
        for bad in read.unreadable:
            log.warning(
                "cell %s (%s) is unavailable until its mapping decrypts: %s",
                bad.label,
                bad.uuid,
                bad.reason,
            )
        return _Snapshot.build(generation, self._clock(), read.cells, read.unreadable)

    def _install(self, fresh: _Snapshot, epoch: int) -> bool:
        """Make ``fresh`` the snapshot, unless invalidated since ``epoch`` or older than ours."""
        with self._state_lock:
            if self._closed or epoch != self._epoch:
                return False
            current = self._snapshot
            if current is not None and current.generation > fresh.generation:
                return False
            self._snapshot = fresh
            self._failed = False
            self._retry_at = 0.0
            if self._epoch != epoch:  # invalidate() ran meanwhile (a signal handler)
                self._snapshot = None
                return False
            return True
