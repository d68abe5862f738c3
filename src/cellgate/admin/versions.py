"""Workers' versions per cell, and the RPC version the API caps each cell's calls at.

Every worker writes its service and RPC versions into its heartbeat row
(:func:`cellgate.celldb.queries.heartbeat`). During a rolling upgrade the API
is upgraded first and must keep talking to workers that are not: each call to
a cell is sent at the *oldest* RPC version that cell's live workers serve
(:class:`VersionCaps`), which every one of them can serve.

Decisions, and why:

- **Per cell, not across all cells.** A cell's workers only ever receive that
  cell's messages, so an old worker in cell A has no business capping calls
  to cell B; and reading one cell never waits on another. (Nova caps every
  call at the minimum over all cells, computed at start-up: one cell down
  and nova-api hangs, bug 1815697.)
- **Never read on the request path.** A cap is read from the cell's
  database in the background (at start, then again when older than
  ``[cells] cache_ttl``); a request uses what is known at that moment and
  never waits for a cell, down or up.
- **Last known, on disk.** Each successful read is recorded in
  ``<state_path>/rpc_versions.json`` (:class:`LastKnown`), which a restarted
  API loads before contacting any cell, so a cell that is down at start is
  capped at the version its workers last reported. A cell never seen by this
  host (no file entry, no answer yet) is capped at the oldest RPC version
  this release speaks (:data:`~cellgate.celldb.versions.MIN_RPC_VERSION`):
  safe with any supported worker, and replaced by the real cap at the first
  successful read. Each API host keeps its own file (nothing is written to the
  API database, whose schema this does not need).
- A cell whose read succeeded but has no live worker keeps its last-known
  cap: nothing consumes its calls right now, and the next worker to start is
  most likely the one that stopped.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cellgate.apidb.mappings import CellMapping
from cellgate.app import App
from cellgate.celldb import queries
from cellgate.celldb.versions import MIN_RPC_VERSION, RPC_VERSION, capped, oldest
from cellgate.context import RequestContext
from cellgate.dbtypes import utcnow
from cellgate.results import Failed, Ok, TimedOut, raise_bugs

log = logging.getLogger(__name__)

#: The file, under ``state_path``, that keeps each cell's last-known RPC version.
LAST_KNOWN_FILE: Final = "rpc_versions.json"


class LastKnown:
    """Cell uuid -> the oldest RPC version its live workers last reported; kept on disk.

    Thread-safe. A file that cannot be read is treated as empty, one that
    cannot be written is logged: the caps still work from memory.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._versions: dict[str, str] = {}
        try:
            loaded = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            loaded = {}
        if isinstance(loaded, dict):
            self._versions = {str(k): str(v) for k, v in loaded.items() if isinstance(v, str)}

    @classmethod
    def of(cls, app: App) -> LastKnown:
        return cls(Path(app.settings.state_path) / LAST_KNOWN_FILE)

    def get(self, cell_uuid: str) -> str | None:
        with self._lock:
            return self._versions.get(cell_uuid)

    def record(self, cell_uuid: str, version: str) -> None:
        with self._lock:
            if self._versions.get(cell_uuid) == version:
                return
            self._versions[cell_uuid] = version
            text = json.dumps(self._versions, indent=1, sort_keys=True)
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                scratch = self.path.with_suffix(f".{os.getpid()}.tmp")
                scratch.write_text(text + "\n", encoding="utf-8")
                scratch.replace(self.path)  # atomic: a reader sees the old or the new file
            except OSError as exc:
                log.warning("cannot record last-known RPC versions in %s: %s", self.path, exc)


@dataclass(frozen=True)
class CellVersions:
    """One cell's live workers' versions, or why they could not be read."""

    cell: str  # label
    uuid: str
    workers: tuple[queries.WorkerVersion, ...]
    #: The oldest RPC version among live workers; else the last-known one.
    rpc_version: str | None
    source: str  # live | last-known | unknown
    error: str | None = None

    @property
    def min_service_version(self) -> int | None:
        return min((w.version for w in self.workers), default=None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "cell": self.cell,
            "uuid": self.uuid,
            "rpc_version": self.rpc_version,
            "source": self.source,
            "error": self.error,
            "workers": [
                {"host": w.host, "binary": w.binary, "version": w.version, "rpc": w.rpc_version}
                for w in self.workers
            ],
        }


