"""``cellgate instance move`` on SQLite, MariaDB and PostgreSQL: steps, rollback, verification.

The crash tests (a mover killed at every write) are in ``test_move_crash.py``;
drains in ``test_drain.py``.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import event, update
from sqlalchemy.engine import Engine

from cellgate import admin
from cellgate.celldb import queries, rows
from cellgate.celldb.schema import InstanceActionRow
from cellgate.cli.exit_codes import ExitCode
from cellgate.errors import InstanceMoving, MoveVerifyFailed
from cellgate.sql.engines import make_engine
from tests.functional.conftest import Deployment
from tests.functional.moving import CTX, TwoCells, snapshot


@pytest.fixture
def cells(deployment: Deployment) -> TwoCells:
    return TwoCells(deployment).setup()


def _lines(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def _result(cells: TwoCells, *args: str) -> dict[str, Any]:
    """The last JSON line of a ``--json`` move: its result."""
    final = _lines(cells.d.run(*args, "--json").stdout)[-1]
    assert final["event"] == "result"
    return final


def test_move_copies_every_row_flips_the_mapping_and_purges_the_source(cells: TwoCells) -> None:
    (uuid,) = cells.seed(1)
    before = snapshot(cells, uuid)
    result = cells.d.run("instance", "move", uuid, "--to", "cell2", "--grace", "0", "--json")
    events = _lines(result.stdout)
    steps = [e["step"] for e in events if e["event"] == "step"]
    assert steps == ["copied", "verified", "flipped", "source_hidden", "purged"]
    final = events[-1]
    assert final["event"] == "result" and final["state"] == "done"
    assert final["rows_copied"] == 3 and final["attempts"] == 1
    with cells.app() as app:
        assert cells.assert_intact(app, uuid, before) == "cell2"
        assert cells.count(app, "cell1") == {"instances": 0, "instance_actions": 0}


def test_a_grace_period_keeps_the_source_hidden_and_rollback_brings_changes_back(
    cells: TwoCells,
) -> None:
    (uuid,) = cells.seed(1)
    job = _result(cells, "instance", "move", uuid, "--to", "cell2", "--grace", "3600")
    assert (job["state"], job["step"]) == ("waiting", "source_hidden")
    with cells.app() as app:
        assert cells.assert_one_visible(app, uuid) == "cell2"
        assert cells.visibility(app, "cell1", uuid) is False
        # The instance is live in cell2 now: a change there must survive the rollback.
        with app.db.session(CTX.for_cell(cells.cell(app, "cell2"))) as s:
            assert queries.set_state(s, uuid, vm_state="stopped") is not None
        changed = cells.rows_of(app, "cell2", uuid)
    # Resuming before the grace period ends changes nothing.
    again = _result(cells, "instance", "move", "--resume", job["job"])
    assert (again["state"], again["attempts"]) == ("waiting", 2)
    back = _result(cells, "instance", "move", "--rollback", job["job"])
    assert (back["state"], back["rollback"]) == ("rolled_back", True)
    with cells.app() as app:
        assert cells.assert_intact(app, uuid, changed) == "cell1"
        with app.db.session(CTX.for_cell(cells.cell(app, "cell1"))) as s:
            found = queries.get_instance(s, uuid, project_id=None)
        assert found is not None and found.vm_state == "stopped"


def test_rollback_before_the_flip_removes_the_copy(cells: TwoCells) -> None:
    (uuid,) = cells.seed(1)
    before = snapshot(cells, uuid)
    seen: list[str] = []

    def stop_after_copy(event: dict[str, Any]) -> None:
        seen.append(event["step"])
        if event["step"] == "copied":
            raise KeyboardInterrupt  # the operator's Ctrl-C, between two steps

    with cells.app() as app:
        with pytest.raises(KeyboardInterrupt):
            admin.move_instance(app, uuid, to="cell2", grace=0, on_progress=stop_after_copy)
        job = cells.job_of(app, uuid)
        assert job is not None and job.step == "copied"
        assert cells.visibility(app, "cell2", uuid) is False  # the copy is hidden
        done = admin.rollback_move(app, job.job_id)
        assert done.state == "rolled_back"
        assert cells.assert_intact(app, uuid, before) == "cell1"


def test_a_change_to_the_source_after_the_copy_fails_verification_and_leaves_it_intact(
    cells: TwoCells,
) -> None:
    (uuid,) = cells.seed(1)

    with cells.app() as app:
        source = CTX.for_cell(cells.cell(app, "cell1"))

        def act_behind_the_movers_back(event: dict[str, Any]) -> None:
            if event["step"] == "copied":  # an action that slipped past the API's check
                with app.db.session(source) as s:
                    s.execute(
                        update(InstanceActionRow)
                        .where(InstanceActionRow.instance_uuid == uuid)
                        .values(action="reboot")
                    )

        with pytest.raises(MoveVerifyFailed) as failed:
            admin.move_instance(
                app, uuid, to="cell2", grace=0, on_progress=act_behind_the_movers_back
            )
        assert "content hash" in failed.value.reason
        changed = cells.rows_of(app, "cell1", uuid)
        assert cells.assert_intact(app, uuid, changed) == "cell1"
        job = cells.job_of(app, uuid)
        assert job is not None and job.state == "failed" and job.verdict
        # The instance is free again: the next move succeeds.
        assert admin.move_instance(app, uuid, to="cell2", grace=0).state == "done"
        assert cells.assert_intact(app, uuid, changed) == "cell2"


def test_the_cli_reports_a_failed_verification_with_exit_7(cells: TwoCells) -> None:
    (uuid,) = cells.seed(1)
    with cells.app() as app:
        source = app.db.url_for(cells.cell(app, "cell1"))
    engine = make_engine(source, connect_timeout=5, query_timeout=30)
    fired: list[str] = []

    def change_source_once(_conn: Any, _cursor: Any, statement: str, params: Any, *_: Any) -> None:
        # Right after the mover records "copied" (its API transaction), an
        # action lands on the source behind its back.
        if fired or not statement.startswith("UPDATE move_job") or "copied" not in str(params):
            return
        fired.append(statement)
        with engine.begin() as conn:
            conn.execute(
                update(InstanceActionRow)
                .where(InstanceActionRow.instance_uuid == uuid)
                .values(action="reboot")
            )

    event.listen(Engine, "after_cursor_execute", change_source_once)
    try:
        result = cells.d.run("instance", "move", uuid, "--to", "cell2", "--json", ok=False)
    finally:
        event.remove(Engine, "after_cursor_execute", change_source_once)
        engine.dispose()
    assert fired
    assert result.exit_code == ExitCode.VERIFY_FAILED, result.output
    assert "stays in its source cell" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    *events, error = _lines(result.stdout)  # the JSON lines end with the error (docs/cli.md)
    assert error["error"]["exit_code"] == 7 and events[-1]["state"] == "failed"
    with cells.app() as app:
        assert cells.assert_one_visible(app, uuid) == "cell1"
        assert not any(cells.rows_of(app, "cell2", uuid).values())


def test_bad_input_is_one_line_and_a_documented_code(cells: TwoCells) -> None:
    (uuid,) = cells.seed(1)
    cases = [
        (["instance", "move", uuid], ExitCode.USAGE),
        (["instance", "move", uuid, "--to", "cell1"], ExitCode.USAGE),
        (["instance", "move", uuid, "--to", "nope"], ExitCode.NOT_FOUND),
        (["instance", "move", "not-a-uuid", "--to", "cell2"], ExitCode.NOT_FOUND),
        (["instance", "move", "--resume", "no-such-job"], ExitCode.NOT_FOUND),
        (["instance", "move", uuid, "--to", "cell0"], ExitCode.NOT_FOUND),
        (["instance", "move", uuid, "--to", "cell2", "--grace", "-1"], ExitCode.USAGE),
    ]
    for args, code in cases:
        result = cells.d.run(*args, ok=False)
        assert result.exit_code == code, (args, result.output)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    with cells.app() as app:
        assert cells.mapped_to(app, uuid) == "cell1"
        assert cells.job_of(app, uuid) is None  # nothing was written


def test_a_second_move_to_another_cell_is_refused_while_one_is_unfinished(
    cells: TwoCells,
) -> None:
    (uuid,) = cells.seed(1)
    job = _result(cells, "instance", "move", uuid, "--to", "cell2", "--grace", "3600")
    with cells.app() as app, pytest.raises(InstanceMoving) as refused:
        admin.move_instance(app, uuid, to="cell1")
    assert refused.value.job == job["job"]
    again = cells.d.run("instance", "move", uuid, "--to", "cell1", ok=False)
    assert again.exit_code == ExitCode.CONFLICT
    assert f"--resume {job['job']}" in again.stderr


def test_the_copy_hash_covers_every_per_instance_table(cells: TwoCells) -> None:
    (uuid,) = cells.seed(1)
    found = snapshot(cells, uuid)
    assert set(found) == {"instances", "instance_actions"}
    assert "hidden" not in found["instances"][0] and "id" not in found["instances"][0]
    assert rows.digest(found)[0] == 3


def test_a_cell_with_an_unfinished_move_cannot_be_deleted(cells: TwoCells) -> None:
    (uuid,) = cells.seed(1)
    job = _result(cells, "instance", "move", uuid, "--to", "cell2", "--grace", "3600")
    # cell1 has no instance mapped any more, only the hidden rows the grace period keeps.
    refused = cells.d.run("cell", "delete", "cell1", "--force", ok=False)
    assert refused.exit_code == ExitCode.CONFLICT, refused.output
    assert "unfinished instance move" in refused.stderr and "--rollback" in refused.stderr
    _result(cells, "instance", "move", "--rollback", job["job"])
    cells.d.run("cell", "delete", "cell2")  # nothing of the instance is left there
