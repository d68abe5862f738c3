"""``cellgate cell drain`` on SQLite, MariaDB and PostgreSQL: canary, waves, verdicts, resume."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import event, update
from sqlalchemy.engine import Engine

from cellgate.apidb import moves
from cellgate.celldb.schema import InstanceActionRow
from cellgate.cli.exit_codes import ExitCode
from cellgate.sql.engines import make_engine
from tests.functional.conftest import Deployment
from tests.functional.moving import TwoCells, snapshot


@pytest.fixture
def cells(deployment: Deployment) -> TwoCells:
    return TwoCells(deployment).setup()


def _lines(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def test_a_drain_moves_a_canary_then_waves_and_records_each_verdict(cells: TwoCells) -> None:
    seeded = cells.seed(5)
    before = {uuid: snapshot(cells, uuid) for uuid in seeded}
    args = ("cell", "drain", "cell1", "--to", "cell2", "--canary", "1", "--wave-size", "2")
    result = cells.d.run(*args, "--grace", "0", "--max-rate", "1000", "--json")
    events = _lines(result.stdout)
    assert [e["size"] for e in events if e["event"] == "batch"] == [1, 2, 2]
    final = events[-1]
    assert (final["event"], final["status"], final["moved"]) == ("result", "ok", 5)
    batches = final["batches"]
    assert [(b["batch"], b["canary"], b["size"], b["moved"]) for b in batches] == [
        (0, True, 1, 1),
        (1, False, 2, 2),
        (2, False, 2, 2),
    ]
    assert all(b["state"] == "ok" and "verified" in b["verdict"] for b in batches)
    with cells.app() as app:
        for uuid in seeded:
            assert cells.assert_intact(app, uuid, before[uuid]) == "cell2"
        assert cells.count(app, "cell1") == {"instances": 0, "instance_actions": 0}
        with app.db.api_session() as s:
            jobs = moves.jobs_of_drain(s, final["drain"])
        assert sorted(j.instance_uuid for j in jobs) == seeded
        assert {j.state for j in jobs} == {"done"}
    # An empty cell drains to nothing, and the emptied cell can now be deleted.
    again = _lines(cells.d.run("cell", "drain", "cell1", "--to", "cell2", "--json").stdout)
    assert again[-1]["moved"] == 0 and again[-1]["batches"] == []
    cells.d.run("cell", "delete", "cell1")


def test_a_dry_run_plans_the_batches_and_writes_nothing(cells: TwoCells) -> None:
    seeded = cells.seed(4)
    result = cells.d.run(
        "cell", "drain", "cell1", "--to", "cell2", "--canary", "1", "--wave-size", "2",
        "--dry-run", "--json",
    )  # fmt: skip
    final = _lines(result.stdout)[-1]
    assert final["status"] == "planned"
    assert final["planned"] == [seeded[:1], seeded[1:3], seeded[3:]]
    with cells.app() as app:
        assert all(cells.mapped_to(app, uuid) == "cell1" for uuid in seeded)
        assert all(cells.job_of(app, uuid) is None for uuid in seeded)
        with app.db.api_session() as s:
            assert moves.batches_of_drain(s, final["drain"]) == []


def test_a_failed_verification_stops_the_drain_and_resume_finishes_it(cells: TwoCells) -> None:
    seeded = cells.seed(5)
    victim = seeded[2]  # the second instance of the first wave
    with cells.app() as app:
        source = app.db.url_for(cells.cell(app, "cell1"))
    engine = make_engine(source, connect_timeout=5, query_timeout=30)
    fired: list[str] = []

    def change_victim(_conn: Any, _cursor: Any, statement: str, params: Any, *_: Any) -> None:
        # The copy of the victim is being written: its source changes under it.
        if fired or not statement.startswith("INSERT INTO instance_actions"):
            return
        if victim not in str(params):
            return
        with engine.begin() as conn:
            done = conn.execute(
                update(InstanceActionRow)
                .where(InstanceActionRow.instance_uuid == victim)
                .values(action="reboot")
            )
        if done.rowcount:
            fired.append(statement)

    args = ("cell", "drain", "cell1", "--to", "cell2", "--wave-size", "2", "--grace", "0")
    event.listen(Engine, "after_cursor_execute", change_victim)
    try:
        stopped = cells.d.run(*args, "--json", ok=False)
    finally:
        event.remove(Engine, "after_cursor_execute", change_victim)
        engine.dispose()
    assert fired and stopped.exit_code == ExitCode.VERIFY_FAILED, stopped.output
    assert len(stopped.stderr.strip().splitlines()) == 1
    final = _lines(stopped.stdout)[-1]
    assert final["status"] == "failed" and final["moved"] == 2
    assert [(b["batch"], b["state"], b["moved"]) for b in final["batches"]] == [
        (0, "ok", 1),
        (1, "failed", 1),
    ]
    assert victim in final["batches"][1]["verdict"]
    with cells.app() as app:
        assert cells.assert_one_visible(app, victim) == "cell1"  # intact in the source
        assert not any(cells.rows_of(app, "cell2", victim).values())
        assert [cells.mapped_to(app, u) for u in seeded] == ["cell2"] * 2 + ["cell1"] * 3
        changed = cells.rows_of(app, "cell1", victim)
    resumed = _lines(cells.d.run(*args, "--resume", final["drain"], "--json").stdout)[-1]
    assert resumed["status"] == "ok" and resumed["moved"] == 5
    assert [b["batch"] for b in resumed["batches"]] == [0, 1, 2, 3]
    with cells.app() as app:
        assert all(cells.mapped_to(app, u) == "cell2" for u in seeded)
        assert cells.assert_intact(app, victim, changed) == "cell2"


def test_drain_bad_input_is_one_line_and_exit_2_or_3(cells: TwoCells) -> None:
    cells.seed(1)
    cases = [
        (["cell", "drain", "cell1", "--to", "cell1"], ExitCode.USAGE),
        (["cell", "drain", "cell1", "--to", "cell2", "--max-rate", "0"], ExitCode.USAGE),
        (["cell", "drain", "cell1", "--to", "cell2", "--wave-size", "0"], ExitCode.USAGE),
        (["cell", "drain", "cell1", "--to", "nope"], ExitCode.NOT_FOUND),
        (["cell", "drain", "cell1", "--to", "cell2", "--resume", "nope"], ExitCode.NOT_FOUND),
    ]
    for args, code in cases:
        result = cells.d.run(*args, ok=False)
        assert result.exit_code == code, (args, result.output)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
