"""Cell health for ``GET /v1/cells``: database, schema, transport, workers.

Every check of every cell runs inside one scatter-gather with the API's cell
deadline, so a dead cell costs at most that deadline and is reported, never
waited on. An exception that is not a cellgate error is a bug in a check, not
a sign that the cell is down: it is raised (a 500 for the request).
"""

from __future__ import annotations

from typing import Any

from cellgate.apidb.mappings import CellMapping
from cellgate.app import App
from cellgate.celldb import queries
from cellgate.context import RequestContext
from cellgate.dbtypes import utcnow
from cellgate.errors import CellgateError
from cellgate.migrations.runner import MigrationLine, current_on, head
from cellgate.results import Failed, Ok, TimedOut, raise_bugs
from cellgate.rpc.amqp.broker import broker_label, probe_broker


def cell_health(
    app: App, ctx: RequestContext, cells: list[CellMapping], *, timeout: float, down_after: float
) -> dict[str, dict[str, Any]]:
    """Per cell uuid: ``{"database": ..., "transport": ..., "services": [...]}``."""

    def check(cctx: RequestContext) -> dict[str, Any]:
        assert cctx.cell is not None
        return {
            **_database(app, cctx, down_after),
            "transport": _transport(app, cctx.cell, timeout),
        }

    results = app.scatter_gather(ctx, cells, check, timeout=timeout)
    raise_bugs(results.values())  # a bug in a check is a 500, not an unreachable cell
    report: dict[str, dict[str, Any]] = {}
    for cell in cells:
        result = results[cell.uuid]
        if isinstance(result, Ok):
            report[cell.uuid] = {"reachable": True, **result.value}
        else:
            # The message without any CLI hint: this report goes to API clients.
            reason = _text(result)
            report[cell.uuid] = {"reachable": False, "error": reason}
    return report


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


def _transport(app: App, cell: CellMapping, timeout: float) -> dict[str, Any]:
    try:
        url = app.rpc.url_for(cell)
    except CellgateError as exc:
        return {"ok": False, "detail": exc.message}
    if url.is_none:
        return {"ok": True, "detail": "none (no message queue)"}
    if url.scheme == "memory":
        return {"ok": True, "detail": "in-process"}
    brokers = []
    for host in url.hosts:
        label = broker_label(host)
        try:
            probe_broker(url, host, timeout=timeout, component=f"transport {label}")
            brokers.append({"broker": label, "ok": True})
        except CellgateError as exc:
            brokers.append(
                {"broker": label, "ok": False, "detail": getattr(exc, "reason", str(exc))}
            )
    return {"ok": any(b["ok"] for b in brokers), "brokers": brokers}


def _text(result: Failed | TimedOut) -> str:
    if isinstance(result, TimedOut):
        return "no answer in time"
    error = result.error
    return error.message if isinstance(error, CellgateError) else str(error)
