"""The build reconciler: an instance never stays ``building`` for ever.

A create answers 202 only once the broker has confirmed the ``build``
message, so a lost build is rare. It still happens: a confirmed message is
lost with the broker's disk, a worker dies between taking it and writing,
nobody consumes the cell's queue for longer than anybody waits. Without a
reconciler such an instance is ``building`` for ever, and nothing says so.

:class:`BuildReconciler` runs in the API service (``cellgate serve api`` and
``cellgate all-in-one``): every ``interval`` seconds it asks each enabled
cell, in one scatter-gather bounded by ``[api] cell_timeout``, to mark every
live instance created more than ``[api] build_timeout`` seconds ago and still
``building`` as ``error``, and logs one warning per instance it marked. A
worker then ignores a late build of it (``ComputeEndpoint.build`` only builds
a ``building`` instance). A cell that does not answer is logged and asked
again next round. Several API processes running it do no harm: the update is
``WHERE vm_state = 'building'``, so an instance is marked once.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from cellgate.app import App
from cellgate.celldb import queries
from cellgate.context import RequestContext
from cellgate.dbtypes import utcnow
from cellgate.errors import CellgateError
from cellgate.results import Failed, Ok

log = logging.getLogger(__name__)

#: Seconds between rounds at most, whatever the build timeout.
MAX_INTERVAL = 60.0


@dataclass(frozen=True)
class ReconcileResult:
    """One round: the instances marked ``error`` per cell name, the cells not reached."""

    failed: dict[str, list[str]] = field(default_factory=dict)
    unreachable: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"failed": self.failed, "unreachable": self.unreachable}


def fail_stuck_builds(
    app: App, ctx: RequestContext, *, build_timeout: float, cell_timeout: float
) -> ReconcileResult:
    """Mark every instance ``building`` for more than ``build_timeout`` s ``error``."""
    cutoff = utcnow() - dt.timedelta(seconds=build_timeout)
    cells = app.cells.list(ctx, include_cell0=False)

    def one(cctx: RequestContext) -> list[str]:
        return app.db.write(
            cctx, lambda session: queries.fail_stuck_builds(session, created_before=cutoff)
        )

    results = app.scatter_gather(ctx, cells, one, timeout=cell_timeout)
    failed: dict[str, list[str]] = {}
    unreachable: list[str] = []
    for cell in cells:
        result = results[cell.uuid]
        name = cell.name or cell.uuid
        if isinstance(result, Ok):
            if result.value:
                failed[name] = result.value
            for uuid in result.value:
                log.warning(
                    "instance %s in cell %s was building for more than %gs (its build was "
                    "lost or never carried out); marked error",
                    uuid,
                    cell.label,
                    build_timeout,
                )
        else:
            unreachable.append(name)
            why = result.error if isinstance(result, Failed) else "no answer within the deadline"
            log.warning("build reconciler: cell %s not reached (%s)", cell.label, why)
    return ReconcileResult(failed, unreachable)


class BuildReconciler:
    """A daemon thread calling :func:`fail_stuck_builds` every ``interval`` seconds.

    ``interval`` defaults to a quarter of the build timeout (at most
    :data:`MAX_INTERVAL`), so an instance is marked at most that much later
    than its deadline. A build timeout of 0 turns it off: ``start`` does nothing.
    """

    def __init__(
        self,
        app: App,
        *,
        build_timeout: float,
        cell_timeout: float,
        interval: float | None = None,
    ) -> None:
        self.app = app
        self.build_timeout = build_timeout
        self.cell_timeout = cell_timeout
        self.interval = interval or min(max(build_timeout / 4, 0.1), MAX_INTERVAL)
        self.rounds = 0
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> BuildReconciler:
        if self.build_timeout > 0 and self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="cellgate-build-reconciler", daemon=True
            )
            self._thread.start()
        return self

    def _run(self) -> None:
        ctx = RequestContext(request_id="req-build-reconciler", roles=("admin",))
        while not self._stopping.wait(self.interval):
            try:
                fail_stuck_builds(
                    self.app,
                    ctx,
                    build_timeout=self.build_timeout,
                    cell_timeout=self.cell_timeout,
                )
            except CellgateError as exc:  # the API database (the cell list): next round
                log.warning("build reconciler: round failed: %s", exc)
            except Exception:  # a bug: logged with its traceback, and the thread lives on
                log.exception("build reconciler: round failed")
            self.rounds += 1

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
