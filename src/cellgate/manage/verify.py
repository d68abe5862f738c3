"""``cell verify``: can this host reach a cell's database and message queue?

Each check has its own short timeout and reports per component, so one dead
broker host shows up as exactly that, not as a failure of the whole cell.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cellgate.amqp import broker_label, probe_broker
from cellgate.apidb.mappings import CellMapping
from cellgate.config import Settings
from cellgate.engines import make_engine, translate_errors
from cellgate.errors import BackendError, CellgateError, SchemaMismatch
from cellgate.manage.migrate import template_defaults
from cellgate.migrations.runner import MigrationLine, current, head
from cellgate.urls import TransportHost, TransportURL


@dataclass(frozen=True)
class Check:
    """The outcome of one component check."""

    component: str
    ok: bool
    detail: str
    error: CellgateError | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"component": self.component, "ok": self.ok, "detail": self.detail}


@dataclass(frozen=True)
class CellReport:
    cell: CellMapping
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "uuid": self.cell.uuid,
            "name": self.cell.name,
            "ok": self.ok,
            "checks": [c.to_dict() for c in self.checks],
        }


def verify_cell(settings: Settings, cell: CellMapping) -> CellReport:
    """Check the cell's database (reachable, cell line at head) and transport."""
    report = CellReport(cell)
    report.checks.append(_guard("database", lambda: _check_database(settings, cell)))
    report.checks.extend(_check_transport(settings, cell))
    return report


def _guard(component: str, check: Callable[[], Check]) -> Check:
    try:
        return check()
    except BackendError as exc:  # the component is already in the row
        detail = f"{exc.reason}; {exc.hint}" if exc.hint else exc.reason
        return Check(component, False, detail, exc)
    except CellgateError as exc:
        return Check(component, False, str(exc), exc)


def _check_database(settings: Settings, cell: CellMapping) -> Check:
    url = template_defaults(settings).database_url(cell.database_connection)
    timeout = settings.cells.verify_timeout
    engine = make_engine(url, connect_timeout=timeout, query_timeout=timeout)
    try:
        with translate_errors(f"cell {cell.label} database {url}"):
            found = current(engine, MigrationLine.CELL)
    finally:
        engine.dispose()
    expected = head(MigrationLine.CELL)
    if found != expected:
        error = SchemaMismatch(
            component=f"cell {cell.label} database",
            current=found,
            expected=expected,
            hint=f"run 'cellgate db sync --cell {cell.label}'",
        )
        return Check("database", False, str(error), error)
    return Check("database", True, f"reachable, cell schema at {found}")


def _check_transport(settings: Settings, cell: CellMapping) -> list[Check]:
    try:
        url = template_defaults(settings).transport_url(cell.transport_url)
    except CellgateError as exc:
        return [Check("transport", False, str(exc), exc)]
    if url.is_none:
        return [Check("transport", True, "none (cell0 has no message queue)")]
    if url.scheme == "memory":
        return [Check("transport", True, "in-process transport (always reachable)")]
    return [
        _guard(
            f"transport {broker_label(h)}",
            lambda h=h: _check_broker(url, h, settings.cells.verify_timeout),  # type: ignore[misc]
        )
        for h in url.hosts
    ]


def _check_broker(url: TransportURL, host: TransportHost, timeout: float) -> Check:
    component = f"transport {broker_label(host)}"
    probe_broker(url, host, timeout=timeout, component=component)
    return Check(component, True, "broker reachable, credentials and vhost accepted")
