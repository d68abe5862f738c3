"""Move jobs: the durable record of an instance moving between cells.

A move touches three databases (the source cell, the target cell and the API
database) and no transaction spans them, so the mover commits each step in
the cells first and records it here after; a step recorded here has
happened. A mover killed between the two re-does the step, which is why each
step is idempotent (``cellgate.admin.move``). Steps, in order:

===============  ==================================================================
``recorded``     the job exists; actions on the instance get ``InstanceMoving``
``copied``       the target holds a *hidden* copy of every per-instance row
``verified``     row counts and content hash of the copy match the source
``flipped``      the instance mapping points at the target (a compare-and-set)
``source_hidden`` the source's rows are hidden; the grace period runs
``purged``       the source's rows are deleted: the job is finished
===============  ==================================================================

States: ``moving`` (steps up to ``flipped``), ``waiting`` (the grace period,
``--rollback`` possible), ``done``, ``failed`` (verification failed: the
instance stayed in its source), ``rolling_back`` (the same steps run back to
the source) and ``rolled_back``. ``active_instance`` is the instance's uuid
until the job finishes, so the unique constraint allows one unfinished move
per instance.
"""

from __future__ import annotations

import datetime as dt
import uuid as uuidlib
from dataclasses import dataclass
from typing import Any, Final

import sqlalchemy.exc
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from cellgate.apidb.schema import MoveBatchRow, MoveJobRow
from cellgate.dbtypes import utcnow
from cellgate.errors import InstanceMoving, MoveJobNotFound

STEPS: Final = ("recorded", "copied", "verified", "flipped", "source_hidden", "purged")
#: States in which actions on the instance are refused (its rows may be copied).
BLOCKING: Final = frozenset({"moving", "rolling_back"})
FINISHED: Final = frozenset({"done", "failed", "rolled_back"})


@dataclass(frozen=True)
class MoveJob:
    job_id: str
    instance_uuid: str
    source_cell: str
    target_cell: str
    state: str
    step: str
    rollback: bool
    attempts: int
    rows_copied: int | None
    content_hash: str | None
    verdict: str | None
    drain_id: str | None
    batch: int | None
    grace_seconds: int
    purge_after: dt.datetime | None
    created_at: dt.datetime
    updated_at: dt.datetime | None
    finished_at: dt.datetime | None

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    @property
    def blocking(self) -> bool:
        return self.state in BLOCKING

    def to_dict(self) -> dict[str, Any]:
        return {
            "job": self.job_id,
            "instance": self.instance_uuid,
            "source_cell": self.source_cell,
            "target_cell": self.target_cell,
            "state": self.state,
            "step": self.step,
            "rollback": self.rollback,
            "attempts": self.attempts,
            "rows_copied": self.rows_copied,
            "content_hash": self.content_hash,
            "verdict": self.verdict,
            "drain": self.drain_id,
            "batch": self.batch,
            "grace_seconds": self.grace_seconds,
            "purge_after": _iso(self.purge_after),
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at),
            "finished_at": _iso(self.finished_at),
        }


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() + "Z" if value else None


def _job(row: MoveJobRow) -> MoveJob:
    return MoveJob(
        job_id=row.job_id,
        instance_uuid=row.instance_uuid,
        source_cell=row.source_cell,
        target_cell=row.target_cell,
        state=row.state,
        step=row.step,
        rollback=row.rollback,
        attempts=row.attempts,
        rows_copied=row.rows_copied,
        content_hash=row.content_hash,
        verdict=row.verdict,
        drain_id=row.drain_id,
        batch=row.batch,
        grace_seconds=row.grace_seconds,
        purge_after=row.purge_after,
        created_at=row.created_at,
        updated_at=row.updated_at,
        finished_at=row.finished_at,
    )


