"""Fault injection against the real servers: the service keeps its promises when they misbehave.

Each test puts a :class:`~tests.support.TcpProxy` between the in-process service
(``App`` + the REST API, as ``all-in-one`` runs it) and one real server, then
makes that server die mid-request, slow down, hang, or drop every broker
connection, and checks four things:

- nothing hangs past its deadline (bounds are the configured timeouts plus a
  generous slack: these tests are about "no hang", not about speed);
- the other cells are unaffected;
- no row is lost or half-written: the API database's instance mappings and the
  cell databases' instance rows agree, read directly (not through the App);
- recovery happens without a restart: the same ``App`` and HTTP server serve
  again once the proxy forwards again.

Every response body and header, and every error the client side sees, is
scanned for the databases' and brokers' (awkward) passwords.

"Mid-request" is made deterministic by firing the fault from inside the App's
own database calls (a SQLAlchemy event on the cell's engine), either just
before a statement is sent, at the COMMIT, or a moment after a statement was
sent while its answer is held in the proxy (a real mid-stream RST). The
databases are MariaDB and PostgreSQL (SQLite has no socket to cut); the broker
test uses SQLite databases and the real RabbitMQ. Nothing here restarts a real
server: other tests share them.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy
from sqlalchemy import event, text
from sqlalchemy.engine import Engine

from cellgate import App, RequestContext, load_settings
from cellgate.apidb.mappings import create_cell
from cellgate.errors import CellgateError, CellUnavailable, RPCTimeout
from cellgate.migrations.runner import MigrationLine, upgrade
from cellgate.rpc.target import Target
from cellgate.service.compute import TOPIC, VERSION, Worker
from cellgate.service.http import create_api
from cellgate.service.runner import HttpServer
from cellgate.sql.api_database import ApiDatabase
from cellgate.sql.engines import make_engine
from cellgate.urls import DatabaseURL, TemplateDefaults, TransportURL
from tests.functional.test_e2e_processes import assert_error_shape, wait_for
from tests.functional.test_secret_scanner import Scanner, Secret
from tests.support import Broker, Server, TcpProxy

pytestmark = pytest.mark.backends

DEFAULTS = TemplateDefaults(database=None, transport=None)
CTX = RequestContext(request_id="req-faults")

CELL_TIMEOUT = 2.0  # [api] cell_timeout
CONNECT_TIMEOUT = 2.0  # [database], [api_database] and [rpc] connect_timeout
QUERY_TIMEOUT = 5.0  # [database] and [api_database] query_timeout
RPC_TIMEOUT = 3.0  # [DEFAULT] rpc_response_timeout
CACHE_TTL = 120.0  # [cells] cache_ttl: every API-database-down check runs within it
SLACK = 4.0  # added to every bound: a loaded CI machine, never a hidden hang
BREAKER_COOLDOWN = 1.0  # [cells] breaker_cooldown: a tripped cell is probed again this soon
RECOVERY = 20.0  # seconds a recovery may take (reconnects with backoff, pools refilling)

ADMIN_TOKEN = Secret("admin token", "adm-faults-Kq7sV2x")
DEMO_TOKEN = Secret("demo token", "demo-faults-Kq7tW4y")
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN.password}"}
DEMO = {"Authorization": f"Bearer {DEMO_TOKEN.password}"}


# -- a running service whose servers can misbehave ------------------------------------------


@dataclass(frozen=True)
class CellSpec:
    direct: DatabaseURL  # how the test reads the database itself
    mapped: str  # the database URL in the cell mapping (maybe through a proxy)
    transport: str


@dataclass
class Rig:
    """The App, its REST API over real HTTP, and direct access to every database."""

    app: App
    http: httpx.Client
    scanner: Scanner
    api_url: DatabaseURL
    cells: dict[str, CellSpec]
    workers: dict[str, Worker] = field(default_factory=dict)

    def request(
        self, method: str, path: str, *, headers: dict[str, str] = DEMO, **kwargs: Any
    ) -> httpx.Response:
        response = self.http.request(method, path, headers=headers, **kwargs)
        where = f"{method} {path} -> {response.status_code}"
        self.scanner.scan(f"{where} [body]", response.content)
        self.scanner.scan(f"{where} [headers]", repr(response.headers.multi_items()))
        return response

    def timed(self, method: str, path: str, **kwargs: Any) -> tuple[httpx.Response, float]:
        started = time.monotonic()
        response = self.request(method, path, **kwargs)
        return response, time.monotonic() - started

    def boot(self, cell: str, name: str) -> str:
        booted = self.request("POST", "/v1/instances", json={"name": name, "cell": cell})
        assert booted.status_code == 202, booted.text
        uuid: str = booted.json()["instance"]["uuid"]
        return uuid

    def listing(self) -> dict[str, Any]:
        response = self.request("GET", "/v1/instances")
        assert response.status_code == 200, response.text
        page: dict[str, Any] = response.json()
        return page

    def engine_of(self, cell: str) -> Engine:
        """The App's own engine for ``cell`` (the one its requests use)."""
        return self.app.engines.get(self.app.db.url_for(self.app.cells.get(CTX, cell)))

    # -- the truth, read around the App ------------------------------------------------------
    def mapped(self) -> dict[str, str]:
        """instance uuid -> cell name, from the API database's instance mappings."""
        rows = _read(
            self.api_url,
            "SELECT m.instance_uuid, c.name FROM instance_mapping m "
            "JOIN cell_mapping c ON c.id = m.cell_id",
        )
        return {str(uuid): str(cell) for uuid, cell in rows}

    def stored(self) -> dict[str, str]:
        """instance uuid -> cell name, from every cell database's live instance rows."""
        found: dict[str, str] = {}
        for name, spec in self.cells.items():
            for (uuid,) in _read(spec.direct, "SELECT uuid FROM instances WHERE deleted = 0"):
                assert str(uuid) not in found, f"instance {uuid} is in two cells"
                found[str(uuid)] = name
        return found

    def assert_consistent(self, created: dict[str, str]) -> None:
        """Every accepted create is in both databases, in its cell; nothing else is."""
        assert self.mapped() == created, "the API database's mappings are not what was created"
        assert self.stored() == created, "the cell databases' rows are not what was created"


