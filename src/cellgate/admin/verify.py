"""``cell verify``: can this host reach a cell's database and message queue?

Each check has its own short timeout (``[cells] verify_timeout``) and reports
per component, so one dead broker host shows up as exactly that, not as a
failure of the whole cell. All checks of all cells run at once on the App's
scatter-gather pool under one deadline, so a verify takes about one
timeout however many cells are dead. The database is reached through
``app.db.engine_for(cell, timeout=...)``: the App's registry makes an engine
with the verify timeout for the check alone, so the request path's engines
keep their own timeouts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from cellgate.apidb.mappings import CellMapping, get_cell, list_cells
from cellgate.app import App
from cellgate.errors import BackendError, BackendTimeout, CellgateError, Hint, SchemaMismatch
from cellgate.migrations.runner import MigrationLine, current, head
from cellgate.results import CellResult, Ok, TimedOut
from cellgate.rpc.amqp.broker import broker_address, broker_label, probe_broker
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
    #: The broker this check is about, as a masked URL of that one host
    #: (``rabbit://user:***@host:5672/vhost``); ``None`` for other checks.
    broker: str | None = None

    def to_dict(self, hint: HintText | None = None) -> dict[str, Any]:
        return {
            "component": self.component,
            "ok": self.ok,
            "detail": self.text(hint),
            "broker": self.broker,
        }

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


#: How much later than ``verify_timeout`` a check may report: every check
#: carries the timeout itself; this only absorbs thread scheduling.
VERIFY_GRACE = 0.1


@dataclass(frozen=True)
class _Planned:
    """One check to run: which cell, which component, and the call that checks it."""

    cell: CellMapping
    component: str
    run: Callable[[], Check]
    broker: str | None = None


def verify_cells(
    app: App, cells: Sequence[str] = (), *, all_cells: bool = False
) -> list[CellReport]:
    """Verify the named cells (names or uuids), or every live cell with ``all_cells``.

    Every check of every cell runs at once on the App's scatter-gather pool,
    under one deadline of ``[cells] verify_timeout`` (plus
    :data:`VERIFY_GRACE`): ``--all`` on many dead cells takes one timeout,
    not one per cell, and a check still running at the deadline is reported
    as "no answer within ..." there and then. A failed check is reported in
    its :class:`Check`, never raised; unknown cells raise
    :class:`~cellgate.errors.CellNotFound` before anything is checked.
    """
    app.api.require_current()
    with app.api.session() as session:
        found = list_cells(session) if all_cells else [get_cell(session, i) for i in cells]
    return verify_many(app, found)


def verify_cell(app: App, cell: CellMapping) -> CellReport:
    """Check the cell's database (reachable, cell line at head) and transport."""
    return verify_many(app, [cell])[0]


def verify_many(app: App, cells: Sequence[CellMapping]) -> list[CellReport]:
    """One :class:`CellReport` per cell, in order; all checks run at once (see above)."""
    timeout = app.settings.cells.verify_timeout
    plans: list[_Planned] = []
    for cell in cells:
        plans.append(_Planned(cell, "database", lambda c=cell: _check_database(app, c)))  # type: ignore[misc]
        plans.extend(_plan_transport(app, cell, timeout))
    results = app.fanout.scatter_gather(
        dict(enumerate(plans)), _run, timeout=timeout + VERIFY_GRACE
    )
    reports = {cell.uuid: CellReport(cell) for cell in cells}
    for index, plan in enumerate(plans):
        reports[plan.cell.uuid].checks.append(_outcome(plan, results[index], timeout))
    return [reports[cell.uuid] for cell in cells]


def _run(plan: _Planned) -> Check:
    return replace(_guard(plan.component, plan.run), broker=plan.broker)


def _outcome(plan: _Planned, result: CellResult[Check], timeout: float) -> Check:
    if isinstance(result, Ok):
        return result.value
    if isinstance(result, TimedOut):
        error = BackendTimeout(
            component=f"cell {plan.cell.label} {plan.component}",
            reason=f"no answer within {timeout:g}s",
            public_reason=f"no answer within {timeout:g}s",
        )
        return Check(plan.component, False, error.reason, error, plan.broker)
    raise result.error  # not a CellgateError (``_guard`` caught those): a bug, not an outage


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


def _plan_transport(app: App, cell: CellMapping, timeout: float) -> list[_Planned]:
    """The transport's checks: one per broker host, or one that needs no network."""

    def done(check: Check) -> list[_Planned]:
        return [_Planned(cell, check.component, lambda: check)]

    try:
        url = app.rpc.url_for(cell)
    except CellgateError as exc:
        return done(Check("transport", False, str(exc), exc))
    if url.is_none:
        return done(Check("transport", True, "none (cell0 has no message queue)"))
    if url.scheme == "memory":
        return done(Check("transport", True, "in-process transport (always reachable)"))
    return [
        _Planned(
            cell,
            f"transport {broker_label(h)}",
            lambda h=h: _check_broker(url, h, timeout),  # type: ignore[misc]
            broker_address(url, h),
        )
        for h in url.hosts
    ]


def _check_broker(url: TransportURL, host: TransportHost, timeout: float) -> Check:
    component = f"transport {broker_label(host)}"
    probe_broker(url, host, timeout=timeout, component=component)
    return Check(component, True, "broker reachable, credentials and vhost accepted")
