"""End to end with real processes: the CLI, ``serve api`` and one worker per cell.

On MariaDB and PostgreSQL, with one RabbitMQ vhost per cell. The mirror of
``test_api.py``, except that every piece is its own OS process talking to real
servers, and cell2's database sits behind a :class:`TcpProxy` so the test can
make it hang (not just refuse) and bring it back without touching the API.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, unquote

import httpx
import pytest

from cellgate.urls import DatabaseURL, url_passwords
from tests.support import Broker, Server, TcpProxy

# Seven OS processes each: one deployment at a time (xdist), not both backends at once.
pytestmark = [pytest.mark.backends, pytest.mark.xdist_group("e2e")]

T = TypeVar("T")

TOKEN = "tok"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CELL_TIMEOUT = 3.0
CONNECT_TIMEOUT = 2.0
QUERY_TIMEOUT = 5.0
STOP_TIMEOUT = 10.0  # SIGTERM, then SIGKILL after this long
START_TIMEOUT = 20.0
CLI_TIMEOUT = 60.0
HOSTS = {"cell1": "host1", "cell2": "host2"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def wait_for(what: str, check: Callable[[], T | None], timeout: float, every: float = 0.1) -> T:
    """Poll ``check`` until it returns something other than None or False."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found is not None and found is not False:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(every)


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    out: Path
    err: Path

    def logs(self) -> str:
        return "".join(
            p.read_text(encoding="utf-8", errors="replace") for p in (self.out, self.err)
        )


@dataclass
class Deployment:
    """Config, secrets and the running processes of one end-to-end deployment."""

    tmp: Path
    config: Path
    base_url: str
    proxy: TcpProxy
    secrets: set[str] = field(default_factory=set)
    procs: dict[str, Proc] = field(default_factory=dict)
    finished: list[Proc] = field(default_factory=list)
    _runs: int = 0

    def add_secrets(self, url: str) -> None:
        for pw in url_passwords(url):
            raw = unquote(pw)
            self.secrets |= {pw, raw, quote(raw, safe=""), quote(pw, safe="")}

    def assert_no_secret(self, text: str, where: str) -> None:
        for secret in self.secrets:
            assert secret not in text, f"a password leaked into {where}"

    # -- the CLI -------------------------------------------------------------
    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "cellgate", "--config-file", str(self.config), *args],
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT,
            stdin=subprocess.DEVNULL,
            env=_child_env(),
        )
        output = result.stdout + result.stderr
        self.assert_no_secret(output, f"the output of 'cellgate {' '.join(args)}'")
        assert result.returncode == 0, f"cellgate {' '.join(args)}: {output}"
        assert "Traceback" not in output, output
        return result

    # -- long-running processes -----------------------------------------------
    def start(self, name: str, *args: str) -> Proc:
        self._runs += 1
        out = self.tmp / f"{name}-{self._runs}.out"
        err = self.tmp / f"{name}-{self._runs}.err"
        with out.open("wb") as out_fh, err.open("wb") as err_fh:
            popen = subprocess.Popen(
                [sys.executable, "-m", "cellgate", "--config-file", str(self.config), *args],
                stdin=subprocess.DEVNULL,
                stdout=out_fh,
                stderr=err_fh,
                env=_child_env(),
            )
        proc = Proc(name, popen, out, err)
        self.procs[name] = proc
        return proc

    def wait_started(self, proc: Proc, line: str) -> None:
        """Until ``line`` is in the process's stderr; fails at once if it exits."""

        def started() -> bool:
            if proc.popen.poll() is not None:
                raise AssertionError(f"{proc.name} exited {proc.popen.returncode}: {proc.logs()}")
            return line in proc.err.read_text(encoding="utf-8", errors="replace")

        wait_for(f"{proc.name} to start", started, START_TIMEOUT)

    def stop(self, name: str) -> int | None:
        """SIGTERM, then SIGKILL after STOP_TIMEOUT; the exit code, None if killed."""
        proc = self.procs.pop(name)
        self.finished.append(proc)
        if proc.popen.poll() is not None:
            return proc.popen.returncode
        proc.popen.send_signal(signal.SIGTERM)
        try:
            return proc.popen.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.popen.kill()
            proc.popen.wait(timeout=STOP_TIMEOUT)
            return None

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name)

    def all_logs(self) -> dict[str, str]:
        return {
            f"{p.name} ({p.err.name})": p.logs() for p in [*self.finished, *self.procs.values()]
        }


def _child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


def _via(url: DatabaseURL, port: int) -> str:
    """``url`` (password and all) with its port replaced by ``port``."""
    return DatabaseURL(url.sqlalchemy_url.set(port=port)).render(hide_password=False)


