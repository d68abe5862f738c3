"""``cellgate nova verify``: one read-only pass over a Nova deployment, findings with stable codes.

Nova has no single check of a whole deployment's mappings: ``nova-status
upgrade check`` looks at a few counts, ``nova-manage cell_v2 verify_instance``
at one instance. This reads a Nova ``nova_api`` database and every cell
database it maps, and reports each kind of inconsistency once, as a
:class:`Finding` with a stable :data:`CODES` entry, a severity, a count, a few
examples and the fix in nova-manage's terms. The verdict is the worst
severity: 0 clean, 1 warnings only, 2 errors, like ``nova-status``.

How it reads, and why:

- **Read-only at the server.** Every engine is made with ``read_only=True``
  (SQLite ``mode=ro``, MySQL ``TRANSACTION READ ONLY``, PostgreSQL
  ``default_transaction_read_only``): a bug that wrote would fail, not write.
  Each batch is its own short transaction, so no snapshot or metadata lock is
  held across the pass (a ``nova-manage db sync`` running meanwhile is never
  queued behind verify).
- **Per-cell deadlines.** Every cell is scanned at once through the App's
  scatter-gather pool (:class:`~cellgate.routing.fanout.FanoutPool`) with one
  deadline (``cell_timeout``): a cell that is down is a finding, and it never
  holds up the others. The broker of each cell gets one bounded connect per
  host (``[cells] verify_timeout``), as ``cell verify`` does.
- **Bounded memory.** Instance mappings and instances are streamed in batches
  keyed by id (``id > last ORDER BY id LIMIT batch``) and compared batch by
  batch with ``IN`` lookups on the other side; only counts and at most
  ``examples`` examples per finding are kept. Host names are the one thing
  held whole (one set per cell: compute hosts number in the thousands, not
  millions).
"""

from __future__ import annotations

import enum
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import sqlalchemy
from sqlalchemy import Connection, Engine, func, or_, select

from cellgate.app import App
from cellgate.errors import (
    BackendError,
    CellgateError,
    CellTimeout,
    CellUnavailable,
    ConfigError,
)
from cellgate.nova import schema as nova
from cellgate.nova.urls import check_transport_url, translate_database_url
from cellgate.results import Failed, Ok, TimedOut, raise_bugs
from cellgate.rpc.amqp.broker import broker_label, probe_broker
from cellgate.sql.engines import describe_db_error, translate_errors
from cellgate.urls import DatabaseURL, StoredURL, TransportURL, expand, mask_url

#: Rows per batch of the streamed passes (one ``IN`` list on the other side).
DEFAULT_BATCH_SIZE: Final = 1000
#: Examples kept per finding.
DEFAULT_EXAMPLES: Final = 5
#: A mapping with no cell this long after it was made is reported.
DEFAULT_UNSCHEDULED_AFTER: Final = timedelta(hours=1)
#: Seconds the whole pass over one cell may take (all cells run at once).
DEFAULT_CELL_TIMEOUT: Final = 300.0

_DB_OPTION = "Nova's [database] connection (--nova-database)"
_MQ_OPTION = "Nova's [DEFAULT] transport_url (--nova-transport-url)"


class Severity(enum.IntEnum):
    """A finding's weight; the verdict (and exit code) is the worst one, 0 when clean."""

    WARNING = 1
    ERROR = 2


@dataclass(frozen=True)
class Code:
    """What a finding code means and how to fix it; fixed per code, scripts rely on it."""

    code: str
    severity: Severity
    summary: str
    fix: str


def _codes(*codes: Code) -> dict[str, Code]:
    return {c.code: c for c in codes}


W, E = Severity.WARNING, Severity.ERROR

