"""``cellgate host ...``: discover, list and delete host mappings."""

from __future__ import annotations

import click

from cellgate import admin
from cellgate.cli.exit_codes import ExitCode, exit_code_for
from cellgate.cli.hints import error_text
from cellgate.cli.render import emit_json, emit_table, progress
from cellgate.cli.state import CliState, pass_state
from cellgate.results import Failed, Ok

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")

HOST_COLUMNS = (
    ("host", "HOST"),
    ("cell_name", "CELL"),
    ("cell_uuid", "CELL UUID"),
    ("created_at", "CREATED"),
)


@click.group()
def host() -> None:
    """Map compute hosts to the cells they report in."""


@host.command("discover")
@click.option(
    "--cell",
    "cells",
    multiple=True,
    metavar="NAME|UUID",
    help="Only this cell (repeatable; disabled cells too). Default: every enabled cell but cell0.",
)
@json_option
@pass_state
def host_discover(state: CliState, cells: tuple[str, ...], as_json: bool) -> None:
    """Map the hosts in each cell's services table to that cell.

    A cell that fails does not stop the others; the exit code is that of the
    first failure. Idempotent, and safe to run from several places at once.
    """

    def report(outcome: admin.HostDiscovery) -> None:
        if isinstance(outcome.result, Ok):
            progress(f"{outcome.cell.label}: ok, {len(outcome.mapped)} new host(s) mapped")
        else:
            progress(f"{outcome.cell.label}: FAILED")

    done = admin.discover_hosts(state.app, cells, report)
    if not done:
        progress("no cells to discover")
    if as_json:
        emit_json([o.to_dict(error_text) for o in done])
    else:
        emit_table(
            [{**o.to_dict(error_text), "mapped": ", ".join(o.mapped) or None} for o in done],
            [("name", "CELL"), ("status", "STATUS"), ("mapped", "NEW HOSTS"), ("error", "ERROR")],
        )
    failures = [o.result.error for o in done if isinstance(o.result, Failed)]
    click.get_current_context().exit(exit_code_for(failures[0]) if failures else ExitCode.OK)


@host.command("list")
@click.option("--cell", metavar="NAME|UUID", help="Only the hosts of this cell.")
@json_option
@pass_state
def host_list(state: CliState, cell: str | None, as_json: bool) -> None:
    """List host mappings, by host name."""
    rows = [h.to_dict() for h in admin.list_hosts(state.app, cell)]
    emit_json(rows) if as_json else emit_table(rows, HOST_COLUMNS)


@host.command("delete")
@click.argument("name", metavar="HOST")
@json_option
@pass_state
def host_delete(state: CliState, name: str, as_json: bool) -> None:
    """Remove a host's mapping.

    Only the API database changes: the next discover maps the host again if
    its cell still lists it.
    """
    deleted = admin.delete_host(state.app, name)
    if as_json:
        emit_json(deleted.to_dict())
    else:
        mapping = deleted.host
        click.echo(
            f"deleted host mapping {mapping.host} (cell {mapping.cell_name or mapping.cell_uuid})"
        )
