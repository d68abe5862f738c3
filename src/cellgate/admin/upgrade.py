"""``upgrade check``: one verdict before an upgrade, from checks with stable names.

Each :class:`Finding` is ``ok``, ``warning`` or ``failure`` under a name that
scripts may rely on (:data:`CHECKS`); the verdict is the worst of them (the
CLI's exit code 0 / 1 / 2). Cells are inspected all at once through
:meth:`App.scatter_gather` with one deadline, so a cell that is down or never
answers is a ``failure`` of the checks that needed it, never a hang.

The checks read only. A check that cannot run (the API database is down) is
a failure with the reason; the others still report.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Final

from sqlalchemy import select
from sqlalchemy.orm import Session

from cellgate.admin.versions import LastKnown
from cellgate.apidb.mappings import CellMapping, from_row, keyring, live_select
from cellgate.apidb.schema import CellMappingRow, HostMappingRow, InstanceMappingRow
from cellgate.app import App
from cellgate.celldb.queries import live_worker_versions
from cellgate.celldb.schema import InstanceRow, ServiceRow
from cellgate.celldb.versions import MIN_SERVICE_VERSION, oldest
from cellgate.context import RequestContext
from cellgate.dbtypes import utcnow
from cellgate.errors import CellgateError
from cellgate.migrations.runner import MigrationLine, current, drift, head, revisions
from cellgate.results import Failed, Ok, TimedOut, raise_bugs

#: The oldest service version the previous release's workers report
#: (cellgate.celldb.versions); a live worker older than it must be upgraded first.
PREVIOUS_RELEASE_SERVICE_VERSION: Final = MIN_SERVICE_VERSION

#: Every check's stable name, in report order.
CHECKS: Final = (
    "api_db_at_head",
    "cell_db_revisions",
    "cell0_present",
    "enabled_cell",
    "service_hosts_mapped",
    "credentials_decryptable",
    "templates_renderable",
    "no_orphaned_mappings",
    "worker_versions",
)


class Status(enum.IntEnum):
    OK = 0
    WARNING = 1
    FAILURE = 2


@dataclass(frozen=True)
class Finding:
    name: str
    status: Status
    details: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"check": self.name, "status": self.status.name.lower(), "details": self.details}


@dataclass(frozen=True)
class UpgradeReport:
    findings: list[Finding]

    @property
    def verdict(self) -> Status:
        return max((f.status for f in self.findings), default=Status.OK)

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict.name.lower(),
            "checks": [f.to_dict() for f in self.findings],
        }


@dataclass(frozen=True)
class _CellScan:
    """What one cell's database says (read in its worker thread)."""

    revision: str | None
    drift: list[str]
    hosts: list[str]
    versions: dict[str, int]  # host -> oldest version among its live services
    instances: set[str]
    rpc_version: str | None = None  # the oldest RPC version a live worker serves


def _finding(name: str, problems: list[str], bad: Status = Status.FAILURE) -> Finding:
    return Finding(name, bad if problems else Status.OK, problems)


