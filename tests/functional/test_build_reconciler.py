"""No instance stays ``building`` for ever (issue 12.4), in-process transport.

A confirmed build cast on the in-process broker waits for the first worker of
its cell (as in a durable queue) instead of being dropped; an instance whose
build still never happens is marked ``error`` by the reconciler once it is
older than ``[api] build_timeout``, and a late build leaves it ``error``.
On SQLite, MariaDB and PostgreSQL.
"""

from __future__ import annotations

import functools
import logging
import time
from pathlib import Path

import pytest

from cellgate.service.reconcile import BuildReconciler, fail_stuck_builds
from tests.functional.test_create_cast_failure import _active, _cells, _workers
from tests.functional.test_e2e_processes import wait_for
from tests.functional.test_faults import (
    ADMIN_TOKEN,
    CELL_TIMEOUT,
    CTX,
    DEMO_TOKEN,
    RECOVERY,
    Rig,
    running_direct,
)
from tests.functional.test_secret_scanner import Scanner
from tests.support import Server


@pytest.fixture
def scanner() -> Scanner:
    return Scanner([ADMIN_TOKEN, DEMO_TOKEN])


def _status(rig: Rig, uuid: str) -> str:
    shown = rig.request("GET", f"/v1/instances/{uuid}")
    assert shown.status_code == 200, shown.text
    return str(shown.json()["instance"]["status"])


def test_a_build_waits_for_the_first_worker_and_a_lost_one_ends_in_error(
    server: Server, scanner: Scanner, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cells = _cells(server, scanner, {"a": "memory://a", "b": "memory://b"})
    with running_direct(server, tmp_path, cells, scanner) as rig:
        # No worker yet in cell a: the build waits for one (before: dropped).
        early = rig.boot("a", "vm-early")
        assert _status(rig, early) == "building"
        with _workers(rig, ["a"]):
            wait_for("vm-early to be built", functools.partial(_active, rig, early), RECOVERY)

        # Cell b never gets a worker: its instance stays building until the
        # reconciler's deadline. A fresh instance is never touched.
        stuck = rig.boot("b", "vm-stuck")
        kept = fail_stuck_builds(rig.app, CTX, build_timeout=3600, cell_timeout=CELL_TIMEOUT)
        assert kept.failed == {} and kept.unreachable == []
        assert _status(rig, stuck) == "building"
        time.sleep(1.0)  # older than the 0.5 s build timeout below (not a timing assert)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="cellgate.service.reconcile"):
            marked = fail_stuck_builds(rig.app, CTX, build_timeout=0.5, cell_timeout=CELL_TIMEOUT)
        assert marked.to_dict() == {"failed": {"b": [stuck]}, "unreachable": []}
        assert [r.getMessage() for r in caplog.records if stuck in r.getMessage()]
        assert _status(rig, stuck) == "error"
        assert _status(rig, early) == "active"  # built instances are never touched
        again = fail_stuck_builds(rig.app, CTX, build_timeout=0.5, cell_timeout=CELL_TIMEOUT)
        assert again.failed == {}  # marked once

        # The late build (it waited for cell b's first worker) leaves it error.
        caplog.clear()
        with (
            caplog.at_level(logging.WARNING, logger="cellgate.service.compute"),
            _workers(rig, ["b"]),
        ):
            wait_for(
                "the late build to be ignored",
                lambda: any("ignored" in r.getMessage() for r in caplog.records),
                RECOVERY,
            )
            assert _status(rig, stuck) == "error"

            # The reconciler's thread does the same on its own.
            reconciler = BuildReconciler(
                rig.app, build_timeout=0.5, cell_timeout=CELL_TIMEOUT, interval=0.2
            )
            late = rig.boot("a", "vm-late")  # cell a's worker is gone: nobody builds it
            reconciler.start()
            try:
                wait_for(
                    "the reconciler to mark vm-late",
                    lambda: _status(rig, late) == "error",
                    RECOVERY,
                )
            finally:
                reconciler.stop()
        assert _status(rig, early) == "active"
        rig.assert_consistent({early: "a", stuck: "b", late: "a"})


def test_a_zero_build_timeout_turns_the_reconciler_off(
    server: Server, scanner: Scanner, tmp_path: Path
) -> None:
    cells = _cells(server, scanner, {"a": "memory://a"})
    with running_direct(server, tmp_path, cells, scanner) as rig:
        reconciler = BuildReconciler(rig.app, build_timeout=0, cell_timeout=CELL_TIMEOUT).start()
        assert reconciler._thread is None
        reconciler.stop()