#: Every finding code, in report order (docs/nova.md explains each).
CODES: Final = _codes(
    Code(
        "api_db_behind",
        W,
        "the API database is behind Nova's API head",
        "nova-manage api_db sync",
    ),
    Code(
        "api_db_revision_unknown",
        E,
        "the API database is at a revision this cellgate does not know",
        "check the Nova release; cellgate knows API revisions up to " + nova.API_HEAD,
    ),
    Code(
        "cell_db_unreachable",
        E,
        "a cell database cannot be read (so that cell was not checked)",
        "fix the server or the URL: nova-manage cell_v2 update_cell --cell_uuid UUID"
        " --database_connection URL",
    ),
    Code(
        "cell_mq_unreachable",
        E,
        "no broker of a cell's transport URL accepts a connection",
        "fix the broker or the URL: nova-manage cell_v2 update_cell --cell_uuid UUID"
        " --transport-url URL",
    ),
    Code(
        "cell_db_behind",
        W,
        "a cell database is behind Nova's cell head",
        "nova-manage db sync (with that cell's [database] connection, or --local_cell)",
    ),
    Code(
        "cell_db_revision_unknown",
        E,
        "a cell database is at a revision this cellgate does not know (not checked further)",
        "check the Nova release; cellgate knows cell revisions up to " + nova.CELL_HEAD,
    ),
    Code(
        "cell_name_duplicate",
        W,
        "a name is shared by several cells (Nova allows it; the name no longer identifies a cell)",
        "nova-manage cell_v2 update_cell --cell_uuid UUID --name NEW_NAME",
    ),
    Code(
        "cell_name_missing",
        W,
        "a cell has no name",
        "nova-manage cell_v2 update_cell --cell_uuid UUID --name NAME",
    ),
    Code(
        "cell_template_unrenderable",
        E,
        "a cell's URL template cannot be rendered (so that part was not checked)",
        "pass Nova's defaults (--nova-database, --nova-transport-url), or store a URL that"
        " renders: nova-manage cell_v2 update_cell --cell_uuid UUID",
    ),
    Code(
        "cell_url_unsupported",
        E,
        "a cell URL that cellgate cannot route (so that part was not checked)",
        "use a driver cellgate ships (mysql+pymysql://, postgresql://, rabbit://):"
        " nova-manage cell_v2 update_cell --cell_uuid UUID",
    ),
    Code(
        "host_not_mapped",
        W,
        "a compute service in a cell database has no host mapping",
        "nova-manage cell_v2 discover_hosts",
    ),
    Code(
        "host_mapping_stale",
        W,
        "a host mapping names a host with no live compute service in its cell",
        "nova-manage cell_v2 delete_host --cell_uuid UUID --host HOST",
    ),
    Code(
        "host_in_wrong_cell",
        E,
        "a host is mapped to one cell while its compute service lives in another",
        "nova-manage cell_v2 delete_host --cell_uuid MAPPED_CELL --host HOST, then"
        " nova-manage cell_v2 discover_hosts",
    ),
    Code(
        "instance_missing_from_cell",
        E,
        "an instance mapping's instance is not in the cell it is mapped to",
        "nova-manage cell_v2 verify_instance --uuid UUID; if the instance was archived"
        " (shadow_instances) the mapping is a leftover: nova-manage db archive_deleted_rows"
        " removes mappings of archived instances",
    ),
    Code(
        "instance_deleted_not_queued",
        W,
        "an instance is soft-deleted in its cell but its mapping is not queued_for_delete"
        " (quota counts it)",
        "nova-manage db archive_deleted_rows --all-cells",
    ),
    Code(
        "instance_not_mapped",
        W,
        "an instance in a cell database has no instance mapping",
        "nova-manage cell_v2 map_instances --cell_uuid UUID",
    ),
    Code(
        "unscheduled_without_build_request",
        W,
        "a mapping with no cell (still scheduling) has no build request",
        "nova-manage cell_v2 verify_instance --uuid UUID; the instance never got past"
        " scheduling: delete it (openstack server delete UUID)",
    ),
    Code(
        "unscheduled_too_long",
        W,
        "a mapping has had no cell for longer than the threshold (--unscheduled-after)",
        "check nova-scheduler and nova-conductor logs for the instance; delete it if stuck",
    ),
    Code(
        "online_migrations_pending",
        W,
        "instance mappings still need Nova's online data migrations"
        " (queued_for_delete or user_id is NULL)",
        "nova-manage db online_data_migrations",
    ),
)


@dataclass(frozen=True)
class Finding:
    """One kind of problem: how many rows have it, and a few of them."""

    code: str
    severity: Severity
    count: int
    examples: list[str]
    summary: str
    fix: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "severity": self.severity.name.lower(),
            "count": self.count,
            "examples": self.examples,
            "summary": self.summary,
            "fix": self.fix,
        }


