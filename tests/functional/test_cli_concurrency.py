"""Operators racing each other: separate ``cellgate`` processes on one API database."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cellgate.cli.exit_codes import ExitCode
from tests.functional.conftest import Deployment

RACERS = 4


@pytest.mark.timeout(180)
def test_concurrent_create_with_the_same_name_has_exactly_one_winner(
    deployment: Deployment,
) -> None:
    deployment.run("api-db", "sync")
    db = deployment.new_cell_url().render(hide_password=False)
    args = [
        sys.executable,
        "-m",
        "cellgate",
        "--config-file",
        str(deployment.config_file),
        "cell",
        "create",
        "--name",
        "racy",
        "--transport-url",
        "memory://racy",
        "--database-connection",
        db,
    ]
    procs = [
        subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(RACERS)
    ]
    outcomes = [(p.wait(timeout=120), *p.communicate()) for p in procs]
    codes = sorted(code for code, _, _ in outcomes)
    assert codes == [ExitCode.OK] + [ExitCode.CONFLICT] * (RACERS - 1), outcomes
    for code, _, err in outcomes:
        deployment.assert_no_secret(err)
        if code == ExitCode.CONFLICT:
            assert "name 'racy' already exists" in err and "Traceback" not in err
    assert [c["name"] for c in deployment.json("cell", "list")] == ["racy"]
