"""Queries on one cell's database. Each takes a ``Session`` already on that cell.

Nothing here knows which cell it is in: routing happens before (``app.db
.session(ctx)``), so the same functions serve every cell.

**Soft-deleted rows are left out by default.** A deleted instance keeps its
row (``deleted`` = its id, as in Nova) until ``db archive-deleted`` moves it
away, and an instance being moved has a *hidden* copy in its target cell.
Every function here reads live, visible rows only, unless the caller opts
in with ``include_deleted=True`` (soft-deleted rows too; hidden copies are
never the instance and are never returned). A query written by hand should
start from :func:`select_instances`, which applies the same default: a bare
``select(InstanceRow)`` sees deleted rows. The tasks that must see deleted
and hidden rows, archive/purge (``celldb.archive``), moves (``celldb.rows``)
and the upgrade checks, build their own statements on purpose and say so.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import ColumnElement, Select, func, select, update
from sqlalchemy.orm import Session

from cellgate import keyset
from cellgate.celldb.schema import InstanceRow, ServiceRow
from cellgate.celldb.versions import RPC_VERSION, SERVICE_VERSION, rpc_version_for
from cellgate.dbtypes import utcnow
from cellgate.keyset import SortKey

#: Sort keys a listing accepts, each a column of ``instances``.
SORT_KEYS: Final = ("created_at", "updated_at", "name", "uuid")

_SORT_COLUMNS: Final[dict[str, ColumnElement[Any]]] = {
    name: getattr(InstanceRow, name).expression for name in SORT_KEYS
}


@dataclass(frozen=True)
class Instance:
    uuid: str
    name: str
    project_id: str
    user_id: str | None
    host: str | None
    vm_state: str
    task_state: str | None
    created_at: dt.datetime | None
    updated_at: dt.datetime | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "uuid": self.uuid,
            "name": self.name,
            "project_id": self.project_id,
            "user_id": self.user_id,
            "host": self.host,
            "status": self.vm_state,
            "task_state": self.task_state,
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at),
        }

    def sort_values(self, keys: Sequence[SortKey]) -> tuple[Any, ...]:
        """This instance's values for ``keys`` (see :func:`list_instances`)."""
        return tuple(getattr(self, k.name) for k in keys)


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() + "Z" if value else None