@dataclass(frozen=True)
class CellSummary:
    """What was checked of one cell."""

    uuid: str
    name: str | None
    revision: str | None
    database_ok: bool
    transport_ok: bool | None  # None: not probed (none:/// or no usable URL)
    mappings_checked: int
    instances_checked: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "uuid": self.uuid,
            "name": self.name,
            "revision": self.revision,
            "database_ok": self.database_ok,
            "transport_ok": self.transport_ok,
            "mappings_checked": self.mappings_checked,
            "instances_checked": self.instances_checked,
        }


@dataclass(frozen=True)
class NovaVerifyReport:
    """Every finding (only codes that occurred), what was checked, and the verdict."""

    api_revision: str | None
    findings: list[Finding]
    cells: list[CellSummary]
    rows_checked: int
    seconds: float

    @property
    def verdict(self) -> int:
        """0 clean, 1 warnings only, 2 errors: the CLI's exit code."""
        return max((int(f.severity) for f in self.findings), default=0)

    @property
    def verdict_name(self) -> str:
        return ("ok", "warning", "error")[self.verdict]

    def finding(self, code: str) -> Finding | None:
        return next((f for f in self.findings if f.code == code), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict_name,
            "api_revision": self.api_revision,
            "findings": [f.to_dict() for f in self.findings],
            "cells": [c.to_dict() for c in self.cells],
            "rows_checked": self.rows_checked,
            "seconds": round(self.seconds, 3),
        }


class _Tally:
    """Counts and the first examples per code; merged from the cells' threads."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = {}

    def add(self, code: str, example: str, count: int = 1) -> None:
        assert code in CODES, code
        self.counts[code] += count
        kept = self.examples.setdefault(code, [])
        if len(kept) < self.limit:
            kept.append(example)

    def merge(self, other: _Tally) -> None:
        for code, count in other.counts.items():
            self.counts[code] += count
            kept = self.examples.setdefault(code, [])
            kept.extend(other.examples.get(code, [])[: self.limit - len(kept)])

    def findings(self) -> list[Finding]:
        return [
            Finding(
                c.code, c.severity, self.counts[c.code], self.examples[c.code], c.summary, c.fix
            )
            for c in CODES.values()
            if self.counts[c.code]
        ]


@dataclass
class _NovaCell:
    """One ``cell_mappings`` row, its URLs rendered (None when they cannot be used)."""

    id: int
    uuid: str
    name: str | None
    db: DatabaseURL | None = None
    mq: TransportURL | None = None

    @property
    def label(self) -> str:
        return self.name if self.name else self.uuid


@dataclass
class _CellScan:
    """What one cell's thread found."""

    tally: _Tally
    revision: str | None = None
    database_ok: bool = False
    transport_ok: bool | None = None
    hosts: set[str] = field(default_factory=set)
    hosts_read: bool = False
    mappings_checked: int = 0
    instances_checked: int = 0


