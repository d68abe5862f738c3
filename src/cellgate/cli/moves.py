"""``cellgate instance move`` and ``cellgate cell drain``: instances between cells.

Both wrap :mod:`cellgate.admin.move` / :mod:`cellgate.admin.drain`. Progress
goes to stderr as one line per step, or, with ``--json``, to stdout as JSON
lines (one object per event, the last one the result), so a script can
follow a long drain as it goes. ``cell drain`` joins the ``cell`` group at
the end of :mod:`cellgate.cli.cells`.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from cellgate import admin
from cellgate.admin.drain import DEFAULT_CANARY, DEFAULT_WAVE_SIZE
from cellgate.admin.move import DEFAULT_GRACE
from cellgate.apidb.moves import MoveJob
from cellgate.cli.exit_codes import ExitCode, exit_code_for
from cellgate.cli.hints import error_text
from cellgate.cli.render import emit_fields, progress
from cellgate.cli.state import CliState, pass_state
from cellgate.errors import MoveVerifyFailed
from cellgate.urls import redact

json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print progress and the result as JSON lines."
)
grace_option = click.option(
    "--grace",
    type=click.IntRange(min=0),
    default=DEFAULT_GRACE,
    show_default=True,
    metavar="SECONDS",
    help="Keep the source's hidden rows this long (--rollback until then); 0 deletes them at once.",
)


def _json_line(data: dict[str, Any]) -> None:
    click.echo(json.dumps(data, sort_keys=True, default=str))


def _reporter(as_json: bool) -> Any:
    def report(event: dict[str, Any]) -> None:
        if as_json:
            _json_line(event)
            return
        label = f"{event['event']}: job {event['job']} {event['step']} ({event['state']})"
        progress(f"{label}{' [rollback]' if event.get('rollback') else ''}")

    return report


@click.group()
def instance() -> None:
    """Operate on instances across cells (move them between cells)."""


@instance.command("move")
@click.argument("uuid", required=False, metavar="UUID")
@click.option("--to", "target", metavar="NAME|UUID", help="The cell to move the instance to.")
@click.option("--resume", metavar="JOB", help="Carry an interrupted move on from its last step.")
@click.option("--rollback", metavar="JOB", help="Undo a move whose source is not purged yet.")
@grace_option
@json_option
@pass_state
def instance_move(
    state: CliState,
    uuid: str | None,
    target: str | None,
    resume: str | None,
    rollback: str | None,
    grace: int,
    as_json: bool,
) -> None:
    """Move an instance's rows to another cell, then flip its mapping.

    Each step is recorded in the API database; a move that was killed is
    finished with --resume JOB (or by running the same command again).
    Exit 7 if the copy did not match its source: the instance then stays,
    intact, in its source cell.
    """
    chosen = [uuid is not None, resume is not None, rollback is not None]
    if sum(chosen) != 1 or (uuid is not None) != (target is not None):
        raise click.UsageError("give UUID --to CELL, or --resume JOB, or --rollback JOB")
    report = _reporter(as_json)
    try:
        if resume is not None:
            job = admin.resume_move(state.app, resume, on_progress=report)
        elif rollback is not None:
            job = admin.rollback_move(state.app, rollback, on_progress=report)
        else:
            assert uuid is not None and target is not None
            job = admin.move_instance(state.app, uuid, to=target, grace=grace, on_progress=report)
    except MoveVerifyFailed as exc:
        with_job = admin.show_move(state.app, exc.job)
        _result(with_job, as_json)
        raise
    _result(job, as_json)


def _result(job: MoveJob, as_json: bool) -> None:
    data = job.to_dict()
    if as_json:
        _json_line({"event": "result", **data})
    else:
        emit_fields(data)


@click.command("drain")
@click.argument("cell", metavar="NAME|UUID")
@click.option("--to", "target", required=True, metavar="NAME|UUID", help="The receiving cell.")
@click.option(
    "--wave-size",
    type=click.IntRange(min=1),
    default=DEFAULT_WAVE_SIZE,
    show_default=True,
    help="Instances per batch after the canary.",
)
@click.option(
    "--canary",
    type=click.IntRange(min=0),
    default=DEFAULT_CANARY,
    show_default=True,
    help="Instances in the first batch, moved and verified before any wave (0: none).",
)
@click.option("--dry-run", is_flag=True, help="Print the batches that would move; change nothing.")
@click.option(
    "--max-rate",
    type=click.FloatRange(min=0, min_open=True),
    metavar="PER_SECOND",
    help="Move at most this many instances per second.",
)
@click.option("--resume", metavar="DRAIN", help="Carry an interrupted drain on.")
@grace_option
@json_option
@pass_state
def cell_drain(
    state: CliState,
    cell: str,
    target: str,
    wave_size: int,
    canary: int,
    dry_run: bool,
    max_rate: float | None,
    resume: str | None,
    grace: int,
    as_json: bool,
) -> None:
    """Move every instance of a cell to another cell, in verified batches.

    A canary batch goes first; then waves of --wave-size. Each batch's
    verdict is recorded. A copy that fails verification stops the drain
    (exit 7) with that instance intact in the source cell.
    """

    bar = _Bar(enabled=not as_json and sys.stderr.isatty())

    def report(event: dict[str, Any]) -> None:
        if as_json:
            _json_line(event)
        elif event["event"] == "drain":
            bar.start(event["total"])
        elif event["event"] == "step" and event["step"] == "flipped":
            bar.advance()
        elif event["event"] == "batch" and not bar.enabled:
            progress(f"batch {event['batch']}: moving {event['size']} instance(s)")
        elif event["event"] == "batch_done":
            bar.finish()
            progress(f"batch {event['batch']}: {event['state']}, {event['moved']} moved")

    try:
        done = admin.drain_cell(
            state.app,
            cell,
            to=target,
            wave_size=wave_size,
            canary=canary,
            dry_run=dry_run,
            max_rate=max_rate,
            grace=grace,
            resume=resume,
            on_progress=report,
        )
    finally:
        bar.finish()
    data = done.to_dict(error_text)
    if as_json:
        _json_line({"event": "result", **data})
    else:
        if dry_run:
            for number, batch in enumerate(done.planned):
                progress(f"batch {number}: would move {len(batch)}: {' '.join(batch)}")
        emit_fields({k: v for k, v in data.items() if k not in ("batches", "planned")})
    if done.failure is not None:
        click.echo(f"cellgate: error: {redact(error_text(done.failure))}", err=True)
    click.get_current_context().exit(exit_code_for(done.failure) if done.failure else ExitCode.OK)


class _Bar:
    """A progress bar of instances flipped, on a terminal's stderr only (one line, redrawn)."""

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled
        self._total = 0
        self._done = 0
        self._drawn = False

    def start(self, total: int) -> None:
        self._total = total

    def advance(self) -> None:
        if not self.enabled or not self._total:
            return
        self._done += 1
        width = 30
        filled = width * min(self._done, self._total) // self._total
        line = f"\r[{'#' * filled}{'.' * (width - filled)}] {self._done}/{self._total} moved"
        click.echo(line, err=True, nl=False)
        self._drawn = True

    def finish(self) -> None:
        if self._drawn:
            click.echo("", err=True)
            self._drawn = False
