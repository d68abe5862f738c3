"""One deadline bounds all the work of a REST request (issue 12.6).

``[api] request_timeout`` is the request's deadline: no database statement
starts after it, and every driver wait is cut to what is left of it, on the
API database and on the cells alike. The fault proxy makes every answer of
one database late by ``LATENCY``, under ``query_timeout`` so that no single
statement ever times out by itself: before, a request then took the sum of
its round trips (a create in a slow cell 18 s with ``cell_timeout`` 2 s).

MariaDB and PostgreSQL (SQLite has no network to slow down). The bounds are
loose ("no longer than the deadline, one reconnect and the slack"), and the
old code broke them by several seconds.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.functional.test_e2e_processes import assert_error_shape, wait_for
from tests.functional.test_faults import (
    ADMIN_TOKEN,
    CONNECT_TIMEOUT,
    DEMO_TOKEN,
    QUERY_TIMEOUT,
    RECOVERY,
    SLACK,
    Rig,
    _cells,
    _db_secret,
    _port,
    _via,
    running,
    running_direct,
)
from tests.functional.test_secret_scanner import Scanner
from tests.support import Server, TcpProxy

REQUEST_TIMEOUT = 3.0  # [api] request_timeout
LATENCY = 4.5  # every answer of the slow database: under query_timeout, over the deadline
#: What a request may cost: its deadline, one connect cut short by it, and the slack.
BOUND = REQUEST_TIMEOUT + CONNECT_TIMEOUT + SLACK

pytestmark = pytest.mark.backends
assert LATENCY < QUERY_TIMEOUT


@pytest.fixture
def scanner() -> Scanner:
    return Scanner([ADMIN_TOKEN, DEMO_TOKEN])


@pytest.fixture
def proxy(network_server: Server) -> Iterator[TcpProxy]:
    with TcpProxy("127.0.0.1", _port(network_server)) as proxy:
        yield proxy


def _late(rig: Rig, method: str, path: str, **kwargs: object) -> tuple[int, str, float]:
    answer, took = rig.timed(method, path, **kwargs)  # type: ignore[arg-type]
    code = assert_error_shape(answer)["code"] if answer.status_code >= 400 else ""
    return answer.status_code, code, took


def test_a_slow_cell_database_is_cut_at_the_request_deadline(
    network_server: Server, proxy: TcpProxy, scanner: Scanner, tmp_path: Path
) -> None:
    cells = _cells(network_server, scanner, proxy, ["fast", "slow"], "slow")
    with running_direct(
        network_server, tmp_path, cells, scanner, request_timeout=REQUEST_TIMEOUT
    ) as rig:
        created = {rig.boot(c, f"vm-{c}"): c for c in ("fast", "slow")}
        slow = next(u for u, c in created.items() if c == "slow")

        proxy.latency = LATENCY
        status, code, took = _late(
            rig, "POST", "/v1/instances", json={"name": "vm-late", "cell": "slow"}
        )
        assert took <= BOUND, f"a create in a slow cell took {took:.1f} s"
        assert (status, code) in {(504, "DeadlineExceeded"), (503, "CellTimeout")}, (status, code)
        # A show is cut by cell_timeout (under the deadline), as before.
        status, code, took = _late(rig, "GET", f"/v1/instances/{slow}")
        assert (status, code) == (503, "CellTimeout") and took <= BOUND
        # An action: the API database is fast; the cell's workers (in-process) are
        # slowed by their own database; the call is cut at the deadline.
        status, code, took = _late(
            rig, "POST", f"/v1/instances/{slow}/action", json={"action": "stop"}
        )
        assert took <= BOUND, f"an action in a slow cell took {took:.1f} s"
        assert status in {504, 503, 409}, (status, code)
        # The fast cell is not slowed by any of it.
        fast = next(u for u, c in created.items() if c == "fast")
        shown, took = rig.timed("GET", f"/v1/instances/{fast}")
        assert shown.status_code == 200 and took <= SLACK

        proxy.latency = 0.0
        proxy.drop()  # the connections held in the latency are of no use any more
        wait_for(
            "the slow cell to answer again",
            lambda: rig.request("GET", f"/v1/instances/{slow}").status_code == 200,
            RECOVERY,
            0.5,
        )
        created[rig.boot("slow", "vm-after")] = "slow"
        rig.assert_consistent(created)  # the cut create left nothing behind


def test_a_slow_api_database_is_cut_at_the_request_deadline(
    network_server: Server, proxy: TcpProxy, scanner: Scanner, tmp_path: Path
) -> None:
    api = network_server.new_database()
    scanner.secrets.append(_db_secret("API database", api))
    cells = _cells(network_server, scanner, proxy, ["cell1"], "")
    with running(
        tmp_path,
        api_direct=api,
        api_mapped=_via(api, proxy),
        cells=cells,
        scanner=scanner,
        request_timeout=REQUEST_TIMEOUT,
    ) as rig:
        created = {rig.boot("cell1", "vm-1"): "cell1"}
        unseen = rig.boot("cell1", "vm-unseen")  # created, never located: needs the API DB
        created[unseen] = "cell1"
        rig.app.locator.forget(unseen)

        proxy.latency = LATENCY
        status, code, took = _late(rig, "GET", f"/v1/instances/{unseen}")
        assert took <= BOUND, f"a show with a slow API database took {took:.1f} s"
        assert status in {503, 504}, (status, code)
        status, code, took = _late(
            rig, "POST", "/v1/instances", json={"name": "vm-late", "cell": "cell1"}
        )
        assert took <= BOUND, f"a create with a slow API database took {took:.1f} s"
        assert status in {503, 504}, (status, code)
        status, code, took = _late(
            rig, "GET", "/v1/hosts", headers={"Authorization": f"Bearer {ADMIN_TOKEN.password}"}
        )
        assert took <= BOUND, f"a host list with a slow API database took {took:.1f} s"
        assert status in {503, 504}, (status, code)

        proxy.latency = 0.0
        proxy.drop()
        wait_for(
            "the API database to answer again",
            lambda: rig.request("GET", f"/v1/instances/{unseen}").status_code == 200,
            RECOVERY,
            0.5,
        )
        created[rig.boot("cell1", "vm-after")] = "cell1"
        rig.assert_consistent(created)  # the cut create left nothing behind
