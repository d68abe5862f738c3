"""``instance move``: move one instance's rows to another cell, step by durable step.

There is no transaction across two cell databases and the API database, so
a move is a sequence of steps, each committed where it acts and then
recorded in the API database's ``move_job`` row (:mod:`cellgate.apidb.moves`).
Every step is idempotent, so a mover killed anywhere is finished by running
it again (``--resume JOB``, or the same ``move`` command), from the recorded
step:

1. **record** the job; from now on the API refuses actions on the instance
   (``InstanceMoving``, HTTP 409) and ``show`` keeps answering from the source.
2. **copy** every per-instance row (``PER_INSTANCE``) into the target, hidden;
   a re-run replaces a partial copy.
3. **verify**: row count and content hash of the copy equal the source's.
4. **flip**, with the source's rows locked: hash both sides again, show the
   target's copy, then move the mapping by compare-and-set (the version
   check: it only moves if it still names the source) and record the step in
   the same API transaction, then hide the source. The mapping is the one
   truth of where the instance is: ``show`` follows it, and it always names a
   cell whose row is visible. For the few milliseconds between the target's
   commit and the source's, both rows are visible; the service's listing
   keeps one row per uuid.
5. **hide the source** (recorded), then, after the grace period,
6. **purge**: delete the source's rows. ``--rollback`` is possible until then:
   it runs the same steps back, copying the target's *current* rows, so
   nothing done to the instance since the flip is lost.

A copy that does not match (step 3 or 4) stops the move: the copy is removed,
the job is ``failed`` with the reason, and the instance stays, untouched and
visible, in its source (:class:`~cellgate.errors.MoveVerifyFailed`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from cellgate.apidb import instances as mapping_db
from cellgate.apidb import moves
from cellgate.apidb.mappings import CellMapping, get_cell, normalize_uuid
from cellgate.apidb.moves import MoveJob
from cellgate.app import App
from cellgate.celldb import rows
from cellgate.context import RequestContext
from cellgate.dbtypes import utcnow
from cellgate.errors import (
    ConfigError,
    InstanceMoving,
    InstanceNotFound,
    MoveError,
    MoveVerifyFailed,
)

#: Seconds the source's hidden rows are kept after a move (``--rollback`` until then).
DEFAULT_GRACE: Final = 3600

#: Called with each event of a move (``{"event": "step", "job": ..., ...}``).
Progress = Callable[[dict[str, Any]], None]


def _quiet(_event: dict[str, Any]) -> None:
    return None


class _Mismatch(Exception):
    """Raised inside a step when the copy is not the source's; turned into a failed job."""


@dataclass(frozen=True)
class _Cells:
    """The two cells of a job in the direction it is running (swapped for a rollback)."""

    src: CellMapping
    dst: CellMapping
    ctx: RequestContext

    def src_ctx(self) -> RequestContext:
        return self.ctx.for_cell(self.src)

    def dst_ctx(self) -> RequestContext:
        return self.ctx.for_cell(self.dst)


def move_instance(
    app: App,
    instance: str,
    *,
    to: str,
    grace: int = DEFAULT_GRACE,
    on_progress: Progress = _quiet,
    drain_id: str | None = None,
    batch: int | None = None,
) -> MoveJob:
    """Move ``instance`` (a uuid) to cell ``to`` (name or uuid); the job as it ended.

    An unfinished move of the same instance to the same cell is resumed
    rather than refused, so running the same command again after a crash
    finishes it. With ``grace > 0`` the job ends ``waiting``: the source's
    hidden rows stay until :func:`resume_move` runs after ``purge_after``.
    """
    app.api.require_current()
    if grace < 0:
        raise ConfigError(f"the grace period must be 0 or more seconds, not {grace}")
    uuid = normalize_uuid(instance)
    if uuid is None:
        raise InstanceNotFound(uuid=instance)
    with app.api.session() as session:
        mapping = mapping_db.get_mapping(session, uuid)
        if mapping is None or mapping.cell_uuid is None or mapping.queued_for_delete:
            raise InstanceNotFound(uuid=instance)
        target = get_cell(session, to)
        existing = moves.unfinished_job(session, uuid)
        if existing is not None:
            if existing.target_cell != target.uuid or existing.rollback:
                raise InstanceMoving(uuid=uuid, job=existing.job_id, state=existing.state)
            job = existing
        else:
            _check_target(target, mapping.cell_uuid, uuid)
            job = moves.create_job(
                session,
                instance_uuid=uuid,
                source_cell=mapping.cell_uuid,
                target_cell=target.uuid,
                grace_seconds=grace,
                drain_id=drain_id,
                batch=batch,
            )
    if existing is not None:
        return resume_move(app, job.job_id, on_progress=on_progress)
    on_progress(_event("started", job))
    return _run(app, job, on_progress)