def _instance(row: InstanceRow) -> Instance:
    return Instance(
        uuid=row.uuid,
        name=row.name,
        project_id=row.project_id,
        user_id=row.user_id,
        host=row.host,
        vm_state=row.vm_state,
        task_state=row.task_state,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def add_instance(
    session: Session, *, uuid: str, name: str, project_id: str, user_id: str | None
) -> Instance:
    row = InstanceRow(
        uuid=uuid,
        name=name,
        project_id=project_id,
        user_id=user_id,
        vm_state="building",
        task_state="scheduling",
        created_at=utcnow(),
        deleted=0,
    )
    session.add(row)
    session.flush()
    return _instance(row)


def _live(*, include_deleted: bool = False) -> tuple[ColumnElement[bool], ...]:
    """Not deleted (unless asked) and not hidden: a hidden row is a move's copy."""
    visible = InstanceRow.hidden.is_(False)
    return (visible,) if include_deleted else (InstanceRow.deleted == 0, visible)


def select_instances(*columns: ColumnElement[Any], include_deleted: bool = False) -> Select[Any]:
    """``SELECT`` on ``instances`` (whole rows, or ``columns``), live rows only by default.

    The safe start for a hand-written query (see the module docstring):
    ``session.scalars(select_instances(InstanceRow.name))``.
    """
    stmt: Select[Any] = select(*columns) if columns else select(InstanceRow)
    if columns:
        stmt = stmt.select_from(InstanceRow)
    return stmt.where(*_live(include_deleted=include_deleted))


def get_instance(
    session: Session, uuid: str, *, project_id: str | None, include_deleted: bool = False
) -> Instance | None:
    """The live instance ``uuid``; ``None`` if missing or (with a project) not the project's.

    A hidden row (the copy of an instance moving here, or what is left of one
    that moved away) answers ``None``, so a caller routed by a stale mapping
    looks the instance up again. ``include_deleted`` also finds a
    soft-deleted row (``vm_state`` ``deleted``).
    """
    stmt = select(InstanceRow).where(
        InstanceRow.uuid == uuid, *_live(include_deleted=include_deleted)
    )
    if project_id is not None:
        stmt = stmt.where(InstanceRow.project_id == project_id)
    row = session.scalars(stmt).first()
    return _instance(row) if row else None


def with_tiebreak(keys: Sequence[SortKey]) -> tuple[SortKey, ...]:
    """``keys`` ending in ``uuid``, the unique key that makes page boundaries exact."""
    if keys and keys[-1].name == "uuid":
        return tuple(keys)
    return (*(k for k in keys if k.name != "uuid"), SortKey("uuid"))


def list_instances(
    session: Session,
    *,
    project_id: str | None,
    keys: Sequence[SortKey],
    limit: int,
    after: Sequence[Any] | None = None,
    include_deleted: bool = False,
) -> list[Instance]:
    """Live, visible instances sorted by ``keys``, strictly after the values ``after``.

    ``keys`` must end in ``uuid`` (:func:`with_tiebreak`). The order is
    :mod:`cellgate.keyset`'s, the same on every backend, so pages of many
    cells merge correctly. ``include_deleted`` lists soft-deleted rows too.
    """
    stmt = select_instances(include_deleted=include_deleted)
    if project_id is not None:
        stmt = stmt.where(InstanceRow.project_id == project_id)
    if after is not None:
        stmt = stmt.where(keyset.after(_SORT_COLUMNS, keys, after))
    stmt = stmt.order_by(*keyset.order_by(_SORT_COLUMNS, keys)).limit(limit)
    return [_instance(r) for r in session.scalars(stmt)]


def count_instances(session: Session, *, include_deleted: bool = False) -> int:
    """How many live instances the cell holds (soft-deleted ones too if asked)."""
    stmt = (
        select(func.count())
        .select_from(InstanceRow)
        .where(*_live(include_deleted=include_deleted))
    )
    return session.scalar(stmt) or 0


def set_state(
    session: Session,
    uuid: str,
    *,
    vm_state: str,
    task_state: str | None = None,
    host: str | None = None,
    only_from: str | None = None,
) -> Instance | None:
    """Set the live instance's state; ``None`` if it is missing, deleted or hidden.

    With ``only_from``, only an instance in that state changes (``None``
    otherwise): a build that arrives after the reconciler gave up on it
    (``error``), or a second delivery of one, changes nothing.

    One ``UPDATE ... WHERE`` on the row's liveness, not a read then a write:
    a move that hid the row after a worker read it wins (every backend
    re-checks the ``WHERE`` of an ``UPDATE`` on the latest committed row), so
    no change lands on a copy that is no longer the instance.
    """
    values: dict[str, Any] = {"vm_state": vm_state, "task_state": task_state}
    if host is not None:
        values["host"] = host
    values["updated_at"] = utcnow()
    where = [InstanceRow.uuid == uuid, *_live()]
    if only_from is not None:
        where.append(InstanceRow.vm_state == only_from)
    result = session.execute(update(InstanceRow).where(*where).values(**values))
    if not getattr(result, "rowcount", 0):
        return None
    row = session.scalars(select(InstanceRow).where(InstanceRow.uuid == uuid)).first()
    if row is None:
        return None
    session.refresh(row)
    return _instance(row)


def fail_stuck_builds(session: Session, *, created_before: dt.datetime) -> list[str]:
    """Mark every live instance still ``building`` that was created before the cut-off
    ``error``; return their uuids (sorted).

    One ``UPDATE ... WHERE vm_state = 'building'`` per found uuid set: a build
    that lands meanwhile wins (its row is no longer ``building``), and is not
    reported.
    """
    stuck = list(
        session.scalars(
            select(InstanceRow.uuid)
            .where(
                *_live(),
                InstanceRow.vm_state == "building",
                InstanceRow.created_at < created_before,
            )
            .order_by(InstanceRow.uuid)
        )
    )
    failed = []
    for uuid in stuck:
        result = session.execute(
            update(InstanceRow)
            .where(InstanceRow.uuid == uuid, *_live(), InstanceRow.vm_state == "building")
            .values(vm_state="error", task_state=None, updated_at=utcnow())
        )
        if getattr(result, "rowcount", 0):
            failed.append(uuid)
    return failed


def soft_delete_instance(session: Session, uuid: str) -> bool:
    now = utcnow()
    result = session.execute(
        update(InstanceRow)
        .where(InstanceRow.uuid == uuid, *_live())
        .values(deleted=InstanceRow.id, deleted_at=now, vm_state="deleted", updated_at=now)
    )
    return bool(getattr(result, "rowcount", 0))


def hard_delete_instance(session: Session, uuid: str) -> None:
    """Undo :func:`add_instance` (compensation when the API write fails)."""
    session.query(InstanceRow).filter(InstanceRow.uuid == uuid).delete()


@dataclass(frozen=True)
class Service:
    host: str
    binary: str
    topic: str | None
    last_seen_at: dt.datetime | None
    disabled: bool

    def is_up(self, now: dt.datetime, down_after: float) -> bool:
        return (
            self.last_seen_at is not None
            and (now - self.last_seen_at).total_seconds() <= down_after
        )


def heartbeat(
    session: Session,
    *,
    host: str,
    binary: str,
    topic: str,
    version: int = SERVICE_VERSION,
    rpc_version: str = RPC_VERSION,
) -> None:
    """Create the service row on first call, then bump its counter and timestamp.

    Every beat also writes the worker's service and RPC versions
    (cellgate.celldb.versions): a worker upgraded in place reports its new
    versions at its next beat.
    """
    row = session.scalars(
        select(ServiceRow).where(
            ServiceRow.host == host, ServiceRow.binary == binary, ServiceRow.deleted == 0
        )
    ).first()
    now = utcnow()
    if row is None:
        session.add(
            ServiceRow(
                host=host,
                binary=binary,
                topic=topic,
                last_seen_at=now,
                deleted=0,
                report_count=1,
                version=version,
                rpc_version=rpc_version,
            )
        )
    else:
        row.last_seen_at = now
        row.report_count += 1
        row.version = version
        row.rpc_version = rpc_version
    session.flush()


@dataclass(frozen=True)
class WorkerVersion:
    """One live service row's versions (``rpc_version`` derived if the row predates it)."""

    host: str
    binary: str
    version: int
    rpc_version: str


def live_worker_versions(
    session: Session, *, now: dt.datetime, down_after: float
) -> list[WorkerVersion]:
    """The versions of every service that heartbeated within ``down_after`` seconds."""
    rows = session.execute(
        select(
            ServiceRow.host,
            ServiceRow.binary,
            ServiceRow.version,
            ServiceRow.rpc_version,
            ServiceRow.last_seen_at,
        ).where(ServiceRow.deleted == 0)  # disabled ones too: they still consume
    )
    out = []
    for host, binary, version, rpc_version, seen in rows:
        if seen is None or (now - seen).total_seconds() > down_after:
            continue
        out.append(WorkerVersion(host, binary, version, rpc_version or rpc_version_for(version)))
    return out


def list_services(session: Session) -> list[Service]:
    rows = session.scalars(select(ServiceRow).where(ServiceRow.deleted == 0)).all()
    return [Service(r.host, r.binary, r.topic, r.last_seen_at, r.disabled) for r in rows]
