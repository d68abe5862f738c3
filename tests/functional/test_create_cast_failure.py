"""A create whose build cannot be sent answers 503 and leaves nothing behind.

``POST /v1/instances`` commits the instance's mapping (API database) and its
row (cell database), then casts ``build`` to the cell's workers. When that
cast fails (the cell's broker refuses or hangs), the create is undone: no row,
no mapping, nothing in lists or shows, read both through the API and directly
from every database. The other cells are unaffected, and once the broker is
back creates in that cell work again, without a restart.

The brokers are real: a RabbitMQ URL on a closed port of 127.0.0.2 (refused at
once, no server needed), and the local RabbitMQ behind a
:class:`~tests.support.TcpProxy` that is blackholed (the connect times out)
and then forwards again.
"""

from __future__ import annotations

import functools
import logging
import socket
import uuid as uuidlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from cellgate.celldb.schema import InstanceRow
from cellgate.rpc.target import Target
from cellgate.service.compute import TOPIC, VERSION, Worker
from tests.functional.test_e2e_processes import assert_error_shape, wait_for
from tests.functional.test_faults import (
    ADMIN_TOKEN,
    CONNECT_TIMEOUT,
    CTX,
    DEMO_TOKEN,
    QUERY_TIMEOUT,
    RECOVERY,
    SLACK,
    CellSpec,
    Rig,
    _db_secret,
    _dies,
    _Fault,
    _mq_secret,
    _read,
    _via,
    running_direct,
)
from tests.functional.test_secret_scanner import Scanner, Secret
from tests.support import Broker, Server, TcpProxy

#: A broker password that must never show up in an answer.
CLOSED_SECRET = Secret("closed broker", "cl0sed-Pw-Zq8", "cgt_closed")


@pytest.fixture
def scanner() -> Scanner:
    return Scanner([ADMIN_TOKEN, DEMO_TOKEN, CLOSED_SECRET])


