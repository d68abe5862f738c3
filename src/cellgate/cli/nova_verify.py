"""``cellgate nova verify``: a thin shell over :func:`cellgate.admin.verify_nova`.

Exit code = the verdict, like ``nova-status upgrade check``: 0 clean, 1
warnings only, 2 errors (docs/cli.md). The URLs may come from the
environment (``CELLGATE_NOVA_API_DB`` ...), so a cron job need not put a
password on a command line every user can read in ``ps``.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import click

from cellgate import admin
from cellgate.admin.nova_verify import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_CELL_TIMEOUT,
    DEFAULT_EXAMPLES,
    NovaVerifyReport,
)
from cellgate.cli.render import emit_json, emit_table
from cellgate.cli.state import CliState, pass_state

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")


class Duration(click.ParamType[timedelta, Any]):
    """``90``, ``90s``, ``30m``, ``1h30m``, ``2d``: a positive duration."""

    name = "DURATION"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, timedelta):
            return value
        text = str(value).strip().lower()
        try:
            seconds = float(text)
        except ValueError:
            parts = _DURATION.findall(text)
            if not parts or "".join(n + u for n, u in parts) != text:
                self.fail(f"{value!r} is not a duration (e.g. 90s, 30m, 1h30m, 2d)", param, ctx)
            seconds = sum(float(n) * _UNITS[u] for n, u in parts)
        if seconds <= 0:
            self.fail("a duration must be above zero", param, ctx)
        return timedelta(seconds=seconds)


@click.command("verify")
@click.option(
    "--nova-api-db",
    required=True,
    envvar="CELLGATE_NOVA_API_DB",
    metavar="URL",
    help="Nova's [api_database] connection (read only). Env: CELLGATE_NOVA_API_DB.",
)
@click.option(
    "--nova-database",
    envvar="CELLGATE_NOVA_DATABASE",
    metavar="URL",
    help="Nova's [database] connection: templated cell database URLs render against it."
    " Env: CELLGATE_NOVA_DATABASE.",
)
@click.option(
    "--nova-transport-url",
    envvar="CELLGATE_NOVA_TRANSPORT_URL",
    metavar="URL",
    help="Nova's [DEFAULT] transport_url: templated transport URLs render against it."
    " Env: CELLGATE_NOVA_TRANSPORT_URL.",
)
@click.option(
    "--examples",
    type=click.IntRange(min=0),
    default=DEFAULT_EXAMPLES,
    show_default=True,
    metavar="N",
    help="Examples shown per finding.",
)
@click.option(
    "--unscheduled-after",
    type=Duration(),
    default="1h",
    show_default=True,
    help="Report mappings with no cell older than this.",
)
@click.option(
    "--cell-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_CELL_TIMEOUT,
    show_default=True,
    metavar="SECONDS",
    help="Deadline for the whole pass over each cell (all cells run at once).",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1, max=10000),
    default=DEFAULT_BATCH_SIZE,
    show_default=True,
    metavar="N",
    help="Rows per batch of the streamed passes.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_state
def verify(
    state: CliState,
    nova_api_db: str,
    nova_database: str | None,
    nova_transport_url: str | None,
    examples: int,
    unscheduled_after: timedelta,
    cell_timeout: float,
    batch_size: int,
    as_json: bool,
) -> None:
    """Check a Nova deployment in one read-only pass: exit 0 clean, 1 warnings, 2 errors."""
    report = admin.verify_nova(
        state.app,
        nova_api_db,
        nova_database=nova_database,
        nova_transport_url=nova_transport_url,
        examples=examples,
        unscheduled_after=unscheduled_after,
        cell_timeout=cell_timeout,
        batch_size=batch_size,
    )
    if as_json:
        emit_json(report.to_dict())
    else:
        _emit_text(report)
    click.get_current_context().exit(report.verdict)


def _emit_text(report: NovaVerifyReport) -> None:
    if report.findings:
        for finding in report.findings:
            click.echo(
                f"{finding.severity.name.lower():7}  {finding.code}  ({finding.count}):"
                f" {finding.summary}"
            )
            for example in finding.examples:
                click.echo(f"    {example}")
            if finding.count > len(finding.examples):
                click.echo(f"    ... and {finding.count - len(finding.examples)} more")
            click.echo(f"    fix: {finding.fix}")
        click.echo()
    else:
        click.echo("no findings")
    emit_table(
        [c.to_dict() for c in report.cells],
        [
            ("name", "CELL"),
            ("uuid", "UUID"),
            ("revision", "REVISION"),
            ("database_ok", "DB"),
            ("transport_ok", "MQ"),
            ("mappings_checked", "MAPPINGS"),
            ("instances_checked", "INSTANCES"),
        ],
    )
    click.echo(
        f"verdict: {report.verdict_name} ({report.rows_checked} rows checked"
        f" in {report.seconds:.1f} s; API database at {report.api_revision or 'no revision'})"
    )
