"""A tour of cellgate's RPC API, on in-process transports in a temporary directory.

Run it with the project's interpreter, from any directory::

    .venv/bin/python examples/rpc_tour.py

It needs no servers: the API database is a SQLite file and each cell's
transport is its own ``memory://`` broker (``memory://cell1``,
``memory://cell2``), as isolated from each other as two RabbitMQ vhosts. The
set-up maps the cells through ``cellgate.admin``, as ``library_tour.py``
does; everything uses only names exported by ``cellgate`` itself.
``tests/functional/test_examples.py`` runs this script, so the RPC snippets in
``docs/library.md`` that come from here keep working.
"""

from __future__ import annotations

import sys
import tempfile
import threading
import time
from pathlib import Path

from _tour import say

from cellgate import (
    App,
    NoTransport,
    RemoteError,
    RequestContext,
    RPCServer,
    RPCTimeout,
    Target,
    UnsupportedVersion,
    UntargetedContext,
    admin,
    load_settings,
)

CELLS = ("cell1", "cell2")
HOSTS = ("host1", "host2")  # two compute servers in each cell
SERVER_VERSION = "1.3"  # the newest compute API version the servers implement


def write_config(tmp: Path) -> Path:
    config = tmp / "cellgate.conf"
    config.write_text(
        "[DEFAULT]\n"
        f"state_path = {tmp / 'state'}\n"
        "transport_url = memory://local\n"
        "rpc_response_timeout = 5\n"
        "[api_database]\n"
        f"connection = sqlite:///{tmp / 'api.sqlite'}\n"
        "[database]\n"
        f"connection = sqlite:///{tmp / 'cellgate.sqlite'}\n",
        encoding="utf-8",
    )
    return config


def set_up(tmp: Path, app: App) -> None:
    admin.sync_api(app)
    admin.map_cell0(app)  # cell0's transport is none:///: no queue
    for name in CELLS:
        admin.create_cell(
            app,
            name=name,
            transport_url=f"memory://{name}",  # one broker per cell
            database_connection=f"sqlite:///{tmp / name}.sqlite",
        )


