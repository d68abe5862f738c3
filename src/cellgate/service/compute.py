"""The per-cell worker: an RPC endpoint acting on its cell's instances, plus heartbeats.

A worker serves the ``compute`` topic of one cell, on the shared topic queue
(the API sends builds and actions there: any worker of the cell may take
them) and on its own host's queue (for callers that address one host). It registers itself as a service row in its cell
database and refreshes it every ``[worker] heartbeat_interval`` seconds, which
is what ``GET /v1/cells`` reports as the cell's service health.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Final

from sqlalchemy.orm import Session

from cellgate.apidb.mappings import CellMapping
from cellgate.app import App
from cellgate.celldb import queries
from cellgate.celldb.versions import RPC_VERSION, SERVICE_VERSION
from cellgate.context import RequestContext
from cellgate.errors import CellgateError, ConfigError, Hint
from cellgate.rpc.server import RPCServer
from cellgate.rpc.target import Target

log = logging.getLogger(__name__)

TOPIC: Final = "compute"
#: The compute RPC API this worker serves (history: cellgate.celldb.versions);
#: the API sends each call at this version capped by the cell's oldest worker.
VERSION: Final = RPC_VERSION
BINARY: Final = "cellgate-worker"

#: action -> (states it may start from, state it leaves the instance in)
TRANSITIONS: Final = {
    "reboot": (("active",), "active"),
    "stop": (("active",), "stopped"),
    "start": (("stopped",), "active"),
}


class InvalidState(Exception):
    """The action does not apply to the instance's current state (HTTP 409)."""


class UnknownInstance(LookupError):
    """The instance is not in this cell (HTTP 404)."""


class ComputeEndpoint:
    """Methods the API calls on a cell's workers: ``method(ctx, **kwargs)``."""

    def __init__(self, app: App, host: str) -> None:
        self._app = app
        self.host = host

    def build(self, ctx: RequestContext, instance: str) -> dict[str, Any]:
        """Build a ``building`` instance; any other state is left alone.

        A build is delivered at least once when confirmed, and may arrive
        after the API's reconciler marked the instance ``error``
        (``[api] build_timeout``): neither a second delivery nor a late one
        changes the instance.
        """

        def transaction(session: Session) -> tuple[queries.Instance | None, bool]:
            built = queries.set_state(
                session, instance, vm_state="active", host=self.host, only_from="building"
            )
            if built is not None:
                return built, True
            return queries.get_instance(session, instance, project_id=None), False

        found, built = self._app.db.write(ctx, transaction)
        if found is None:
            raise UnknownInstance(f"instance {instance} is not in this cell")
        if built:
            log.info("%s: built %s on %s", ctx.request_id, instance, self.host)
        else:
            log.warning(
                "%s: build of %s ignored: it is %s, not building",
                ctx.request_id,
                instance,
                found.vm_state,
            )
        return found.to_dict()

    def act(self, ctx: RequestContext, instance: str, action: str) -> dict[str, Any]:
        if action not in TRANSITIONS:
            raise InvalidState(f"unknown action {action!r}")
        allowed, result = TRANSITIONS[action]

        def transaction(session: Session) -> queries.Instance | None:
            current = queries.get_instance(session, instance, project_id=None)
            if current is None:
                raise UnknownInstance(f"instance {instance} is not in this cell")
            if current.vm_state not in allowed:
                raise InvalidState(f"cannot {action} an instance that is {current.vm_state}")
            return queries.set_state(session, instance, vm_state=result)

        done = self._app.db.write(ctx, transaction)
        assert done is not None
        return done.to_dict()

    def delete(self, ctx: RequestContext, instance: str) -> bool:
        return self._app.db.write(
            ctx, lambda session: queries.soft_delete_instance(session, instance)
        )

    def ping(self, ctx: RequestContext) -> dict[str, Any]:
        """Who answered; since 1.1 also the service version it runs."""
        return {
            "host": self.host,
            "cell": ctx.cell.name if ctx.cell else None,
            "service_version": SERVICE_VERSION,
        }


class Worker:
    """One cell's RPC server plus its heartbeat thread."""

    def __init__(self, app: App, cell: CellMapping, host: str, heartbeat_interval: float) -> None:
        self.app = app
        self.cell = cell
        self.host = host
        self._interval = heartbeat_interval
        self._endpoint = ComputeEndpoint(app, host)
        self._servers: list[RPCServer] = []
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Worker:
        targets = self._targets()  # validate before writing anything
        self.heartbeat()  # register before taking work; fails loudly if the cell is down
        for target in targets:
            self._servers.append(self.app.rpc.server(self.cell, target, [self._endpoint]).start())
        self._thread = threading.Thread(
            target=self._beat, name=f"cellgate-heartbeat-{self.host}", daemon=True
        )
        self._thread.start()
        return self

    def _targets(self) -> list[Target]:
        if self.app.rpc.url_for(self.cell).is_none:
            raise ConfigError(
                f"cell {self.cell.label!r} has no message queue (none:///)",
                hint=Hint.CELL0_HAS_NO_QUEUE,
            )
        try:
            return [Target(TOPIC, server=s, version=VERSION) for s in (None, self.host)]
        except ValueError as exc:
            raise ConfigError(f"invalid worker host name {self.host!r}: {exc}") from None

    def heartbeat(self) -> None:
        ctx = RequestContext(request_id=f"req-heartbeat-{self.host}").for_cell(self.cell)
        self.app.db.write(
            ctx,
            lambda session: queries.heartbeat(
                session,
                host=self.host,
                binary=BINARY,
                topic=TOPIC,
                version=SERVICE_VERSION,
                rpc_version=VERSION,
            ),
        )

    def _beat(self) -> None:
        while not self._stopping.wait(self._interval):
            try:
                self.heartbeat()
            except CellgateError as exc:  # keep serving; the API reports us down meanwhile
                log.warning("worker %s: heartbeat failed: %s", self.host, exc)

    def stop(self) -> None:
        self._stopping.set()
        for server in self._servers:
            server.stop()
        self._servers.clear()
        if self._thread is not None:
            self._thread.join(timeout=5)
