"""A mover SIGKILLed at every write statement, on every backend, then resumed.

Each trial moves a fresh instance with a real ``cellgate instance move``
child process (``paused_move.py``) that pauses after its Nth INSERT, UPDATE
or DELETE on any of the three databases, and kills it there with SIGKILL:
every step boundary and every point inside a step, including the flip with
the source's rows locked. What the kill leaves is what any other process saw
at that moment (uncommitted work dies with the process), and it must hold
the invariant: the mapping names exactly one cell, whose row is visible, and
the reference service shows the instance and lists it exactly once. Then
``--resume`` (or the same command again, when the kill came before the job
was committed) finishes the move: the instance is in the target, with
exactly its original rows, and nothing of it is left in the source.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from cellgate import App, RequestContext, SortKey
from cellgate.apidb.schema import MoveBatchRow
from cellgate.config import ServiceSettings
from cellgate.service.instances import InstanceService
from cellgate.service.metrics import Metrics
from tests.functional.conftest import Deployment
from tests.functional.moving import TwoCells, snapshot

SCRIPT = Path(__file__).with_name("paused_move.py")
ADMIN = RequestContext(request_id="req-crash-check", project_id="demo", roles=("admin",))


def _start(d: Deployment, nth: int, ready: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), str(nth), str(ready), "--config-file", str(d.config_file)]
        + list(args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(path: Path, proc: subprocess.Popen[str]) -> str:
    deadline = time.monotonic() + 60
    while not path.exists() or not path.read_text():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the mover never reached its pause"
        time.sleep(0.02)
    return path.read_text()


def _check_seen_once(cells: TwoCells, uuid: str, where: str) -> None:
    """The reference service's view: show answers from ``where``; the list has it once."""
    with cells.app() as app:
        service = InstanceService(app, ServiceSettings(cell_timeout=10), Metrics(app.cells))
        shown = service.show(ADMIN, uuid)
        assert shown["cell"] == where and shown["uuid"] == uuid
        page = service.page(ADMIN, limit=100, marker=None, sort=[SortKey("name")])
        assert [i["uuid"] for i in page.instances].count(uuid) == 1
        assert not page.down_cells


@pytest.mark.timeout(900)
def test_a_move_killed_at_every_write_resumes_and_never_shows_two_or_none(
    deployment: Deployment, tmp_path: Path
) -> None:
    cells = TwoCells(deployment).setup()
    move = ("instance", "move")
    (first,) = cells.seed(1)
    counted = tmp_path / "count"
    proc = _start(deployment, 0, counted, *move, first, "--to", "cell2", "--grace", "0")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    writes = int(counted.read_text())
    assert writes >= 10  # job, copy (deletes, inserts), flip, hide, purge, each recorded
    for nth in range(1, writes + 1):
        (uuid,) = cells.seed(1)
        original = snapshot(cells, uuid)
        ready = tmp_path / f"ready-{nth}"
        proc = _start(deployment, nth, ready, *move, uuid, "--to", "cell2", "--grace", "0")
        where = _wait_for(ready, proc)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        assert proc.returncode == -signal.SIGKILL
        with cells.app() as app:
            cell = cells.assert_one_visible(app, uuid)
            job = cells.job_of(app, uuid)
        _check_seen_once(cells, uuid, cell)
        if job is not None and not job.finished:
            cells.d.run("instance", "move", "--resume", job.job_id)
        else:  # killed before the job was committed: the same command again
            cells.d.run(*move, uuid, "--to", "cell2", "--grace", "0")
        with cells.app() as app:
            assert cells.assert_intact(app, uuid, original) == "cell2", (nth, where)
            done = cells.job_of(app, uuid)
            assert done is not None and done.state == "done", (nth, where, done)
        _check_seen_once(cells, uuid, "cell2")