def _read(url: DatabaseURL, query: str) -> list[tuple[Any, ...]]:
    engine = make_engine(url, connect_timeout=CONNECT_TIMEOUT, query_timeout=QUERY_TIMEOUT)
    try:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.execute(text(query))]
    finally:
        engine.dispose()


def _via(url: DatabaseURL, proxy: TcpProxy) -> str:
    """``url`` (password and all) with its port replaced by the proxy's."""
    return DatabaseURL(url.sqlalchemy_url.set(port=proxy.port)).render(hide_password=False)


def _db_secret(name: str, url: DatabaseURL) -> Secret:
    parsed = url.sqlalchemy_url
    assert parsed.password is not None, "the test databases' URLs carry passwords"
    return Secret(name, str(parsed.password), parsed.username)


def _mq_secret(name: str, url: str) -> Secret:
    host = TransportURL.parse(url).hosts[0]
    assert host.password is not None
    return Secret(name, host.password, host.username)


@contextmanager
def running(
    tmp: Path,
    *,
    api_direct: DatabaseURL,
    api_mapped: str,
    cells: dict[str, CellSpec],
    scanner: Scanner,
    workers: bool = False,
) -> Iterator[Rig]:
    """Migrate and map everything, then run the App and its REST API until the block ends."""
    conf = tmp / "faults.conf"
    conf.write_text(
        "[DEFAULT]\n"
        f"state_path = {tmp / 'state'}\n"
        f"rpc_response_timeout = {RPC_TIMEOUT:g}\n"
        "[api_database]\n"
        f"connection = {api_mapped}\n"
        f"connect_timeout = {CONNECT_TIMEOUT:g}\n"
        f"query_timeout = {QUERY_TIMEOUT:g}\n"
        "[database]\n"
        f"connect_timeout = {CONNECT_TIMEOUT:g}\n"
        f"query_timeout = {QUERY_TIMEOUT:g}\n"
        "[rpc]\n"
        f"connect_timeout = {CONNECT_TIMEOUT:g}\n"
        "[cells]\n"
        f"cache_ttl = {CACHE_TTL:g}\n"
        f"breaker_cooldown = {BREAKER_COOLDOWN:g}\n"
        "[api]\n"
        f"auth_tokens = {ADMIN_TOKEN.password}:admin:admin+member, "
        f"{DEMO_TOKEN.password}:demo:member\n"
        f"cell_timeout = {CELL_TIMEOUT:g}\n"
        "[worker]\n"
        "heartbeat_interval = 0.5\n",
        encoding="utf-8",
    )
    settings = load_settings(conf)
    api = ApiDatabase(settings.api_database)
    try:
        api.upgrade()
        with api.session() as s:
            for name, spec in cells.items():
                engine = make_engine(
                    spec.direct,
                    connect_timeout=CONNECT_TIMEOUT,
                    query_timeout=QUERY_TIMEOUT,
                    create_missing=True,
                )
                upgrade(engine, MigrationLine.CELL)
                engine.dispose()
                create_cell(
                    s,
                    name=name,
                    transport_url=spec.transport,
                    database_connection=spec.mapped,
                    defaults=DEFAULTS,
                )
    finally:
        api.close()
    with App(settings) as app:
        started: dict[str, Worker] = {}
        try:
            for name in cells if workers else ():
                worker = Worker(app, app.cells.get(CTX, name), f"{name}-host", 0.5)
                started[name] = worker.start()
                for srv in worker._servers:
                    ready = getattr(srv._listener, "ready", None)
                    assert ready is None or ready.wait(15), f"{name}'s worker did not start"
            server = HttpServer(create_api(app, settings.service), "127.0.0.1", 0).start()
            try:
                with httpx.Client(base_url=server.url, timeout=60) as client:
                    yield Rig(app, client, scanner, api_direct, cells, started)
            finally:
                server.stop()
        finally:
            for worker in started.values():
                worker.stop()
    scanner.assert_clean()


