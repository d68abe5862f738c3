"""``cellgate nova inspect``: what a Nova API database holds, read-only (wraps admin)."""

from __future__ import annotations

import click

from cellgate.admin.nova_inspect import NovaInspection, inspect_nova
from cellgate.cli.render import as_text, emit_json, emit_table
from cellgate.cli.state import CliState, pass_state

nova_db_option = click.option(
    "--nova-api-db",
    "nova_api_db",
    required=True,
    metavar="URL",
    help="Nova's API database URL ([api_database] connection in nova.conf); only read.",
)

_COLUMNS = (
    ("uuid", "UUID"),
    ("name", "NAME"),
    ("disabled", "DISABLED"),
    ("host_count", "HOSTS"),
    ("instance_mappings", "INSTANCES"),
    ("transport_url", "TRANSPORT_URL"),
    ("database_connection", "DATABASE_CONNECTION"),
)


@click.command("inspect")
@nova_db_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_state
def inspect(state: CliState, nova_api_db: str, as_json: bool) -> None:
    """Describe a Nova deployment: schema, cells, hosts, instance mappings (writes nothing)."""
    found = inspect_nova(state.app, nova_api_db)
    if as_json:
        emit_json(found.to_dict())
    else:
        render(found)


def render(found: NovaInspection) -> None:
    counts = found.counts
    click.echo(f"Nova API database: {found.database}")
    click.echo(f"schema: {found.revision.describe()}")
    click.echo(
        f"cells: {counts['cells']}, host mappings: {counts['host_mappings']},"
        f" instance mappings: {counts['instance_mappings']}"
        f" ({counts['unscheduled_instance_mappings']} unscheduled),"
        f" build requests: {counts['build_requests']}"
    )
    if counts["queued_for_delete_null"] or counts["user_id_null"]:
        click.echo(
            f"rows awaiting Nova's online data migrations: queued_for_delete NULL"
            f" {counts['queued_for_delete_null']}, user_id NULL {counts['user_id_null']}"
        )
    click.echo("")
    emit_table([c.to_dict() for c in found.cells], _COLUMNS)
    for summary in found.cells:
        if summary.hosts:
            click.echo(f"hosts of {as_text(summary.cell.label)}: {', '.join(summary.hosts)}")
