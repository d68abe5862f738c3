"""``cellgate db archive-deleted`` and ``cellgate db purge``: soft-deleted rows, across cells.

Thin shells over :func:`cellgate.admin.archive_deleted` and
:func:`cellgate.admin.purge_deleted`. Exit codes (docs/cli.md): 0 done, 1 more
work remains (``--max-rows`` reached; run again, or pass ``--until-complete``),
and a failed or timed-out cell's code (5 for an unreachable one) before that:
the other cells were still done.
"""

from __future__ import annotations

import datetime as dt

import click

from cellgate import admin
from cellgate.cli.exit_codes import ExitCode, exit_code_for
from cellgate.cli.hints import error_text
from cellgate.cli.render import as_text, emit_json, emit_table, progress
from cellgate.cli.state import CliState, pass_state
from cellgate.results import Failed, TimedOut

DATE_FORMATS = ["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"]


def _cell_options(f: click.decorators.FC) -> click.decorators.FC:
    f = click.option(
        "--cell-timeout",
        type=click.FloatRange(min=0, min_open=True),
        default=admin.archive.DEFAULT_CELL_TIMEOUT,
        show_default=True,
        metavar="SECONDS",
        help="Report a cell as timed out if it takes longer (the others finish).",
    )(f)
    f = click.option(
        "--max-rows",
        type=click.IntRange(min=1),
        default=admin.archive.DEFAULT_MAX_ROWS,
        show_default=True,
        help="Rows per transaction at most (and per cell and run, without --until-complete).",
    )(f)
    f = click.option("--dry-run", is_flag=True, help="Count what would be done; write nothing.")(f)
    f = click.option("--json", "as_json", is_flag=True, help="Print JSON.")(f)
    f = click.option("--all-cells", is_flag=True, help="Every mapped cell, cell0 included.")(f)
    f = click.option(
        "--cell", "cells", multiple=True, metavar="NAME|UUID", help="A mapped cell (repeatable)."
    )(f)
    return f


@click.command("archive-deleted")
@_cell_options
@click.option(
    "--before",
    type=click.DateTime(DATE_FORMATS),
    help="Only instances deleted before this UTC date or time (default: all deleted).",
)
@click.option(
    "--until-complete", is_flag=True, help="Repeat batches of --max-rows until nothing is left."
)
@click.option(
    "--cell-retention-days",
    type=click.IntRange(min=0),
    default=admin.archive.DEFAULT_CELL_RETENTION.days,
    show_default=True,
    help="With --all-cells: remove deleted cell mappings deleted more than this many days ago.",
)
@pass_state
def archive_deleted(
    state: CliState,
    cells: tuple[str, ...],
    all_cells: bool,
    as_json: bool,
    dry_run: bool,
    max_rows: int,
    cell_timeout: float,
    before: dt.datetime | None,
    until_complete: bool,
    cell_retention_days: int,
) -> None:
    """Move soft-deleted instances into shadow tables and drop their mappings."""
    report = admin.archive_deleted(
        state.app,
        cells=cells,
        all_cells=all_cells,
        before=before,
        max_rows=max_rows,
        until_complete=until_complete,
        dry_run=dry_run,
        cell_timeout=cell_timeout,
        cell_retention=dt.timedelta(days=cell_retention_days),
        on_progress=_progress("archived"),
    )
    _finish(report, as_json, mappings=True)


@click.command("purge")
@_cell_options
@click.option(
    "--before",
    type=click.DateTime(DATE_FORMATS),
    required=True,
    help="Delete archived rows deleted before this UTC date or time.",
)
@pass_state
def purge(
    state: CliState,
    cells: tuple[str, ...],
    all_cells: bool,
    as_json: bool,
    dry_run: bool,
    max_rows: int,
    cell_timeout: float,
    before: dt.datetime,
) -> None:
    """Delete archived (shadow) rows deleted before a date, for good."""
    report = admin.purge_deleted(
        state.app,
        before=before,
        cells=cells,
        all_cells=all_cells,
        max_rows=max_rows,
        dry_run=dry_run,
        cell_timeout=cell_timeout,
        on_progress=_progress("purged"),
    )
    _finish(report, as_json, mappings=False)


def _progress(verb: str) -> admin.archive.OnProgress:
    def report(label: str, work: admin.archive.CellWork) -> None:
        progress(f"{label}: {verb} {work.total} row(s) so far")

    return report


def _rows_text(rows: dict[str, int]) -> str:
    return " ".join(f"{table}={count}" for table, count in rows.items()) or "-"


def _finish(report: admin.archive.Report, as_json: bool, *, mappings: bool) -> None:
    data = report.to_dict(error_text)
    if as_json:
        emit_json(data)
    else:
        rows = [{**r, "rows": _rows_text(r.get("rows") or {})} for r in data["cells"]]
        columns = [("name", "CELL"), ("status", "STATUS"), ("rows", "ROWS")]
        if mappings:
            columns += [("mappings_removed", "MAPPINGS"), ("queued_pruned", "QUEUED")]
        emit_table(rows, [*columns, ("error", "ERROR")])
        if report.cells_removed:
            removed = ", ".join(report.cells_removed)
            click.echo(f"deleted cell mappings removed: {as_text(removed)}")
        if report.dry_run:
            progress("dry run: nothing was written")
    for outcome in report.failures:
        result = outcome.result
        if isinstance(result, TimedOut):
            code = ExitCode.UNAVAILABLE  # as a database that timed out
        else:
            assert isinstance(result, Failed)
            code = exit_code_for(result.error)
        click.get_current_context().exit(code)
    if report.more_work and not report.dry_run:
        progress("more remains: run again (or pass --until-complete)")
        click.get_current_context().exit(ExitCode.ERROR)  # 1: more work remains
    click.get_current_context().exit(ExitCode.OK)