@contextmanager
def running_direct(
    server: Server, tmp: Path, cells: dict[str, CellSpec], scanner: Scanner, **kwargs: Any
) -> Iterator[Rig]:
    """:func:`running` on a fresh API database, mapped as reached (no proxy in front)."""
    api = server.new_database()
    if server.kind != "sqlite":
        scanner.secrets.append(_db_secret("API database", api))
    with running(
        tmp,
        api_direct=api,
        api_mapped=api.render(hide_password=False),
        cells=cells,
        scanner=scanner,
        **kwargs,
    ) as rig:
        yield rig


@dataclass
class _Fault:
    """Fire ``fault`` once from inside the App's database calls on one engine.

    ``match`` picks the statement (a substring of its SQL). Without
    ``at_commit`` the fault runs just before that statement is sent; with it,
    at the COMMIT of the transaction that sent it (after everything else in
    the request happened, the API database's mapping included).
    """

    engine: Engine
    match: str
    fault: Callable[[], None]
    at_commit: bool = False
    fired: threading.Event = field(default_factory=threading.Event)
    _armed: set[int] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _fire(self) -> None:
        with self._lock:
            if self.fired.is_set():
                return
            self.fired.set()
        self.fault()

    def _on_statement(
        self, conn: sqlalchemy.Connection, _cursor: Any, statement: str, *_: Any
    ) -> None:
        if self.match in statement and not self.fired.is_set():
            if self.at_commit:
                self._armed.add(id(conn))
            else:
                self._fire()

    def _on_commit(self, conn: sqlalchemy.Connection) -> None:
        if id(conn) in self._armed:
            self._fire()

    def __enter__(self) -> _Fault:
        event.listen(self.engine, "before_cursor_execute", self._on_statement)
        event.listen(self.engine, "commit", self._on_commit)
        return self

    def __exit__(self, *_exc: object) -> None:
        event.remove(self.engine, "before_cursor_execute", self._on_statement)
        event.remove(self.engine, "commit", self._on_commit)


def _mid_stream(proxy: TcpProxy, *, then_dead: bool) -> Callable[[], None]:
    """A fault that holds the statement's answer in the proxy, then resets the connection.

    The statement has reached the server and the client waits for the answer
    when the RST arrives. With ``then_dead`` the database stays dead (new connections hang)
    until ``proxy.forward()``; without, it is back at once, as after a quick restart.
    """

    def kill() -> None:
        proxy.latency = 0.0  # for what comes next; the held answer keeps its delay
        proxy.reset()
        if then_dead:
            proxy.blackhole()

    def fault() -> None:
        proxy.latency = 1.0
        threading.Timer(0.3, kill).start()

    return fault


