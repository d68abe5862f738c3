"""``cellgate nova import``: copy a Nova deployment's mappings into cellgate, safely and again.

Adopting cellgate means its API database must know every cell, host and
instance Nova's does, under the same uuids. This module reads Nova's
``nova_api`` database read-only (:mod:`cellgate.admin.nova_inspect`) and
writes cellgate's through its own mapping functions, so every rule of
``cell create`` and ``host discover`` holds for imported rows too: names are
checked, URLs validated (templates rendered against this host's defaults),
no two cells share a database or queue, URLs are encrypted at rest when keys
are configured, and every cell creation and host mapping is in the audit
trail (action ``nova-import``; host mappings ``map-host``).

The order of work is what makes it safe:

1. **Plan** every cell first. Conflicts (a Nova cell without a name, two
   with one name, a name another cellgate cell has, a shared database or
   queue, oslo.messaging's AMQP 1.0 ``amqp://``, a template that does not
   render here) are all collected, and any one refuses the import
   (:class:`~cellgate.errors.NovaImportConflict`) before anything is written,
   unless an explicit option resolves it (``name_from_uuid``). Nothing is
   guessed.
2. **Cells** in one transaction: all new cells or none.
3. **Host mappings**, then **instance mappings**, in batches of
   ``batch_size`` (Nova's rows read by id, one cellgate transaction per
   batch). A run killed mid-batch loses only that batch's uncommitted
   transaction; the next run skips what is there and goes on, so an
   interrupted import resumes by being run again.

Idempotence: a row cellgate already has (same uuid, or same host) is never
changed. If Nova's copy differs (a cell whose URLs or name changed, a host
mapped to another cell, an instance in another cell or queued for delete
since), it is *reported*, as are rows only cellgate has (gone from Nova, or
never Nova's). Instance mappings with no cell (``cell_id`` NULL: Nova is
still scheduling them) are skipped and counted: cellgate has no build
requests to attach them to, and the next import picks them up once Nova has
scheduled them. A NULL ``queued_for_delete`` (Nova's online data migrations
not run) is imported as not queued and counted.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from sqlalchemy import Engine, insert, select
from sqlalchemy.orm import Session

from cellgate.admin.nova_inspect import (
    NovaCell,
    NovaRevision,
    nova_api_engine,
    read_cells,
    read_hosts,
    read_revision,
)
from cellgate.apidb import audit, mappings
from cellgate.apidb.endpoints import Endpoint, database_endpoints, transport_endpoints
from cellgate.apidb.hosts import find_hosts, list_hosts, map_host
from cellgate.apidb.mappings import CellMapping, check_name
from cellgate.apidb.schema import CellMappingRow, InstanceMappingRow
from cellgate.app import App
from cellgate.config import template_defaults
from cellgate.errors import ConfigError, NovaImportConflict
from cellgate.nova import schema as nova
from cellgate.nova.urls import check_transport_url, database_translation, translate_database_url
from cellgate.urls import DatabaseURL, StoredURL, TemplateDefaults, mask_url

#: The audit trail's name for a cell created by an import.
ACTION: Final = "nova-import"
#: How ``name_from_uuid`` names a cell Nova left nameless (or ambiguous).
NAME_PREFIX: Final = "nova-"
DEFAULT_BATCH_SIZE: Final = 500
#: Examples kept per kind of difference (the counts are complete).
EXAMPLES: Final = 10


@dataclass(frozen=True)
class CellImport:
    """What the import does (or did) with one Nova cell; URLs masked."""

    uuid: str
    nova_name: str | None
    name: str | None  # its name in cellgate (planned, or as it is)
    action: str  # create | unchanged | changed | conflict
    transport_url: str
    database_connection: str
    translation: str | None = None  # "mysql -> mysql+pymysql"
    changes: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # field: (cellgate, nova)
    problem: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "uuid": self.uuid,
            "nova_name": self.nova_name,
            "name": self.name,
            "action": self.action,
            "transport_url": self.transport_url,
            "database_connection": self.database_connection,
            "translation": self.translation,
            "changes": {k: list(v) for k, v in self.changes.items()},
            "problem": self.problem,
        }


@dataclass
class MappingImport:
    """Counts for host or instance mappings: new, already there, different, only in cellgate."""

    imported: int = 0  # written by this run (dry run: would be)
    unchanged: int = 0
    changed: int = 0
    only_in_cellgate: int = 0
    changed_examples: list[dict[str, Any]] = field(default_factory=list)
    only_in_cellgate_examples: list[str] = field(default_factory=list)

    def differs(self, example: dict[str, Any]) -> None:
        self.changed += 1
        if len(self.changed_examples) < EXAMPLES:
            self.changed_examples.append(example)

    def only_here(self, key: str) -> None:
        self.only_in_cellgate += 1
        if len(self.only_in_cellgate_examples) < EXAMPLES:
            self.only_in_cellgate_examples.append(key)

    def to_dict(self) -> dict[str, Any]:
        return {
            "imported": self.imported,
            "unchanged": self.unchanged,
            "changed": self.changed,
            "changed_examples": list(self.changed_examples),
            "only_in_cellgate": self.only_in_cellgate,
            "only_in_cellgate_examples": list(self.only_in_cellgate_examples),
        }


@dataclass
class NovaImportReport:
    """What :func:`import_nova` did, or with ``dry_run`` would do. Every URL is masked."""

    source: str
    revision: NovaRevision
    dry_run: bool
    cells: list[CellImport] = field(default_factory=list)
    cells_only_in_cellgate: list[str] = field(default_factory=list)
    hosts: MappingImport = field(default_factory=MappingImport)
    instances: MappingImport = field(default_factory=MappingImport)
    unscheduled_skipped: int = 0
    null_queued_for_delete: int = 0
    batches: int = 0
    #: Conflicts that are not one cell's (a host Nova maps to cell0).
    other_conflicts: list[str] = field(default_factory=list)

    @property
    def conflicts(self) -> list[str]:
        found = [c.problem for c in self.cells if c.action == "conflict" and c.problem]
        return found + self.other_conflicts

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "schema": self.revision.to_dict(),
            "dry_run": self.dry_run,
            "cells": [c.to_dict() for c in self.cells],
            "cells_only_in_cellgate": list(self.cells_only_in_cellgate),
            "hosts": self.hosts.to_dict(),
            "instances": self.instances.to_dict(),
            "unscheduled_skipped": self.unscheduled_skipped,
            "null_queued_for_delete": self.null_queued_for_delete,
            "batches": self.batches,
            "conflicts": self.conflicts,
        }


def import_nova(
    app: App,
    nova_api_db: str,
    *,
    dry_run: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
    name_from_uuid: bool = False,
    actor: str | None = None,
    on_batch: Callable[[str, int], None] | None = None,
) -> NovaImportReport:
    """Copy Nova's cell, host and instance mappings into cellgate's API database.

    ``dry_run`` reads both sides and reports, writing nothing; conflicts are
    then in the report instead of raised. ``name_from_uuid`` names each cell
    Nova left without a usable name (NULL, shared by several Nova cells, one
    cellgate refuses, or taken by another cellgate cell) ``nova-<uuid>``.
    ``on_batch(kind, rows)`` is told after each batch (progress).

    :raises NovaImportConflict: a conflict (see the module docstring); nothing was written.
    :raises InvalidURL: ``nova_api_db`` is unusable. :raises BackendUnavailable: unreachable.
    :raises SchemaMismatch: it is no Nova API database, or cellgate's is not migrated.
    """
    if batch_size < 1:
        raise ConfigError("--batch-size must be at least 1")
    app.api.require_current()
    defaults = template_defaults(app.settings)
    with nova_api_engine(app, nova_api_db) as engine:
        with engine.connect() as conn, conn.begin():
            revision = read_revision(conn)
            nova_cells = read_cells(conn)
            nova_hosts = read_hosts(conn)
        with app.api.session() as session:
            existing = mappings.list_cells(session)
        report = NovaImportReport(mask_url(nova_api_db), revision, dry_run)
        report.cells = _plan_cells(app, nova_cells, existing, defaults, name_from_uuid)
        cell0_ids = {c.id for c in nova_cells if c.is_cell0}
        report.other_conflicts = [
            f"host {host!r} is mapped to cell0 in Nova, which holds no hosts (nova-manage"
            f" cell_v2 delete_host --cell_uuid {nova.CELL0_UUID} --host {host})"
            for cell_id, host in nova_hosts
            if cell_id in cell0_ids
        ]
        nova_uuids = {c.uuid for c in nova_cells}
        report.cells_only_in_cellgate = [c.label for c in existing if c.uuid not in nova_uuids]
        if report.conflicts and not dry_run:
            raise NovaImportConflict(conflicts=report.conflicts)
        if not dry_run:
            _create_cells(app, nova_cells, report.cells, defaults, actor)
        uuid_of = {c.id: c.uuid for c in nova_cells}
        _import_hosts(app, nova_hosts, uuid_of, report, batch_size, actor, on_batch)
        _import_instances(app, engine, uuid_of, report, batch_size, actor, on_batch)
        _instances_only_in_cellgate(app, engine, report, batch_size)
    return report


# ---------------------------------------------------------------- cells


def _endpoints(
    defaults: TemplateDefaults, transport_url: str, database_connection: str
) -> tuple[set[Endpoint], set[Endpoint]]:
    db = set(database_endpoints(defaults.database_url(StoredURL(database_connection))))
    return db, transport_endpoints(defaults.transport_url(StoredURL(transport_url)))


def _plan_cells(
    app: App,
    nova_cells: list[NovaCell],
    existing: list[CellMapping],
    defaults: TemplateDefaults,
    name_from_uuid: bool,
) -> list[CellImport]:
    by_uuid = {c.uuid: c for c in existing}
    by_name = {c.name: c for c in existing if c.name}
    nova_names = Counter(c.name for c in nova_cells if c.name is not None)
    api_db = set(database_endpoints(DatabaseURL(app.api.engine.url)))
    # Endpoints already taken: cellgate's cells, then each cell this plan creates.
    taken: list[tuple[str, set[Endpoint], set[Endpoint]]] = []
    for mine in existing:
        try:
            taken.append(
                (
                    f"cellgate cell {mine.label}",
                    *_endpoints(
                        defaults, mine.transport_url.reveal(), mine.database_connection.reveal()
                    ),
                )
            )
        except ConfigError:
            continue  # does not render here: cannot be compared (as cell create)
    planned: list[CellImport] = []
    planned_names: set[str] = set()
    for cell in nova_cells:
        raw_db = cell.database_connection.reveal()
        db_url = translate_database_url(raw_db)
        mq_url = cell.transport_url.reveal()

        def step(
            name: str | None,
            action: str,
            changes: dict[str, tuple[Any, Any]] | None = None,
            problem: str | None = None,
            cell: NovaCell = cell,
            raw_db: str = raw_db,
            db_url: str = db_url,
            mq_url: str = mq_url,
        ) -> CellImport:
            return CellImport(
                uuid=cell.uuid,
                nova_name=cell.name,
                name=name,
                action=action,
                transport_url=mask_url(mq_url),
                database_connection=mask_url(db_url),
                translation=database_translation(raw_db),
                changes=changes or {},
                problem=problem,
            )

        problem: str | None = None
        try:
            check_transport_url(mq_url)
        except ConfigError as exc:
            problem = f"cell {cell.label}: {exc}"
        have = by_uuid.get(cell.uuid)
        if have is not None:
            changes = _differences(have, cell, db_url, mq_url)
            action = "changed" if changes else "unchanged"
            planned.append(step(have.name, action, changes))
            continue
        name = "cell0" if cell.is_cell0 else None
        if problem is None and not cell.is_cell0:
            name, problem = _resolve_name(cell, nova_names, by_name, planned_names, name_from_uuid)
        if problem is None:
            problem = _check_endpoints(cell, name, db_url, mq_url, defaults, api_db, taken)
        if problem is not None:
            planned.append(step(name, "conflict", problem=problem))
            continue
        assert name is not None
        planned_names.add(name)
        planned.append(step(name, "create"))
    return planned


def _differences(
    have: CellMapping, cell: NovaCell, db_url: str, mq_url: str
) -> dict[str, tuple[Any, Any]]:
    """What Nova has now that cellgate's copy has not (``(cellgate, nova)``, masked)."""
    changes: dict[str, tuple[Any, Any]] = {}
    renamed = f"{NAME_PREFIX}{cell.uuid}"  # what name_from_uuid gave it: not a change
    if cell.name is not None and have.name not in (cell.name, renamed) and not cell.is_cell0:
        changes["name"] = (have.name, cell.name)
    for key, ours, theirs in (
        ("transport_url", have.transport_url.reveal(), mq_url),
        ("database_connection", have.database_connection.reveal(), db_url),
    ):
        if cell.is_cell0 and key == "transport_url":
            continue
        diff = audit.url_change(ours, theirs)
        if diff is not None:
            changes[key] = diff
    if cell.disabled != have.disabled and not cell.is_cell0:
        changes["disabled"] = (have.disabled, cell.disabled)
    return changes


