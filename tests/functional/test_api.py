"""The REST API through httpx (FastAPI's TestClient) on SQLite cells and memory transports.

Workers run in-process on the same ``App``, exactly as ``all-in-one`` does.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from cellgate import App, RequestContext, load_settings
from cellgate.apidb.mappings import create_cell, map_cell0
from cellgate.apidb.updates import update_cell
from cellgate.errors import ConfigError
from cellgate.migrations.runner import MigrationLine, upgrade
from cellgate.service.compute import Worker
from cellgate.service.http import create_api
from cellgate.service.runner import HttpServer
from cellgate.sql.api_database import ApiDatabase
from cellgate.sql.engines import make_engine
from cellgate.urls import DatabaseURL, TemplateDefaults

DEFAULTS = TemplateDefaults(database=None, transport=None)
ADMIN = {"Authorization": "Bearer admin-tok"}
DEMO = {"Authorization": "Bearer demo-tok"}
OTHER = {"Authorization": "Bearer other-tok"}
CTX = RequestContext(request_id="req-test")


@dataclass
class Service:
    client: httpx.Client
    app: App
    workers: dict[str, Worker]
    tmp: Path


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    conf = tmp_path / "c.conf"
    conf.write_text(
        f"[api_database]\nconnection = sqlite:///{tmp_path}/api.sqlite\n"
        "[api]\nauth_tokens = admin-tok:admin:admin+member, demo-tok:demo:member, "
        "other-tok:other:member\ncell_timeout = 2\n"
        "[worker]\nheartbeat_interval = 0.5\nservice_down_time = 5\n",
        encoding="utf-8",
    )
    settings = load_settings(conf)
    api = ApiDatabase(settings.api_database)
    api.upgrade()
    with api.session() as s:
        for name in ("cell1", "cell2"):
            url = DatabaseURL.parse(f"sqlite:///{tmp_path}/{name}.db")
            engine = make_engine(url, connect_timeout=2, query_timeout=5, create_missing=True)
            upgrade(engine, MigrationLine.CELL)
            engine.dispose()
            create_cell(
                s,
                name=name,
                transport_url=f"memory://{name}",
                database_connection=url.render(),
                defaults=DEFAULTS,
            )
        map_cell0(s, database_connection=f"sqlite:///{tmp_path}/cell0.db", defaults=DEFAULTS)
    api.close()
    app = App(settings)
    workers = {
        name: Worker(app, app.cells.get(CTX, name), f"{name}-host", 0.5).start()
        for name in ("cell1", "cell2")
    }
    server = HttpServer(create_api(app, settings.service), "127.0.0.1", 0).start()
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield Service(client, app, workers, tmp_path)
    server.stop()
    for worker in workers.values():
        worker.stop()
    app.close()


def _boot(svc: Service, name: str, headers: dict[str, str] = DEMO, **extra: Any) -> dict[str, Any]:
    response = svc.client.post("/v1/instances", json={"name": name, **extra}, headers=headers)
    assert response.status_code == 202, response.text
    instance: dict[str, Any] = response.json()["instance"]
    return instance


def _until_active(svc: Service, uuid: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        found: dict[str, Any] = svc.client.get(f"/v1/instances/{uuid}", headers=DEMO).json()
        if found["instance"]["status"] == "active":
            return found["instance"]
        time.sleep(0.05)
    raise AssertionError(f"instance {uuid} never became active")


def test_boot_show_act_delete(service: Service) -> None:
    booted = _boot(service, "vm1")
    assert booted["status"] == "building" and booted["cell"] in {"cell1", "cell2"}
    shown = _until_active(service, booted["uuid"])
    assert shown["host"] == f"{booted['cell']}-host" and shown["name"] == "vm1"
    stop = service.client.post(
        f"/v1/instances/{booted['uuid']}/action", json={"action": "stop"}, headers=DEMO
    )
    assert stop.status_code == 200 and stop.json()["instance"]["status"] == "stopped"
    again = service.client.post(
        f"/v1/instances/{booted['uuid']}/action", json={"action": "stop"}, headers=DEMO
    )
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "InvalidState"
    start = service.client.post(
        f"/v1/instances/{booted['uuid']}/action", json={"action": "start"}, headers=DEMO
    )
    assert start.json()["instance"]["status"] == "active"
    assert (
        service.client.delete(f"/v1/instances/{booted['uuid']}", headers=DEMO).status_code == 204
    )
    gone = service.client.get(f"/v1/instances/{booted['uuid']}", headers=DEMO)
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "InstanceNotFound"


def test_instances_spread_over_cells_and_list_pages_across_them(service: Service) -> None:
    booted = [_boot(service, f"vm{i:02d}") for i in range(7)]
    assert {b["cell"] for b in booted} == {"cell1", "cell2"}  # fewest-instances policy
    seen: list[str] = []
    marker = None
    while True:
        params: dict[str, Any] = {"limit": 3, "sort": "name"}
        if marker:
            params["marker"] = marker
        page = service.client.get("/v1/instances", params=params, headers=DEMO).json()
        assert page["down_cells"] == []
        seen += [i["name"] for i in page["instances"]]
        marker = page["next_marker"]
        if marker is None:
            break
    assert seen == [f"vm{i:02d}" for i in range(7)]


def test_list_sorts_by_several_keys_and_refuses_bad_ones(service: Service) -> None:
    for name in ("b", "a", "B", "a"):
        _boot(service, name)
    seen: list[tuple[str, str]] = []
    marker = None
    while True:
        params: dict[str, Any] = {"limit": 1, "sort": "name:desc,created_at:desc"}
        if marker:
            params["marker"] = marker
        page = service.client.get("/v1/instances", params=params, headers=DEMO).json()
        seen += [(i["name"], i["created_at"]) for i in page["instances"]]
        marker = page["next_marker"]
        if marker is None:
            break
    assert [name for name, _ in seen] == ["b", "a", "a", "B"]  # by code point
    assert seen[1][1] >= seen[2][1]
    for bad in ("password", "name:up", "name,name", "", "name;drop"):
        response = service.client.get("/v1/instances", params={"sort": bad}, headers=DEMO)
        assert response.status_code == 400, (bad, response.text)
        assert response.json()["error"]["code"] == "InvalidRequest"


def test_projects_are_isolated(service: Service) -> None:
    mine = _boot(service, "mine")
    assert service.client.get(f"/v1/instances/{mine['uuid']}", headers=OTHER).status_code == 404
    assert service.client.get("/v1/instances", headers=OTHER).json()["instances"] == []
    assert len(service.client.get("/v1/instances", headers=ADMIN).json()["instances"]) == 1


def test_auth(service: Service) -> None:
    anonymous = service.client.get("/v1/instances")
    assert anonymous.status_code == 401 and anonymous.headers["www-authenticate"] == "Bearer"
    assert (
        service.client.get("/v1/instances", headers={"Authorization": "Bearer nope"}).status_code
        == 401
    )
    assert service.client.get("/v1/cells", headers=DEMO).status_code == 403
    assert service.client.get("/healthz").json() == {"status": "ok"}


def test_a_down_cell_gives_partial_results(service: Service) -> None:
    booted = [_boot(service, f"vm{i}") for i in range(4)]
    in_cell2 = [b["uuid"] for b in booted if b["cell"] == "cell2"]
    assert in_cell2
    with service.app.api.session() as s:
        update_cell(
            s,
            "cell2",
            database_connection=f"sqlite:///{service.tmp}/missing.db",
            defaults=DEFAULTS,
        )
    service.app.reload(wait=30)
    page = service.client.get("/v1/instances", headers=DEMO).json()
    assert [d["name"] for d in page["down_cells"]] == ["cell2"]
    minimal = [i for i in page["instances"] if i.get("cell_down")]
    assert sorted(i["uuid"] for i in minimal) == sorted(in_cell2)
    assert all(i["status"] == "UNKNOWN" for i in minimal)
    assert len(page["instances"]) == 4
    assert page["down_cells"][0]["reason"] == "cell cell2 database: cannot be reached"
    shown = service.client.get(f"/v1/instances/{in_cell2[0]}", headers=DEMO)
    assert shown.status_code == 503
    assert shown.json()["error"]["message"] == "cell cell2 database: cannot be reached"
    assert "missing.db" not in shown.text  # the file's path is the operators' business


def test_cells_and_hosts_for_admins(service: Service) -> None:
    time.sleep(0.6)
    cells = service.client.get("/v1/cells", headers=ADMIN).json()["cells"]
    by_name = {c["name"]: c for c in cells}
    assert set(by_name) == {"cell0", "cell1", "cell2"}
    health = by_name["cell1"]["health"]
    assert health["reachable"] and health["database"]["at_head"]
    assert health["services"][0]["host"] == "cell1-host" and health["services"][0]["up"]
    one = service.client.get("/v1/cells/cell2", headers=ADMIN).json()["cell"]
    assert one["name"] == "cell2"
    assert service.client.get("/v1/cells/nope", headers=ADMIN).status_code == 404
    assert service.client.get("/v1/hosts", headers=ADMIN).json() == {"hosts": []}


def test_errors_have_one_shape(service: Service) -> None:
    bad = service.client.post("/v1/instances", json={"name": ""}, headers=DEMO)
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "InvalidRequest"
    cell0 = service.client.post("/v1/instances", json={"name": "x", "cell": "cell0"}, headers=DEMO)
    assert cell0.status_code == 409
    unknown = service.client.post("/v1/instances", json={"name": "x", "cell": "zz"}, headers=DEMO)
    assert unknown.status_code == 404
    assert service.client.get("/v1/instances/not-a-uuid", headers=DEMO).status_code == 404
    action = service.client.post(
        "/v1/instances/x/action", json={"action": "explode"}, headers=DEMO
    )
    assert action.status_code == 400


def test_metrics_and_openapi(service: Service) -> None:
    _until_active(service, _boot(service, "m")["uuid"])
    text = service.client.get("/metrics").text
    assert "cellgate_cell_request_seconds" in text and "cellgate_mapping_cache_hits_total" in text
    age = re.search(r"^cellgate_mapping_cache_age_seconds (\S+)$", text, re.MULTILINE)
    assert age is not None and 0 <= float(age.group(1)) < 60, text  # loaded by the boot
    assert "\ncellgate_mapping_cache_refresh_failed 0.0\n" in text
    schema = service.client.get("/openapi.json").json()
    assert "/v1/instances/{instance}" in schema["paths"]


def test_paging_continues_past_a_down_cells_minimal_records(service: Service) -> None:
    booted = [_boot(service, f"vm{i}") for i in range(6)]
    with service.app.api.session() as s:
        update_cell(
            s,
            "cell2",
            database_connection=f"sqlite:///{service.tmp}/missing.db",
            defaults=DEFAULTS,
        )
    service.app.reload(wait=30)
    seen: list[str] = []
    marker = None
    for _ in range(10):
        params: dict[str, Any] = {"limit": 1, **({"marker": marker} if marker else {})}
        page = service.client.get("/v1/instances", params=params, headers=DEMO)
        assert page.status_code == 200, page.text
        seen += [i["uuid"] for i in page.json()["instances"]]
        marker = page.json()["next_marker"]
        if marker is None:
            break
    assert sorted(seen) == sorted(b["uuid"] for b in booted)


def test_unknown_routes_keep_the_error_shape(service: Service) -> None:
    missing = service.client.get("/v2/nothing", headers=DEMO)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "NotFound"
    wrong = service.client.put("/v1/instances", headers=DEMO)
    assert wrong.status_code == 405 and wrong.json()["error"]["code"] == "MethodNotAllowed"


def test_workers_refuse_cell0_and_bad_host_names_before_writing(service: Service) -> None:
    cell0 = service.app.cells.get(CTX, "cell0")
    with pytest.raises(ConfigError, match="no message queue"):
        Worker(service.app, cell0, "h", 1).start()
    cell1 = service.app.cells.get(CTX, "cell1")
    with pytest.raises(ConfigError, match="invalid worker host name"):
        Worker(service.app, cell1, "bad name", 1).start()


# -- error bodies name what is down, never where it lives ----------------------------------


def _closed_port(host: str) -> int:
    """A port on ``host`` that nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _logged(caplog: pytest.LogCaptureFixture, request_id: str) -> str:
    """The API's WARNING lines about ``request_id``."""
    lines = [
        r.getMessage()
        for r in caplog.records
        if r.name == "cellgate.service.http" and r.levelno == logging.WARNING
    ]
    mine = [line for line in lines if request_id in line]
    assert len(mine) == 1, lines
    return mine[0]