def _dies(proxy: TcpProxy) -> Callable[[], None]:
    """A fault that resets every live connection now; new ones still reach the server."""
    return proxy.reset


# -- fixtures -----------------------------------------------------------------------------


@pytest.fixture
def scanner() -> Scanner:
    return Scanner([ADMIN_TOKEN, DEMO_TOKEN])


@pytest.fixture
def cell_proxy(network_server: Server) -> Iterator[TcpProxy]:
    """A proxy in front of the database server (for the cells mapped through it)."""
    with TcpProxy("127.0.0.1", _port(network_server)) as proxy:
        yield proxy


def _port(server: Server) -> int:
    return 3306 if server.kind == "mariadb" else 5432


def _cells(
    server: Server, scanner: Scanner, proxy: TcpProxy, names: list[str], proxied: str
) -> dict[str, CellSpec]:
    specs = {}
    for name in names:
        direct = server.new_database()
        scanner.secrets.append(_db_secret(f"{name} database", direct))
        mapped = _via(direct, proxy) if name == proxied else direct.render(hide_password=False)
        specs[name] = CellSpec(direct, mapped, f"memory://{name}")
    return specs


@pytest.fixture
def two_cells(
    network_server: Server, cell_proxy: TcpProxy, scanner: Scanner, tmp_path: Path
) -> Iterator[Rig]:
    """cell1 reached directly, cell2 through ``cell_proxy``; memory:// transports."""
    cells = _cells(network_server, scanner, cell_proxy, ["cell1", "cell2"], "cell2")
    with running_direct(network_server, tmp_path, cells, scanner) as rig:
        yield rig


# -- a cell database dies mid-request ----------------------------------------------------


def test_a_cell_database_dying_mid_request_is_contained_and_recovers(
    two_cells: Rig, cell_proxy: TcpProxy
) -> None:
    rig, proxy = two_cells, cell_proxy
    created = {
        rig.boot(cell, f"vm-{cell}-{i}"): cell for cell in ("cell1", "cell2") for i in (1, 2)
    }
    in_cell = {
        c: sorted(u for u, cell in created.items() if cell == c) for c in ("cell1", "cell2")
    }
    for uuid in created:  # every location is now cached: shows need no API database
        assert rig.request("GET", f"/v1/instances/{uuid}").status_code == 200

    # Idle pooled connections closed cleanly (a graceful server restart, a
    # firewall ending idle flows): the pre-ping replaces them, nobody notices.
    proxy.drop()
    page = rig.listing()
    assert page["down_cells"] == [] and len(page["instances"]) == len(created)

    # A show in flight: its query is on the wire when the connection is reset.
    with _Fault(
        rig.engine_of("cell2"), "FROM instances", _mid_stream(proxy, then_dead=False)
    ) as f:
        shown, took = rig.timed("GET", f"/v1/instances/{in_cell['cell2'][0]}")
    assert f.fired.is_set()
    assert shown.status_code == 503, shown.text
    assert assert_error_shape(shown)["code"] in {"CellUnavailable", "CellTimeout"}
    assert took <= CELL_TIMEOUT + SLACK, f"a show on a dying cell took {took:.1f} s"
    # The database is back at once (a quick restart): so is the show, same App.
    again = rig.request("GET", f"/v1/instances/{in_cell['cell2'][0]}")
    assert again.status_code == 200, again.text

    # A list in flight: cell2 dies mid-stream and stays dead.
    with _Fault(rig.engine_of("cell2"), "FROM instances", _mid_stream(proxy, then_dead=True)) as f:
        listed, took = rig.timed("GET", "/v1/instances")
    assert f.fired.is_set()
    assert listed.status_code == 200, listed.text
    assert took <= CELL_TIMEOUT + SLACK, f"a list with a dying cell took {took:.1f} s"
    page = listed.json()
    assert [c["name"] for c in page["down_cells"]] == ["cell2"] and page["down_cells"][0]["reason"]
    by_uuid = {i["uuid"]: i for i in page["instances"]}
    assert sorted(by_uuid) == sorted(created)
    for uuid in in_cell["cell1"]:  # cell1 is unaffected: full records
        assert "cell_down" not in by_uuid[uuid] and by_uuid[uuid]["name"].startswith("vm-cell1")
    for uuid in in_cell["cell2"]:  # cell2's from the API database, marked
        assert by_uuid[uuid]["cell_down"] is True and by_uuid[uuid]["status"] == "UNKNOWN"

    # While it is dead (new connections hang): answers stay bounded, cell1 serves.
    shown, took = rig.timed("GET", f"/v1/instances/{in_cell['cell2'][0]}")
    assert shown.status_code == 503, shown.text
    assert_error_shape(shown)
    assert took <= CELL_TIMEOUT + SLACK, f"a show on a dead cell took {took:.1f} s"
    assert rig.request("GET", f"/v1/instances/{in_cell['cell1'][0]}").status_code == 200
    refused, took = rig.timed("POST", "/v1/instances", json={"name": "vm-x", "cell": "cell2"})
    assert refused.status_code == 503, refused.text
    assert assert_error_shape(refused)["code"] in {"CellUnavailable", "CellTimeout"}
    assert took <= CONNECT_TIMEOUT + SLACK, f"a create on a dead cell took {took:.1f} s"
    scheduled, took = rig.timed("POST", "/v1/instances", json={"name": "vm-anywhere"})
    assert scheduled.status_code == 202, scheduled.text
    assert scheduled.json()["instance"]["cell"] == "cell1"  # the only cell that answered
    assert took <= CELL_TIMEOUT + SLACK, f"a create while a cell is dead took {took:.1f} s"
    created[scheduled.json()["instance"]["uuid"]] = "cell1"

    # The database comes back: the same App sees it, no restart, no reload.
    proxy.forward()
    wait_for("the listing to recover", lambda: rig.listing()["down_cells"] == [], RECOVERY, 0.5)
    page = rig.listing()
    assert sorted(i["uuid"] for i in page["instances"]) == sorted(created)
    assert not any(i.get("cell_down") for i in page["instances"])
    assert rig.request("GET", f"/v1/instances/{in_cell['cell2'][1]}").status_code == 200
    created[rig.boot("cell2", "vm-after")] = "cell2"
    rig.assert_consistent(created)