def _resolve_name(
    cell: NovaCell,
    nova_names: Counter[str],
    by_name: dict[str, CellMapping],
    planned_names: set[str],
    name_from_uuid: bool,
) -> tuple[str | None, str | None]:
    """The name the new cell gets in cellgate, or why it cannot have one."""
    fallback = f"{NAME_PREFIX}{cell.uuid}"
    option = f"--name-from-uuid names it {fallback}"
    reason: str | None
    if cell.name is None:
        reason = "has no name in Nova (NULL)"
    elif nova_names[cell.name] > 1:
        reason = f"shares its Nova name {cell.name!r} with another Nova cell"
    elif cell.name in by_name:
        other = by_name[cell.name]
        reason = f"has the name of the cellgate cell {cell.name!r} (uuid {other.uuid})"
    else:
        try:
            return check_name(cell.name), None
        except ConfigError as exc:
            reason = f"has a name cellgate refuses ({exc})"
    if not name_from_uuid:
        return cell.name, (
            f"cell {cell.uuid} {reason}: name it in Nova (nova-manage cell_v2 update_cell"
            f" --cell_uuid {cell.uuid} --name NAME), or {option}"
        )
    if fallback in by_name or fallback in planned_names:
        return fallback, f"cell {cell.uuid} {reason}, and {fallback!r} is taken in cellgate"
    return fallback, None