def _repoint_cell2(service: Service, **urls: str) -> None:
    """Point cell2 at other URLs, as an operator's ``cell update`` would, and reload."""
    with service.app.api.session() as s:
        update_cell(s, "cell2", defaults=DEFAULTS, **urls)
    service.app.reload(wait=30)


@pytest.mark.parametrize("scheme", ["mysql+pymysql", "postgresql+psycopg"])
def test_a_dead_cell_database_is_named_but_not_located(
    service: Service, caplog: pytest.LogCaptureFixture, scheme: str
) -> None:
    """The 503 says which database; its host, port, user and name go to the log only."""
    booted = _boot(service, "vm", cell="cell2")
    host, port = "127.0.0.93", _closed_port("127.0.0.93")
    user, database, password = "tenant_probe_usr", "cell_two_private_db", "Pw-kept-out-93"
    _repoint_cell2(
        service, database_connection=f"{scheme}://{user}:{password}@{host}:{port}/{database}"
    )
    caplog.set_level(logging.WARNING, logger="cellgate.service.http")
    headers = {**DEMO, "X-Request-Id": "req-dead-db"}
    shown = service.client.get(f"/v1/instances/{booted['uuid']}", headers=headers)
    assert shown.status_code == 503, shown.text
    assert shown.json()["error"] == {
        "status": 503,
        "code": "CellUnavailable",
        "message": "cell cell2 database: cannot be reached",
    }
    listed = service.client.get("/v1/instances", headers=headers)
    assert listed.json()["down_cells"][0]["reason"] == "cell cell2 database: cannot be reached"
    for leak in (host, str(port), user, database, password):
        assert leak not in shown.text, leak
    for leak in (host, user, database, password):  # (a port's digits may be in a uuid)
        assert leak not in listed.text, leak
    logged = _logged(caplog, "req-dead-db")
    assert f"GET /v1/instances/{booted['uuid']} -> 503" in logged
    assert f"{user}:***@{host}:{port}/{database}" in logged
    assert password not in logged


