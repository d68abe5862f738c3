"""A delete whose answer is lost after the cell carried it out (issue 12.10).

The cell applies the delete, then every broker connection of that cell is cut
(the fault proxy resets them at the COMMIT of the delete and then holds new
ones): the API cannot know what happened. It must say so (503
``DeleteUnconfirmed``: the outcome is unknown, retrying is safe), keep the
mapping until the cell confirms, and a retry must converge: 204 once, then
404 like any unknown instance. On every backend (cell and API databases)
with RabbitMQ behind :class:`~tests.support.TcpProxy`.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from cellgate.sql.engines import make_engine
from cellgate.urls import DatabaseURL
from tests.functional.test_e2e_processes import assert_error_shape, wait_for
from tests.functional.test_faults import (
    CONNECT_TIMEOUT,
    QUERY_TIMEOUT,
    RECOVERY,
    CellSpec,
    Rig,
    _db_secret,
    _Fault,
    _mq_secret,
    running_direct,
)
from tests.functional.test_faults import scanner as scanner  # the fixture
from tests.functional.test_secret_scanner import Scanner
from tests.support import Broker, Server, TcpProxy

pytestmark = pytest.mark.backends


def _scalar(url: DatabaseURL, query: str, **params: str) -> object:
    engine = make_engine(url, connect_timeout=CONNECT_TIMEOUT, query_timeout=QUERY_TIMEOUT)
    try:
        with engine.connect() as conn:
            return conn.execute(text(query), params).scalar()
    finally:
        engine.dispose()


def _queued(rig: Rig, uuid: str) -> bool:
    value = _scalar(
        rig.api_url,
        "SELECT queued_for_delete FROM instance_mapping WHERE instance_uuid = :u",
        u=uuid,
    )
    return bool(value)


def _deleted_in_cell(rig: Rig, cell: str, uuid: str) -> bool:
    value = _scalar(
        rig.cells[cell].direct, "SELECT deleted FROM instances WHERE uuid = :u", u=uuid
    )
    return value not in (None, 0)


@pytest.mark.timeout(240)
def test_a_delete_whose_answer_is_lost_says_so_and_a_retry_converges(
    server: Server, broker: Broker, scanner: Scanner, tmp_path: Path
) -> None:
    vhosts = {"r": broker.new_vhost(), "s": broker.new_vhost()}
    for name, url in vhosts.items():
        scanner.secrets.append(_mq_secret(f"cell {name} broker", url))
    with TcpProxy("127.0.0.1", 5672) as proxy:
        cells = {}
        for name, vhost in vhosts.items():
            db = server.new_database()
            if server.kind != "sqlite":
                scanner.secrets.append(_db_secret(f"cell {name} database", db))
            via = vhost.replace("@127.0.0.1:5672/", f"@127.0.0.1:{proxy.port}/")
            cells[name] = CellSpec(
                db, db.render(hide_password=False), via if name == "r" else vhost
            )
        with running_direct(server, tmp_path, cells, scanner, workers=True) as rig:
            _lost_answer(rig, proxy)


def _lost_answer(rig: Rig, proxy: TcpProxy) -> None:
    booted = {cell: rig.boot(cell, f"vm-{cell}") for cell in ("r", "s")}

    def active(uuid: str) -> bool:
        shown = rig.request("GET", f"/v1/instances/{uuid}")
        return shown.status_code == 200 and shown.json()["instance"]["status"] == "active"

    for uuid in booted.values():
        wait_for(f"{uuid} to be built", functools.partial(active, uuid), RECOVERY)
    victim = booted["r"]

    def cut() -> None:  # the cell commits the delete; its answer cannot come back
        proxy.reset()
        proxy.blackhole()

    with _Fault(rig.engine_of("r"), "UPDATE instances", cut, at_commit=True) as fault:
        first = rig.request("DELETE", f"/v1/instances/{victim}")
    assert fault.fired.is_set(), "the delete never reached the cell database"
    assert first.status_code == 503, first.text
    error = assert_error_shape(first)
    assert error["code"] == "DeleteUnconfirmed"
    assert (
        "outcome is unknown" in error["message"]
        and "retrying the delete is safe" in (error["message"])
    )
    assert first.headers["retry-after"] == "1"
    assert _deleted_in_cell(rig, "r", victim), "the cell did not carry the delete out"
    assert not _queued(rig, victim), "the mapping went before the cell confirmed"
    other = rig.request("POST", f"/v1/instances/{booted['s']}/action", json={"action": "stop"})
    assert other.status_code == 200, other.text  # cell s has its own broker

    proxy.forward()
    outcomes: list[int] = []
    deadline = time.monotonic() + RECOVERY
    while time.monotonic() < deadline:
        again = rig.request("DELETE", f"/v1/instances/{victim}")
        outcomes.append(again.status_code)
        if again.status_code == 204:
            break
        assert again.status_code == 503, again.text
        assert assert_error_shape(again)["code"] in {"DeleteUnconfirmed", "CellUnavailable"}
        time.sleep(0.5)
    assert outcomes[-1] == 204, f"the retries never converged: {outcomes}"
    assert _queued(rig, victim), "the confirmed delete left the mapping live"
    assert rig.request("GET", f"/v1/instances/{victim}").status_code == 404
    once_more = rig.request("DELETE", f"/v1/instances/{victim}")
    assert once_more.status_code == 404, once_more.text  # deleted: unknown, like show
    listed = {i["uuid"] for i in rig.listing()["instances"]}
    assert victim not in listed and booted["s"] in listed
    # A delete that is answered: 204 at once, and the same afterwards.
    survivor = rig.request("DELETE", f"/v1/instances/{booted['s']}")
    assert survivor.status_code == 204, survivor.text
    assert rig.request("DELETE", f"/v1/instances/{booted['s']}").status_code == 404
