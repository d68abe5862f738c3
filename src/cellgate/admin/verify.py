"""``cell verify``: can this host reach a cell's database and message queue?

Each check has its own short timeout (``[cells] verify_timeout``) and reports
per component, so one dead broker host shows up as exactly that, not as a
failure of the whole cell. The database is reached through
``app.db.engine_for(cell, timeout=...)``: the App's registry makes an engine
with the verify timeout for the check alone, so the request path's engines
keep their own timeouts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cellgate.apidb.mappings import CellMapping, get_cell, list_cells
from cellgate.app import App
from cellgate.errors import BackendError, CellgateError, Hint, SchemaMismatch
from cellgate.migrations.runner import MigrationLine, current, head
from cellgate.rpc.amqp.broker import broker_label, probe_broker
from cellgate.urls import TransportHost, TransportURL

#: Renders an error's hint in an edge's words (``cellgate.cli.hints.cli_hint``).
HintText = Callable[[CellgateError], str | None]


@dataclass(frozen=True)
class Check:
    """The outcome of one component check."""

    component: str
    ok: bool
    detail: str
    error: CellgateError | None = None

    def to_dict(self, hint: HintText | None = None) -> dict[str, Any]:
        return {"component": self.component, "ok": self.ok, "detail": self.text(hint)}

    def text(self, hint: HintText | None = None) -> str:
        """The detail, followed by the failure's hint in the words ``hint`` gives it.

        The domain holds no CLI words: the CLI passes its hint renderer.
        """
        words = hint(self.error) if hint is not None and self.error is not None else None
        return f"{self.detail}; {words}" if words else self.detail


@dataclass(frozen=True)
class CellReport:
    """Every check of one cell; ``ok`` only if all of them passed."""

    cell: CellMapping
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def errors(self) -> list[CellgateError]:
        return [c.error for c in self.checks if c.error is not None]

    def to_dict(self, hint: HintText | None = None) -> dict[str, Any]:
        return {
            "uuid": self.cell.uuid,
            "name": self.cell.name,
            "ok": self.ok,
            "checks": [c.to_dict(hint) for c in self.checks],
        }


def verify_cells(
    app: App, cells: Sequence[str] = (), *, all_cells: bool = False
) -> list[CellReport]:
    """Verify the named cells (names or uuids), or every live cell with ``all_cells``.

    A failed check is reported in its :class:`Check`, never raised; unknown
    cells raise :class:`~cellgate.errors.CellNotFound` before anything is checked.
    """
    app.api.require_current()
    with app.api.session() as session:
        found = list_cells(session) if all_cells else [get_cell(session, i) for i in cells]
    return [verify_cell(app, c) for c in found]


def verify_cell(app: App, cell: CellMapping) -> CellReport:
    """Check the cell's database (reachable, cell line at head) and transport."""
    report = CellReport(cell)
    report.checks.append(_guard("database", lambda: _check_database(app, cell)))
    report.checks.extend(_check_transport(app, cell))
    return report


def _guard(component: str, check: Callable[[], Check]) -> Check:
    try:
        return check()
    except BackendError as exc:  # the component is already in the row
        return Check(component, False, exc.reason, exc)
    except CellgateError as exc:
        return Check(component, False, str(exc), exc)


def _check_database(app: App, cell: CellMapping) -> Check:
    with app.db.engine_for(cell, timeout=app.settings.cells.verify_timeout) as engine:
        found = current(engine, MigrationLine.CELL)
    expected = head(MigrationLine.CELL)
    if found != expected:
        error = SchemaMismatch(
            component=f"cell {cell.label} database",
            current=found,
            expected=expected,
            hint=Hint.SYNC_CELL_DB,
            hint_args={"cell": cell.label},
        )
        return Check("database", False, str(error), error)
    return Check("database", True, f"reachable, cell schema at {found}")


def _check_transport(app: App, cell: CellMapping) -> list[Check]:
    try:
        url = app.rpc.url_for(cell)
    except CellgateError as exc:
        return [Check("transport", False, str(exc), exc)]
    if url.is_none:
        return [Check("transport", True, "none (cell0 has no message queue)")]
    if url.scheme == "memory":
        return [Check("transport", True, "in-process transport (always reachable)")]
    timeout = app.settings.cells.verify_timeout
    return [
        _guard(
            f"transport {broker_label(h)}",
            lambda h=h: _check_broker(url, h, timeout),  # type: ignore[misc]
        )
        for h in url.hosts
    ]


def _check_broker(url: TransportURL, host: TransportHost, timeout: float) -> Check:
    component = f"transport {broker_label(host)}"
    probe_broker(url, host, timeout=timeout, component=component)
    return Check(component, True, "broker reachable, credentials and vhost accepted")