def test_a_dead_broker_is_named_but_not_located(
    service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    """An RPC to a cell whose broker refuses: 503 naming the cell's transport, not its host."""
    booted = _boot(service, "vm", cell="cell2")
    host, port = "127.0.0.94", _closed_port("127.0.0.94")
    user, vhost, password = "tenant_mq_usr", "cell_two_vhost", "Mq-kept-out-94"
    _repoint_cell2(service, transport_url=f"rabbit://{user}:{password}@{host}:{port}/{vhost}")
    caplog.set_level(logging.WARNING, logger="cellgate.service.http")
    acted = service.client.post(
        f"/v1/instances/{booted['uuid']}/action",
        json={"action": "stop"},
        headers={**DEMO, "X-Request-Id": "req-dead-mq"},
    )
    assert acted.status_code == 503, acted.text
    assert acted.json()["error"] == {
        "status": 503,
        "code": "CellUnavailable",
        "message": "cell cell2 transport: cannot be reached",
    }
    for leak in (host, str(port), user, vhost, password):
        assert leak not in acted.text, leak
    logged = _logged(caplog, "req-dead-mq")
    assert f"cell cell2 transport {host}:{port}: " in logged
    assert password not in logged


def _errors(service: Service, cell: str, op: str) -> float:
    text = service.client.get("/metrics").text
    found = re.search(
        rf'^cellgate_cell_errors_total\{{cell="{cell}",op="{op}"\}} (\S+)$', text, re.MULTILINE
    )
    return float(found.group(1)) if found else 0.0


def test_cell_errors_count_only_failures_of_the_cell(service: Service) -> None:
    booted = _until_active(service, _boot(service, "vm", cell="cell2")["uuid"])
    action = f"/v1/instances/{booted['uuid']}/action"
    assert service.client.post(action, json={"action": "stop"}, headers=DEMO).status_code == 200
    refused = service.client.post(action, json={"action": "stop"}, headers=DEMO)
    assert refused.status_code == 409  # the cell answered: not an error of the cell
    assert _errors(service, "cell2", "stop") == 0.0
    _repoint_cell2(service, database_connection=f"sqlite:///{service.tmp}/missing.db")
    shown = service.client.get(f"/v1/instances/{booted['uuid']}", headers=DEMO)
    assert shown.status_code == 503, shown.text
    assert _errors(service, "cell2", "show") == 1.0


def test_a_bug_in_a_cells_work_is_a_500_not_a_down_cell(
    service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    """An error cellgate did not raise on purpose is ours, not the cell's (issue 11 part 4).

    cell2 still answers, but its ``instances`` table is gone: SQLite's "no
    such table" is not a failure to reach the cell, so neither the list nor
    show calls the cell down, and its breaker and error count do not move.
    """
    booted = _until_active(service, _boot(service, "vm", cell="cell2")["uuid"])
    url = DatabaseURL.parse(f"sqlite:///{service.tmp}/cell2.db")
    engine = make_engine(url, connect_timeout=2, query_timeout=5)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE instances"))
    engine.dispose()
    caplog.set_level(logging.ERROR, logger="cellgate.service.http")
    headers = {**DEMO, "X-Request-Id": "req-bug"}
    internal = {
        "status": 500,
        "code": "InternalError",
        "message": "unexpected error; see the API's log",
    }

    # In process: uvicorn resets the connection after any 500 it is told about
    # (Starlette re-raises after the handler's response), which is not the subject here.
    asgi = httpx.ASGITransport(
        create_api(service.app, service.app.settings.service), raise_app_exceptions=False
    )

    async def get(path: str) -> httpx.Response:
        async with httpx.AsyncClient(transport=asgi, base_url="http://api") as client:
            return await client.get(path, headers=headers)

    listed = asyncio.run(get("/v1/instances"))
    assert listed.status_code == 500, listed.text
    assert listed.json()["error"] == internal
    shown = asyncio.run(get(f"/v1/instances/{booted['uuid']}"))
    assert shown.status_code == 500, shown.text
    assert shown.json()["error"] == internal

    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    mine = [line for line in logged if "req-bug" in line]
    assert len(mine) == 2, logged
    assert all("OperationalError" in line and "no such table" in line for line in mine)
    cell2 = service.app.cells.get(CTX, "cell2")
    status = service.app.breakers.status(cell2.uuid)
    assert (status.state.value, status.consecutive_failures) == ("closed", 0)
    assert _errors(service, "cell2", "show") == 0.0


def test_rest_errors_carry_no_cli_hint(service: Service) -> None:
    """A REST client reads the API's own hint, never a shell command (issue 11 part 4)."""
    missing = service.client.get("/v1/cells/nope", headers=ADMIN)
    assert missing.status_code == 404
    assert missing.json()["error"] == {
        "status": 404,
        "code": "CellNotFound",
        "message": "no cell named or with uuid 'nope'; GET /v1/cells lists the cells",
    }
    refused = service.client.get("/v1/instances", headers={"Authorization": "Bearer wrong"})
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "Unauthorized"
    assert refused.headers["WWW-Authenticate"] == "Bearer"
    assert "cellgate " not in missing.text + refused.text