def verify_nova(
    app: App,
    nova_api_db: str,
    *,
    nova_database: str | None = None,
    nova_transport_url: str | None = None,
    examples: int = DEFAULT_EXAMPLES,
    unscheduled_after: timedelta = DEFAULT_UNSCHEDULED_AFTER,
    cell_timeout: float = DEFAULT_CELL_TIMEOUT,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> NovaVerifyReport:
    """Check the Nova deployment whose API database is ``nova_api_db``; never write.

    ``nova_database`` and ``nova_transport_url`` are Nova's ``[database]
    connection`` and ``[DEFAULT] transport_url``, which templated cell URLs
    render against (a template with no default is reported, not guessed).
    Problems in the deployment are findings; only an API database that cannot
    be read at all raises (:class:`~cellgate.errors.BackendError`, or
    :class:`~cellgate.errors.ConfigError` for a URL or database that is not a
    Nova API database's).
    """
    if examples < 0 or batch_size < 1:
        raise ValueError("examples must be >= 0 and batch_size >= 1")
    return _Verifier(
        app,
        nova_api_db,
        nova_database=nova_database,
        nova_transport_url=nova_transport_url,
        examples=examples,
        unscheduled_after=unscheduled_after,
        cell_timeout=cell_timeout,
        batch_size=batch_size,
    ).run()


def nova_api_url(raw: str) -> DatabaseURL:
    """The Nova API database URL in cellgate's drivers (``mysql://`` -> PyMySQL ...)."""
    return DatabaseURL.parse(translate_database_url(raw))


class _Verifier:
    def __init__(
        self,
        app: App,
        nova_api_db: str,
        *,
        nova_database: str | None,
        nova_transport_url: str | None,
        examples: int,
        unscheduled_after: timedelta,
        cell_timeout: float,
        batch_size: int,
    ) -> None:
        self.app = app
        self.api_url = nova_api_url(nova_api_db)
        self.nova_database = nova_database
        self.nova_transport_url = nova_transport_url
        self.examples = examples
        self.unscheduled_after = unscheduled_after
        self.cell_timeout = cell_timeout
        self.batch = batch_size
        self.probe_timeout = app.settings.cells.verify_timeout
        self.deadline = 0.0

    # --------------------------------------------------------------- engines

    @contextmanager
    def _api(self) -> Iterator[Connection]:
        with (
            self.app.engines.transient(self.api_url, read_only=True) as engine,
            translate_errors("Nova API database", address=str(self.api_url)),
            engine.connect() as conn,
        ):
            yield conn

    @contextmanager
    def _cell_engine(self, cell: _NovaCell, url: DatabaseURL) -> Iterator[Engine]:
        with (
            self.app.engines.transient(url, read_only=True) as engine,
            translate_errors(
                f"cell {cell.label} database",
                address=str(url),
                unavailable=CellUnavailable,
                timeout=CellTimeout,
            ),
        ):
            yield engine

    # ------------------------------------------------------------------ run

    def run(self) -> NovaVerifyReport:
        started = time.monotonic()
        tally = _Tally(self.examples)
        with self._api() as api:
            inspector = sqlalchemy.inspect(api)
            if not inspector.has_table("cell_mappings"):
                raise ConfigError(
                    f"{mask_url(self.api_url.render(hide_password=False))} is not a Nova API"
                    " database (it has no cell_mappings table)"
                )
            api_revision = _revision(api, nova.alembic_version_api)
            api.rollback()
            self._check_api_revision(api_revision, tally)
            cells = self._read_cells(api, tally)
            host_map = {
                host: cell_id
                for host, cell_id in _read(
                    api, select(nova.host_mappings.c.host, nova.host_mappings.c.cell_id)
                )
            }
            rows = self._check_api_rows(api, {c.id for c in cells}, tally)

        self.deadline = time.monotonic() + self.cell_timeout
        results = self.app.fanout.scatter_gather(
            {c.uuid: c for c in cells}, self._scan_cell, timeout=self.cell_timeout
        )
        raise_bugs(results.values())
        scans: dict[int, _CellScan] = {}
        summaries = []
        for cell in cells:
            result = results[cell.uuid]
            if isinstance(result, Ok):
                scan = result.value
                tally.merge(scan.tally)
            else:
                scan = _CellScan(_Tally(0))
                reason = (
                    f"no answer within {result.timeout:g} s (the scan was stopped)"
                    if isinstance(result, TimedOut)
                    else str(result.error)
                    if isinstance(result, Failed)
                    else "?"
                )
                tally.add("cell_db_unreachable", f"cell {cell.label}: {reason}")
            scans[cell.id] = scan
            rows += scan.mappings_checked + scan.instances_checked
            summaries.append(
                CellSummary(
                    cell.uuid,
                    cell.name,
                    scan.revision,
                    scan.database_ok,
                    scan.transport_ok,
                    scan.mappings_checked,
                    scan.instances_checked,
                )
            )
        self._check_hosts(cells, scans, host_map, tally)
        return NovaVerifyReport(
            api_revision, tally.findings(), summaries, rows, time.monotonic() - started
        )

    # ------------------------------------------------------------ API side

    def _check_api_revision(self, revision: str | None, tally: _Tally) -> None:
        if revision == nova.API_HEAD:
            return
        if revision in nova.API_REVISIONS or (revision or "").startswith("migrate:"):
            tally.add("api_db_behind", f"API database at {revision}, head {nova.API_HEAD}")
        else:
            tally.add("api_db_revision_unknown", f"API database at {revision or 'no revision'}")

    def _read_cells(self, api: Connection, tally: _Tally) -> list[_NovaCell]:
        t = nova.cell_mappings
        rows = _read(
            api,
            select(
                t.c.id, t.c.uuid, t.c.name, t.c.database_connection, t.c.transport_url
            ).order_by(t.c.id),
        )
        cells = []
        by_name: dict[str, list[str]] = {}
        for row in rows:
            cell = _NovaCell(row.id, row.uuid, row.name)
            if not row.name:
                tally.add("cell_name_missing", f"cell {row.uuid} has no name")
            else:
                by_name.setdefault(row.name, []).append(row.uuid)
            cell.db = self._render(cell, "database_connection", row.database_connection, tally)
            cell.mq = self._render(cell, "transport_url", row.transport_url, tally)
            cells.append(cell)
        for name, uuids in by_name.items():
            if len(uuids) > 1:
                tally.add("cell_name_duplicate", f"name {name!r}: cells {', '.join(uuids)}")
        return cells

    def _render(self, cell: _NovaCell, column: str, raw: str | None, tally: _Tally) -> Any:
        """The cell's URL ready to use, or None with a finding saying why not."""
        if raw is None:
            tally.add("cell_url_unsupported", f"cell {cell.label}: {column} is NULL")
            return None
        database = column == "database_connection"
        try:
            templated = StoredURL(raw).is_template
            expanded = expand(
                raw,
                self.nova_database if database else self.nova_transport_url,
                option=_DB_OPTION if database else _MQ_OPTION,
            )
        except CellgateError as exc:
            tally.add("cell_template_unrenderable", f"cell {cell.label} {column}: {exc}")
            return None
        try:
            if database:
                return DatabaseURL.parse(translate_database_url(expanded))
            return TransportURL.parse(check_transport_url(expanded))
        except CellgateError as exc:
            where = f"cell {cell.label} {column}" + (" (rendered)" if templated else "")
            tally.add("cell_url_unsupported", f"{where}: {exc}")
            return None

    def _check_api_rows(self, api: Connection, cell_ids: set[int], tally: _Tally) -> int:
        """Mappings to no known cell, unscheduled mappings, pending online migrations."""
        im = nova.instance_mappings
        gone = im.c.cell_id.isnot(None) & im.c.cell_id.notin_(cell_ids or {-1})
        count = _read(api, select(func.count()).select_from(im).where(gone))[0][0]
        if count:
            for uuid, cell_id in _read(
                api,
                select(im.c.instance_uuid, im.c.cell_id)
                .where(gone)
                .order_by(im.c.id)
                .limit(self.examples),
            ):
                tally.add(
                    "instance_missing_from_cell",
                    f"instance {uuid}: mapped to cell id {cell_id}, which does not exist",
                    0,
                )
            tally.counts["instance_missing_from_cell"] += count
        pending = or_(im.c.queued_for_delete.is_(None), im.c.user_id.is_(None))
        count = _read(api, select(func.count()).select_from(im).where(pending))[0][0]
        if count:
            for uuid, qfd, user in _read(
                api,
                select(im.c.instance_uuid, im.c.queued_for_delete, im.c.user_id)
                .where(pending)
                .order_by(im.c.id)
                .limit(self.examples),
            ):
                nulls = " and ".join(
                    n for n, v in (("queued_for_delete", qfd), ("user_id", user)) if v is None
                )
                tally.add("online_migrations_pending", f"instance mapping {uuid}: {nulls} NULL", 0)
            tally.counts["online_migrations_pending"] += count
        return self._check_unscheduled(api, tally)

    def _check_unscheduled(self, api: Connection, tally: _Tally) -> int:
        im, br = nova.instance_mappings, nova.build_requests
        cutoff = datetime.now(UTC).replace(tzinfo=None) - self.unscheduled_after
        last, rows = 0, 0
        while True:
            batch = _read(
                api,
                select(im.c.id, im.c.instance_uuid, im.c.created_at)
                .where(im.c.cell_id.is_(None), im.c.id > last)
                .order_by(im.c.id)
                .limit(self.batch),
            )
            if not batch:
                return rows
            last, rows = batch[-1].id, rows + len(batch)
            uuids = [r.instance_uuid for r in batch]
            requested = set(
                _scalars(api, select(br.c.instance_uuid).where(br.c.instance_uuid.in_(uuids)))
            )
            for row in batch:
                if row.instance_uuid not in requested:
                    tally.add(
                        "unscheduled_without_build_request",
                        f"instance {row.instance_uuid}: no cell and no build request",
                    )
                elif row.created_at is not None and row.created_at < cutoff:
                    tally.add(
                        "unscheduled_too_long",
                        f"instance {row.instance_uuid}: no cell since {row.created_at:%Y-%m-%d %H:%M:%S}",
                    )

    # ---------------------------------------------------------- cell side

    def _scan_cell(self, cell: _NovaCell) -> _CellScan:
        """Run in the cell's scatter-gather thread: broker, revision, hosts, instances."""
        scan = _CellScan(_Tally(self.examples))
        if cell.mq is not None and not cell.mq.is_none and cell.mq.scheme != "memory":
            scan.transport_ok = self._probe(cell, cell.mq, scan.tally)
        if cell.db is None:
            return scan
        try:
            with self._cell_engine(cell, cell.db) as engine, engine.connect() as conn:
                scan.revision = _revision(conn, nova.alembic_version_cell)
                conn.rollback()
                scan.database_ok = True
                if not self._cell_revision_ok(cell, scan.revision, scan.tally):
                    return scan
                s = nova.services
                scan.hosts = set(
                    _scalars(
                        conn,
                        select(s.c.host).where(
                            s.c.binary == "nova-compute",
                            s.c.deleted == 0,
                            s.c.host.isnot(None),
                        ),
                    )
                )
                scan.hosts_read = True
                with self._api() as api:
                    self._check_mapped(cell, conn, api, scan)
                    self._check_orphans(cell, conn, api, scan)
        except BackendError as exc:
            scan.database_ok = False
            scan.tally.add("cell_db_unreachable", str(exc))  # names the cell
        except sqlalchemy.exc.DBAPIError as exc:  # the server refused a read: no grant, no table
            scan.database_ok = False
            scan.tally.add(
                "cell_db_unreachable",
                f"cell {cell.label} database: a read failed: {describe_db_error(exc)}",
            )
        return scan

    def _probe(self, cell: _NovaCell, url: TransportURL, tally: _Tally) -> bool:
        """One bounded connect per broker host, in order, until one accepts."""
        failures = []
        for host in url.hosts:
            component = f"cell {cell.label} transport {broker_label(host)}"
            try:
                probe_broker(url, host, timeout=self.probe_timeout, component=component)
                return True
            except BackendError as exc:
                failures.append(str(exc))
        tally.add("cell_mq_unreachable", "; ".join(failures) or f"cell {cell.label}: no host")
        return False

    def _cell_revision_ok(self, cell: _NovaCell, revision: str | None, tally: _Tally) -> bool:
        """Report a cell not at head; True when its tables can be read as Nova's."""
        if revision == nova.CELL_HEAD:
            return True
        if revision in nova.CELL_REVISIONS:
            tally.add("cell_db_behind", f"cell {cell.label} at {revision}, head {nova.CELL_HEAD}")
            return True
        if (revision or "").startswith("migrate:"):
            tally.add("cell_db_behind", f"cell {cell.label} at {revision} (before Xena)")
            return False
        tally.add("cell_db_revision_unknown", f"cell {cell.label} at {revision or 'no revision'}")
        return False

    def _check_deadline(self, cell: _NovaCell) -> None:
        if time.monotonic() > self.deadline:  # the caller has given up on this cell
            raise CellTimeout(
                component=f"cell {cell.label} database",
                reason=f"scan stopped after {self.cell_timeout:g} s",
            )

    def _check_mapped(
        self, cell: _NovaCell, conn: Connection, api: Connection, scan: _CellScan
    ) -> None:
        """Each mapping to this cell, batch by batch: is its instance there, and live?"""
        im, inst = nova.instance_mappings, nova.instances
        last = 0
        while True:
            self._check_deadline(cell)
            batch = _read(
                api,
                select(im.c.id, im.c.instance_uuid, im.c.queued_for_delete)
                .where(im.c.cell_id == cell.id, im.c.id > last)
                .order_by(im.c.id)
                .limit(self.batch),
            )
            if not batch:
                return
            last = batch[-1].id
            scan.mappings_checked += len(batch)
            found = dict(
                _read(
                    conn,
                    select(inst.c.uuid, inst.c.deleted).where(
                        inst.c.uuid.in_([r.instance_uuid for r in batch])
                    ),
                )
            )
            for row in batch:
                uuid = row.instance_uuid
                if uuid not in found:
                    scan.tally.add(
                        "instance_missing_from_cell", f"instance {uuid}: not in cell {cell.label}"
                    )
                elif found[uuid] and row.queued_for_delete is False:
                    scan.tally.add(
                        "instance_deleted_not_queued",
                        f"instance {uuid}: deleted in cell {cell.label}, mapping not queued",
                    )

    def _check_orphans(
        self, cell: _NovaCell, conn: Connection, api: Connection, scan: _CellScan
    ) -> None:
        """Each live instance of this cell, batch by batch: does it have a mapping?

        Hidden instances are skipped: a cross-cell resize keeps a hidden copy
        in the other cell, mapped to neither.
        """
        im, inst = nova.instance_mappings, nova.instances
        last = 0
        while True:
            self._check_deadline(cell)
            batch = _read(
                conn,
                select(inst.c.id, inst.c.uuid, inst.c.hidden)
                .where(inst.c.deleted == 0, inst.c.id > last)
                .order_by(inst.c.id)
                .limit(self.batch),
            )
            if not batch:
                return
            last = batch[-1].id
            scan.instances_checked += len(batch)
            uuids = [r.uuid for r in batch if not r.hidden]
            if not uuids:
                continue
            mapped = set(
                _scalars(api, select(im.c.instance_uuid).where(im.c.instance_uuid.in_(uuids)))
            )
            for uuid in uuids:
                if uuid not in mapped:
                    scan.tally.add(
                        "instance_not_mapped", f"instance {uuid} in cell {cell.label}: no mapping"
                    )

    # --------------------------------------------------------------- hosts

    def _check_hosts(
        self,
        cells: Sequence[_NovaCell],
        scans: dict[int, _CellScan],
        host_map: dict[str, int],
        tally: _Tally,
    ) -> None:
        labels = {c.id: c.label for c in cells}
        lives: dict[str, int] = {}
        for cell in cells:
            scan = scans[cell.id]
            for host in sorted(scan.hosts):
                lives.setdefault(host, cell.id)
                mapped = host_map.get(host)
                if mapped is None:
                    tally.add("host_not_mapped", f"host {host} in cell {cell.label}")
                elif mapped != cell.id:
                    tally.add(
                        "host_in_wrong_cell",
                        f"host {host}: mapped to cell {labels.get(mapped, mapped)},"
                        f" its compute service is in cell {cell.label}",
                    )
        for host, cell_id in sorted(host_map.items()):
            mapped_scan = scans.get(cell_id)
            if mapped_scan is None:  # a host mapped to a cell that is gone
                tally.add("host_mapping_stale", f"host {host}: mapped to cell id {cell_id}, gone")
            elif mapped_scan.hosts_read and host not in mapped_scan.hosts and host not in lives:
                tally.add(
                    "host_mapping_stale",
                    f"host {host}: mapped to cell {labels[cell_id]}, no compute service there",
                )


def _read(conn: Connection, statement: Any) -> list[Any]:
    """One batch in its own short transaction (no snapshot or lock kept between batches)."""
    try:
        return list(conn.execute(statement).all())
    finally:
        conn.rollback()


def _scalars(conn: Connection, statement: Any) -> list[Any]:
    try:
        return list(conn.scalars(statement).all())
    finally:
        conn.rollback()


def _revision(conn: Connection, table: sqlalchemy.Table) -> str | None:
    """The alembic revision; ``migrate:N`` for a pre-Xena database; None if neither."""
    inspector = sqlalchemy.inspect(conn)
    if inspector.has_table(table.name):
        versions = _scalars(conn, select(table.c.version_num))
        return versions[0] if len(versions) == 1 else ",".join(sorted(versions)) or None
    if inspector.has_table(nova.migrate_version.name):
        version = _scalars(conn, select(nova.migrate_version.c.version))
        return f"migrate:{version[0]}" if version else None
    return None
