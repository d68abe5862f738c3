"""Usage errors: one line, exit 2, and never the secret that was mistyped (issues 12.8, 13.7).

An operator who pastes a URL as a stray argument, or a password into a
numeric option, must not see it echoed back: click quotes both. Every usage
error is rendered as ``cellgate: error: MESSAGE; HINT`` with the text redacted.
"""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from cellgate.cli import cli
from tests.functional.test_secret_scanner import Scanner, Secret

PW = Secret("pasted", "S3cr3t-pw@x:/%-Kq9z", "nova")
URL = f"mysql+pymysql://nova:{PW.q}@127.0.0.1/nova"
RAW_URL = f"mysql+pymysql://nova:{PW.password}@127.0.0.1/nova"

CASES = {
    "stray URL argument": ["cell", "update", "cell1", URL],
    "stray raw URL argument": ["cell", "update", "cell1", RAW_URL],
    "password in a numeric option": ["cell", "update", "cell1", "--expected-version", PW.password],
    "password as =value": ["cell", "update", "cell1", f"--expected-version={PW.password}"],
    "password as an unknown option's value": ["cell", "list", f"--password={PW.password}"],
    "password as a command": ["cell", PW.password],
    "password at the top": [PW.password],
    "missing option value": ["cell", "create", "--name"],
}


@pytest.mark.parametrize("case", list(CASES))
def test_usage_errors_are_one_redacted_line_with_exit_2(case: str) -> None:
    result = CliRunner().invoke(cli, CASES[case])
    scanner = Scanner([PW])
    scanner.scan("stdout", result.stdout)
    scanner.scan("stderr", result.stderr)
    scanner.assert_clean()
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("cellgate: error: "), result.stderr
    assert "--help" in lines[0] and "Usage:" not in result.output
    assert result.stdout == ""


def test_no_such_command_keeps_its_wording() -> None:
    result = CliRunner().invoke(cli, ["cell", "frobnicate"])
    assert result.exit_code == 2
    assert result.stderr.startswith("cellgate: error: No such command")


def test_help_is_unchanged() -> None:
    result = CliRunner().invoke(cli, ["cell", "update", "--help"])
    assert result.exit_code == 0 and "Usage:" in result.stdout
