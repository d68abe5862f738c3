"""The scripts under ``examples/`` run and say what the docs say they say."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_library_tour_runs_from_any_directory(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "library_tour.py")],
        cwd=tmp_path,
        timeout=120,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for line in (
        "cells: cell0, cell1, cell2, cell3 (generation 4)",
        "cell1 holds: cell1-vm1",
        "target_cell yields a copy naming cell1; ctx.cell is still None",
        "to_dict() for RPC: cell_uuid, project_id, request_id, roles, user_id",
        "UntargetedContext: a cell database session needs a target cell",
        "cell2: Ok, 2 instance(s)",
        "cell3: TimedOut after 1.0 s",
        "after invalidate(): generation 4 -> 5",
        "cell2: Failed, CellUnavailable:",
        "it does not exist",
        "CellNotFound: no cell named or with uuid 'no-such-cell'",
        "done: App closed its engines, pool and cache",
    ):
        assert line in out, f"{line!r} not in the output:\n{out}"
    # Step 6: every live cell answered except the hung one, at the deadline.
    hung = out.split("6. ", 1)[1].split("7. ", 1)[0]
    assert hung.count(": Ok,") == 2
    assert "returned after 1." in hung
    assert "cell0:" not in out.split("5. ", 1)[1].split("7. ", 1)[0]  # skipped by default
    assert "Traceback" not in result.stderr


def test_rpc_tour_runs_from_any_directory(tmp_path: Path) -> None:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "rpc_tour.py")],
        cwd=tmp_path,
        timeout=120,
        capture_output=True,
        text=True,
        check=False,
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for line in (
        "cell1: topic 'compute' (host1), version 1.3",
        "cell2: topic 'compute' (host2), version 1.3",
        "cell1: 4 calls answered by cell1 on host1, host2",
        "cell2: 4 calls answered by cell2 on host1, host2",
        "pinned: topic 'compute' (host2), version 1.2, timeout 2s -> answered by host2",
        "original: topic 'compute' (any server), version None, timeout 5s",
        "cast to host1: cell1/host1 rebooted vm-1",
        "fanout: cell1/host1, cell1/host2 rebooted vm-2",
        "cell2's servers received 0 casts",
        "RemoteError: exc_type=ValueError: flavor 'm1.huge' does not fit on host",
        "RemoteError: exc_type=NoSuchMethod: no endpoint has a public method 'migrate'",
        "UnsupportedVersion: requested RPC version 1.4 is not supported (server has 1.3)",
        "RPCTimeout after 0.3 s: no reply to 'ping' from cell cell1 topic 'conductor'",
        "NoTransport: cell 'cell0' has no message queue (none:///)",
        "UntargetedContext: an RPC client needs a target cell",
        "Stopped 4 servers; closing the App",
        "done: App closed its transports, engines and cache",
    ):
        assert line in out, f"{line!r} not in the output:\n{out}"
    assert "Traceback" not in result.stderr
    assert elapsed < 30, f"the tour took {elapsed:.1f} s"
