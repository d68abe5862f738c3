"""``cellgate api-db`` and ``cellgate db``: the two migration lines."""

from __future__ import annotations

import click

from cellgate import admin
from cellgate.cli.exit_codes import ExitCode, exit_code_for
from cellgate.cli.hints import error_text
from cellgate.cli.interrupts import stop_on_signals
from cellgate.cli.render import emit_fields, emit_json, emit_table, progress
from cellgate.cli.state import CliState, pass_state
from cellgate.migrations.lock import DEFAULT_LOCK_TIMEOUT
from cellgate.results import Failed, Ok

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")
lock_timeout_option = click.option(
    "--lock-timeout",
    type=click.FloatRange(min=0),
    default=DEFAULT_LOCK_TIMEOUT,
    show_default=True,
    metavar="SECONDS",
    help="Wait this long for another sync of the same database to finish (then exit 6).",
)


@click.group("api-db")
def api_db() -> None:
    """Migrate and inspect the API database (the 'api' migration line)."""


@api_db.command("sync")
@click.option("--revision", default="head", show_default=True, help="Target revision.")
@lock_timeout_option
@json_option
@pass_state
def api_db_sync(state: CliState, revision: str, lock_timeout: float, as_json: bool) -> None:
    """Upgrade the API database schema."""
    # Where, first (issue 13.6): an unedited config migrates the embedded default.
    progress(f"API database {state.settings.api_database.connection}: upgrading to {revision}")
    with stop_on_signals("the API database sync") as stop:
        info = admin.sync_api(state.app, revision, lock_timeout=lock_timeout, stop=stop)
    if info.unchanged:
        progress(f"API database already at {info.current or 'none (empty)'}; nothing to do")
    _show_version(info, as_json)


@api_db.command("version")
@json_option
@pass_state
def api_db_version(state: CliState, as_json: bool) -> None:
    """Show the API database's current and head revisions."""
    _show_version(admin.api_version(state.app), as_json)


def _show_version(info: admin.VersionInfo, as_json: bool) -> None:
    data = info.to_dict()
    emit_json(data) if as_json else emit_fields(data)


@click.group()
def db() -> None:
    """Migrate and inspect cell databases (the 'cell' migration line)."""


def _target_options(f: click.decorators.FC) -> click.decorators.FC:
    f = click.option("--local", is_flag=True, help="This host's [database] connection (default).")(
        f
    )
    f = click.option("--all-cells", is_flag=True, help="Every mapped cell, cell0 included.")(f)
    f = click.option(
        "--cell", "cells", multiple=True, metavar="NAME|UUID", help="A mapped cell (repeatable)."
    )(f)
    return f


@db.command("sync")
@_target_options
@click.option("--revision", default="head", show_default=True, help="Target revision.")
@lock_timeout_option
@json_option
@pass_state
def db_sync(
    state: CliState,
    cells: tuple[str, ...],
    all_cells: bool,
    local: bool,
    revision: str,
    lock_timeout: float,
    as_json: bool,
) -> None:
    """Upgrade cell databases, one at a time, continuing past failures."""
    with stop_on_signals("the cell database sync") as stop:
        outcomes = admin.sync_cells(
            state.app,
            cells=cells,
            all_cells=all_cells,
            local=local,
            revision=revision,
            lock_timeout=lock_timeout,
            on_progress=_report,
            stop=stop,
        )
    _finish(outcomes, as_json)


@db.command("version")
@_target_options
@json_option
@pass_state
def db_version(
    state: CliState, cells: tuple[str, ...], all_cells: bool, local: bool, as_json: bool
) -> None:
    """Show each cell database's current and head revisions."""
    outcomes = admin.cell_versions(
        state.app, cells=cells, all_cells=all_cells, local=local, on_progress=_report
    )
    _finish(outcomes, as_json)


def _report(outcome: admin.DatabaseOutcome) -> None:
    """One line per database, naming where it is (masked; a template as stored)."""
    database, result = outcome.database, outcome.result
    where = f"{database.label} {database.stored}"
    if isinstance(result, Ok):
        info = result.value
        at = info.current or "none (empty)"
        if info.at_head:
            already = "already " if info.unchanged else ""
            progress(f"{where}: ok, {already}at {at}")
        else:  # not "ok": say where it is and where head is
            progress(f"{where}: behind head: at {at}, head {info.head}")
    else:
        progress(f"{where}: FAILED")


def _finish(outcomes: list[admin.DatabaseOutcome], as_json: bool) -> None:
    rows = [o.to_dict(error_text) for o in outcomes]
    if as_json:
        emit_json(rows)
    else:
        emit_table(
            rows,
            [
                ("name", "CELL"),
                ("status", "STATUS"),
                ("current", "CURRENT"),
                ("head", "HEAD"),
                ("error", "ERROR"),
            ],
        )
    failures = [o.result.error for o in outcomes if isinstance(o.result, Failed)]
    if failures:
        click.get_current_context().exit(exit_code_for(failures[0]))
    click.get_current_context().exit(ExitCode.OK)


def _register_lifecycle() -> None:
    # Kept in their own module for size; imported here so `cellgate db` lists them.
    from cellgate.cli.archive import archive_deleted, purge
    from cellgate.cli.migratedata import migrate_data

    db.add_command(archive_deleted)
    db.add_command(purge)
    db.add_command(migrate_data)


_register_lifecycle()