def test_a_create_whose_cell_database_dies_leaves_no_orphan(
    two_cells: Rig, cell_proxy: TcpProxy
) -> None:
    """Three moments of death; each create ends with its row and its mapping, or neither.

    By the COMMIT the API database's mapping is already committed, so a failed
    commit must undo it, unless the commit did happen and only its answer was
    lost: then the instance exists in full and the create has succeeded.
    """
    rig, proxy = two_cells, cell_proxy
    created = {rig.boot("cell1", "vm-a"): "cell1", rig.boot("cell2", "vm-b"): "cell2"}
    faults: list[tuple[str, bool, Callable[[], None], set[int]]] = [
        ("before the INSERT is sent", False, _dies(proxy), {503}),
        ("before the COMMIT is sent", True, _dies(proxy), {503}),
        ("the COMMIT's answer is lost", True, _mid_stream(proxy, then_dead=False), {202}),
    ]
    for i, (when, at_commit, fault, expected) in enumerate(faults):
        with _Fault(rig.engine_of("cell2"), "INSERT INTO instances", fault, at_commit) as f:
            answer, took = rig.timed(
                "POST", "/v1/instances", json={"name": f"vm-dies-{i}", "cell": "cell2"}
            )
        assert f.fired.is_set(), f"{when}: the fault never fired"
        assert answer.status_code in expected, f"{when}: {answer.text}"
        if answer.status_code == 202:
            created[answer.json()["instance"]["uuid"]] = "cell2"
        else:
            assert assert_error_shape(answer)["code"] in {"CellUnavailable", "CellTimeout"}
        assert took <= CONNECT_TIMEOUT + QUERY_TIMEOUT + SLACK, f"{when}: took {took:.1f} s"
        # No mapping without its row, no row without its mapping, in both databases.
        rig.assert_consistent(created)
        # The server never went away (only the connections did): the next create works.
        created[rig.boot("cell2", f"vm-next-{i}")] = "cell2"
    created[rig.boot("cell1", "vm-e")] = "cell1"
    rig.assert_consistent(created)
    page = rig.listing()
    assert page["down_cells"] == [] and len(page["instances"]) == len(created)


# -- a slow cell among fast ones ------------------------------------------------------------


