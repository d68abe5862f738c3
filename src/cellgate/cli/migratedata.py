"""``cellgate db migrate-data``: online data migrations, per cell, in batches.

A thin shell over :func:`cellgate.admin.migrate_data`. Exit codes
(docs/cli.md): 0 nothing left, 1 more remains (``--max-count`` reached: run
again), and a failed or timed-out cell's code (5 for an unreachable one, 6
for one behind the cell head) before that: the other cells were still done.
"""

from __future__ import annotations

import click

from cellgate import admin
from cellgate.cli.exit_codes import ExitCode, exit_code_for
from cellgate.cli.hints import error_text
from cellgate.cli.render import emit_json, emit_table, progress
from cellgate.cli.state import CliState, pass_state
from cellgate.results import Failed, TimedOut


@click.command("migrate-data")
@click.option(
    "--cell", "cells", multiple=True, metavar="NAME|UUID", help="A mapped cell (repeatable)."
)
@click.option("--all-cells", is_flag=True, help="Every mapped cell, cell0 included.")
@click.option(
    "--max-count",
    type=click.IntRange(min=1),
    default=None,
    help="Rows per cell at most in this run (default: until nothing is left).",
)
@click.option(
    "--cell-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=admin.datamigrations.DEFAULT_CELL_TIMEOUT,
    show_default=True,
    metavar="SECONDS",
    help="Report a cell as timed out if it takes longer (the others finish).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_state
def migrate_data(
    state: CliState,
    cells: tuple[str, ...],
    all_cells: bool,
    max_count: int | None,
    cell_timeout: float,
    as_json: bool,
) -> None:
    """Run the online data migrations on cell databases (after db sync)."""
    report = admin.migrate_data(
        state.app,
        cells=cells,
        all_cells=all_cells,
        max_count=max_count,
        cell_timeout=cell_timeout,
    )
    data = report.to_dict(error_text)
    if as_json:
        emit_json(data)
    else:
        rows = []
        for row in data["cells"]:
            for name, counts in row["migrations"].items() or [("-", None)]:
                rows.append(
                    {
                        "cell": row["name"],
                        "status": row["status"],
                        "migration": name,
                        "found": counts["found"] if counts else "-",
                        "done": counts["done"] if counts else "-",
                        "error": row["error"],
                    }
                )
        emit_table(
            rows,
            [
                ("cell", "CELL"),
                ("status", "STATUS"),
                ("migration", "MIGRATION"),
                ("found", "FOUND"),
                ("done", "DONE"),
                ("error", "ERROR"),
            ],
        )
    for _cell, result in report.failures:
        if isinstance(result, TimedOut):
            click.get_current_context().exit(ExitCode.UNAVAILABLE)
        assert isinstance(result, Failed)
        click.get_current_context().exit(exit_code_for(result.error))
    if report.more_work:
        progress("more remains: run again")
        click.get_current_context().exit(ExitCode.ERROR)  # 1: more work remains
    click.get_current_context().exit(ExitCode.OK)