def read_worker_versions(
    app: App,
    cells: Iterable[CellMapping] | None = None,
    *,
    timeout: float | None = None,
    last_known: LastKnown | None = None,
) -> list[CellVersions]:
    """Every cell's live workers' versions, all cells at once; records what it read.

    ``cells=None``: every live cell but cell0 (which has no workers). A cell
    that does not answer within ``timeout`` (default ``[cells]
    verify_timeout``) is reported with its last-known version.
    """
    store = last_known or LastKnown.of(app)
    deadline = timeout or app.settings.cells.verify_timeout
    down_after = app.settings.service.service_down_time
    ctx = RequestContext(request_id="req-worker-versions")
    chosen = list(cells) if cells is not None else app.cells.list(ctx, include_disabled=True)
    chosen = [c for c in chosen if not c.is_cell0]

    def read(cctx: RequestContext) -> list[queries.WorkerVersion]:
        # Unguarded: a background read neither waits on a cell's breaker nor
        # counts towards it, so it never changes how requests are routed.
        with app.db.session(cctx, read_only=True, guarded=False) as session:
            return queries.live_worker_versions(session, now=utcnow(), down_after=down_after)

    results = app.scatter_gather(ctx, chosen, read, timeout=deadline)
    raise_bugs(results.values())
    out = []
    for cell in chosen:
        result = results[cell.uuid]
        if isinstance(result, Ok):
            workers = tuple(sorted(result.value, key=lambda w: (w.host, w.binary)))
            live = oldest([w.rpc_version for w in workers])
            if live is not None:
                store.record(cell.uuid, live)
                out.append(CellVersions(cell.label, cell.uuid, workers, live, "live"))
                continue
            error = None
        elif isinstance(result, TimedOut):
            error = f"no answer within {result.timeout:g} s"
        else:
            assert isinstance(result, Failed)
            error = str(result.error)
        known = store.get(cell.uuid)
        out.append(
            CellVersions(
                cell.label,
                cell.uuid,
                (),
                known,
                "last-known" if known else "unknown",
                error,
            )
        )
    return out


class VersionCaps:
    """The RPC version each cell's calls are sent at; owned by the REST service.

    :meth:`version_for` answers from memory at once and, when a cell's cap is
    older than ``ttl`` (default ``[cells] cache_ttl``), has it read again in
    the background; :meth:`start` reads every cell once in the background.
    ``clock`` is for tests.
    """

    def __init__(
        self,
        app: App,
        *,
        ttl: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._app = app
        self._ttl = ttl if ttl is not None else app.settings.cells.cache_ttl
        self._clock = clock
        self.last_known = LastKnown.of(app)
        self._lock = threading.Lock()
        self._read_at: dict[str, float] = {}  # cell uuid -> when last read (any outcome)
        self._reading: set[str] = set()

    def version_for(self, cell: CellMapping) -> str:
        """The version to send a call to ``cell`` at: this release's, capped; never waits."""
        with self._lock:
            read_at = self._read_at.get(cell.uuid)
            stale = read_at is None or self._clock() - read_at > self._ttl
            start = stale and cell.uuid not in self._reading
            if start:
                self._reading.add(cell.uuid)
        if start:
            threading.Thread(
                target=self._read, args=([cell],), name="cellgate-version-caps", daemon=True
            ).start()
        return capped(RPC_VERSION, self.last_known.get(cell.uuid) or MIN_RPC_VERSION)

    def start(self) -> None:
        """Read every cell's versions once, in the background (start-up never waits)."""
        with self._lock:
            self._reading.add("*")
        threading.Thread(
            target=self._read, args=(None,), name="cellgate-version-caps", daemon=True
        ).start()

    def refresh(self, cells: Iterable[CellMapping] | None = None) -> list[CellVersions]:
        """Read now (and wait): for tests and ``upgrade check``."""
        found = read_worker_versions(self._app, cells, last_known=self.last_known)
        now = self._clock()
        with self._lock:
            for entry in found:
                self._read_at[entry.uuid] = now
        return found

    def _read(self, cells: list[CellMapping] | None) -> None:
        try:
            self.refresh(cells)
        except Exception as exc:  # a background thread: log, the cap stays as it was
            if self._app.fanout.closed:  # the App closed under the read: nothing to report
                log.debug("reading the workers' RPC versions ended with the App: %s", exc)
            else:
                log.warning("reading the workers' RPC versions failed: %s", exc)
        finally:
            now = self._clock()
            with self._lock:
                for cell in cells or []:
                    self._read_at.setdefault(cell.uuid, now)  # not again before the TTL
                for uuid in [c.uuid for c in cells] if cells is not None else ["*"]:
                    self._reading.discard(uuid)
