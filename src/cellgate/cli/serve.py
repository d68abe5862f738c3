"""``cellgate serve api|worker``, ``cellgate all-in-one`` and ``cellgate demo``.

Each runs until SIGTERM or SIGINT (the demo until its scenario ends), and
reloads cell mappings on SIGHUP. ``serve api`` and ``serve worker`` run on
the command's one ``App`` (``CliState.app``), which the CLI closes at exit.

This module imports the web stack (FastAPI, uvicorn, httpx); the CLI loads it
only when one of these commands runs (``LazyGroup`` in :mod:`cellgate.cli`).
"""

from __future__ import annotations

import secrets
import socket
from dataclasses import replace
from pathlib import Path

import click

from cellgate.cli.render import progress
from cellgate.cli.state import CliState, pass_state
from cellgate.config import TokenGrant, embedded_settings
from cellgate.context import RequestContext
from cellgate.service.allinone import AllInOne
from cellgate.service.compute import Worker
from cellgate.service.demo import run_demo
from cellgate.service.http import create_api
from cellgate.service.runner import HttpServer, wait_for_signals


@click.group()
def serve() -> None:
    """Run the reference service's processes."""


@serve.command("api")
@click.option("--host", help="Listen address. Default: [api] listen.")
@click.option(
    "--port", type=click.IntRange(1, 65535), help="Listen port (1-65535). Default: [api] port."
)
@pass_state
def serve_api(state: CliState, host: str | None, port: int | None) -> None:
    """Serve the REST API until SIGTERM; SIGHUP reloads cell mappings."""
    app = state.app
    app.api.require_current()
    service = app.settings.service
    server = HttpServer(
        create_api(app, service), host or service.listen, port or service.port
    ).start()
    progress(f"cellgate API listening on {server.url}")
    try:
        wait_for_signals(app.reload_in_background)
    finally:
        server.stop()


@serve.command("worker")
@click.option(
    "--cell", "cell_ident", required=True, metavar="NAME|UUID", help="The cell to serve."
)
@click.option(
    "--host-name",
    default=socket.gethostname(),
    show_default=True,
    help="This worker's host name (its service row and RPC server name).",
)
@pass_state
def serve_worker(state: CliState, cell_ident: str, host_name: str) -> None:
    """Serve one cell's compute RPC until SIGTERM, heart-beating into its database."""
    app = state.app
    app.api.require_current()
    cell = app.cells.get(RequestContext(), cell_ident)
    worker = Worker(app, cell, host_name, app.settings.service.heartbeat_interval).start()
    progress(f"cellgate worker {host_name} serving cell {cell.label}")
    try:
        wait_for_signals(app.reload_in_background)
    finally:
        worker.stop()


@click.command("all-in-one")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the SQLite files live. Default: state_path.",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=0,
    help="API port, 1-65535 (default 0: any free port).",
)
@pass_state
def all_in_one(state: CliState, data_dir: Path | None, port: int) -> None:
    """API, cell0, two cells and their workers in one process, on SQLite and memory://."""
    settings = embedded_settings(data_dir.resolve()) if data_dir else state.settings
    token = secrets.token_urlsafe(18)
    grant = TokenGrant(token, "admin", ("admin", "member"))
    settings = replace(settings, service=replace(settings.service, tokens=(grant,), port=port))
    with AllInOne(settings, on_step=progress) as deployment:
        click.echo(f"API:   {deployment.url}")
        click.echo(f"token: {token}   (send 'Authorization: Bearer <token>'; project admin)")
        wait_for_signals(deployment.app.reload_in_background)


@click.command("demo")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Keep the demo's SQLite files here (default: a temporary directory).",
)
def demo(data_dir: Path | None) -> None:
    """Run all-in-one and drive a scripted scenario through the real HTTP API."""
    ok = run_demo(data_dir, echo=click.echo)
    click.get_current_context().exit(0 if ok else 1)
