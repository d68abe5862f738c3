"""The per-cell circuit breaker on real databases and a real broker.

cell2's database (or broker) sits behind a :class:`TcpProxy` that can
blackhole it. "Skipped" is proved by the proxy's count of accepted
connections, which must not move while the breaker is open, never by timing.
The App's breakers read a fake clock, so the cool-down passes when the test
says so; the failures themselves are real connect timeouts through the proxy.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote
from uuid import uuid4

import httpx
import pytest
import sqlalchemy.exc
from kombu.connection import Connection

from cellgate import (
    App,
    BackendError,
    BackendUnavailable,
    CellUnavailable,
    Failed,
    Ok,
    RequestContext,
    RPCTimeout,
    load_settings,
)
from cellgate.apidb.mappings import create_cell
from cellgate.celldb import queries
from cellgate.errors import InstanceNotFound
from cellgate.keyset import SortKey
from cellgate.migrations.runner import MigrationLine, upgrade
from cellgate.results import CellResult
from cellgate.routing.breaker import BreakerState
from cellgate.rpc.amqp.queues import CLASSIC, EXCHANGE, declare, topic_queue
from cellgate.rpc.amqp.rabbit import kombu_urls
from cellgate.rpc.target import Target
from cellgate.service.compute import TOPIC
from cellgate.service.http import CellList, CellOne, create_api
from cellgate.service.runner import HttpServer
from cellgate.sql.api_database import ApiDatabase
from cellgate.sql.engines import make_engine
from cellgate.urls import DatabaseURL, TemplateDefaults, TransportURL, url_passwords
from tests.support import Broker, Server, TcpProxy

DEFAULTS = TemplateDefaults(database=None, transport=None)
CTX = RequestContext(request_id="req-breaker")
ADMIN = {"Authorization": "Bearer admin-tok"}
DEMO = {"Authorization": "Bearer demo-tok"}
THRESHOLD = 3
COOLDOWN = 30.0
SKIPPED = f"skipped: {THRESHOLD} consecutive failures, retrying after {COOLDOWN:g}s"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Deployment:
    app: App
    proxy: TcpProxy
    clock: FakeClock
    secrets: list[str]
    tmp: Path

    def count(self) -> dict[str, CellResult[int]]:
        """One scatter-gather over cell1 and cell2 (a count in each), by cell name."""

        def count(cctx: RequestContext) -> int:
            with self.app.db.session(cctx) as session:
                return queries.count_instances(session)

        results = self.app.scatter_gather(CTX, None, count, timeout=30)
        return {self.app.cells.get(CTX, u).label: r for u, r in results.items()}

    def cell2(self) -> CellResult[int]:
        return self.count()["cell2"]

    def state(self) -> BreakerState:
        return self.app.breakers.status(self.app.cells.get(CTX, "cell2").uuid).state

    def assert_no_secret(self, text: str) -> None:
        for secret in self.secrets:
            assert secret not in text and quote(secret, safe="") not in text, text


def _migrated(url: DatabaseURL) -> DatabaseURL:
    engine = make_engine(url, connect_timeout=5, query_timeout=30, create_missing=True)
    upgrade(engine, MigrationLine.CELL)
    engine.dispose()
    return url


def _via(url: DatabaseURL, port: int) -> str:
    """``url`` (password and all) with its port replaced by ``port``."""
    return DatabaseURL(url.sqlalchemy_url.set(port=port)).render(hide_password=False)


def _write_config(tmp: Path, api_url: DatabaseURL, threshold: int = THRESHOLD) -> Path:
    conf = tmp / "breaker.conf"
    conf.write_text(
        f"[api_database]\nconnection = {api_url.render(hide_password=False)}\n"
        # Failures through the blackhole end at the connect timeout (2 s: libpq's
        # minimum), well inside the deadlines, so each one is a Failed, not a TimedOut.
        "[database]\nconnect_timeout = 2\nquery_timeout = 5\n"
        "[rpc]\nconnect_timeout = 2\n"
        f"[cells]\nbreaker_threshold = {threshold}\nbreaker_cooldown = {COOLDOWN}\n"
        "[api]\nauth_tokens = admin-tok:admin:admin+member, demo-tok:demo:member\n"
        "cell_timeout = 20\n",
        encoding="utf-8",
    )
    return conf


@contextmanager
def _deployment(
    server: Server,
    tmp: Path,
    *,
    cell2_database: str | None = None,
    cell2_broker: str | None = None,
    threshold: int = THRESHOLD,
) -> Iterator[Deployment]:
    """cell1 direct; cell2 behind the proxy; the App's breakers on a fake clock.

    The proxy is in front of cell2's database (not SQLite's), or, given
    ``cell2_broker`` (a RabbitMQ URL), in front of that broker while the
    database is reached directly. ``cell2_database`` replaces cell2's database
    URL altogether.
    """
    api_url = server.new_database()
    cell1 = _migrated(server.new_database())
    cell2 = _migrated(server.new_database())
    secrets = [
        *url_passwords(api_url.render(hide_password=False)),
        *url_passwords(cell1.render(hide_password=False)),
        *url_passwords(cell2.render(hide_password=False)),
        *url_passwords(cell2_broker or ""),
    ]
    database_port = 3306 if server.kind == "mariadb" else 5432
    port = 5672 if cell2_broker else database_port
    settings = load_settings(_write_config(tmp, api_url, threshold))
    api = ApiDatabase(settings.api_database)
    clock = FakeClock()
    with TcpProxy("127.0.0.1", port) as proxy:
        if cell2_broker:
            transport = cell2_broker.replace("@127.0.0.1:5672/", f"@127.0.0.1:{proxy.port}/")
            database = cell2_database or cell2.render(hide_password=False)
        else:
            transport = "memory://cell2"
            direct = server.kind == "sqlite"  # a file: nothing to put a proxy in front of
            database = cell2_database or (
                cell2.render(hide_password=False) if direct else _via(cell2, proxy.port)
            )
        try:
            api.upgrade()
            with api.session() as s:
                create_cell(
                    s,
                    name="cell1",
                    transport_url="memory://cell1",
                    database_connection=cell1.render(hide_password=False),
                    defaults=DEFAULTS,
                )
                create_cell(
                    s,
                    name="cell2",
                    transport_url=transport,
                    database_connection=database,
                    defaults=DEFAULTS,
                )
        finally:
            api.close()
        with App(settings, clock=clock) as app:
            yield Deployment(app, proxy, clock, secrets, tmp)


def _reason(result: CellResult[Any]) -> str:
    assert isinstance(result, Failed), result
    return str(result.error)


# --------------------------------------------------------------------------
# the library path: app.db.session inside scatter_gather
# --------------------------------------------------------------------------


def test_a_blackholed_cell_is_skipped_then_probed_and_recovers(
    network_server: Server, tmp_path: Path
) -> None:
    with _deployment(network_server, tmp_path) as d:
        assert all(isinstance(r, Ok) for r in d.count().values())
        d.proxy.blackhole()
        for failures in range(1, THRESHOLD + 1):
            before = d.proxy.accepted
            results = d.count()
            assert isinstance(results["cell1"], Ok)  # a breaker is per cell
            reason = _reason(results["cell2"])
            assert "skipped" not in reason  # a real failure, through the proxy
            assert isinstance(results["cell2"], Failed)
            assert isinstance(results["cell2"].error, BackendError)
            assert d.proxy.accepted > before
            status = d.app.breakers.status(d.app.cells.get(CTX, "cell2").uuid)
            assert status.consecutive_failures == failures
        assert d.state() is BreakerState.OPEN

        # Open: every call to cell2 fails at once and nothing reaches its database.
        attempts = d.proxy.accepted
        for _ in range(5):
            reason = _reason(d.cell2())
            assert reason.startswith(f"cell cell2: {SKIPPED}; last error Cell"), reason
            d.assert_no_secret(reason)
            with (
                pytest.raises(CellUnavailable, match="skipped"),
                d.app.target_cell(CTX, "cell2") as cctx,
                d.app.db.session(cctx),
            ):
                pass
        assert d.proxy.accepted == attempts

        # After the cool-down one call probes; it fails, so the breaker re-opens.
        d.clock.now += COOLDOWN
        assert "skipped" not in _reason(d.cell2())
        assert d.proxy.accepted > attempts
        status = d.app.breakers.status(d.app.cells.get(CTX, "cell2").uuid)
        assert (status.state, status.trips, status.retry_after) == (
            BreakerState.OPEN,
            2,
            COOLDOWN,
        )
        attempts = d.proxy.accepted
        assert "skipped: 4 consecutive failures" in _reason(d.cell2())
        assert d.proxy.accepted == attempts

        # The database comes back: the next probe closes it, without a restart.
        d.proxy.forward()
        d.clock.now += COOLDOWN
        assert d.count() == {"cell1": Ok(0), "cell2": Ok(0)}
        assert d.proxy.accepted > attempts
        status = d.app.breakers.status(d.app.cells.get(CTX, "cell2").uuid)
        assert (status.state, status.consecutive_failures) == (BreakerState.CLOSED, 0)


@pytest.mark.parametrize("threshold", [0, THRESHOLD])
def test_threshold_zero_disables_it(server: Server, tmp_path: Path, threshold: int) -> None:
    # cell2's database does not exist: every real attempt fails fast with the
    # driver's own message ("does not exist", "Unknown database", ...).
    if server.kind == "sqlite":
        missing = f"sqlite:///{tmp_path}/missing.sqlite"
    else:
        missing = server.new_database().with_database("cgt_missing").render(hide_password=False)
    with _deployment(server, tmp_path, cell2_database=missing, threshold=threshold) as d:
        reasons = [_reason(d.cell2()) for _ in range(THRESHOLD + 3)]
    skipped = [r for r in reasons if "skipped" in r]
    if threshold == 0:
        assert skipped == []
    else:
        assert len(skipped) == 3 and reasons[THRESHOLD].startswith(f"cell cell2: {SKIPPED}")
    for reason in reasons:
        d.assert_no_secret(reason)


def test_application_errors_in_a_session_never_trip_it(server: Server, tmp_path: Path) -> None:
    with _deployment(server, tmp_path) as d:
        cell2 = d.app.cells.get(CTX, "cell2")
        cctx = CTX.for_cell(cell2)
        with d.app.db.session(cctx) as session:
            queries.add_instance(
                session, uuid=str(uuid4()), name="a", project_id="p", user_id=None
            )
        with d.app.db.session(cctx) as session:
            existing = queries.list_instances(
                session,
                project_id=None,
                keys=queries.with_tiebreak([SortKey("name")]),
                limit=1,
                after=None,
            )[0].uuid
        for _ in range(THRESHOLD + 2):
            # A real conflict from the real database: the cell answered.
            with pytest.raises(sqlalchemy.exc.IntegrityError), d.app.db.session(cctx) as session:
                queries.add_instance(
                    session, uuid=existing, name="b", project_id="p", user_id=None
                )
            # Errors of the caller's own code inside the block, even outages of
            # something else, are not this database's failures.
            with pytest.raises(InstanceNotFound), d.app.db.session(cctx):
                raise InstanceNotFound(uuid=existing)
            with pytest.raises(BackendUnavailable), d.app.db.session(cctx):
                raise BackendUnavailable(component="API database", reason="refused")
        status = d.app.breakers.status(cell2.uuid)
        assert (status.state, status.consecutive_failures) == (BreakerState.CLOSED, 0)


def test_an_unguarded_session_is_never_refused_and_never_counted(
    server: Server, tmp_path: Path
) -> None:
    """Undoing a half-done create must run even though its failure opened the breaker."""
    with _deployment(server, tmp_path) as d:
        cell2 = d.app.cells.get(CTX, "cell2")
        cctx = CTX.for_cell(cell2)
        for _ in range(THRESHOLD):
            d.app.breakers.admit(cell2).failed(CellUnavailable(component="cell2", reason="x"))
        assert d.state() is BreakerState.OPEN
        with pytest.raises(CellUnavailable, match="skipped"), d.app.db.session(cctx):
            pass
        with d.app.db.session(cctx, guarded=False) as session:
            assert queries.count_instances(session) == 0
        with (
            pytest.raises(BackendUnavailable),
            d.app.db.session(cctx, guarded=False),
        ):
            raise BackendUnavailable(component="cell2", reason="refused")
        status = d.app.breakers.status(cell2.uuid)
        assert (status.state, status.consecutive_failures) == (BreakerState.OPEN, THRESHOLD)


# --------------------------------------------------------------------------
# RPC: a broker that cannot be reached counts; a call nobody answers does not
# --------------------------------------------------------------------------


def test_an_unreachable_broker_trips_it_but_rpc_timeouts_never_do(
    broker: Broker, tmp_path: Path
) -> None:
    vhost = broker.new_vhost()
    assert "@127.0.0.1:5672/" in vhost
    with _deployment(Server("sqlite", tmp_path), tmp_path, cell2_broker=vhost) as d:
        proxy = d.proxy
        cell2 = d.app.cells.get(CTX, "cell2")
        nobody = Target("nobody-listens")
        # Through the proxy to RabbitMQ, to a topic no server listens on: every
        # call times out. The broker answered, so none of them counts.
        for _ in range(THRESHOLD + 2):
            client = d.app.rpc.client(CTX.for_cell(cell2), nobody).prepare(timeout=0.2)
            with pytest.raises(RPCTimeout):
                client.call("ping")
        assert d.app.breakers.status(cell2.uuid).state is BreakerState.CLOSED

        caster = d.app.rpc.client(CTX.for_cell(cell2), nobody)
        caster.cast("hello")  # through the proxy to RabbitMQ: works
        proxy.blackhole()
        for _ in range(THRESHOLD):
            with pytest.raises(CellUnavailable) as caught:
                caster.cast("hello")
            assert "skipped" not in str(caught.value)
        attempts = proxy.accepted
        with pytest.raises(CellUnavailable, match=f"cell cell2: {SKIPPED}") as caught:
            caster.cast("hello")
        d.assert_no_secret(str(caught.value))
        # Per cell, not per component: cell2's database is skipped too.
        with (
            pytest.raises(CellUnavailable, match="skipped"),
            d.app.db.session(CTX.for_cell(cell2)),
        ):
            pass
        assert proxy.accepted == attempts
        proxy.forward()
        d.clock.now += COOLDOWN
        caster.cast("hello")  # the probe gets through and closes it
        assert d.app.breakers.status(cell2.uuid).state is BreakerState.CLOSED
        assert proxy.accepted > attempts


# --------------------------------------------------------------------------
# the API: /v1/cells, /metrics, a list and a show while cell2 is skipped
# --------------------------------------------------------------------------


def _metric(text: str, name: str, cell: str) -> float:
    match = re.search(rf'^{name}{{cell="{cell}"}} (\S+)$', text, re.MULTILINE)
    assert match, f"{name} for {cell} not in:\n{text}"
    return float(match.group(1))


def test_the_api_reports_the_breaker_and_skips_an_open_cell(
    network_server: Server, tmp_path: Path
) -> None:
    with _deployment(network_server, tmp_path) as d:
        server = HttpServer(create_api(d.app, d.app.settings.service), "127.0.0.1", 0).start()
        try:
            with httpx.Client(base_url=server.url, timeout=60) as http:
                _check_api(d, http)
        finally:
            server.stop()


def _check_api(d: Deployment, http: httpx.Client) -> None:
    def get(path: str, headers: dict[str, str] = ADMIN) -> httpx.Response:
        response = http.get(path, headers=headers)
        d.assert_no_secret(response.text)
        return response

    booted = http.post("/v1/instances", json={"name": "vm", "cell": "cell2"}, headers=DEMO)
    assert booted.status_code == 202, booted.text
    uuid = booted.json()["instance"]["uuid"]
    cells = {c["name"]: c for c in get("/v1/cells").json()["cells"]}
    assert cells["cell2"]["breaker"] == {
        "state": "closed",
        "consecutive_failures": 0,
        "retry_after": None,
    }

    d.proxy.blackhole()
    for _ in range(THRESHOLD):
        page = get("/v1/instances", DEMO).json()
        assert [c["name"] for c in page["down_cells"]] == ["cell2"]
        assert "skipped" not in page["down_cells"][0]["reason"]

    attempts = d.proxy.accepted
    cells = {c["name"]: c for c in get("/v1/cells").json()["cells"]}
    assert cells["cell2"]["breaker"] == {
        "state": "open",
        "consecutive_failures": THRESHOLD,
        "retry_after": COOLDOWN,  # the fake clock has not moved
    }
    assert not cells["cell2"]["health"]["reachable"]
    assert SKIPPED in cells["cell2"]["health"]["error"]
    assert cells["cell1"]["breaker"]["state"] == "closed" and cells["cell1"]["health"]["reachable"]
    one = get("/v1/cells/cell2").json()["cell"]
    assert one["breaker"]["state"] == "open"

    page = get("/v1/instances", DEMO).json()
    assert [c["name"] for c in page["down_cells"]] == ["cell2"]
    assert page["down_cells"][0]["reason"].startswith(f"cell cell2: {SKIPPED}")
    assert [(i["uuid"], i["status"]) for i in page["instances"]] == [(uuid, "UNKNOWN")]
    shown = get(f"/v1/instances/{uuid}", DEMO)
    assert shown.status_code == 503, shown.text
    assert shown.json()["error"]["code"] == "CellUnavailable"
    assert SKIPPED in shown.json()["error"]["message"]
    assert d.proxy.accepted == attempts  # none of that reached cell2's database

    metrics = get("/metrics").text
    assert _metric(metrics, "cellgate_cell_breaker_state", "cell2") == 2
    assert _metric(metrics, "cellgate_cell_breaker_trips_total", "cell2") == 1
    assert _metric(metrics, "cellgate_cell_breaker_state", "cell1") == 0
    assert _metric(metrics, "cellgate_cell_breaker_trips_total", "cell1") == 0

    openapi = get("/openapi.json").json()
    assert set(openapi["components"]["schemas"]["CellBreaker"]["properties"]) == {
        "state",
        "consecutive_failures",
        "retry_after",
    }
    documented = openapi["paths"]["/v1/cells"]["get"]["responses"]["200"]
    assert documented["content"]["application/json"]["schema"]["$ref"].endswith("/CellList")
    CellList.model_validate(get("/v1/cells").json())  # the answer fits its documented model
    CellOne.model_validate(get("/v1/cells/cell2").json())

    d.proxy.forward()
    d.clock.now += COOLDOWN
    page = get("/v1/instances", DEMO).json()
    assert page["down_cells"] == [] and page["instances"][0]["name"] == "vm"
    cells = {c["name"]: c for c in get("/v1/cells").json()["cells"]}
    assert cells["cell2"]["breaker"]["state"] == "closed"
    assert cells["cell2"]["health"]["reachable"]
    assert _metric(get("/metrics").text, "cellgate_cell_breaker_state", "cell2") == 0


# --------------------------------------------------------------------------
# error bodies name what is down, never where it lives; the API's log has it all
# --------------------------------------------------------------------------


@contextmanager
def _http(d: Deployment) -> Iterator[httpx.Client]:
    server = HttpServer(create_api(d.app, d.app.settings.service), "127.0.0.1", 0).start()
    try:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            yield http
    finally:
        server.stop()


def _logged(caplog: pytest.LogCaptureFixture, request_id: str) -> str:
    """The one WARNING line the API logged for ``request_id``'s error."""
    lines = [
        r.getMessage()
        for r in caplog.records
        if r.name == "cellgate.service.http" and r.levelno == logging.WARNING
    ]
    mine = [line for line in lines if f"request {request_id}:" in line]
    assert len(mine) == 1, lines
    return mine[0]