def create_job(
    session: Session,
    *,
    instance_uuid: str,
    source_cell: str,
    target_cell: str,
    grace_seconds: int = 0,
    drain_id: str | None = None,
    batch: int | None = None,
) -> MoveJob:
    """Record a new move; :class:`InstanceMoving` if the instance has an unfinished one."""
    existing = unfinished_job(session, instance_uuid)
    if existing is not None:
        raise InstanceMoving(uuid=instance_uuid, job=existing.job_id, state=existing.state)
    row = MoveJobRow(
        job_id=str(uuidlib.uuid4()),
        instance_uuid=instance_uuid,
        active_instance=instance_uuid,
        source_cell=source_cell,
        target_cell=target_cell,
        state="moving",
        step="recorded",
        rollback=False,
        attempts=1,
        grace_seconds=grace_seconds,
        drain_id=drain_id,
        batch=batch,
        created_at=utcnow(),
    )
    try:
        with session.begin_nested():
            session.add(row)
    except sqlalchemy.exc.IntegrityError:  # a concurrent mover won the unique constraint
        raced = unfinished_job(session, instance_uuid)
        raise InstanceMoving(
            uuid=instance_uuid,
            job=raced.job_id if raced else "?",
            state=raced.state if raced else "moving",
        ) from None
    return _job(row)


def get_job(session: Session, job_id: str) -> MoveJob:
    row = session.scalars(select(MoveJobRow).where(MoveJobRow.job_id == job_id)).first()
    if row is None:
        raise MoveJobNotFound(job=job_id)
    return _job(row)


def unfinished_job(session: Session, instance_uuid: str) -> MoveJob | None:
    """The instance's unfinished move, if any (at most one, by the unique constraint)."""
    row = session.scalars(
        select(MoveJobRow).where(MoveJobRow.active_instance == instance_uuid)
    ).first()
    return _job(row) if row else None


def jobs_of_drain(session: Session, drain_id: str) -> list[MoveJob]:
    rows = session.scalars(
        select(MoveJobRow).where(MoveJobRow.drain_id == drain_id).order_by(MoveJobRow.id)
    ).all()
    return [_job(r) for r in rows]


def record(session: Session, job_id: str, **values: Any) -> MoveJob:
    """Write the job's new step/state (and any other columns); the caller commits.

    A finishing state clears ``active_instance``, which frees the instance
    for a later move.
    """
    now = utcnow()
    values["updated_at"] = now
    if values.get("state") in FINISHED:
        values["active_instance"] = None
        values["finished_at"] = now
    session.execute(update(MoveJobRow).where(MoveJobRow.job_id == job_id).values(**values))
    return get_job(session, job_id)


@dataclass(frozen=True)
class MoveBatch:
    drain_id: str
    batch: int
    canary: bool
    source_cell: str
    target_cell: str
    size: int
    moved: int
    state: str
    verdict: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "drain": self.drain_id,
            "batch": self.batch,
            "canary": self.canary,
            "source_cell": self.source_cell,
            "target_cell": self.target_cell,
            "size": self.size,
            "moved": self.moved,
            "state": self.state,
            "verdict": self.verdict,
        }


def _batch(row: MoveBatchRow) -> MoveBatch:
    return MoveBatch(
        drain_id=row.drain_id,
        batch=row.batch,
        canary=row.canary,
        source_cell=row.source_cell,
        target_cell=row.target_cell,
        size=row.size,
        moved=row.moved,
        state=row.state,
        verdict=row.verdict,
    )


def start_batch(
    session: Session,
    *,
    drain_id: str,
    batch: int,
    canary: bool,
    source_cell: str,
    target_cell: str,
    size: int,
) -> MoveBatch:
    row = MoveBatchRow(
        drain_id=drain_id,
        batch=batch,
        canary=canary,
        source_cell=source_cell,
        target_cell=target_cell,
        size=size,
        moved=0,
        state="running",
        created_at=utcnow(),
    )
    session.add(row)
    session.flush()
    return _batch(row)


def finish_batch(
    session: Session, drain_id: str, batch: int, *, state: str, moved: int, verdict: str
) -> None:
    session.execute(
        update(MoveBatchRow)
        .where(MoveBatchRow.drain_id == drain_id, MoveBatchRow.batch == batch)
        .values(state=state, moved=moved, verdict=verdict, finished_at=utcnow())
    )


def batches_of_drain(session: Session, drain_id: str) -> list[MoveBatch]:
    rows = session.scalars(
        select(MoveBatchRow).where(MoveBatchRow.drain_id == drain_id).order_by(MoveBatchRow.batch)
    ).all()
    return [_batch(r) for r in rows]