@pytest.fixture
def three_cells(
    network_server: Server, cell_proxy: TcpProxy, scanner: Scanner, tmp_path: Path
) -> Iterator[Rig]:
    """cell1 and cell3 reached directly, cell2 through ``cell_proxy``."""
    cells = _cells(network_server, scanner, cell_proxy, ["cell1", "cell2", "cell3"], "cell2")
    with running_direct(network_server, tmp_path, cells, scanner) as rig:
        yield rig


def test_a_slow_cell_among_fast_ones(three_cells: Rig, cell_proxy: TcpProxy) -> None:
    rig, proxy = three_cells, cell_proxy
    created = {rig.boot(c, f"vm-{c}"): c for c in ("cell1", "cell2", "cell3")}
    slow = next(u for u, c in created.items() if c == "cell2")
    for uuid in created:
        assert rig.request("GET", f"/v1/instances/{uuid}").status_code == 200

    # Slower than the deadline: every round trip to cell2 costs twice cell_timeout.
    proxy.latency = CELL_TIMEOUT
    listed, took = rig.timed("GET", "/v1/instances")
    assert listed.status_code == 200, listed.text
    assert took <= CELL_TIMEOUT + SLACK, f"a list with a slow cell took {took:.1f} s"
    page = listed.json()
    assert [(c["name"], c["reason"]) for c in page["down_cells"]] == [
        ("cell2", "no answer within the deadline")
    ]
    records = {i["uuid"]: i for i in page["instances"]}
    assert sorted(records) == sorted(created)
    for uuid, cell in created.items():
        assert bool(records[uuid].get("cell_down")) == (cell == "cell2"), records[uuid]
    shown, took = rig.timed("GET", f"/v1/instances/{slow}")
    assert shown.status_code == 503 and assert_error_shape(shown)["code"] == "CellTimeout"
    assert took <= CELL_TIMEOUT + SLACK, f"a show on a slow cell took {took:.1f} s"
    fast = rig.request("GET", f"/v1/instances/{next(iter(created))}")
    assert fast.status_code == 200, fast.text  # within cell_timeout, or it would be a 503

    # Back to normal: the calls written off finish in the background, the pool refills.
    proxy.latency = 0.0
    wait_for("cell2 to be fast again", lambda: rig.listing()["down_cells"] == [], RECOVERY, 0.5)

    # Slower than usual but within the deadline: cell2 is included, in full.
    proxy.latency = 0.05
    page = rig.listing()
    assert page["down_cells"] == [], page["down_cells"]
    assert sorted(i["uuid"] for i in page["instances"]) == sorted(created)
    assert not any(i.get("cell_down") for i in page["instances"])
    assert rig.request("GET", f"/v1/instances/{slow}").status_code == 200
    proxy.latency = 0.0
    rig.assert_consistent(created)


# -- the API database becomes unreachable --------------------------------------------------


@pytest.fixture
def api_proxy(network_server: Server) -> Iterator[TcpProxy]:
    with TcpProxy("127.0.0.1", _port(network_server)) as proxy:
        yield proxy


@pytest.fixture
def proxied_api(
    network_server: Server, api_proxy: TcpProxy, scanner: Scanner, tmp_path: Path
) -> Iterator[Rig]:
    """The API database through ``api_proxy``; cell1 and cell2 reached directly."""
    api = network_server.new_database()
    scanner.secrets.append(_db_secret("API database", api))
    cells = _cells(network_server, scanner, api_proxy, ["cell1", "cell2"], "")
    with running(
        tmp_path, api_direct=api, api_mapped=_via(api, api_proxy), cells=cells, scanner=scanner
    ) as rig:
        yield rig