def upgrade_check(
    app: App,
    *,
    cell_timeout: float | None = None,
    min_service_version: int = PREVIOUS_RELEASE_SERVICE_VERSION,
) -> UpgradeReport:
    """Run every check; ``cell_timeout`` defaults to ``[cells] verify_timeout``."""
    timeout = cell_timeout or app.settings.cells.verify_timeout
    api_head = head(MigrationLine.API)
    try:
        api_rev = app.api.revision()
    except CellgateError as exc:
        unreachable = [f"API database: {exc}"]
        return UpgradeReport([_finding(name, unreachable) for name in CHECKS])
    findings = [
        _finding(
            "api_db_at_head",
            []
            if api_rev == api_head
            else [f"API database at {api_rev or 'none'}, head {api_head}"],
        )
    ]
    if api_rev != api_head:
        skipped = ["skipped: the API database is not at head"]
        return UpgradeReport(findings + [_finding(n, skipped) for n in CHECKS[1:]])
    ring_problems: list[str] = []
    template_problems: list[str] = []
    cells: list[CellMapping] = []
    with app.api.session() as session:
        ring = keyring(session)
        rows = list(session.scalars(live_select()))
        for row in rows:
            try:
                cell = from_row(row, ring)
            except CellgateError as exc:
                ring_problems.append(str(exc))
                continue
            try:
                app.db.url_for(cell)
                app.rpc.url_for(cell)
            except CellgateError as exc:
                template_problems.append(f"cell {cell.label}: {exc}")
                continue
            cells.append(cell)
        host_map: dict[str, str] = {
            host: cell_uuid
            for host, cell_uuid in session.execute(
                select(HostMappingRow.host, CellMappingRow.uuid).join(
                    CellMappingRow, CellMappingRow.id == HostMappingRow.cell_id
                )
            )
        }
        mapped = session.execute(
            select(
                InstanceMappingRow.instance_uuid,
                CellMappingRow.uuid,
                CellMappingRow.deleted,
                InstanceMappingRow.queued_for_delete,
            ).join(CellMappingRow, CellMappingRow.id == InstanceMappingRow.cell_id)
        )
        instance_map = [(i, c, d, bool(q)) for i, c, d, q in mapped]
        dead_hosts = session.scalars(
            select(HostMappingRow.host)
            .join(CellMappingRow, CellMappingRow.id == HostMappingRow.cell_id)
            .where(CellMappingRow.deleted != 0)
        ).all()

    scans = app.scatter_gather(
        RequestContext(), cells, lambda ctx: _scan(app, ctx, timeout), timeout=timeout * 4
    )
    raise_bugs(scans.values())
    by_uuid = {c.uuid: c for c in cells}
    ok: dict[str, _CellScan] = {}
    down_by_uuid: dict[str, str] = {}
    for uuid, result in scans.items():
        label = by_uuid[uuid].label
        if isinstance(result, Ok):
            ok[uuid] = result.value
        elif isinstance(result, TimedOut):
            down_by_uuid[uuid] = f"cell {label}: no answer within {result.timeout:g} s"
        elif isinstance(result, Failed):
            down_by_uuid[uuid] = f"cell {label}: {result.error}"
    down = list(down_by_uuid.values())

    findings.append(_finding("cell_db_revisions", down + _revision_problems(by_uuid, ok)))
    findings.append(
        _finding("cell0_present", [] if any(c.is_cell0 for c in cells) else ["no cell0 mapping"])
    )
    enabled = [c for c in cells if not c.is_cell0 and not c.disabled]
    findings.append(_finding("enabled_cell", [] if enabled else ["no enabled cell"]))
    unmapped = [
        f"cell {by_uuid[u].label}: host {h} is not mapped"
        + ("" if host_map.get(h) in (None, u) else " to this cell")
        for u, scan in ok.items()
        for h in scan.hosts
        if host_map.get(h) != u
    ]
    findings.append(
        _finding(
            "service_hosts_mapped", down + unmapped, Status.WARNING if not down else Status.FAILURE
        )
    )
    findings.append(_finding("credentials_decryptable", ring_problems))
    findings.append(_finding("templates_renderable", template_problems))
    orphans = [f"host {h} is mapped to a deleted cell" for h in dead_hosts]
    for instance, cell_uuid, deleted, queued in instance_map:
        if deleted:
            orphans.append(f"instance {instance} is mapped to a deleted cell")
        elif cell_uuid in ok and not queued and instance not in ok[cell_uuid].instances:
            orphans.append(
                f"instance {instance}: mapped to cell {by_uuid[cell_uuid].label}, not in it"
            )
    findings.append(_finding("no_orphaned_mappings", orphans, Status.WARNING))
    old = [
        f"cell {by_uuid[u].label}: host {h} runs service version {v}, "
        f"older than {min_service_version}"
        for u, scan in ok.items()
        for h, v in scan.versions.items()
        if v < min_service_version
    ]
    # What the API caps each cell's calls at: recorded as last known here too,
    # and shown for the cells that could not be read.
    last_known = LastKnown.of(app)
    for uuid, scan in ok.items():
        if scan.rpc_version is not None:
            last_known.record(uuid, scan.rpc_version)
    unread = [
        f"{line}; last-known RPC version {last_known.get(uuid) or 'none'}"
        for uuid, line in down_by_uuid.items()
    ]
    findings.append(_finding("worker_versions", unread + old))
    return UpgradeReport(findings)


def _scan(app: App, ctx: RequestContext, timeout: float) -> _CellScan:
    cell = ctx.cell
    assert cell is not None
    with app.db.engine_for(cell, timeout=timeout) as engine:
        revision = current(engine, MigrationLine.CELL)
        if revision != head(MigrationLine.CELL):
            return _CellScan(revision, [], [], {}, set())
        differences = drift(engine, MigrationLine.CELL)[:10]
        with Session(engine) as session:
            hosts = set(session.scalars(select(ServiceRow.host).where(ServiceRow.deleted == 0)))
            live = live_worker_versions(
                session, now=utcnow(), down_after=app.settings.service.service_down_time
            )
            versions: dict[str, int] = {}
            for worker in live:  # only live workers: a dead row's version says nothing
                versions[worker.host] = min(
                    worker.version, versions.get(worker.host, worker.version)
                )
            # Every row, soft-deleted and hidden ones too, on purpose: a mapping
            # of a deleted instance is not orphaned (celldb.queries leaves them out).
            instances = set(session.scalars(select(InstanceRow.uuid)))
    return _CellScan(
        revision,
        differences,
        sorted(hosts),
        versions,
        instances,
        oldest([w.rpc_version for w in live]),
    )


def _revision_problems(cells: dict[str, CellMapping], scans: dict[str, _CellScan]) -> list[str]:
    cell_head = head(MigrationLine.CELL)
    known = revisions(MigrationLine.CELL)
    out = []
    for uuid, scan in scans.items():
        label = cells[uuid].label
        if scan.revision == cell_head:
            out += [f"cell {label}: schema drift: {d}" for d in scan.drift]
        elif scan.revision in known or scan.revision is None:
            out.append(
                f"cell {label}: at {scan.revision or 'none'}, head {cell_head}; behind head"
            )
        else:
            out.append(f"cell {label}: at {scan.revision}, unknown to this release (newer?)")
    return out