@pytest.fixture
def deployment(network_server: Server, broker: Broker, tmp_path: Path) -> Iterator[Deployment]:
    api_url = network_server.new_database()
    cell_urls = {name: network_server.new_database() for name in HOSTS}
    vhosts = {name: broker.new_vhost() for name in HOSTS}
    db_port = 3306 if network_server.kind == "mariadb" else 5432
    proxy = TcpProxy("127.0.0.1", db_port)
    port = free_port()
    config = tmp_path / "cellgate.conf"
    config.write_text(
        "[DEFAULT]\n"
        f"state_path = {tmp_path / 'state'}\n"
        f"transport_url = {vhosts['cell1']}\n"
        "rpc_response_timeout = 10\n"
        "[api]\n"
        f"auth_tokens = {TOKEN}:demo:admin+member\n"
        f"port = {port}\n"
        f"cell_timeout = {CELL_TIMEOUT:g}\n"
        "[worker]\n"
        "heartbeat_interval = 1\n"
        "[api_database]\n"
        f"connection = {api_url.render(hide_password=False)}\n"
        "[database]\n"
        f"connection = {cell_urls['cell1'].render(hide_password=False)}\n"
        f"connect_timeout = {CONNECT_TIMEOUT:g}\n"
        f"query_timeout = {QUERY_TIMEOUT:g}\n",
        encoding="utf-8",
    )
    d = Deployment(tmp_path, config, f"http://127.0.0.1:{port}", proxy)
    for url in [api_url, *cell_urls.values()]:
        d.add_secrets(url.render(hide_password=False))
    for transport in vhosts.values():
        d.add_secrets(transport)
    assert d.secrets, "the test's URLs should carry passwords"
    try:
        d.cli("api-db", "sync")
        for name in HOSTS:
            database = cell_urls[name].render(hide_password=False)
            if name == "cell2":  # everything reaches cell2's database through the proxy
                database = _via(cell_urls[name], proxy.port)
            d.cli(
                "cell",
                "create",
                "--name",
                name,
                "--transport-url",
                vhosts[name],
                "--database-connection",
                database,
            )
        d.cli("db", "sync", "--all-cells")
        api = d.start("api", "serve", "api")
        for cell, host in HOSTS.items():
            worker = d.start(cell, "serve", "worker", "--cell", cell, "--host-name", host)
            d.wait_started(worker, f"cellgate worker {host} serving cell {cell}")
        d.wait_started(api, "cellgate API listening on")
        yield d
    finally:
        d.stop_all()
        proxy.close()


# -- HTTP helpers ---------------------------------------------------------------------


class Api:
    def __init__(self, d: Deployment, client: httpx.Client) -> None:
        self.d = d
        self.client = client

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = self.client.request(method, path, headers=AUTH, **kwargs)
        self.d.assert_no_secret(response.text, f"the response to {method} {path}")
        return response

    def timed(self, method: str, path: str, **kwargs: Any) -> tuple[httpx.Response, float]:
        started = time.monotonic()
        response = self.request(method, path, **kwargs)
        return response, time.monotonic() - started

    def show(self, uuid: str) -> httpx.Response:
        return self.request("GET", f"/v1/instances/{uuid}")

    def listing(self) -> dict[str, Any]:
        response = self.request("GET", "/v1/instances")
        assert response.status_code == 200, response.text
        page: dict[str, Any] = response.json()
        return page


def healthy(client: httpx.Client) -> bool:
    try:
        return bool(client.get("/healthz").json() == {"status": "ok"})
    except httpx.HTTPError:
        return False


def assert_error_shape(response: httpx.Response) -> dict[str, Any]:
    assert response.headers["content-type"].startswith("application/json"), response.text
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"status", "code", "message"}, error
    assert error["status"] == response.status_code and error["code"] and error["message"]
    assert "Traceback" not in error["message"]
    return error


# -- the scenario -----------------------------------------------------------------------


