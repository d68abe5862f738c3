"""Operators racing each other: separate ``cellgate`` processes on one API database."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cellgate.cli.exit_codes import ExitCode
from tests.functional.conftest import Deployment

RACERS = 4


def cellgate(d: Deployment) -> list[str]:
    return [sys.executable, "-m", "cellgate", "--config-file", str(d.config_file)]


def race(commands: list[list[str]]) -> list[tuple[int, str, str]]:
    """Start every command at once; their exit codes, stdout and stderr."""
    procs = [
        subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for c in commands
    ]
    return [(p.wait(timeout=120), *p.communicate()) for p in procs]


@pytest.mark.timeout(180)
def test_concurrent_create_with_the_same_name_has_exactly_one_winner(
    deployment: Deployment,
) -> None:
    deployment.run("api-db", "sync")
    db = deployment.new_cell_url().render(hide_password=False)
    args = [
        *cellgate(deployment),
        "cell",
        "create",
        "--name",
        "racy",
        "--transport-url",
        "memory://racy",
        "--database-connection",
        db,
    ]
    outcomes = race([args] * RACERS)
    codes = sorted(code for code, _, _ in outcomes)
    assert codes == [ExitCode.OK] + [ExitCode.CONFLICT] * (RACERS - 1), outcomes
    for code, _, err in outcomes:
        deployment.assert_no_secret(err)
        if code == ExitCode.CONFLICT:
            assert "name 'racy' already exists" in err and "Traceback" not in err
    assert [c["name"] for c in deployment.json("cell", "list")] == ["racy"]


@pytest.mark.timeout(180)
def test_concurrent_updates_from_the_same_version_have_exactly_one_winner(
    deployment: Deployment,
) -> None:
    deployment.run("api-db", "sync")
    db = deployment.new_cell_url().render(hide_password=False)
    deployment.run(
        "cell", "create", "--name", "c1", "--transport-url", "memory://c1",
        "--database-connection", db,
    )  # fmt: skip
    update = [*cellgate(deployment), "cell", "update", "c1", "--expected-version", "1"]
    outcomes = race([[*update, "--transport-url", f"memory://racer{i}"] for i in range(RACERS)])
    codes = sorted(code for code, _, _ in outcomes)
    assert codes == [ExitCode.OK] + [ExitCode.CONFLICT] * (RACERS - 1), outcomes
    winner = next(out for code, out, _ in outcomes if code == ExitCode.OK)
    for code, _, err in outcomes:
        deployment.assert_no_secret(err)
        if code == ExitCode.CONFLICT:
            assert "changed since version 1 (it is now at version 2)" in err, err
    shown = deployment.json("cell", "show", "c1")
    assert shown["version"] == 2 and shown["transport_url"] in winner
    history = deployment.json("cell", "history", "c1")
    assert [e["action"] for e in history] == ["create", "update"]


@pytest.mark.timeout(180)
def test_concurrent_updates_of_different_fields_both_land(deployment: Deployment) -> None:
    deployment.run("api-db", "sync")
    db = deployment.new_cell_url().render(hide_password=False)
    deployment.run(
        "cell", "create", "--name", "c1", "--transport-url", "memory://c1",
        "--database-connection", db,
    )  # fmt: skip
    update = [*cellgate(deployment), "cell", "update", "c1"]
    outcomes = race([[*update, "--transport-url", "memory://moved"], [*update, "--disable"]])
    assert [code for code, _, _ in outcomes] == [ExitCode.OK, ExitCode.OK], outcomes
    shown = deployment.json("cell", "show", "c1")
    assert (shown["transport_url"], shown["disabled"], shown["version"]) == (
        "memory://moved",
        True,
        3,
    )


@pytest.mark.timeout(180)
def test_concurrent_deletes_and_an_update_are_serialised(deployment: Deployment) -> None:
    deployment.run("api-db", "sync")
    db = deployment.new_cell_url().render(hide_password=False)
    deployment.run(
        "cell", "create", "--name", "c1", "--transport-url", "memory://c1",
        "--database-connection", db,
    )  # fmt: skip
    delete = [*cellgate(deployment), "cell", "delete", "c1"]
    update = [*cellgate(deployment), "cell", "update", "c1", "--disable"]
    outcomes = race([delete, delete, delete, update])
    deletes = sorted(code for code, _, _ in outcomes[:3])
    assert deletes == [ExitCode.OK, ExitCode.NOT_FOUND, ExitCode.NOT_FOUND], outcomes
    assert outcomes[3][0] in (ExitCode.OK, ExitCode.NOT_FOUND), outcomes
    for _, _, err in outcomes:
        deployment.assert_no_secret(err)
        assert "Traceback" not in err
    actions = [e["action"] for e in deployment.json("cell", "history", "c1")]
    # The update either landed before the delete or found no cell: never after it.
    assert actions in (["create", "delete"], ["create", "update", "delete"]), actions
    assert deployment.json("cell", "list") == []