@pytest.mark.timeout(900)
def test_a_rollback_killed_at_every_write_resumes_to_the_source(
    deployment: Deployment, tmp_path: Path
) -> None:
    """The same, for ``--rollback`` of a flipped move (the steps run back, target to source)."""
    cells = TwoCells(deployment).setup()

    def moved(uuid: str) -> str:
        job = _lines(cells.d.run("instance", "move", uuid, "--to", "cell2", "--json").stdout)
        return str(job[-1]["job"])  # waiting out the default grace period: rollback possible

    (first,) = cells.seed(1)
    counted = tmp_path / "count"
    proc = _start(deployment, 0, counted, "instance", "move", "--rollback", moved(first))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    writes = int(counted.read_text())
    assert writes >= 10
    for nth in range(1, writes + 1):
        (uuid,) = cells.seed(1)
        original = snapshot(cells, uuid)
        job_id = moved(uuid)
        ready = tmp_path / f"ready-{nth}"
        proc = _start(deployment, nth, ready, "instance", "move", "--rollback", job_id)
        where = _wait_for(ready, proc)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        assert proc.returncode == -signal.SIGKILL
        with cells.app() as app:
            cell = cells.assert_one_visible(app, uuid)
        _check_seen_once(cells, uuid, cell)
        cells.d.run("instance", "move", "--rollback", job_id)
        with cells.app() as app:
            assert cells.assert_intact(app, uuid, original) == "cell1", (nth, where)
            done = cells.job_of(app, uuid)
            assert done is not None and done.state == "rolled_back", (nth, where, done)
        _check_seen_once(cells, uuid, "cell1")


@pytest.mark.timeout(900)
def test_a_drain_killed_anywhere_resumes_and_moves_each_instance_once(
    deployment: Deployment, tmp_path: Path
) -> None:
    """A drain killed at writes spread over its run; ``--resume DRAIN`` finishes it.

    Each trial drains the other way (cell1 -> cell2, then back), so the same
    four instances travel on; after every resume all of them are in the
    target exactly once, with their original rows, and every batch has a
    verdict (``interrupted`` for the one the kill cut short).
    """
    cells = TwoCells(deployment).setup()
    seeded = cells.seed(4)
    originals = {u: snapshot(cells, u) for u in seeded}
    ways = [("cell1", "cell2"), ("cell2", "cell1")]

    def drain(source: str, target: str) -> tuple[str, ...]:
        return ("cell", "drain", source, "--to", target, "--canary", "1", "--wave-size", "2",
                "--grace", "0")  # fmt: skip

    counted = tmp_path / "count"
    proc = _start(deployment, 0, counted, *drain(*ways[0]))
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    writes = int(counted.read_text())
    trials = list(range(2, writes, max(1, writes // 6)))
    for number, nth in enumerate(trials, start=1):
        source, target = ways[number % 2]
        ready = tmp_path / f"drain-{nth}"
        proc = _start(deployment, nth, ready, *drain(source, target))
        where = _wait_for(ready, proc)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        with cells.app() as app:
            for uuid in seeded:
                cell = cells.assert_one_visible(app, uuid)
                _check_seen_once(cells, uuid, cell)
            drain_id = _last_drain(app, cells.cell(app, source).uuid)
        resumed = ["--resume", drain_id] if drain_id else []
        final = _lines(cells.d.run(*drain(source, target), *resumed, "--json").stdout)[-1]
        assert final["status"] == "ok", (nth, where, final)
        assert all(b["state"] in ("ok", "interrupted") for b in final["batches"]), final
        with cells.app() as app:
            for uuid in seeded:
                assert cells.assert_intact(app, uuid, originals[uuid]) == target, (nth, where)


def _last_drain(app: App, source: str) -> str | None:
    """The latest drain out of ``source`` (an older one resumed just carries on)."""
    with app.db.api_session() as s:
        return s.scalars(
            select(MoveBatchRow.drain_id)
            .where(MoveBatchRow.source_cell == source)
            .order_by(MoveBatchRow.id.desc())
        ).first()


def _lines(stdout: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]
