"""Running the CLI in-process on a config file, failing a test whose output holds a password.

Shared by the functional tests' :class:`~tests.functional.conftest.Deployment`
and the Nova tests' :class:`~tests.nova.cellgate_side.Cellgate`: both are a
config file and the passwords that must never be printed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

from click.testing import CliRunner, Result

from cellgate.cli import cli


class CliUser:
    """``run``/``json``/``revealed`` on ``self.config_file``; ``self.secrets`` must not show."""

    config_file: Path
    secrets: list[str]

    def run(self, *args: str, ok: bool = True) -> Result:
        result = CliRunner().invoke(cli, ["--config-file", str(self.config_file), *args])
        self.assert_no_secret(result.output)
        assert "Traceback" not in result.output or "--debug" in args, result.output
        if ok:
            assert result.exit_code == 0, result.output
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "--json").stdout)

    def revealed(self, ident: str) -> Any:
        """``cell show --reveal-secrets``: the one output allowed to hold passwords."""
        args = ["--config-file", str(self.config_file), "cell", "show", ident]
        result = CliRunner().invoke(cli, [*args, "--reveal-secrets", "--json"])
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    def assert_no_secret(self, text: str) -> None:
        for secret in self.secrets:
            for form in {secret, quote(secret, safe="")}:
                assert form not in text, f"password leaked into output: {text!r}"
