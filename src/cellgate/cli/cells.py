"""``cellgate cell ...``: create, list, show, update, delete, history, verify, map-cell0.

The credential commands (rotate-key, encrypt, decrypt, generate-key) live in
:mod:`cellgate.cli.keys`, ``drain`` in :mod:`cellgate.cli.moves`; they join
this group at the end of this module.
"""

from __future__ import annotations

from typing import Any

import click

from cellgate import admin
from cellgate.apidb.audit import local_actor
from cellgate.apidb.updates import CellUpdate
from cellgate.cli.exit_codes import ExitCode, exit_code_for
from cellgate.cli.hints import cli_hint, cli_message
from cellgate.cli.keys import KEY_COMMANDS, one_or_all
from cellgate.cli.misc import CELL_COLUMNS
from cellgate.cli.moves import cell_drain
from cellgate.cli.render import change_text, emit_fields, emit_json, emit_table
from cellgate.cli.state import CliState, pass_state
from cellgate.errors import EncryptionKeyError
from cellgate.urls import redact

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")
#: What ``cell list`` shows instead of the URLs of a row that does not decrypt.
UNDECRYPTABLE = "UNDECRYPTABLE"


@click.group()
def cell() -> None:
    """Manage cell mappings in the API database."""


@cell.command("create")
@click.option("--name", required=True, help="Unique name of the cell.")
@click.option("--transport-url", required=True, help="rabbit://, amqp:// or memory:// URL.")
@click.option("--database-connection", required=True, help="The cell database's URL.")
@click.option("--uuid", "cell_uuid", help="Use this uuid instead of a new random one.")
@click.option("--disabled", is_flag=True, help="Create the cell disabled (not scheduled to).")
@json_option
@pass_state
def cell_create(
    state: CliState,
    name: str,
    transport_url: str,
    database_connection: str,
    cell_uuid: str | None,
    disabled: bool,
    as_json: bool,
) -> None:
    """Map a new cell; print its uuid. URLs may be templates ({username}, ...)."""
    created = admin.create_cell(
        state.app,
        name=name,
        transport_url=transport_url,
        database_connection=database_connection,
        uuid=cell_uuid,
        disabled=disabled,
        actor=local_actor(),
    )
    emit_json(created.to_dict()) if as_json else click.echo(created.uuid)


@cell.command("list")
@click.option("--enabled-only", is_flag=True, help="Hide disabled cells.")
@json_option
@pass_state
def cell_list(state: CliState, enabled_only: bool, as_json: bool) -> None:
    """List live cells, cell0 first (URLs masked).

    A row whose URLs do not decrypt with the configured keys is listed
    without them (``UNDECRYPTABLE``; ``unreadable`` in JSON says why), one
    error line per such row goes to stderr, and the exit code is 2.
    """
    listing = admin.read_cells(state.app, enabled_only=enabled_only)
    rows = listing.rows()
    if as_json:
        emit_json(rows)
    else:
        emit_table(
            [
                r if r["unreadable"] is None else {**r, "transport_url": UNDECRYPTABLE}
                for r in rows
            ],
            CELL_COLUMNS,
        )
    for bad in listing.unreadable:
        error = EncryptionKeyError(bad.reason, hint=bad.hint)
        click.echo(
            f"cellgate: error: cell {bad.label} is listed without its URLs: "
            f"{redact(cli_message(error))}",
            err=True,
        )
    if not listing.complete:
        click.get_current_context().exit(ExitCode.USAGE)  # partial output (docs/cli.md)


@cell.command("show")
@click.argument("ident", metavar="NAME|UUID")
@click.option(
    "--reveal-secrets", is_flag=True, help="Print URLs with their passwords (use with care)."
)
@json_option
@pass_state
def cell_show(state: CliState, ident: str, reveal_secrets: bool, as_json: bool) -> None:
    """Show one cell (URLs masked unless --reveal-secrets)."""
    data = admin.show_cell(state.app, ident).to_dict(reveal_secrets=reveal_secrets)
    emit_json(data) if as_json else emit_fields(data)


