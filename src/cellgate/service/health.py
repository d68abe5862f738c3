"""Cell health for ``GET /v1/cells``: database, schema, transport, workers.

Every check of every cell (its database, each of its broker hosts) runs
inside one scatter-gather with the API's cell deadline, so a dead cell costs
at most that deadline and is reported, never waited on; a broker probe is one
AMQP connect attempt bounded within that deadline. An exception that is not a cellgate error is a bug in a check, not
a sign that the cell is down: it is raised (a 500 for the request).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from cellgate.apidb.mappings import CellMapping
from cellgate.app import App
from cellgate.celldb import queries
from cellgate.context import RequestContext
from cellgate.dbtypes import utcnow
from cellgate.errors import CellgateError
from cellgate.migrations.runner import MigrationLine, current_on, head
from cellgate.results import CellResult, Failed, Ok, TimedOut, raise_bugs
from cellgate.rpc.amqp.broker import broker_label, probe_broker
from cellgate.urls import TransportHost, TransportURL

#: Seconds a broker probe leaves of the deadline: a probe's answer (py-amqp's
#: handshake) can come that much after its own timeout, and must still make it.
PROBE_MARGIN = 0.25


def cell_health(
    app: App, ctx: RequestContext, cells: list[CellMapping], *, timeout: float, down_after: float
) -> dict[str, dict[str, Any]]:
    """Per cell uuid: ``{"database": ..., "transport": ..., "services": [...]}``.

    Each cell's database and each of its broker hosts is its own item of one
    scatter-gather: a broker that never answers costs its probe's timeout
    (within the deadline), never the cell's database report, and several dead
    brokers are probed at once, not one after another.
    """
    probe_timeout = max(timeout - PROBE_MARGIN, timeout / 2)
    work: dict[tuple[str, str], Callable[[], Any]] = {}
    transports: dict[str, dict[str, Any] | list[str]] = {}
    for cell in cells:
        cctx = ctx.for_cell(cell)
        work[(cell.uuid, "")] = functools.partial(_database, app, cctx, down_after)
        plan = _transport_plan(app, cell)
        transports[cell.uuid] = plan
        if isinstance(plan, list):
            for label, host, url in _hosts(app, cell, plan):
                work[(cell.uuid, label)] = functools.partial(
                    _probe, url, host, label, probe_timeout
                )
    results = app.fanout.scatter_gather(work, lambda call: call(), timeout=timeout)
    raise_bugs(results.values())  # a bug in a check is a 500, not an unreachable cell
    report: dict[str, dict[str, Any]] = {}
    for cell in cells:
        result = results[(cell.uuid, "")]
        if isinstance(result, Ok):
            entry: dict[str, Any] = {"reachable": True, **result.value}
        else:
            # The message without any CLI hint: this report goes to API clients.
            entry = {"reachable": False, "error": _text(result)}
        plan = transports[cell.uuid]
        if isinstance(plan, dict):
            transport = plan
        else:
            brokers = [_broker(label, results[(cell.uuid, label)]) for label in plan]
            transport = {"ok": any(b["ok"] for b in brokers), "brokers": brokers}
        if entry["reachable"]:
            entry["transport"] = transport
        report[cell.uuid] = entry
    return report


def _transport_plan(app: App, cell: CellMapping) -> dict[str, Any] | list[str]:
    """The transport's report if it needs no network, else the broker labels to probe."""
    try:
        url = app.rpc.url_for(cell)
    except CellgateError as exc:
        return {"ok": False, "detail": exc.message}
    if url.is_none:
        return {"ok": True, "detail": "none (no message queue)"}
    if url.scheme == "memory":
        return {"ok": True, "detail": "in-process"}
    return [broker_label(h) for h in url.hosts]


def _hosts(
    app: App, cell: CellMapping, labels: list[str]
) -> list[tuple[str, TransportHost, TransportURL]]:
    url = app.rpc.url_for(cell)
    return [(label, host, url) for label, host in zip(labels, url.hosts, strict=True)]


def _probe(url: TransportURL, host: TransportHost, label: str, timeout: float) -> None:
    probe_broker(url, host, timeout=timeout, component=f"transport {label}")


def _broker(label: str, result: CellResult[None]) -> dict[str, Any]:
    if isinstance(result, Ok):
        return {"broker": label, "ok": True}
    if isinstance(result, TimedOut):
        return {"broker": label, "ok": False, "detail": f"no answer within {result.timeout:g}s"}
    exc = result.error
    return {"broker": label, "ok": False, "detail": getattr(exc, "reason", str(exc))}


def _database(app: App, cctx: RequestContext, down_after: float) -> dict[str, Any]:
    expected = head(MigrationLine.CELL)
    with app.db.session(cctx) as session:
        revision = current_on(session.connection(), MigrationLine.CELL)
        services = queries.list_services(session) if revision == expected else []
    now = utcnow()
    return {
        "database": {"ok": True, "revision": revision, "at_head": revision == expected},
        "services": [
            {
                "host": s.host,
                "binary": s.binary,
                "up": s.is_up(now, down_after),
                "last_seen_at": s.last_seen_at.isoformat() + "Z" if s.last_seen_at else None,
            }
            for s in services
        ],
    }


def _text(result: Failed | TimedOut) -> str:
    if isinstance(result, TimedOut):
        return "no answer in time"
    error = result.error
    return error.message if isinstance(error, CellgateError) else str(error)
