"""``cell drain``: move every instance out of a cell, in recorded batches.

A drain is a series of :func:`~cellgate.admin.move.move_instance` calls, one
instance at a time, grouped into batches: a *canary* batch of ``canary``
instances first, then waves of ``wave_size``. Each batch is a ``move_batch``
row whose verdict is written when it ends, so an operator (or ``--resume``)
can see how far a drain got and why it stopped. The first move whose copy
fails verification stops the drain: that instance stays intact in the source
cell, the batch is ``failed``, and no further batch starts. ``max_rate``
bounds the instances moved per second, so a drain does not saturate the
cells' databases while they serve requests.
"""

from __future__ import annotations

import time
import uuid as uuidlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from cellgate.admin.move import DEFAULT_GRACE, Progress, move_instance, resume_move
from cellgate.apidb import instances as mapping_db
from cellgate.apidb import moves
from cellgate.apidb.mappings import CellMapping, get_cell
from cellgate.apidb.moves import MoveBatch
from cellgate.app import App
from cellgate.errors import ConfigError, MoveJobNotFound, MoveVerifyFailed

DEFAULT_WAVE_SIZE: Final = 10
DEFAULT_CANARY: Final = 1


def _quiet(_event: dict[str, Any]) -> None:
    return None


@dataclass(frozen=True)
class DrainReport:
    """How a drain ended: its batches, how many instances moved, and what stopped it."""

    drain_id: str
    source: CellMapping
    target: CellMapping
    dry_run: bool
    batches: list[MoveBatch] = field(default_factory=list)
    planned: list[list[str]] = field(default_factory=list)
    failure: MoveVerifyFailed | None = None

    @property
    def moved(self) -> int:
        return sum(b.moved for b in self.batches)

    def to_dict(self, describe: Callable[[BaseException], str] = str) -> dict[str, Any]:
        return {
            "drain": self.drain_id,
            "source_cell": self.source.label,
            "target_cell": self.target.label,
            "dry_run": self.dry_run,
            "moved": self.moved,
            "batches": [b.to_dict() for b in self.batches],
            "planned": self.planned,
            "status": "failed" if self.failure else ("planned" if self.dry_run else "ok"),
            "error": describe(self.failure) if self.failure else None,
        }


def drain_cell(
    app: App,
    cell: str,
    *,
    to: str,
    wave_size: int = DEFAULT_WAVE_SIZE,
    canary: int = DEFAULT_CANARY,
    dry_run: bool = False,
    max_rate: float | None = None,
    grace: int = DEFAULT_GRACE,
    resume: str | None = None,
    on_progress: Progress = _quiet,
) -> DrainReport:
    """Move every live instance of ``cell`` to ``to``; see the module docstring.

    ``resume`` is the id of an earlier drain: its unfinished moves are
    finished first, then the drain goes on with new batches under the same id.
    """
    app.api.require_current()
    if wave_size < 1 or canary < 0:
        raise ConfigError("--wave-size must be at least 1 and --canary at least 0")
    if max_rate is not None and max_rate <= 0:
        raise ConfigError("--max-rate must be a positive number of instances per second")
    with app.api.session() as session:
        source = get_cell(session, cell)
        target = get_cell(session, to)
        if source.uuid == target.uuid:
            raise ConfigError(f"cannot drain cell {source.label} into itself")
        done: list[MoveBatch] = []
        if resume is not None:
            done = moves.batches_of_drain(session, resume)
            unfinished = [j for j in moves.jobs_of_drain(session, resume) if not j.finished]
            if not done:
                raise MoveJobNotFound(job=resume)
            if (done[0].source_cell, done[0].target_cell) != (source.uuid, target.uuid):
                raise ConfigError(f"drain {resume} moves between other cells")
        if dry_run:
            pending = mapping_db.live_in_cell(session, source.uuid)
    drain_id = resume or str(uuidlib.uuid4())
    if dry_run:
        return DrainReport(drain_id, source, target, True, done, _plan(pending, wave_size, canary))
    report = DrainReport(drain_id, source, target, False, list(done))
    throttle = _Throttle(max_rate)
    if resume is not None:
        for job in unfinished:
            throttle.wait()
            try:
                resume_move(app, job.job_id, on_progress=on_progress)
            except MoveVerifyFailed as exc:
                return _with_failure(report, exc)
        report = _close_interrupted(app, report)
    with app.api.session() as session:
        total = len(mapping_db.live_in_cell(session, source.uuid))
    on_progress({"event": "drain", "drain": drain_id, "total": total})
    number = (done[-1].batch + 1) if done else 0
    first = not done and canary > 0
    while True:
        size = canary if first else wave_size
        with app.api.session() as session:
            batch = mapping_db.live_in_cell(session, source.uuid, limit=size)
            if not batch:
                break
            moves.start_batch(
                session,
                drain_id=drain_id,
                batch=number,
                canary=first,
                source_cell=source.uuid,
                target_cell=target.uuid,
                size=len(batch),
            )
        on_progress({"event": "batch", "drain": drain_id, "batch": number, "size": len(batch)})
        moved, failure = _run_batch(
            app, batch, target, drain_id, number, grace, throttle, on_progress
        )
        state = "failed" if failure else "ok"
        verdict = f"stopped: {failure}" if failure else f"{moved} moved and verified"
        with app.api.session() as session:
            moves.finish_batch(
                session, drain_id, number, state=state, moved=moved, verdict=verdict
            )
            report.batches[:] = moves.batches_of_drain(session, drain_id)
        on_progress(
            {
                "event": "batch_done",
                "drain": drain_id,
                "batch": number,
                "state": state,
                "moved": moved,
            }
        )
        if failure is not None:
            return _with_failure(report, failure)
        number += 1
        first = False
    return report


