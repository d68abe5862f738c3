"""A worker whose cell database fails answers with the public message only (issue 12.5).

The worker's own error names the database precisely (masked URL: user, host,
port, database name; the driver's text). That is for the worker's log. The
RPC reply carries the error's class and its public message (``cell cell1
database: cannot be reached``), so neither the envelope on the broker nor the
REST answer to any token names where the database lives; the API answers
503, as it does when it cannot reach that database itself, not 502.

Runs a real worker (the service's ``Worker`` on the App) on the in-process
transport and on the real RabbitMQ, over MariaDB and PostgreSQL cells reached
through a :class:`~tests.support.TcpProxy`, which the test closes: new
connections are refused at once and pooled ones are gone.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cellgate.errors import CellgateError
from cellgate.rpc.wire import Request
from cellgate.service.compute import VERSION
from tests.functional.test_e2e_processes import assert_error_shape, wait_for
from tests.functional.test_faults import (
    CTX,
    RECOVERY,
    CellSpec,
    Rig,
    _db_secret,
    _mq_secret,
    _via,
    running_direct,
)
from tests.functional.test_secret_scanner import Scanner, address_secrets
from tests.support import Broker, Server, TcpProxy

pytestmark = pytest.mark.backends

PUBLIC = "cell cell1 database: cannot be reached"


@pytest.fixture(params=["memory", "rabbit"])
def transport(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "memory":
        yield "memory://cell1"
        return
    broker = Broker()
    broker.check()
    try:
        yield broker.new_vhost()
    finally:
        broker.drop_all()


@pytest.fixture
def rig_and_proxy(
    network_server: Server, transport: str, tmp_path: Path
) -> Iterator[tuple[Rig, TcpProxy, Scanner]]:
    port = 3306 if network_server.kind == "mariadb" else 5432
    direct = network_server.new_database()
    scanner = Scanner([_db_secret("cell1 database", direct)])
    if not transport.startswith("memory"):
        scanner.secrets.append(_mq_secret("cell1 broker", transport))
    with TcpProxy("127.0.0.1", port) as proxy:
        mapped = _via(direct, proxy)
        # The address of the database as the cell mapping has it: none of it is public.
        scanner.secrets.extend(address_secrets("cell1 database", mapped))
        cells = {"cell1": CellSpec(direct, mapped, transport)}
        with running_direct(network_server, tmp_path, cells, scanner, workers=True) as rig:
            yield rig, proxy, scanner


def test_a_worker_whose_cell_database_fails_answers_503_with_the_public_message(
    rig_and_proxy: tuple[Rig, TcpProxy, Scanner],
) -> None:
    rig, proxy, scanner = rig_and_proxy
    uuid = rig.boot("cell1", "vm-1")

    def built() -> bool:
        shown = rig.request("GET", f"/v1/instances/{uuid}")
        return bool(shown.json()["instance"]["status"] == "active")

    wait_for("the build", built, RECOVERY, 0.2)
    proxy.close()  # the database is gone: connections refused, pooled ones closed

    # The API itself needs no cell database for an action: only the worker does.
    acted = rig.request("POST", f"/v1/instances/{uuid}/action", json={"action": "stop"})
    assert acted.status_code == 503, acted.text
    error = assert_error_shape(acted)
    assert error["code"] == "CellUnavailable", error
    assert error["message"] == PUBLIC, error

    # The reply envelope itself, as the worker's server puts it on the transport.
    [server, *_] = rig.workers["cell1"]._servers
    request = Request.new(
        "act",
        {"instance": uuid, "action": "stop"},
        CTX.for_cell(rig.app.cells.get(CTX, "cell1")).to_dict(),
        VERSION,
    )
    envelope = server.dispatch(request).encode()
    scanner.scan("the worker's error reply envelope", envelope)
    assert PUBLIC.encode() in envelope and b"CellUnavailable" in envelope

    # And what a library caller of the RPC client sees.
    client = rig.app.rpc.client(CTX.for_cell(rig.app.cells.get(CTX, "cell1")), server.target)
    with pytest.raises(CellgateError) as raised:
        client.prepare(timeout=10).call("act", instance=uuid, action="stop")
    scanner.scan_exception("the RPC client's error", raised.value)
    assert PUBLIC in str(raised.value)
    # ``scanner.assert_clean()`` runs as the rig closes (see ``running``).


def test_address_secrets_see_every_part_of_an_address() -> None:
    """The scanner's address forms: user, database name and host:port, as URLs write them."""
    url = "mysql+pymysql://cgt_0123456789:pw@127.0.0.1:41234/cgt_9876543210"
    found = Scanner(address_secrets("db", url))
    found.scan("masked URL", "cell1 mysql+pymysql://cgt_0123456789:***@127.0.0.1:41234/x")
    found.scan("driver text", 'connection to server at "127.0.0.1", port 41234 failed')
    found.scan("database name", 'database "cgt_9876543210" does not exist')
    found.scan("a timestamp", '"created_at": "2026-12-04T17:59:03.412345"')
    assert {f.where for f in found.findings} == {"masked URL", "driver text", "database name"}
