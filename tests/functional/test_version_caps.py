"""Version-capped RPC (issue 17.3): each cell's calls go at its oldest live worker's version.

Cell ``old`` runs a worker of the previous release's RPC API (its server
target serves ``1.0``, its heartbeat row says service version 0 and has no
``rpc_version``, as the old code wrote it); cell ``new`` runs this release's
worker (``1.1``). The API (``InstanceService`` with its ``VersionCaps``) sends
builds, actions and pings to ``old`` at 1.0, which its worker serves, and to
``new`` at 1.1; an uncapped 1.1 call to ``old`` is refused by its worker. On
every database backend, over the in-process transport and over RabbitMQ.

Then the down-cell case: the caps are read once (recorded as last known on
disk), the cell's database goes away, and a new API starts: start-up does not
wait, and the cell is capped at its last-known version.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select, update

from cellgate import App, RequestContext, load_settings
from cellgate.admin.versions import LAST_KNOWN_FILE, VersionCaps, read_worker_versions
from cellgate.apidb.mappings import CellMapping, create_cell, map_cell0
from cellgate.celldb import queries
from cellgate.celldb.schema import InstanceRow, ServiceRow
from cellgate.celldb.versions import MIN_RPC_VERSION, RPC_VERSION
from cellgate.errors import UnsupportedVersion
from cellgate.migrations.runner import MigrationLine, upgrade
from cellgate.rpc.server import RPCServer
from cellgate.rpc.target import Target
from cellgate.service.compute import TOPIC, ComputeEndpoint, Worker
from cellgate.service.http import create_api
from cellgate.service.instances import InstanceService
from cellgate.service.metrics import Metrics
from cellgate.service.runner import HttpServer
from cellgate.sql.api_database import ApiDatabase
from cellgate.sql.engines import make_engine
from cellgate.urls import DatabaseURL, TemplateDefaults
from tests.functional.test_e2e_processes import wait_for
from tests.support import Broker, Server, TcpProxy

DEFAULTS = TemplateDefaults(database=None, transport=None)
CTX = RequestContext(request_id="req-caps")
OLD = "1.0"


@dataclass
class Rig:
    conf: Path
    app: App
    cell_urls: dict[str, DatabaseURL]

    def cell(self, name: str) -> CellMapping:
        return self.app.cells.get(CTX, name)


def _deploy(
    server: Server, tmp: Path, transports: dict[str, str], proxy_port: int | None = None
) -> tuple[Path, dict[str, DatabaseURL]]:
    """An API database and one cell database per transport, all migrated; the config file."""
    api_url = server.new_database()
    conf = tmp / "c.conf"
    conf.write_text(
        f"[DEFAULT]\nstate_path = {tmp / 'state'}\n"
        f"[api_database]\nconnection = {api_url.render(hide_password=False)}\n"
        "[database]\nconnect_timeout = 2\n"
        "[cells]\nverify_timeout = 2\n"
        "[worker]\nheartbeat_interval = 0.5\nservice_down_time = 30\n",
        encoding="utf-8",
    )
    settings = load_settings(conf)
    api = ApiDatabase(settings.api_database)
    api.upgrade()
    urls: dict[str, DatabaseURL] = {}
    with api.session() as s:
        for name, transport in transports.items():
            url = server.new_database()
            engine = make_engine(url, connect_timeout=2, query_timeout=10, create_missing=True)
            upgrade(engine, MigrationLine.CELL)
            engine.dispose()
            urls[name] = url
            stored = url
            if proxy_port is not None and server.kind != "sqlite":
                stored = DatabaseURL(url.sqlalchemy_url.set(port=proxy_port))
            create_cell(
                s,
                name=name,
                transport_url=transport,
                database_connection=stored.render(hide_password=False),
                defaults=DEFAULTS,
            )
        map_cell0(s, database_connection=f"sqlite:///{tmp}/cell0.db", defaults=DEFAULTS)
    api.close()
    return conf, urls


def _old_worker(app: App, cell: CellMapping, stack: ExitStack) -> None:
    """A worker as the previous release ran it: serves 1.0, records version 0 and no RPC version."""
    ctx = CTX.for_cell(cell)
    app.db.write(
        ctx, lambda s: queries.heartbeat(s, host="old-host", binary="cellgate-worker", topic=TOPIC)
    )
    app.db.write(ctx, lambda s: s.execute(update(ServiceRow).values(version=0, rpc_version=None)))
    server: RPCServer = app.rpc.server(
        cell, Target(TOPIC, version=OLD), [ComputeEndpoint(app, "old-host")]
    ).start()
    stack.callback(server.stop)
    ready = getattr(server._listener, "ready", None)
    assert ready is None or ready.wait(15)


def _new_worker(app: App, cell: CellMapping, stack: ExitStack) -> None:
    worker = Worker(app, cell, "new-host", 0.5).start()
    stack.callback(worker.stop)
    for srv in worker._servers:
        ready = getattr(srv._listener, "ready", None)
        assert ready is None or ready.wait(15)


@pytest.fixture(params=["memory", "rabbit"])
def transports(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    if request.param == "memory":
        yield {"old": "memory://old", "new": "memory://new"}
        return
    broker = Broker()
    broker.check()
    try:
        yield {"old": broker.new_vhost(), "new": broker.new_vhost()}
    finally:
        broker.drop_all()


def test_an_older_worker_gets_calls_at_its_cells_capped_version(
    server: Server, tmp_path: Path, transports: dict[str, str]
) -> None:
    conf, _ = _deploy(server, tmp_path, transports)
    with App(load_settings(conf)) as app, ExitStack() as stack:
        old, new = app.cells.get(CTX, "old"), app.cells.get(CTX, "new")
        _old_worker(app, old, stack)
        _new_worker(app, new, stack)
        caps = VersionCaps(app)
        found = {v.cell: v for v in caps.refresh()}
        assert (found["old"].rpc_version, found["old"].source) == (OLD, "live")
        assert found["old"].min_service_version == 0
        assert (found["new"].rpc_version, found["new"].source) == (RPC_VERSION, "live")
        assert caps.version_for(old) == OLD and caps.version_for(new) == RPC_VERSION == "1.1"

        # Uncapped, this release's version is refused by the old worker ...
        with pytest.raises(UnsupportedVersion):
            app.rpc.client(CTX.for_cell(old), Target(TOPIC, version=RPC_VERSION)).prepare(
                timeout=10
            ).call("ping")
        # ... and the API's own calls, capped, are served: a build (cast), an action (call).
        service = InstanceService(
            app, app.settings.service, Metrics(app.cells, app.breakers, app.retries), caps
        )
        user = RequestContext(request_id="req-caps-user", project_id="p1", roles=("member",))
        for cell in (old, new):
            made = service.create(user, f"vm-{cell.name}", cell.name)

            def state(uuid: str = made["uuid"], c: CellMapping = cell) -> str:
                with app.db.session(CTX.for_cell(c), read_only=True) as s:
                    found = s.scalar(select(InstanceRow.vm_state).where(InstanceRow.uuid == uuid))
                    return str(found)

            wait_for(f"the build in cell {cell.name}", lambda: state() == "active", 20)
            assert service.action(user, made["uuid"], "stop")["status"] == "stopped"
        answer = (
            app.rpc.client(CTX.for_cell(new), Target(TOPIC, version="1.1"))
            .prepare(timeout=10)
            .call("ping")
        )
        assert answer["service_version"] == 1  # 1.1's addition, from the new worker


def test_a_cell_down_at_start_is_capped_at_its_last_known_version(
    server: Server, tmp_path: Path
) -> None:
    with ExitStack() as outer:
        proxy, port = None, None
        if server.kind != "sqlite":  # the old cell's database behind a proxy, to take it away
            proxy = outer.enter_context(
                TcpProxy("127.0.0.1", {"mariadb": 3306, "postgresql": 5432}[server.kind])
            )
            port = proxy.port
        conf, urls = _deploy(
            server, tmp_path, {"old": "memory://old", "new": "memory://new"}, proxy_port=port
        )
        with App(load_settings(conf)) as app, ExitStack() as stack:
            _old_worker(app, app.cells.get(CTX, "old"), stack)
            _new_worker(app, app.cells.get(CTX, "new"), stack)
            read = {v.cell: v.rpc_version for v in read_worker_versions(app)}
            assert read == {"old": OLD, "new": RPC_VERSION}
        assert (tmp_path / "state" / LAST_KNOWN_FILE).is_file()

        # The old cell's database goes away (its workers with it), then the API starts.
        if proxy is not None:
            proxy.blackhole()
        else:
            path = Path(str(urls["old"].database))
            shutil.move(path, path.with_suffix(".gone"))
        with App(load_settings(conf)) as app:
            started = HttpServer(create_api(app, app.settings.service), "127.0.0.1", 0).start()
            try:
                with httpx.Client(base_url=started.url, timeout=30) as client:
                    assert client.get("/metrics").status_code == 200  # up, not waiting
                caps = VersionCaps(app)
                old = app.cells.get(CTX, "old")
                assert caps.version_for(old) == OLD  # at once, from the last-known file
                found = {v.cell: v for v in caps.refresh()}
                assert found["old"].source == "last-known" and found["old"].error
                assert found["old"].rpc_version == OLD
                assert caps.version_for(old) == OLD
            finally:
                started.stop()


def test_a_cell_never_seen_is_capped_at_the_oldest_supported_version(
    server: Server, tmp_path: Path
) -> None:
    conf, urls = _deploy(server, tmp_path, {"old": "memory://old"})
    with App(load_settings(conf)) as app:
        caps = VersionCaps(app, ttl=3600)
        # No worker has reported yet: nothing known, the oldest version this release speaks.
        assert caps.version_for(app.cells.get(CTX, "old")) == MIN_RPC_VERSION