def test_the_api_database_unreachable(proxied_api: Rig, api_proxy: TcpProxy) -> None:
    rig, proxy = proxied_api, api_proxy
    created = {rig.boot(c, f"vm-{c}") for c in ("cell1", "cell2")}
    for uuid in created:  # located once: cached from now on
        assert rig.request("GET", f"/v1/instances/{uuid}").status_code == 200
    unseen = rig.boot("cell2", "vm-unseen")  # its location was never looked up
    owners = {u: c for u, c in rig.mapped().items()}
    api_bound = CONNECT_TIMEOUT + SLACK  # the pooled connections are dead: one new connect

    proxy.blackhole()
    # What the caches can answer keeps working (within [cells] cache_ttl).
    listed, took = rig.timed("GET", "/v1/instances")
    assert listed.status_code == 200, listed.text
    assert took <= CELL_TIMEOUT + SLACK, f"a list without the API database took {took:.1f} s"
    assert listed.json()["down_cells"] == []
    assert {i["uuid"] for i in listed.json()["instances"]} == {*created, unseen}
    for uuid in created:
        assert rig.request("GET", f"/v1/instances/{uuid}").status_code == 200
    cells = rig.request("GET", "/v1/cells", headers=ADMIN)
    assert cells.status_code == 200, cells.text
    assert all(c["health"]["reachable"] for c in cells.json()["cells"])

    # What needs the API database fails fast, with 503 and the one error shape
    # (asked at once: each is bounded on its own, none waits for another).
    needs_api = [
        ("GET", f"/v1/instances/{unseen}", None),
        ("POST", "/v1/instances", {"name": "vm-lost"}),
        ("GET", "/v1/hosts", None),
    ]
    with ThreadPoolExecutor(len(needs_api)) as pool:
        answers = pool.map(lambda r: rig.timed(r[0], r[1], json=r[2], headers=ADMIN), needs_api)
        for (method, path, _), (failed, took) in zip(needs_api, answers, strict=True):
            assert failed.status_code == 503, f"{method} {path}: {failed.text}"
            assert assert_error_shape(failed)["code"] in {"BackendUnavailable", "BackendTimeout"}
            assert "API database" in failed.json()["error"]["message"]
            assert took <= CELL_TIMEOUT + api_bound, f"{method} {path} took {took:.1f} s"

    # SIGHUP reloads in the background: the old mappings keep serving meanwhile.
    assert rig.app.reload() is False  # the reload is stuck behind the blackhole
    listed, took = rig.timed("GET", "/v1/instances")
    assert listed.status_code == 200, listed.text
    assert took <= CELL_TIMEOUT + SLACK, f"a list during a SIGHUP reload took {took:.1f} s"
    # With the snapshot dropped (what an in-process write does), a list fails fast too.
    rig.app.cells.invalidate()
    failed, took = rig.timed("GET", "/v1/instances")
    assert failed.status_code == 503, failed.text
    assert_error_shape(failed)
    assert took <= api_bound, f"a list with no cache and no API database took {took:.1f} s"

    # Back: the same App recovers without a restart, and nothing was half-written.
    proxy.forward()
    wait_for(
        "the API database to be used again",
        lambda: rig.request("GET", "/v1/instances").status_code == 200,
        RECOVERY,
        0.5,
    )
    shown = rig.request("GET", f"/v1/instances/{unseen}")
    assert shown.status_code == 200, shown.text
    owners[rig.boot("cell1", "vm-after")] = "cell1"
    assert rig.request("GET", "/v1/hosts", headers=ADMIN).status_code == 200
    rig.assert_consistent(owners)  # the refused create left no row in any cell


# -- the broker drops every connection during a call loop --------------------------------------


