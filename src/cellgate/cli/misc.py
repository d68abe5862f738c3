"""``cellgate config`` and ``cellgate quickstart``."""

from __future__ import annotations

import click

from cellgate import admin
from cellgate.cli.render import emit_fields, emit_json, emit_table, progress
from cellgate.cli.state import CliState, pass_state
from cellgate.config import sample_config
from cellgate.keyring import KeyRing

CELL_COLUMNS = (
    ("name", "NAME"),
    ("uuid", "UUID"),
    ("transport_url", "TRANSPORT URL"),
    ("database_connection", "DATABASE CONNECTION"),
    ("disabled", "DISABLED"),
    ("encryption", "STORED AS"),
)


@click.group()
def config() -> None:
    """Inspect configuration."""


@config.command("sample")
def config_sample() -> None:
    """Print a commented config file with every option, its default and help."""
    click.echo(sample_config(), nl=False)


@config.command("show")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_state
def config_show(state: CliState, as_json: bool) -> None:
    """Show the effective settings (passwords masked) and where they came from."""
    s = state.settings
    data = {
        "source": str(s.source) if s.source else "embedded default (no config file)",
        "state_path": str(s.state_path),
        "transport_url": str(s.transport_url),
        "api_database.connection": str(s.api_database.connection),
        "database.connection": str(s.database.connection),
        "api_database.connect_timeout": s.api_database.connect_timeout,
        "api_database.query_timeout": s.api_database.query_timeout,
        "database.connect_timeout": s.database.connect_timeout,
        "database.query_timeout": s.database.query_timeout,
        "database.pool_size": s.database.pool_size,
        "cells.verify_timeout": s.cells.verify_timeout,
        "cells.cache_ttl": s.cells.cache_ttl,
        "cells.max_engines": s.cells.max_engines,
        "cells.max_connections": s.cells.max_connections,
        "cells.max_idle_connections": s.cells.max_idle_connections,
        "cells.idle_grace": s.cells.idle_grace,
        "cells.scatter_timeout": s.cells.scatter_timeout,
        "cells.scatter_workers": s.cells.scatter_workers,
        "cells.scatter_hung_threads": s.cells.scatter_hung_threads,
        "cells.breaker_threshold": s.cells.breaker_threshold,
        "cells.breaker_cooldown": s.cells.breaker_cooldown,
        "rpc_response_timeout": s.rpc.response_timeout,
        "rpc.connect_timeout": s.rpc.connect_timeout,
        "rpc.heartbeat": s.rpc.heartbeat,
        "rpc.max_transports": s.rpc.max_transports,
        "api.listen": s.service.listen,
        "api.port": s.service.port,
        "api.auth_tokens": f"{len(s.service.tokens)} token(s) (never shown)",
        "api_database.encryption_keys": _key_summary(s.api_database.encryption_keys),
        "api.cell_timeout": s.service.cell_timeout,
        "scheduler.policy": s.service.scheduler_policy,
        "worker.heartbeat_interval": s.service.heartbeat_interval,
        "worker.service_down_time": s.service.service_down_time,
    }
    emit_json(data) if as_json else emit_fields(data)


def _key_summary(keys: tuple[str, ...]) -> str:
    if not keys:
        return "none (cell URLs stored as given)"
    return f"{len(keys)} key(s), ids {', '.join(KeyRing(keys).key_ids)} (keys never shown)"


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_state
def quickstart(state: CliState, as_json: bool) -> None:
    """Set up the embedded SQLite deployment (idempotent) and list its cells.

    Creates the API database, cell0 and two cells under state_path, each with
    its own SQLite database and in-process transport, all migrated to head.
    """
    cells = admin.quickstart(state.app, on_step=progress)
    rows = [c.to_dict() for c in cells]
    if as_json:
        emit_json(rows)
    else:
        emit_table(rows, CELL_COLUMNS)