def _check_endpoints(
    cell: NovaCell,
    name: str | None,
    db_url: str,
    mq_url: str,
    defaults: TemplateDefaults,
    api_db: set[Endpoint],
    taken: list[tuple[str, set[Endpoint], set[Endpoint]]],
) -> str | None:
    """Why the cell's URLs cannot be cellgate's (unusable, or another's place), or ``None``."""
    label = f"cell {name or cell.uuid}"
    try:
        mappings.check_urls(mq_url, db_url, defaults, cell0=cell.is_cell0)
        db, mq = _endpoints(defaults, mq_url, db_url)
    except ConfigError as exc:
        return f"{label}: {exc}"
    if db & api_db:
        return f"{label}: its database {min(db & api_db, key=str)} is cellgate's API database"
    for other, other_db, other_mq in taken:
        if db & other_db:
            return f"{label}: its database {min(db & other_db, key=str)} is also {other}'s"
        if mq & other_mq:
            return (
                f"{label}: its message queue {min(mq & other_mq, key=str)} is also {other}'s"
                " (cellgate gives each cell its own vhost)"
            )
    taken.append((f"Nova {label}", db, mq))
    return None


def _create_cells(
    app: App,
    nova_cells: list[NovaCell],
    plan: list[CellImport],
    defaults: TemplateDefaults,
    actor: str | None,
) -> None:
    """Every planned new cell in one transaction (all or none)."""
    todo = [
        (cell, step)
        for cell, step in zip(nova_cells, plan, strict=True)
        if step.action == "create" and step.name is not None
    ]
    if not todo:
        return

    def transaction(session: Session) -> None:
        for cell, step in todo:
            db_url = translate_database_url(cell.database_connection.reveal())
            if cell.is_cell0:
                mappings.map_cell0(
                    session,
                    database_connection=db_url,
                    defaults=defaults,
                    actor=actor,
                    action=ACTION,
                )
                continue
            assert step.name is not None
            mappings.create_cell(
                session,
                name=step.name,
                transport_url=cell.transport_url.reveal(),
                database_connection=db_url,
                defaults=defaults,
                uuid=cell.uuid,
                disabled=cell.disabled,
                actor=actor,
                action=ACTION,
            )

    app.api.write(transaction)
    app.cells.invalidate()