def _closed_port() -> str:
    """A RabbitMQ URL on a 127.0.0.2 port nobody listens on: connections are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.2", 0))
        port = sock.getsockname()[1]
    return f"rabbit://{CLOSED_SECRET.user}:{CLOSED_SECRET.password}@127.0.0.2:{port}/closed"


def _cells(server: Server, scanner: Scanner, transports: dict[str, str]) -> dict[str, CellSpec]:
    cells = {}
    for name, transport in transports.items():
        direct = server.new_database()
        if server.kind != "sqlite":
            scanner.secrets.append(_db_secret(f"{name} database", direct))
        cells[name] = CellSpec(direct, direct.render(hide_password=False), transport)
    return cells


@contextmanager
def _workers(rig: Rig, names: list[str]) -> Iterator[None]:
    started = []
    try:
        for name in names:
            worker = Worker(rig.app, rig.app.cells.get(CTX, name), f"{name}-host", 0.5)
            started.append(worker.start())
            for srv in worker._servers:
                ready = getattr(srv._listener, "ready", None)
                assert ready is None or ready.wait(15), f"{name}'s worker did not start"
        yield
    finally:
        for worker in started:
            worker.stop()


@contextmanager
def _inserted() -> Iterator[list[str]]:
    """The uuid of every instance row the App inserts meanwhile (the 503 does not say it)."""
    uuids: list[str] = []

    def record(_mapper: Any, _conn: Any, row: InstanceRow) -> None:
        uuids.append(row.uuid)

    event.listen(InstanceRow, "before_insert", record)
    try:
        yield uuids
    finally:
        event.remove(InstanceRow, "before_insert", record)


def _active(rig: Rig, uuid: str) -> bool:
    shown = rig.request("GET", f"/v1/instances/{uuid}")
    return bool(shown.status_code == 200 and shown.json()["instance"]["status"] == "active")


def _boot_active(rig: Rig, cell: str, name: str) -> str:
    uuid = rig.boot(cell, name)
    wait_for(f"{name} to be built", functools.partial(_active, rig, uuid), RECOVERY)
    return uuid


def _refused_create(rig: Rig, cell: str, name: str, created: dict[str, str]) -> None:
    """POST a create into ``cell``: 503 within the connect timeout, then nothing is left."""
    with _inserted() as uuids:
        answer, took = rig.timed("POST", "/v1/instances", json={"name": name, "cell": cell})
    assert answer.status_code == 503, answer.text
    assert assert_error_shape(answer)["code"] == "CellUnavailable"
    assert took <= CONNECT_TIMEOUT + SLACK, f"a create whose cast failed took {took:.1f} s"
    assert len(uuids) == 1, "the create never reached the cell database"
    _assert_undone(rig, uuids[0], name, created)


def _assert_undone(rig: Rig, uuid: str, name: str, created: dict[str, str]) -> None:
    # Neither the API ...
    for method in ("GET", "DELETE"):
        gone = rig.request(method, f"/v1/instances/{uuid}")
        assert gone.status_code == 404, f"{method} of an undone create: {gone.text}"
    page = rig.listing()
    assert page["down_cells"] == []
    assert {i["uuid"] for i in page["instances"]} == set(created)
    assert name not in {i.get("name") for i in page["instances"]}
    # ... nor the databases, read directly: no mapping, no row (not even a deleted one).
    rig.assert_consistent(created)
    for cell, spec in rig.cells.items():
        rows = _read(spec.direct, f"SELECT uuid FROM instances WHERE uuid = '{uuid}'")
        assert rows == [], f"the undone instance's row is still in cell {cell}"


def _unknown_build_is_harmless(
    rig: Rig, cell: str, created: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """A build that arrives for an instance already removed: logged once, nothing else."""
    caplog.clear()
    ghost = str(uuidlib.uuid4())
    cctx = CTX.for_cell(rig.app.cells.get(CTX, cell))
    client = rig.app.rpc.client(cctx, Target(TOPIC, version=VERSION))
    with caplog.at_level(logging.INFO, logger="cellgate.rpc.server"):
        client.cast("build", instance=ghost)

        def logged() -> list[logging.LogRecord]:
            return [
                r
                for r in caplog.records
                if r.levelno == logging.WARNING and "UnknownInstance" in r.getMessage()
            ]

        wait_for("the worker to log the unknown build", lambda: bool(logged()), RECOVERY)
        # The worker keeps serving, and the message is not redelivered.
        answer = client.prepare(timeout=RECOVERY).call("ping")
        assert answer["cell"] == cell
        assert len(logged()) == 1, [r.getMessage() for r in logged()]
    assert ghost in logged()[0].getMessage()
    rig.assert_consistent(created)  # the build wrote nothing


# -- refused at once: no servers needed beyond the databases -----------------------------


def test_a_refused_build_cast_undoes_the_create(
    server: Server, scanner: Scanner, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cells = _cells(server, scanner, {"up": "memory://up", "x": _closed_port()})
    with (
        running_direct(server, tmp_path, cells, scanner) as rig,
        _workers(rig, ["up"]),
    ):
        created = {_boot_active(rig, "up", "vm-up"): "up"}
        for i in range(2):  # the second one too: nothing was stuck by the first
            _refused_create(rig, "x", f"vm-x-{i}", created)
        created[_boot_active(rig, "up", "vm-up-after")] = "up"  # the other cell: unaffected
        _unknown_build_is_harmless(rig, "up", created, caplog)
        rig.assert_consistent(created)


# -- a broker that hangs, then comes back ------------------------------------------------


@pytest.mark.backends
@pytest.mark.timeout(240)
def test_a_hung_broker_undoes_the_create_and_creates_work_once_it_is_back(
    server: Server,
    broker: Broker,
    scanner: Scanner,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    vhosts = {"r": broker.new_vhost(), "s": broker.new_vhost()}
    for name, url in vhosts.items():
        scanner.secrets.append(_mq_secret(f"cell {name} broker", url))
    with TcpProxy("127.0.0.1", 5672) as proxy:
        via_proxy = vhosts["r"].replace("@127.0.0.1:5672/", f"@127.0.0.1:{proxy.port}/")
        cells = _cells(server, scanner, {"r": via_proxy, "s": vhosts["s"]})
        with (
            running_direct(server, tmp_path, cells, scanner) as rig,
            _workers(rig, ["r", "s"]),
        ):
            created = {_boot_active(rig, c, f"vm-{c}"): c for c in ("r", "s")}

            # Cell r's broker hangs: every connection is cut, new ones are never answered.
            proxy.reset()
            proxy.blackhole()
            _refused_create(rig, "r", "vm-r-hung", created)
            created[_boot_active(rig, "s", "vm-s-during")] = "s"  # cell s: its own broker

            # Back: the same App creates in cell r again, and its worker builds it.
            proxy.forward()

            def create_in_r() -> str | None:
                with _inserted() as uuids:
                    answer = rig.request(
                        "POST", "/v1/instances", json={"name": "vm-r-back", "cell": "r"}
                    )
                if answer.status_code == 202:
                    return str(answer.json()["instance"]["uuid"])
                assert answer.status_code == 503, answer.text  # reconnecting: still undone
                _assert_undone(rig, uuids[0], "vm-r-back", created)
                return None

            back = wait_for("a create in cell r to succeed", create_in_r, RECOVERY, 0.5)
            created[back] = "r"
            wait_for("vm-r-back to be built", functools.partial(_active, rig, back), RECOVERY)
            created[_boot_active(rig, "r", "vm-r-next")] = "r"
            _unknown_build_is_harmless(rig, "r", created, caplog)
            rig.assert_consistent(created)


# -- the cell database fails during the undo ---------------------------------------------


@pytest.mark.backends
def test_an_undo_that_cannot_remove_the_row_leaves_no_instance_building_unnoticed(
    network_server: Server, scanner: Scanner, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Cell x's broker refuses, and its database dies as the row is being removed.

    Back at once (a reset): the row is marked ``error`` and keeps its mapping,
    so it is seen and shown as failed (and can be deleted once the broker is back). Dead (a blackhole): nothing can be
    marked, the row and its mapping stay, and a warning names the instance.
    """
    port = 3306 if network_server.kind == "mariadb" else 5432
    with TcpProxy("127.0.0.1", port) as proxy:
        cells = _cells(network_server, scanner, {"up": "memory://up", "x": _closed_port()})
        cells["x"] = CellSpec(
            cells["x"].direct, _via(cells["x"].direct, proxy), cells["x"].transport
        )
        with running_direct(network_server, tmp_path, cells, scanner) as rig:
            created: dict[str, str] = {}
            with _Fault(rig.engine_of("x"), "DELETE FROM instances", _dies(proxy)) as f:
                answer, took = rig.timed(
                    "POST", "/v1/instances", json={"name": "vm-e", "cell": "x"}
                )
            assert f.fired.is_set(), "the undo never removed the row"
            assert answer.status_code == 503, answer.text
            assert assert_error_shape(answer)["code"] == "CellUnavailable"
            assert took <= 2 * CONNECT_TIMEOUT + SLACK, f"took {took:.1f} s"
            (errored,) = rig.mapped()
            created[errored] = "x"
            rig.assert_consistent(created)  # the row and its mapping, together
            shown = rig.request("GET", f"/v1/instances/{errored}")
            assert shown.status_code == 200 and shown.json()["instance"]["status"] == "error"
            assert [i["status"] for i in rig.listing()["instances"]] == ["error"]

            caplog.clear()
            with (
                caplog.at_level(logging.WARNING, logger="cellgate.service.instances"),
                _Fault(rig.engine_of("x"), "DELETE FROM instances", _dead(proxy)) as f,
                _inserted() as uuids,
            ):
                answer, took = rig.timed(
                    "POST", "/v1/instances", json={"name": "vm-d", "cell": "x"}
                )
            assert f.fired.is_set(), "the undo never removed the row"
            assert answer.status_code == 503, answer.text
            assert_error_shape(answer)
            bound = CONNECT_TIMEOUT + QUERY_TIMEOUT + SLACK  # a second try: one new connect
            assert took <= bound, f"took {took:.1f} s"
            (stuck,) = uuids
            warned = [r.getMessage() for r in caplog.records if stuck in r.getMessage()]
            assert len(warned) == 1 and "left building" in warned[0], warned
            proxy.forward()
            created[stuck] = "x"  # both rows stay: showable (building), never half-written
            rig.assert_consistent(created)
            wait_for(
                "cell x to answer again",
                lambda: rig.request("GET", f"/v1/instances/{stuck}").status_code == 200,
                RECOVERY,
                0.5,
            )
            created[rig.boot("up", "vm-up")] = "up"  # the other cell: unaffected
            rig.assert_consistent(created)


def _dead(proxy: TcpProxy) -> Callable[[], None]:
    """A fault that resets every live connection and leaves new ones hanging."""

    def fault() -> None:
        proxy.reset()
        proxy.blackhole()

    return fault