def _run_batch(
    app: App,
    batch: list[str],
    target: CellMapping,
    drain_id: str,
    number: int,
    grace: int,
    throttle: _Throttle,
    on_progress: Progress,
) -> tuple[int, MoveVerifyFailed | None]:
    moved = 0
    for uuid in batch:
        throttle.wait()
        try:
            move_instance(
                app,
                uuid,
                to=target.uuid,
                grace=grace,
                on_progress=on_progress,
                drain_id=drain_id,
                batch=number,
            )
        except MoveVerifyFailed as exc:
            return moved, exc
        moved += 1
    return moved, None


def _close_interrupted(app: App, report: DrainReport) -> DrainReport:
    """Give a verdict to the batches a killed drain left ``running`` (their moves are done)."""
    with app.api.session() as session:
        jobs = moves.jobs_of_drain(session, report.drain_id)
        for batch in report.batches:
            if batch.state != "running":
                continue
            mine = [j for j in jobs if j.batch == batch.batch]
            moved = sum(j.state in ("done", "waiting") for j in mine)
            moves.finish_batch(
                session,
                report.drain_id,
                batch.batch,
                state="interrupted",
                moved=moved,
                verdict=f"interrupted; {moved} moved and verified (finished by --resume)",
            )
        batches = moves.batches_of_drain(session, report.drain_id)
    return DrainReport(report.drain_id, report.source, report.target, False, batches)


def _with_failure(report: DrainReport, failure: MoveVerifyFailed) -> DrainReport:
    return DrainReport(
        report.drain_id,
        report.source,
        report.target,
        report.dry_run,
        report.batches,
        report.planned,
        failure,
    )


def _plan(pending: list[str], wave_size: int, canary: int) -> list[list[str]]:
    plan: list[list[str]] = []
    rest = list(pending)
    if canary > 0 and rest:
        plan.append(rest[:canary])
        rest = rest[canary:]
    while rest:
        plan.append(rest[:wave_size])
        rest = rest[wave_size:]
    return plan


class _Throttle:
    """At most ``rate`` calls of :meth:`wait` per second (no limit with ``None``)."""

    def __init__(self, rate: float | None) -> None:
        self._interval = 1.0 / rate if rate else 0.0
        self._next = time.monotonic()

    def wait(self) -> None:
        if not self._interval:
            return
        now = time.monotonic()
        if now < self._next:
            time.sleep(self._next - now)
        self._next = max(now, self._next) + self._interval
