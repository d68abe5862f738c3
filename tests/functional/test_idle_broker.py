"""Idle and cut broker connections lose no build and trip no breaker (issue 12.4).

A pooled AMQP call connection sends nothing while idle, so the broker closes
it after its heartbeat timeout (or an operator, a proxy, a NAT does). Before,
the next call on it published into a dead socket: a 503 that counted against
the cell's breaker, a worker's reply lost (the action done, the client told
504), and a build cast that vanished behind a 202. Now a pooled connection is
checked before anything is sent on it (``RabbitTransport._acquire``) and a
build is confirmed by the broker before the create answers 202.

Every test runs against the real shared RabbitMQ, on vhosts of its own: the
only connections ever closed by ``rabbitmqctl`` are those of the test's vhost.
"""

from __future__ import annotations

import functools
import subprocess
import threading
import time
from pathlib import Path

import pytest

from cellgate.rpc.amqp.rabbit import RabbitTransport
from cellgate.rpc.target import Target
from cellgate.service.compute import TOPIC, VERSION
from tests.functional.test_create_cast_failure import (
    _active,
    _assert_undone,
    _boot_active,
    _cells,
    _inserted,
    _refused_create,
    _workers,
)
from tests.functional.test_e2e_processes import assert_error_shape, wait_for
from tests.functional.test_faults import (
    ADMIN_TOKEN,
    CTX,
    DEMO_TOKEN,
    RECOVERY,
    RPC_TIMEOUT,
    SLACK,
    Rig,
    _mq_secret,
    running_direct,
)
from tests.functional.test_secret_scanner import Scanner
from tests.support import Broker, Server, TcpProxy, _rabbitmqctl

pytestmark = [pytest.mark.backends, pytest.mark.timeout(240)]


def _vhost_of(url: str) -> str:
    return url.rsplit("/", 1)[1]


def _close_connections_of(vhost: str) -> int:
    """Close every broker connection on ``vhost`` (the test's own), as the broker would."""
    listed = _rabbitmqctl("list_connections", "pid", "vhost")
    pids = [
        line.split("\t")[0]
        for line in listed.splitlines()
        if line.count("\t") == 1 and line.split("\t")[1] == vhost
    ]
    closed = 0
    for pid in pids:
        try:
            _rabbitmqctl("close_connection", pid, "closed by cellgate's idle-connection test")
            closed += 1
        except subprocess.CalledProcessError:  # it went away by itself meanwhile
            continue
    return closed


@pytest.fixture
def scanner() -> Scanner:
    return Scanner([ADMIN_TOKEN, DEMO_TOKEN])


def _transport(rig: Rig, cell: str) -> RabbitTransport:
    cctx = CTX.for_cell(rig.app.cells.get(CTX, cell))
    transport = rig.app.rpc.client(cctx, Target(TOPIC, version=VERSION)).transport
    assert isinstance(transport, RabbitTransport)
    return transport


def _pool_three(rig: Rig, cell: str) -> None:
    """Leave three connections in the cell's call pool: three pings at once."""
    cctx = CTX.for_cell(rig.app.cells.get(CTX, cell))
    client = rig.app.rpc.client(cctx, Target(TOPIC, version=VERSION)).prepare(timeout=RECOVERY)
    barrier = threading.Barrier(3)
    errors: list[BaseException] = []

    def ping() -> None:
        try:
            barrier.wait(10)
            client.call("ping")
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=ping) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    assert _transport(rig, cell)._idle.qsize() >= 2, "the pings did not leave a pool"


def _consumer_ready(rig: Rig, cell: str) -> None:
    for srv in rig.workers[cell]._servers:
        listener = srv._listener
        assert listener is not None
        ready = getattr(listener, "ready", None)
        assert ready is None or ready.wait(RECOVERY), f"{cell}'s consumer did not come back"


def _three_actions_answer(rig: Rig, cell: str, uuid: str) -> None:
    """stop, start, reboot: each carried out and answered, none a 503 or 504."""
    for action, status in (("stop", "stopped"), ("start", "active"), ("reboot", "active")):
        done = rig.request("POST", f"/v1/instances/{uuid}/action", json={"action": action})
        assert done.status_code == 200, f"{action}: {done.text}"
        assert done.json()["instance"]["status"] == status
    breaker = rig.app.breakers.status(rig.app.cells.get(CTX, cell).uuid)
    assert breaker.state.name == "CLOSED" and breaker.consecutive_failures == 0, breaker


