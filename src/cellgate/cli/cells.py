"""``cellgate cell ...``: create, list, show, update, delete, history, verify, map-cell0.

The credential commands (rotate-key, encrypt, decrypt, generate-key) live in
:mod:`cellgate.cli.keys` and join this group in :mod:`cellgate.cli`.
"""

from __future__ import annotations

from typing import Any

import click

from cellgate.apidb import mappings, updates
from cellgate.apidb.audit import local_actor
from cellgate.cli.exit_codes import ExitCode, exit_code_for
from cellgate.cli.misc import CELL_COLUMNS
from cellgate.cli.render import change_text, emit_fields, emit_json, emit_table
from cellgate.cli.state import CliState, pass_state
from cellgate.manage.migrate import template_defaults
from cellgate.manage.verify import CellReport, verify_cell

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


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
    with state.current_api().session() as session:
        created = mappings.create_cell(
            session,
            name=name,
            transport_url=transport_url,
            database_connection=database_connection,
            uuid=cell_uuid,
            disabled=disabled,
            defaults=template_defaults(state.settings),
            actor=local_actor(),
        )
    emit_json(created.to_dict()) if as_json else click.echo(created.uuid)


@cell.command("list")
@click.option("--enabled-only", is_flag=True, help="Hide disabled cells.")
@json_option
@pass_state
def cell_list(state: CliState, enabled_only: bool, as_json: bool) -> None:
    """List live cells, cell0 first (URLs masked)."""
    with state.current_api().session() as session:
        cells = mappings.list_cells(session, include_disabled=not enabled_only)
    rows = [c.to_dict() for c in cells]
    emit_json(rows) if as_json else emit_table(rows, CELL_COLUMNS)


@cell.command("show")
@click.argument("ident", metavar="NAME|UUID")
@click.option(
    "--reveal-secrets", is_flag=True, help="Print URLs with their passwords (use with care)."
)
@json_option
@pass_state
def cell_show(state: CliState, ident: str, reveal_secrets: bool, as_json: bool) -> None:
    """Show one cell (URLs masked unless --reveal-secrets)."""
    with state.current_api().session() as session:
        found = mappings.get_cell(session, ident)
    data = found.to_dict(reveal_secrets=reveal_secrets)
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
        "defaults": template_defaults(state.settings),
    }
    with state.current_api().session() as session:
        if dry_run:
            plan = updates.preview_update(session, ident, **fields)
        else:
            updated = updates.update_cell(session, ident, actor=local_actor(), **fields)
    if dry_run:
        _emit_plan(plan, as_json)
        return
    data = updated.to_dict()
    emit_json(data) if as_json else emit_fields(data)


def _emit_plan(plan: updates.CellUpdate, as_json: bool) -> None:
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
    with state.current_api().session() as session:
        deleted = mappings.delete_cell(session, ident, force=force, actor=local_actor())
    if as_json:
        emit_json({"deleted": deleted.uuid, "name": deleted.name})
    else:
        click.echo(f"deleted cell {deleted.label} ({deleted.uuid})")


@cell.command("history")
@click.argument("ident", metavar="NAME|UUID")
@json_option
@pass_state
def cell_history(state: CliState, ident: str, as_json: bool) -> None:
    """Who changed a cell, what and when, oldest first (URLs masked).

    Follows the cell across renames, and works after it was deleted.
    """
    with state.current_api().session() as session:
        entries = [e.to_dict() for e in mappings.cell_history(session, ident)]
    if as_json:
        emit_json(entries)
        return
    for entry in entries:
        entry["changes"] = "; ".join(
            change_text(key, before, after) for key, (before, after) in entry["changes"].items()
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
    settings = state.settings
    url = database_connection or settings.cell0_database().render(hide_password=False)
    with state.current_api().session() as session:
        cell0, created = mappings.map_cell0(
            session,
            database_connection=url,
            defaults=template_defaults(settings),
            actor=local_actor(),
        )
    if as_json:
        emit_json({**cell0.to_dict(), "created": created})
    else:
        verb = "mapped" if created else "already mapped"
        click.echo(f"cell0 {verb}: {cell0.database_connection}")


@cell.command("verify")
@click.argument("ident", metavar="[NAME|UUID]", required=False)
@click.option("--all", "all_cells", is_flag=True, help="Verify every cell.")
@json_option
@pass_state
def cell_verify(state: CliState, ident: str | None, all_cells: bool, as_json: bool) -> None:
    """Connect to a cell's database and transport with a short timeout, and report."""
    if bool(ident) == all_cells:
        raise click.UsageError("give a cell NAME|UUID or --all, not both")
    with state.current_api().session() as session:
        cells = (
            mappings.list_cells(session)
            if all_cells
            else [mappings.get_cell(session, ident or "")]
        )
    reports = [verify_cell(state.settings, c) for c in cells]
    if as_json:
        emit_json([r.to_dict() for r in reports])
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
    errors = [c.error for r in reports for c in r.checks if c.error is not None]
    click.get_current_context().exit(exit_code_for(errors[0]) if errors else ExitCode.OK)


def _check_row(report: CellReport, index: int) -> dict[str, object]:
    check = report.checks[index]
    return {
        "cell": report.cell.label,
        "component": check.component,
        "status": "ok" if check.ok else "FAILED",
        "detail": check.detail,
    }