@dataclass
class CallLoop:
    """Calls ``ping`` on one cell's workers back to back, recording every outcome."""

    app: App
    cell: str
    outcomes: list[tuple[str, float, BaseException | None]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        cctx = CTX.for_cell(self.app.cells.get(CTX, self.cell))
        client = self.app.rpc.client(cctx, Target(TOPIC, version=VERSION))
        client = client.prepare(timeout=RPC_TIMEOUT)
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                answer = client.call("ping")
                assert answer["cell"] == self.cell, answer
                self.outcomes.append(("ok", time.monotonic() - started, None))
            except CellgateError as exc:
                self.outcomes.append((type(exc).__name__, time.monotonic() - started, exc))
                time.sleep(0.1)

    def oks_since(self, index: int) -> int:
        return sum(1 for what, _, _ in self.outcomes[index:] if what == "ok")


@pytest.mark.timeout(180)
def test_the_broker_drops_every_connection_during_a_call_loop(
    tmp_path: Path, broker: Broker, scanner: Scanner
) -> None:
    vhosts = {"r": broker.new_vhost(), "s": broker.new_vhost()}
    for name, url in vhosts.items():
        scanner.secrets.append(_mq_secret(f"cell {name} broker", url))
    with TcpProxy("127.0.0.1", 5672) as proxy:
        via_proxy = vhosts["r"].replace("@127.0.0.1:5672/", f"@127.0.0.1:{proxy.port}/")
        cells = {
            name: CellSpec(
                DatabaseURL.parse(f"sqlite:///{tmp_path}/{name}.sqlite"),
                f"sqlite:///{tmp_path}/{name}.sqlite",
                via_proxy if name == "r" else vhosts[name],
            )
            for name in vhosts
        }
        api = DatabaseURL.parse(f"sqlite:///{tmp_path}/api.sqlite")
        with running(
            tmp_path,
            api_direct=api,
            api_mapped=api.render(),
            cells=cells,
            scanner=scanner,
            workers=True,
        ) as rig:
            _broker_faults(rig, proxy, scanner)


def _broker_faults(rig: Rig, proxy: TcpProxy, scanner: Scanner) -> None:
    booted = {cell: rig.boot(cell, f"vm-{cell}") for cell in ("r", "s")}

    def active(uuid: str) -> bool:
        return bool(
            rig.request("GET", f"/v1/instances/{uuid}").json()["instance"]["status"] == "active"
        )

    for uuid in booted.values():  # the builds went over each cell's broker
        wait_for(f"{uuid} to be built", functools.partial(active, uuid), RECOVERY)
    loops = {cell: CallLoop(rig.app, cell) for cell in ("r", "s")}
    threads = [threading.Thread(target=loop.run, daemon=True) for loop in loops.values()]
    for thread in threads:
        thread.start()
    try:
        wait_for("calls to flow", lambda: loops["r"].oks_since(0) >= 3, RECOVERY)
        before = len(loops["r"].outcomes)

        # Every broker connection of cell r (clients' and the worker's) is reset
        # mid-stream, and the broker stays away for a while (new connections hang).
        proxy.reset()
        proxy.blackhole()
        acted, took = rig.timed(
            "POST", f"/v1/instances/{booted['r']}/action", json={"action": "reboot"}
        )
        assert acted.status_code in {503, 504}, acted.text
        assert assert_error_shape(acted)["code"] == "CellUnavailable"
        # One connect timeout for the one broker host: the connection cannot open.
        assert took < 2 * CONNECT_TIMEOUT, f"the action took {took:.1f} s"
        other = rig.request("POST", f"/v1/instances/{booted['s']}/action", json={"action": "stop"})
        assert other.status_code == 200, other.text  # cell s has its own broker connections
        time.sleep(1.0)
        proxy.forward()
        back = len(loops["r"].outcomes)

        wait_for("calls to succeed again", lambda: loops["r"].oks_since(back) >= 3, RECOVERY)
    finally:
        for loop in loops.values():
            loop.stop.set()
        for thread in threads:
            thread.join(timeout=RPC_TIMEOUT + CONNECT_TIMEOUT + SLACK)
    assert not any(t.is_alive() for t in threads), "a call hung past every timeout"

    during = loops["r"].outcomes[before:]
    failures = [(what, exc) for what, _, exc in during if exc is not None]
    assert failures, "no call failed: the broker's connections were not cut"
    for what, exc in failures:
        assert isinstance(exc, CellUnavailable | RPCTimeout), f"{what}: {exc}"
        scanner.scan_exception(f"RPC call while the broker was away ({what})", exc)
    bound = RPC_TIMEOUT + CONNECT_TIMEOUT + SLACK  # a new connection, then the reply
    slowest = max(took for _, took, _ in loops["r"].outcomes)
    assert slowest <= bound, f"a call took {slowest:.1f} s"
    assert all(what == "ok" for what, _, _ in loops["s"].outcomes), "cell s was affected"
    # The worker's consumer reconnected by itself (server side), and the API,
    # never restarted, acts on cell r again (client side).
    reconnects = sum(getattr(srv._listener, "reconnects", 0) for srv in rig.workers["r"]._servers)
    assert reconnects >= 1, "the worker's consumer never noticed the broker going away"
    for action, status in (("stop", "stopped"), ("start", "active")):
        done = rig.request("POST", f"/v1/instances/{booted['r']}/action", json={"action": action})
        assert done.status_code == 200, done.text
        assert done.json()["instance"]["status"] == status
    rig.assert_consistent({uuid: cell for cell, uuid in booted.items()})