# ---------------------------------------------------------------- hosts


def _batches(items: list[Any], size: int) -> Iterable[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _import_hosts(
    app: App,
    nova_hosts: list[tuple[int, str]],
    uuid_of: dict[int, str],
    report: NovaImportReport,
    batch_size: int,
    actor: str | None,
    on_batch: Callable[[str, int], None] | None,
) -> None:
    wanted = [(host, uuid_of[cell_id]) for cell_id, host in nova_hosts if cell_id in uuid_of]
    counts = report.hosts
    for chunk in _batches(wanted, batch_size):
        with app.api.session() as session:
            have = find_hosts(session, [h for h, _ in chunk])
        new: list[tuple[str, str]] = []
        for host, cell_uuid in chunk:
            mapping = have.get(host)
            if mapping is None:
                new.append((host, cell_uuid))
            elif mapping.cell_uuid == cell_uuid:
                counts.unchanged += 1
            else:
                counts.differs(
                    {"host": host, "cellgate_cell": mapping.cell_uuid, "nova_cell": cell_uuid}
                )
        if report.dry_run or not new:
            counts.imported += len(new)
        else:

            def transaction(session: Session, new: list[tuple[str, str]] = new) -> list[Any]:
                return [map_host(session, h, c, actor=actor) for h, c in new]

            for (host, cell_uuid), (mapping, created) in zip(
                new, app.api.write(transaction), strict=True
            ):
                if created:
                    counts.imported += 1
                elif mapping.cell_uuid == cell_uuid:
                    counts.unchanged += 1  # mapped meanwhile, by a concurrent run
                else:
                    counts.differs(
                        {"host": host, "cellgate_cell": mapping.cell_uuid, "nova_cell": cell_uuid}
                    )
        report.batches += 1
        if on_batch is not None:
            on_batch("hosts", len(chunk))
    nova_set = {h for h, _ in wanted}
    with app.api.session() as session:
        for mapping in list_hosts(session):
            if mapping.host not in nova_set:
                counts.only_here(mapping.host)


# ------------------------------------------------------------ instances


def _import_instances(
    app: App,
    engine: Engine,
    uuid_of: dict[int, str],
    report: NovaImportReport,
    batch_size: int,
    actor: str | None,
    on_batch: Callable[[str, int], None] | None,
) -> None:
    """Nova's instance mappings by id, ``batch_size`` at a time, one transaction per batch."""
    im = nova.instance_mappings
    columns = (
        im.c.id,
        im.c.instance_uuid,
        im.c.cell_id,
        im.c.project_id,
        im.c.user_id,
        im.c.queued_for_delete,
        im.c.created_at,
    )
    counts = report.instances
    last = 0
    while True:
        with engine.connect() as conn, conn.begin():
            rows = conn.execute(
                select(*columns).where(im.c.id > last).order_by(im.c.id).limit(batch_size)
            ).all()
        if not rows:
            return
        last = rows[-1].id
        scheduled = [r for r in rows if r.cell_id is not None and r.cell_id in uuid_of]
        report.unscheduled_skipped += len(rows) - len(scheduled)
        new = _compare_instances(app, scheduled, uuid_of, counts)
        report.null_queued_for_delete += sum(1 for r in new if r.queued_for_delete is None)
        if report.dry_run or not new:
            counts.imported += len(new)
        else:

            def transaction(session: Session, new: list[Any] = new) -> int:
                return _insert_instances(session, new, uuid_of, actor)

            counts.imported += app.api.write(transaction)
        report.batches += 1
        if on_batch is not None:
            on_batch("instances", len(rows))


def _compare_instances(
    app: App, rows: list[Any], uuid_of: dict[int, str], counts: MappingImport
) -> list[Any]:
    """The rows cellgate lacks; those it has are counted as unchanged or changed."""
    if not rows:
        return []
    with app.api.session() as session:
        have = {
            r.instance_uuid: r
            for r in session.execute(
                select(
                    InstanceMappingRow.instance_uuid,
                    CellMappingRow.uuid,
                    InstanceMappingRow.queued_for_delete,
                )
                .outerjoin(CellMappingRow, CellMappingRow.id == InstanceMappingRow.cell_id)
                .where(InstanceMappingRow.instance_uuid.in_([r.instance_uuid for r in rows]))
            )
        }
    new = []
    for row in rows:
        mine = have.get(row.instance_uuid)
        if mine is None:
            new.append(row)
            continue
        nova_cell = uuid_of[row.cell_id]
        nova_queued = bool(row.queued_for_delete)
        if mine.uuid == nova_cell and mine.queued_for_delete == nova_queued:
            counts.unchanged += 1
        else:
            counts.differs(
                {
                    "instance_uuid": row.instance_uuid,
                    "cellgate_cell": mine.uuid,
                    "nova_cell": nova_cell,
                    "cellgate_queued_for_delete": mine.queued_for_delete,
                    "nova_queued_for_delete": nova_queued,
                }
            )
    return new


def _insert_instances(
    session: Session, rows: list[Any], uuid_of: dict[int, str], actor: str | None
) -> int:
    """Insert the rows still missing (re-read in this transaction); an audit entry per cell."""
    wanted = {r.instance_uuid for r in rows}
    present = set(
        session.scalars(
            select(InstanceMappingRow.instance_uuid).where(
                InstanceMappingRow.instance_uuid.in_(wanted)
            )
        )
    )
    rows = [r for r in rows if r.instance_uuid not in present]
    if not rows:
        return 0
    cells: dict[str, int] = {
        cell_uuid: cell_id
        for cell_uuid, cell_id in session.execute(
            select(CellMappingRow.uuid, CellMappingRow.id).where(
                CellMappingRow.uuid.in_({uuid_of[r.cell_id] for r in rows}),
                CellMappingRow.deleted == 0,
            )
        )
    }
    session.execute(
        insert(InstanceMappingRow),
        [
            {
                "instance_uuid": r.instance_uuid,
                "cell_id": cells[uuid_of[r.cell_id]],
                "project_id": r.project_id,
                "user_id": r.user_id,
                "queued_for_delete": bool(r.queued_for_delete),
                "created_at": r.created_at or dt.datetime.now(dt.UTC).replace(tzinfo=None),
            }
            for r in rows
        ],
    )
    per_cell = Counter(uuid_of[r.cell_id] for r in rows)
    names: dict[str, str | None] = {
        cell_uuid: name
        for cell_uuid, name in session.execute(
            select(CellMappingRow.uuid, CellMappingRow.name).where(
                CellMappingRow.uuid.in_(per_cell), CellMappingRow.deleted == 0
            )
        )
    }
    for cell_uuid, count in sorted(per_cell.items()):
        audit.record(
            session,
            cell_uuid=cell_uuid,
            cell_name=names.get(cell_uuid),
            version=None,
            action=ACTION,
            actor=actor,
            changes={"instance_mappings_imported": (None, count)},
        )
    return len(rows)


def _instances_only_in_cellgate(
    app: App, engine: Engine, report: NovaImportReport, batch_size: int
) -> None:
    """Count cellgate's instance mappings Nova no longer (or never) had, batch by batch."""
    im = nova.instance_mappings
    last = 0
    while True:
        with app.api.session() as session:
            rows = session.execute(
                select(InstanceMappingRow.id, InstanceMappingRow.instance_uuid)
                .where(InstanceMappingRow.id > last)
                .order_by(InstanceMappingRow.id)
                .limit(batch_size)
            ).all()
        if not rows:
            return
        last = rows[-1].id
        uuids = [r.instance_uuid for r in rows]
        with engine.connect() as conn, conn.begin():
            known = set(
                conn.scalars(select(im.c.instance_uuid).where(im.c.instance_uuid.in_(uuids)))
            )
        for instance_uuid in uuids:
            if instance_uuid not in known:
                report.instances.only_here(instance_uuid)