def _check_target(target: CellMapping, source_uuid: str, uuid: str) -> None:
    if target.is_cell0:
        raise ConfigError("cell0 keeps failed builds only: an instance cannot move there")
    if target.disabled:
        raise ConfigError(f"cell {target.label} is disabled: enable it before moving to it")
    if target.uuid == source_uuid:
        raise ConfigError(f"instance {uuid} is already in cell {target.label}")


def resume_move(app: App, job_id: str, *, on_progress: Progress = _quiet) -> MoveJob:
    """Carry an unfinished job on from its recorded step (a finished one is returned)."""
    app.api.require_current()
    with app.api.session() as session:
        job = moves.get_job(session, job_id)
        if not job.finished:
            job = moves.record(session, job_id, attempts=job.attempts + 1)
    on_progress(_event("resumed", job))
    return _run(app, job, on_progress)


def show_move(app: App, job_id: str) -> MoveJob:
    with app.api.session() as session:
        return moves.get_job(session, job_id)


def rollback_move(app: App, job_id: str, *, on_progress: Progress = _quiet) -> MoveJob:
    """Undo a move whose source rows still exist: the instance ends in its source cell.

    Before the flip, the copy is removed. After it, the same steps run back
    from the target to the source, copying the target's current rows. A job
    already ``done`` (the source purged) cannot be rolled back: move the
    instance back instead.
    """
    app.api.require_current()
    with app.api.session() as session:
        job = moves.get_job(session, job_id)
    if job.state == "done":
        raise MoveError(
            f"move job {job_id} is done: the source's rows are deleted; "
            "move the instance back with a new move instead"
        )
    if job.finished or job.rollback:
        return job if job.finished else _run(app, job, on_progress)
    cells = _cells(app, job)
    if _before_flip(job):
        _remove_copy(app, job, cells)
        return _record(app, job, on_progress, state="rolled_back")
    if job.step == "flipped":
        job = _hide_source(app, job, cells, on_progress)
    job = _record(app, job, on_progress, rollback=True, state="rolling_back", step="recorded")
    return _run(app, job, on_progress)


# -- the steps ----------------------------------------------------------------------


def _run(app: App, job: MoveJob, on_progress: Progress) -> MoveJob:
    while not job.finished:
        cells = _cells(app, job)
        try:
            if job.step == "recorded":
                job = _copy(app, job, cells, on_progress)
            elif job.step == "copied":
                job = _verify(app, job, cells, on_progress)
            elif job.step == "verified":
                job = _flip(app, job, cells, on_progress)
            elif job.step == "flipped":
                job = _hide_source(app, job, cells, on_progress)
            elif job.step == "source_hidden":
                if job.purge_after is not None and job.purge_after > utcnow():
                    return job  # waiting out the grace period
                job = _purge(app, job, cells, on_progress)
            else:  # pragma: no cover - the steps are a closed set
                raise AssertionError(f"unknown step {job.step!r}")
        except _Mismatch as exc:
            _remove_copy(app, job, cells)
            state = "failed"
            verdict = f"rollback failed: {exc}" if job.rollback else str(exc)
            job = _record(app, job, on_progress, state=state, verdict=verdict)
            raise MoveVerifyFailed(
                uuid=job.instance_uuid, job=job.job_id, reason=str(exc)
            ) from None
    return job


def _copy(app: App, job: MoveJob, cells: _Cells, on_progress: Progress) -> MoveJob:
    uuid = job.instance_uuid
    _refuse_if_mapped_to(app, job, cells.dst)
    with app.db.session(cells.src_ctx()) as src:
        found = rows.read_rows(src, uuid)
    count, content = rows.digest(found)
    if not any(found.values()):
        raise _Mismatch(f"cell {cells.src.label} has no rows of the instance")
    with app.db.session(cells.dst_ctx()) as dst:
        rows.write_copy(dst, uuid, found)
    return _record(app, job, on_progress, step="copied", rows_copied=count, content_hash=content)


def _verify(app: App, job: MoveJob, cells: _Cells, on_progress: Progress) -> MoveJob:
    with app.db.session(cells.src_ctx()) as src:
        source = rows.read_rows(src, job.instance_uuid)
    with app.db.session(cells.dst_ctx()) as dst:
        copy = rows.read_rows(dst, job.instance_uuid)
    _compare(job, cells.src, source)
    _compare(job, cells.dst, copy)
    return _record(app, job, on_progress, step="verified", verdict="copy verified")


def _compare(job: MoveJob, cell: CellMapping, found: rows.InstanceRows) -> None:
    count, content = rows.digest(found)
    if count != job.rows_copied:
        raise _Mismatch(f"cell {cell.label} has {count} rows, {job.rows_copied} were copied")
    if content != job.content_hash:
        raise _Mismatch(f"the content hash of cell {cell.label}'s rows differs from the copy's")