class Journal:
    """What the servers did, for the tour to watch. Not an endpoint: nobody can call it."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self.reboots: list[tuple[str, str, str]] = []  # (cell, host, instance)

    def record(self, cell: str, host: str, instance: str) -> None:
        with self._changed:
            self.reboots.append((cell, host, instance))
            self._changed.notify_all()

    def wait_for(self, count: int, timeout: float = 5.0) -> list[tuple[str, str, str]]:
        """Wait until ``count`` reboots in all have been recorded; return them all."""
        with self._changed:
            self._changed.wait_for(lambda: len(self.reboots) >= count, timeout)
            return list(self.reboots)


class Compute:
    """An endpoint: a plain object; every public method can be called over RPC."""

    def __init__(self, host: str, journal: Journal) -> None:
        self._host = host
        self._journal = journal

    def whoami(self, ctx: RequestContext) -> dict[str, str]:
        assert ctx.cell is not None  # always targeted at this server's cell
        return {"cell": str(ctx.cell.name), "host": self._host}

    def reboot(self, ctx: RequestContext, instance: str) -> None:
        assert ctx.cell is not None
        self._journal.record(str(ctx.cell.name), self._host, instance)

    def resize(self, ctx: RequestContext, instance: str, flavor: str) -> None:
        raise ValueError(f"flavor {flavor!r} does not fit on {self._host}")


def start_servers(app: App, ctx: RequestContext, journal: Journal) -> list[RPCServer]:
    servers = []
    for cell_name in CELLS:
        cell = app.cells.get(ctx, cell_name)  # ctx names the request in the cache's log
        for host in HOSTS:
            target = Target("compute", server=host, version=SERVER_VERSION)
            servers.append(app.rpc.server(cell, target, [Compute(host, journal)]).start())
    return servers


def tour(tmp: Path) -> None:
    say(f"cellgate RPC tour, in {tmp}")
    say()
    say("1. Set up with cellgate.admin: the API database, cell0 and two cells")
    config = write_config(tmp)
    with App(load_settings(config)) as app:
        set_up(tmp, app)
        say("   sync_api; map_cell0; create_cell for cell1 and cell2, a memory:// broker each")
        journal = Journal()
        ctx = RequestContext(project_id="demo", user_id="alice", roles=("member",))

        say()
        say(f"2. Start a compute server on {' and '.join(HOSTS)} in each cell")
        servers = start_servers(app, ctx, journal)
        for srv in servers:
            say(f"   {srv.cell.name}: {srv.target}, version {srv.target.version}")

        try:
            say()
            say("3. A call reaches the servers of its own cell only")
            for name in CELLS:
                with app.target_cell(ctx, name) as cctx:
                    client = app.rpc.client(cctx, Target("compute"))
                    answers = [client.call("whoami") for _ in range(4)]
                cells = sorted({a["cell"] for a in answers})
                hosts = sorted({a["host"] for a in answers})
                assert cells == [name]
                say(f"   {name}: 4 calls answered by {', '.join(cells)} on {', '.join(hosts)}")

            say()
            say("4. prepare() returns a new client; the original is unchanged")
            with app.target_cell(ctx, "cell1") as cctx:
                client = app.rpc.client(cctx, Target("compute"))
            pinned = client.prepare(timeout=2, server="host2", version="1.2")
            answer = pinned.call("whoami")
            assert answer["host"] == "host2" and client.target == Target("compute")
            say(
                f"   pinned: {pinned.target}, version {pinned.target.version},"
                f" timeout {pinned.timeout:g}s -> answered by {answer['host']}"
            )
            say(
                f"   original: {client.target}, version {client.target.version},"
                f" timeout {client.timeout:g}s"
            )

            say()
            say("5. cast: fire and forget, to one named server or to every server")
            client.prepare(server="host1").cast("reboot", instance="vm-1")
            seen = journal.wait_for(1)
            say(f"   cast to host1: {', '.join(f'{c}/{h} rebooted {i}' for c, h, i in seen)}")
            client.prepare(fanout=True).cast("reboot", instance="vm-2")
            seen = journal.wait_for(3)[1:]
            time.sleep(0.2)  # time for a stray delivery to another cell to show up
            say(f"   fanout: {', '.join(sorted(f'{c}/{h}' for c, h, _ in seen))} rebooted vm-2")
            others = [r for r in journal.reboots if r[0] != "cell1"]
            assert len(seen) == 2 and not others
            say(f"   cell2's servers received {len(others)} casts")

            say()
            say("6. A method that raises comes back as RemoteError, named by exc_type")
            try:
                client.call("resize", instance="vm-1", flavor="m1.huge")
            except RemoteError as exc:
                if exc.exc_type == "ValueError":  # a name to match, never a class
                    say(f"   RemoteError: exc_type={exc.exc_type}: {exc.remote_message}")
            try:
                client.call("migrate", instance="vm-1")
            except RemoteError as exc:
                say(f"   RemoteError: exc_type={exc.exc_type}: {exc.remote_message}")

            say()
            say(f"7. Versions: the servers implement {SERVER_VERSION}")
            try:
                client.prepare(version="1.4").call("whoami")
            except UnsupportedVersion as exc:
                say(f"   UnsupportedVersion: {exc.message}")

            say()
            say("8. No server on a topic: RPCTimeout after the call's timeout")
            conductor = app.rpc.client(client.ctx, Target("conductor")).prepare(timeout=0.3)
            started = time.monotonic()
            try:
                conductor.call("ping")
            except RPCTimeout as exc:
                elapsed = time.monotonic() - started
                say(f"   RPCTimeout after {elapsed:.1f} s: {exc.message}")

            say()
            say("9. cell0 has no message queue; an untargeted context has no cell")
            with app.target_cell(ctx, "cell0") as cctx:
                try:
                    app.rpc.client(cctx, Target("compute")).call("whoami")
                except NoTransport as exc:
                    say(f"   NoTransport: {exc.message}")
            try:
                app.rpc.client(ctx, Target("compute"))
            except UntargetedContext as exc:
                say(f"   UntargetedContext: {exc.message}")
        finally:
            for srv in servers:
                srv.stop()
        say()
        say(f"10. Stopped {len(servers)} servers; closing the App")

    say()
    say("done: App closed its transports, engines and cache")


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="cellgate-rpc-tour-") as tmp:
        tour(Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
