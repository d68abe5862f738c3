"""Ctrl-C in any command is one line and exit 130; ports outside 1-65535 are usage errors."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from cellgate import admin
from cellgate.cli import cli
from cellgate.cli.exit_codes import ExitCode


def test_ctrl_c_in_a_command_is_one_line_and_exit_130(monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(*_args: object, **_kwargs: object) -> None:
        raise KeyboardInterrupt  # what the terminal's Ctrl-C raises in the main thread

    monkeypatch.setattr(admin, "read_cells", interrupted)
    result = CliRunner().invoke(cli, ["cell", "list"])
    assert result.exit_code == ExitCode.INTERRUPTED == 130
    assert result.stderr == "cellgate: interrupted\n"
    assert "Aborted" not in result.output and "Traceback" not in result.output


@pytest.mark.parametrize(
    ("command", "port"),
    [(["serve", "api"], "70000"), (["serve", "api"], "0"), (["all-in-one"], "-1")],
)
def test_a_port_outside_its_range_is_a_usage_error(command: list[str], port: str) -> None:
    result = CliRunner().invoke(cli, [*command, "--port", port])
    assert result.exit_code == ExitCode.USAGE
    [line] = result.stderr.splitlines()
    assert line.startswith("cellgate: error: Invalid value for '--port'")
    assert "65535" in line
