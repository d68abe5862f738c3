"""``cellgate host ...``: discover, list and delete host mappings."""

from __future__ import annotations

import click

from cellgate.apidb import hosts
from cellgate.apidb.mappings import CellMapping
from cellgate.cli.exit_codes import ExitCode, exit_code_for
from cellgate.cli.render import emit_json, emit_table, progress
from cellgate.cli.state import CliState, pass_state
from cellgate.manage.hosts import discover_hosts
from cellgate.results import CellResult, Failed, Ok

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
    done: list[tuple[CellMapping, CellResult[list[str]]]] = []

    def report(cell: CellMapping, result: CellResult[list[str]]) -> None:
        if isinstance(result, Ok):
            progress(f"{cell.label}: ok, {len(result.value)} new host(s) mapped")
        else:
            progress(f"{cell.label}: FAILED")
        done.append((cell, result))

    results = discover_hosts(state.settings, state.current_api(), cells, report)
    if not done:
        progress("no cells to discover")
    if as_json:
        emit_json([_discover_row(cell, result) for cell, result in done])
    else:
        emit_table(
            [{**_discover_row(c, r), "mapped": ", ".join(_new_hosts(r)) or None} for c, r in done],
            [("cell", "CELL"), ("status", "STATUS"), ("mapped", "NEW HOSTS"), ("error", "ERROR")],
        )
    failures = [r.error for r in results.values() if isinstance(r, Failed)]
    click.get_current_context().exit(exit_code_for(failures[0]) if failures else ExitCode.OK)


def _new_hosts(result: CellResult[list[str]]) -> list[str]:
    return result.value if isinstance(result, Ok) else []


def _discover_row(cell: CellMapping, result: CellResult[list[str]]) -> dict[str, object]:
    """One cell's outcome; ``mapped`` lists the hosts this run mapped."""
    error = result.error if isinstance(result, Failed) else None
    return {
        "cell": cell.label,
        "uuid": cell.uuid,
        "status": "ok" if isinstance(result, Ok) else "failed",
        "mapped": _new_hosts(result),
        "error": None if error is None else str(error),
    }


@host.command("list")
@click.option("--cell", metavar="NAME|UUID", help="Only the hosts of this cell.")
@json_option
@pass_state
def host_list(state: CliState, cell: str | None, as_json: bool) -> None:
    """List host mappings, by host name."""
    with state.current_api().session() as session:
        found = hosts.list_hosts(session, cell)
    rows = [h.to_dict() for h in found]
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
    with state.current_api().session() as session:
        deleted = hosts.delete_host(session, name)
    if as_json:
        emit_json(
            {
                "deleted": deleted.host,
                "cell_uuid": deleted.cell_uuid,
                "cell_name": deleted.cell_name,
            }
        )
    else:
        cell = deleted.cell_name or deleted.cell_uuid
        click.echo(f"deleted host mapping {deleted.host} (cell {cell})")