def test_connections_the_broker_closed_are_replaced_before_use(
    server: Server, broker: Broker, scanner: Scanner, tmp_path: Path
) -> None:
    """The broker closes every connection of the cell's vhost (the API's pooled call
    connections and the worker's, consumer and reply pool alike); the next actions
    all work, and the cell's breaker counts nothing."""
    vhost = broker.new_vhost()
    scanner.secrets.append(_mq_secret("cell r broker", vhost))
    cells = _cells(server, scanner, {"r": vhost})
    with running_direct(server, tmp_path, cells, scanner, workers=True) as rig:
        uuid = _boot_active(rig, "r", "vm-r")
        _pool_three(rig, "r")
        transport = _transport(rig, "r")
        before = transport.stale_discarded
        assert _close_connections_of(_vhost_of(vhost)) >= 4  # 3 pooled + the consumer
        _consumer_ready(rig, "r")
        wait_for(
            "the worker's consumer to reconnect",
            lambda: all(
                getattr(s._listener, "reconnects", 1) >= 1 for s in rig.workers["r"]._servers
            ),
            RECOVERY,
        )
        _consumer_ready(rig, "r")
        _three_actions_answer(rig, "r", uuid)
        assert transport.stale_discarded > before, "no stale pooled connection was noticed"
        rig.assert_consistent({uuid: "r"})


def test_connections_idle_past_the_heartbeat_are_replaced_before_use(
    server: Server, broker: Broker, scanner: Scanner, tmp_path: Path
) -> None:
    """With ``[rpc] heartbeat = 1`` the broker drops a silent client after a few
    seconds: pooled connections idle for longer are never used again."""
    vhost = broker.new_vhost()
    scanner.secrets.append(_mq_secret("cell r broker", vhost))
    cells = _cells(server, scanner, {"r": vhost})
    with running_direct(server, tmp_path, cells, scanner, workers=True, rpc_heartbeat=1) as rig:
        uuid = _boot_active(rig, "r", "vm-r")
        _pool_three(rig, "r")
        transport = _transport(rig, "r")
        before = transport.stale_discarded
        time.sleep(6)  # idle: past the broker's heartbeat timeout (not a timing assert)
        _consumer_ready(rig, "r")
        _three_actions_answer(rig, "r", uuid)
        assert transport.stale_discarded > before
        rig.assert_consistent({uuid: "r"})


def test_a_partition_during_a_create_never_leaves_a_lost_build(
    server: Server, broker: Broker, scanner: Scanner, tmp_path: Path
) -> None:
    """Cell r's broker (API and worker alike) behind a proxy that cuts it during creates.

    Each create either answers 202 and is built, or answers 503 and leaves
    nothing: never a 202 whose build never happens.
    """
    vhosts = {"r": broker.new_vhost(), "s": broker.new_vhost()}
    for name, url in vhosts.items():
        scanner.secrets.append(_mq_secret(f"cell {name} broker", url))
    with TcpProxy("127.0.0.1", 5672) as proxy:
        via_proxy = vhosts["r"].replace("@127.0.0.1:5672/", f"@127.0.0.1:{proxy.port}/")
        cells = _cells(server, scanner, {"r": via_proxy, "s": vhosts["s"]})
        with running_direct(server, tmp_path, cells, scanner) as rig, _workers(rig, ["r", "s"]):
            created = {_boot_active(rig, c, f"vm-{c}"): c for c in ("r", "s")}
            r = rig.app.cells.get(CTX, "r")

            # The path is cut (every live connection closed) and back at once:
            # the pooled connection is dead, a new one works. Before: 202, never built.
            proxy.drop()
            created[_boot_active(rig, "r", "vm-r-after-drop")] = "r"
            assert rig.app.breakers.status(r.uuid).consecutive_failures == 0

            # Cut, and new connections hang: 503, nothing left behind.
            proxy.blackhole()
            _refused_create(rig, "r", "vm-r-blackholed", created)
            created[_boot_active(rig, "s", "vm-s-during")] = "s"

            # Back, then silent: the broker gets what is sent, nothing comes back
            # (no FIN, no RST): the build is not confirmed, so 503 and undone.
            proxy.forward()
            wait_for(
                "a create in cell r to succeed again",
                functools.partial(_created_or_undone, rig, "vm-r-back", created),
                RECOVERY,
                0.5,
            )
            proxy.latency = 3600.0
            with _inserted() as uuids:
                answer, took = rig.timed(
                    "POST", "/v1/instances", json={"name": "vm-r-silent", "cell": "r"}
                )
            assert answer.status_code == 503, answer.text
            assert assert_error_shape(answer)["code"] == "CellUnavailable"
            assert took <= RPC_TIMEOUT + SLACK, f"an unconfirmed build took {took:.1f} s"
            _assert_undone(rig, uuids[0], "vm-r-silent", created)

            proxy.latency = 0.0
            proxy.drop()
            wait_for(
                "a create in cell r to succeed after the silence",
                functools.partial(_created_or_undone, rig, "vm-r-end", created),
                RECOVERY,
                0.5,
            )
            rig.assert_consistent(created)


def _created_or_undone(rig: Rig, name: str, created: dict[str, str]) -> bool:
    """POST a create in cell r: a 202 must be built; a 503 must leave nothing."""
    with _inserted() as uuids:
        answer = rig.request("POST", "/v1/instances", json={"name": name, "cell": "r"})
    if answer.status_code == 202:
        uuid = str(answer.json()["instance"]["uuid"])
        created[uuid] = "r"
        wait_for(f"{name} to be built", functools.partial(_active, rig, uuid), RECOVERY)
        return True
    assert answer.status_code == 503, answer.text
    _assert_undone(rig, uuids[0], name, created)
    return False