def test_a_blackholed_cell_database_is_named_but_not_located(
    network_server: Server, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="cellgate.service.http")
    with _deployment(network_server, tmp_path) as d, _http(d) as http:
        booted = http.post("/v1/instances", json={"name": "vm", "cell": "cell2"}, headers=DEMO)
        assert booted.status_code == 202, booted.text
        path = f"/v1/instances/{booted.json()['instance']['uuid']}"
        url = d.app.db.url_for(d.app.cells.get(CTX, "cell2")).sqlalchemy_url
        assert url.port == d.proxy.port and url.username and url.database
        where = f"{url.username}:***@127.0.0.1:{url.port}/{url.database}"

        d.proxy.blackhole()
        shown = http.get(path, headers={**DEMO, "X-Request-Id": "req-hung-db"})
        assert shown.status_code == 503, shown.text
        error = shown.json()["error"]
        assert (error["code"], error["message"]) in {
            ("CellTimeout", "cell cell2 database: did not answer in time"),
            ("CellUnavailable", "cell cell2 database: cannot be reached"),
        }, error
        for leak in ("127.0.0.1", str(url.port), url.username, url.database):
            assert leak not in shown.text, leak
        d.assert_no_secret(shown.text)
        logged = _logged(caplog, "req-hung-db")
        assert f"GET {path} -> 503: cell cell2 database " in logged and where in logged
        d.assert_no_secret(logged)

        # Once the breaker is open, its own reason (written by cellgate) is public.
        for _ in range(THRESHOLD - 1):
            assert http.get(path, headers=DEMO).status_code == 503
        skipped = http.get(path, headers={**DEMO, "X-Request-Id": "req-skipped"})
        assert skipped.status_code == 503, skipped.text
        message = skipped.json()["error"]["message"]
        assert message == f"cell cell2: {SKIPPED}; last error {error['code']}", message
        assert f"cell cell2: {SKIPPED}" in _logged(caplog, "req-skipped")


