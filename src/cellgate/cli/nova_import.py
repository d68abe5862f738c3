"""``cellgate nova import``: copy Nova's mappings into cellgate's API database (wraps admin).

Exit codes: 0 imported (or nothing new), 4 a conflict refused the import
(nothing written; ``--dry-run`` prints them all and exits 4 too), 2 a bad
option or URL, 5 a database unreachable, 6 not a Nova API database or
cellgate's API database not migrated.
"""

from __future__ import annotations

import click

from cellgate.admin.nova_import import DEFAULT_BATCH_SIZE, NovaImportReport, import_nova
from cellgate.apidb.audit import local_actor
from cellgate.cli.exit_codes import ExitCode
from cellgate.cli.nova_inspect import nova_db_option
from cellgate.cli.render import as_text, change_text, emit_json, progress
from cellgate.cli.state import CliState, pass_state


@click.command("import")
@nova_db_option
@click.option(
    "--dry-run", is_flag=True, help="Print what would be imported (masked); write nothing."
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=DEFAULT_BATCH_SIZE,
    show_default=True,
    help="Host or instance mappings per transaction.",
)
@click.option(
    "--name-from-uuid",
    is_flag=True,
    help="Name cells without a usable Nova name (NULL, duplicate, taken) nova-<uuid>.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_state
def import_(
    state: CliState,
    nova_api_db: str,
    dry_run: bool,
    batch_size: int,
    name_from_uuid: bool,
    as_json: bool,
) -> None:
    """Import Nova's cell, host and instance mappings (uuids kept; safe to run again)."""
    report = import_nova(
        state.app,
        nova_api_db,
        dry_run=dry_run,
        batch_size=batch_size,
        name_from_uuid=name_from_uuid,
        actor=local_actor(),
        on_batch=None if as_json else lambda kind, n: progress(f"{kind}: batch of {n} done"),
    )
    if as_json:
        emit_json(report.to_dict())
    else:
        render(report)
    if report.conflicts:  # only a dry run gets here with conflicts
        raise click.exceptions.Exit(ExitCode.CONFLICT)


def render(report: NovaImportReport) -> None:
    would = "would import" if report.dry_run else "imported"
    click.echo(f"Nova API database: {report.source}")
    click.echo(f"schema: {report.revision.describe()}")
    for cell in report.cells:
        label = as_text(cell.name or cell.nova_name or cell.uuid)
        if cell.action == "create":
            click.echo(
                f"cell {label} ({cell.uuid}): {'would be created' if report.dry_run else 'created'}"
            )
            click.echo(f"  transport_url: {cell.transport_url}")
            click.echo(f"  database_connection: {cell.database_connection}")
            if cell.translation:
                click.echo(f"  driver: {cell.translation}")
        elif cell.action == "conflict":
            click.echo(f"conflict: {cell.problem}")
        elif cell.action == "changed":
            click.echo(f"cell {label} ({cell.uuid}): differs in Nova, left as it is in cellgate:")
            for key, (ours, theirs) in cell.changes.items():
                click.echo(f"  {change_text(key, ours, theirs)}")
        else:
            click.echo(f"cell {label} ({cell.uuid}): already imported")
    if report.cells_only_in_cellgate:
        click.echo(f"cells only in cellgate: {', '.join(report.cells_only_in_cellgate)}")
    for kind, counts in (("host mappings", report.hosts), ("instance mappings", report.instances)):
        click.echo(
            f"{kind}: {would} {counts.imported}, already there {counts.unchanged},"
            f" different in Nova {counts.changed}, only in cellgate {counts.only_in_cellgate}"
        )
        for example in counts.changed_examples:
            click.echo(f"  differs: {example}")
    if report.unscheduled_skipped:
        click.echo(
            f"skipped {report.unscheduled_skipped} instance mapping(s) with no cell"
            " (still being scheduled by Nova; import again later)"
        )
    if report.null_queued_for_delete:
        click.echo(
            f"{report.null_queued_for_delete} instance mapping(s) had queued_for_delete NULL"
            " (imported as not queued; run nova-manage db online_data_migrations)"
        )
    if report.dry_run:
        click.echo("dry run: nothing was written")