def test_cells_end_to_end_with_a_cell_going_down_and_coming_back(
    deployment: Deployment,
) -> None:
    d = deployment
    with httpx.Client(base_url=d.base_url, timeout=30) as client:
        wait_for("the API's /healthz", lambda: healthy(client), START_TIMEOUT)
        api = Api(d, client)

        # Boot four instances; the fewest-instances policy spreads them.
        cells: dict[str, str] = {}
        for i in range(4):
            booted = api.request("POST", "/v1/instances", json={"name": f"vm{i}"})
            assert booted.status_code == 202, booted.text
            instance = booted.json()["instance"]
            assert instance["status"] == "building", instance
            cells[instance["uuid"]] = instance["cell"]
        assert sorted(cells.values()) == ["cell1", "cell1", "cell2", "cell2"]
        in_cell = {c: sorted(u for u, cell in cells.items() if cell == c) for c in HOSTS}

        def active(uuid: str) -> dict[str, Any] | None:
            shown = api.show(uuid)
            assert shown.status_code == 200, shown.text
            found: dict[str, Any] = shown.json()["instance"]
            return found if found["status"] == "active" else None

        for uuid, cell in cells.items():
            shown = wait_for(f"{uuid} to become active", functools.partial(active, uuid), 20)
            assert (shown["uuid"], shown["cell"], shown["host"]) == (uuid, cell, HOSTS[cell])

        page = api.listing()
        assert page["down_cells"] == [] and page["next_marker"] is None
        assert sorted(i["uuid"] for i in page["instances"]) == sorted(cells)
        assert {i["cell"] for i in page["instances"]} == {"cell1", "cell2"}

        # An action goes over cell2's broker to host2; a delete to host1.
        rebooted = api.request(
            "POST", f"/v1/instances/{in_cell['cell2'][0]}/action", json={"action": "reboot"}
        )
        assert rebooted.status_code == 200, rebooted.text
        assert rebooted.json()["instance"]["status"] == "active"
        assert rebooted.json()["instance"]["cell"] == "cell2"
        gone_uuid = in_cell["cell1"].pop()
        deleted = api.request("DELETE", f"/v1/instances/{gone_uuid}")
        assert deleted.status_code == 204, deleted.text
        gone = api.show(gone_uuid)
        assert gone.status_code == 404
        assert assert_error_shape(gone)["code"] == "InstanceNotFound"
        live = sorted(in_cell["cell1"] + in_cell["cell2"])
        page = api.listing()
        assert page["down_cells"] == []
        assert sorted(i["uuid"] for i in page["instances"]) == live

        # Both workers heart-beat into their cells: discovery maps both hosts.
        discovered = json.loads(d.cli("host", "discover", "--json").stdout)
        assert {row["name"]: row["mapped"] for row in discovered} == {
            "cell1": ["host1"],
            "cell2": ["host2"],
        }
        hosts = api.request("GET", "/v1/hosts")
        assert hosts.status_code == 200, hosts.text
        assert {h["cell_name"]: h["host"] for h in hosts.json()["hosts"]} == HOSTS

        # cell2 goes down: its worker stops cleanly, its database hangs.
        assert d.stop("cell2") == 0, "cell2's worker did not exit 0 on SIGTERM"
        d.proxy.blackhole()
        response, took = api.timed("GET", "/v1/instances")
        assert response.status_code == 200, response.text
        assert took <= CELL_TIMEOUT + 3, f"a listing with a down cell took {took:.1f} s"
        page = response.json()
        assert [c["name"] for c in page["down_cells"]] == ["cell2"]
        assert page["down_cells"][0]["reason"]
        by_uuid = {i["uuid"]: i for i in page["instances"]}
        assert sorted(by_uuid) == live
        for uuid in in_cell["cell2"]:
            minimal = by_uuid[uuid]
            assert minimal["cell_down"] is True and minimal["status"] == "UNKNOWN", minimal
            assert minimal["cell"] == "cell2" and "name" not in minimal, minimal
        for uuid in in_cell["cell1"]:
            full = by_uuid[uuid]
            assert "cell_down" not in full, full
            assert (full["status"], full["cell"], full["host"]) == ("active", "cell1", "host1")
            assert full["name"].startswith("vm")

        unreachable, took = api.timed("GET", f"/v1/instances/{in_cell['cell2'][0]}")
        assert unreachable.status_code in (503, 504), unreachable.text
        assert_error_shape(unreachable)
        assert took <= CONNECT_TIMEOUT + QUERY_TIMEOUT + 5, f"show took {took:.1f} s"
        assert api.show(in_cell["cell1"][0]).status_code == 200  # cell1 is unaffected

        # cell2 comes back; the API, never restarted, sees it again.
        d.proxy.forward()
        worker = d.start("cell2", "serve", "worker", "--cell", "cell2", "--host-name", "host2")
        d.wait_started(worker, "cellgate worker host2 serving cell cell2")

        def recovered() -> dict[str, Any] | None:
            page = api.listing()
            return page if page["down_cells"] == [] else None

        page = wait_for("the listing to recover", recovered, 20, every=0.5)
        assert sorted(i["uuid"] for i in page["instances"]) == live
        assert all("cell_down" not in i and i["status"] == "active" for i in page["instances"])
        stopped = api.request(
            "POST", f"/v1/instances/{in_cell['cell2'][0]}/action", json={"action": "stop"}
        )
        assert stopped.status_code == 200, stopped.text
        assert stopped.json()["instance"]["status"] == "stopped"

        assert healthy(client)
        exits = {name: d.stop(name) for name in list(d.procs)}
        assert exits == {"api": 0, "cell1": 0, "cell2": 0}, exits

    for where, text in d.all_logs().items():
        d.assert_no_secret(text, f"the log of {where}")
        assert "Traceback" not in text, f"{where}:\n{text}"