def test_a_blackholed_broker_is_named_but_not_located(
    broker: Broker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="cellgate.service.http")
    vhost = broker.new_vhost()
    user = vhost.split("://", 1)[1].split(":", 1)[0]
    with (
        _deployment(Server("sqlite", tmp_path), tmp_path, cell2_broker=vhost) as d,
        _http(d) as http,
    ):
        # As if a worker of cell2 had run once: a build is mandatory, and with
        # no topic queue bound the broker would return it (a 503).
        with Connection(kombu_urls(TransportURL.parse(vhost)), connect_timeout=5) as conn:
            declare(conn, [topic_queue(f"{EXCHANGE}:{TOPIC}", TOPIC, CLASSIC)]).close()
        booted = http.post("/v1/instances", json={"name": "vm", "cell": "cell2"}, headers=DEMO)
        assert booted.status_code == 202, booted.text
        d.proxy.blackhole()
        acted = http.post(
            f"/v1/instances/{booted.json()['instance']['uuid']}/action",
            json={"action": "stop"},
            headers={**DEMO, "X-Request-Id": "req-hung-mq"},
        )
        assert acted.status_code == 503, acted.text
        assert acted.json()["error"] == {
            "status": 503,
            "code": "CellUnavailable",
            "message": "cell cell2 transport: cannot be reached",
        }
        for leak in ("127.0.0.1", str(d.proxy.port), user):
            assert leak not in acted.text, leak
        logged = _logged(caplog, "req-hung-mq")
        assert f"cell cell2 transport 127.0.0.1:{d.proxy.port}: " in logged
        d.assert_no_secret(logged)