def _flip(app: App, job: MoveJob, cells: _Cells, on_progress: Progress) -> MoveJob:
    """Show the copy, move the mapping, hide the source, with the source locked throughout."""
    uuid = job.instance_uuid
    with app.db.session(cells.src_ctx()) as src:
        _compare(job, cells.src, rows.read_rows(src, uuid, for_update=True))
        with app.db.session(cells.dst_ctx()) as dst:
            _compare(job, cells.dst, rows.read_rows(dst, uuid, for_update=True))
            rows.set_hidden(dst, uuid, False)
        with app.api.session() as session:
            if not mapping_db.flip_mapping(
                session, uuid, from_cell=cells.src.uuid, to_cell=cells.dst.uuid
            ):
                raise _Mismatch("its mapping no longer points at the source (deleted or moved)")
            flipped = moves.record(session, job.job_id, step="flipped")
        rows.set_hidden(src, uuid, True)
    # Reported once the source is hidden and unlocked: a slow callback must
    # not hold the source's rows (on SQLite, its whole database) locked.
    app.locator.forget(uuid)
    on_progress(_event("step", flipped))
    return _source_hidden(app, flipped, on_progress)


def _hide_source(app: App, job: MoveJob, cells: _Cells, on_progress: Progress) -> MoveJob:
    """After a flip recorded but not finished: the target shown, the source hidden."""
    with app.db.session(cells.dst_ctx()) as dst:
        rows.set_hidden(dst, job.instance_uuid, False)
    with app.db.session(cells.src_ctx()) as src:
        rows.set_hidden(src, job.instance_uuid, True)
    app.locator.forget(job.instance_uuid)
    return _source_hidden(app, job, on_progress)


def _source_hidden(app: App, job: MoveJob, on_progress: Progress) -> MoveJob:
    grace = 0 if job.rollback else job.grace_seconds
    purge_after = utcnow() + dt.timedelta(seconds=grace)
    state = "rolling_back" if job.rollback else "waiting"
    return _record(
        app, job, on_progress, step="source_hidden", state=state, purge_after=purge_after
    )


def _purge(app: App, job: MoveJob, cells: _Cells, on_progress: Progress) -> MoveJob:
    """Delete the source's rows: never those of the cell the mapping names, never visible ones."""
    uuid = job.instance_uuid
    _refuse_if_mapped_to(app, job, cells.src)
    with app.db.session(cells.src_ctx()) as src:
        if rows.visibility(src, uuid) is True:
            raise MoveError(f"move job {job.job_id}: the source's row is visible; not deleting it")
        rows.delete_rows(src, uuid)
    state = "rolled_back" if job.rollback else "done"
    return _record(app, job, on_progress, step="purged", state=state)


def _remove_copy(app: App, job: MoveJob, cells: _Cells) -> None:
    """Delete the destination's copy (a failed or rolled-back move), unless it is the instance."""
    _refuse_if_mapped_to(app, job, cells.dst)
    with app.db.session(cells.dst_ctx()) as dst:
        rows.delete_rows(dst, job.instance_uuid)


def _refuse_if_mapped_to(app: App, job: MoveJob, cell: CellMapping) -> None:
    """The guard before every delete or overwrite: the mapping's cell holds the instance."""
    with app.api.session() as session:
        mapping = mapping_db.get_mapping(session, job.instance_uuid)
    if mapping is not None and mapping.cell_uuid == cell.uuid:
        raise MoveError(
            f"move job {job.job_id}: instance {job.instance_uuid} is mapped to cell "
            f"{cell.label}; its rows there are the instance and are not overwritten"
        )


# -- helpers ------------------------------------------------------------------------


def _before_flip(job: MoveJob) -> bool:
    return job.step in ("recorded", "copied", "verified")


def _cells(app: App, job: MoveJob) -> _Cells:
    ctx = RequestContext(request_id=f"req-move-{job.job_id}")
    source = app.cells.get(ctx, job.source_cell)
    target = app.cells.get(ctx, job.target_cell)
    if job.rollback:
        return _Cells(target, source, ctx)
    return _Cells(source, target, ctx)


def _record(app: App, job: MoveJob, on_progress: Progress, **values: Any) -> MoveJob:
    with app.api.session() as session:
        done = moves.record(session, job.job_id, **values)
    on_progress(_event("step", done))
    return done


def _event(kind: str, job: MoveJob) -> dict[str, Any]:
    return {
        "event": kind,
        "job": job.job_id,
        "instance": job.instance_uuid,
        "step": job.step,
        "state": job.state,
        "rollback": job.rollback,
    }
