"""``cellgate upgrade check``: a thin shell over :func:`cellgate.admin.upgrade_check`.

Exit code = the verdict: 0 ok, 1 warning, 2 failure (docs/cli.md).
"""

from __future__ import annotations

import click

from cellgate import admin
from cellgate.cli.render import emit_json, emit_table
from cellgate.cli.state import CliState, pass_state


@click.group()
def upgrade() -> None:
    """Checks before an upgrade."""


@upgrade.command("check")
@click.option(
    "--cell-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    metavar="SECONDS",
    help="Seconds each cell database may take (default: [cells] verify_timeout).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_state
def check(state: CliState, cell_timeout: float | None, as_json: bool) -> None:
    """One verdict: exit 0 ok, 1 warning, 2 failure."""
    report = admin.upgrade_check(state.app, cell_timeout=cell_timeout)
    data = report.to_dict()
    if as_json:
        emit_json(data)
    else:
        rows = [{**c, "details": "; ".join(c["details"]) or "-"} for c in data["checks"]]
        emit_table(rows, [("check", "CHECK"), ("status", "STATUS"), ("details", "DETAILS")])
        click.echo(f"verdict: {data['verdict']}")
    click.get_current_context().exit(int(report.verdict))