@cell.command("update")
@click.argument("ident", metavar="NAME|UUID")
@click.option("--name", help="New name.")
@click.option("--transport-url", help="New transport URL.")
@click.option("--database-connection", help="New database URL.")
@click.option("--enable/--disable", "enabled", default=None, help="Enable or disable the cell.")
@click.option(
    "--expected-version",
    type=click.IntRange(min=1),
    help="Refuse (exit 4) unless the cell is still at this version (from 'cell show').",
)
@click.option("--dry-run", is_flag=True, help="Print the masked diff; change nothing.")
@json_option
@pass_state
def cell_update(
    state: CliState,
    ident: str,
    name: str | None,
    transport_url: str | None,
    database_connection: str | None,
    enabled: bool | None,
    expected_version: int | None,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Change the given fields of a cell; the others stay as they are."""
    fields: dict[str, Any] = {
        "name": name,
        "transport_url": transport_url,
        "database_connection": database_connection,
        "disabled": None if enabled is None else not enabled,
        "expected_version": expected_version,
    }
    if dry_run:
        _emit_plan(admin.preview_update(state.app, ident, **fields), as_json)
        return
    data = admin.update_cell(state.app, ident, actor=local_actor(), **fields).to_dict()
    emit_json(data) if as_json else emit_fields(data)


def _emit_plan(plan: CellUpdate, as_json: bool) -> None:
    if as_json:
        emit_json({**plan.to_dict(), "dry_run": True})
        return
    if not plan.changes:
        click.echo(f"cell {plan.cell.label}: nothing to change (version {plan.cell.version})")
        return
    click.echo(f"cell {plan.cell.label} (version {plan.cell.version}) would change:")
    for key, (before, after) in plan.changes.items():
        click.echo(f"  {change_text(key, before, after)}")
    click.echo("dry run: nothing was written")


@cell.command("delete")
@click.argument("ident", metavar="NAME|UUID")
@click.option(
    "--force", is_flag=True, help="Also remove its host mappings and deleted-instance mappings."
)
@json_option
@pass_state
def cell_delete(state: CliState, ident: str, force: bool, as_json: bool) -> None:
    """Delete a cell mapping (refused while hosts or instances are mapped)."""
    deleted = admin.delete_cell(state.app, ident, force=force, actor=local_actor())
    if as_json:
        emit_json(deleted.to_dict())
    else:
        click.echo(f"deleted cell {deleted.cell.label} ({deleted.cell.uuid})")


@cell.command("history")
@click.argument("ident", metavar="NAME|UUID")
@json_option
@pass_state
def cell_history(state: CliState, ident: str, as_json: bool) -> None:
    """Who changed a cell, what and when, oldest first (URLs masked).

    Follows the cell across renames, and works after it was deleted.
    """
    entries = [e.to_dict() for e in admin.cell_history(state.app, ident)]
    if as_json:
        emit_json(entries)
        return
    for entry in entries:
        entry["changes"] = (
            f"(unreadable: {entry['unreadable']})"
            if entry["unreadable"]
            else "; ".join(
                change_text(key, before, after)
                for key, (before, after) in entry["changes"].items()
            )
        )
    emit_table(
        entries,
        [
            ("at", "WHEN (UTC)"),
            ("action", "ACTION"),
            ("cell_name", "NAME"),
            ("version", "VERSION"),
            ("actor", "ACTOR"),
            ("changes", "CHANGES"),
        ],
    )


@cell.command("map-cell0")
@click.option(
    "--database-connection",
    help="cell0's database URL. Default: [database] connection with '_cell0' appended.",
)
@json_option
@pass_state
def cell_map_cell0(state: CliState, database_connection: str | None, as_json: bool) -> None:
    """Map cell0 (idempotent): where instances that fail to build are kept."""
    mapped = admin.map_cell0(
        state.app, database_connection=database_connection, actor=local_actor()
    )
    if as_json:
        emit_json(mapped.to_dict())
    else:
        verb = "mapped" if mapped.created else "already mapped"
        click.echo(f"cell0 {verb}: {mapped.cell.database_connection}")


@cell.command("verify")
@click.argument("ident", metavar="[NAME|UUID]", required=False)
@click.option("--all", "all_cells", is_flag=True, help="Verify every cell.")
@json_option
@pass_state
def cell_verify(state: CliState, ident: str | None, all_cells: bool, as_json: bool) -> None:
    """Connect to a cell's database and transport with a short timeout, and report."""
    one_or_all(ident, all_cells)
    reports = admin.verify_cells(state.app, (ident,) if ident else (), all_cells=all_cells)
    if as_json:
        emit_json([r.to_dict(cli_hint) for r in reports])
    else:
        emit_table(
            [_check_row(r, i) for r in reports for i in range(len(r.checks))],
            [
                ("cell", "CELL"),
                ("component", "COMPONENT"),
                ("status", "STATUS"),
                ("detail", "DETAIL"),
            ],
        )
    errors = [e for r in reports for e in r.errors]
    click.get_current_context().exit(exit_code_for(errors[0]) if errors else ExitCode.OK)


def _check_row(report: admin.CellReport, index: int) -> dict[str, object]:
    check = report.checks[index]
    return {
        "cell": report.cell.label,
        "component": check.component,
        "status": "ok" if check.ok else "FAILED",
        "detail": check.text(cli_hint),
    }


for _command in KEY_COMMANDS:  # rotate-key, encrypt, decrypt, generate-key
    cell.add_command(_command)
cell.add_command(cell_drain)
