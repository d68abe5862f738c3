"""cellgate next to a Nova deployment: a config whose defaults are Nova's, and the CLI on it.

A Nova operator adopting cellgate points cellgate's ``[database] connection``
and ``[DEFAULT] transport_url`` at what Nova's were (that is what templated
cell URLs render against, in Nova and in cellgate alike); cellgate's own API
database is a new one on the same server. :class:`Cellgate` runs the CLI
on that config and fails a test whose output holds any password of either
side.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from click.testing import CliRunner, Result

from cellgate.cli import cli
from cellgate.nova.urls import translate_database_url
from cellgate.urls import DatabaseURL, url_passwords
from tests.nova.deployment import Deployment
from tests.support import Server


def nova_secrets(nova: Deployment) -> list[str]:
    """Every password in the deployment's URLs (databases and brokers)."""
    found = [*url_passwords(nova.default_transport)]
    for db in nova.all_databases().values():
        found += url_passwords(db.nova_url)
        if db.password:
            found.append(db.password)
    return [s for s in {*found, *(unquote(s) for s in found)} if len(s) >= 3]


@dataclass
class Cellgate:
    """A cellgate config (API database of its own) beside ``nova``, and its CLI."""

    nova: Deployment
    config_file: Path
    api_url: DatabaseURL
    secrets: list[str] = field(default_factory=list)

    def run(self, *args: str, ok: bool = True) -> Result:
        result = CliRunner().invoke(cli, ["--config-file", str(self.config_file), *args])
        self.assert_no_secret(result.output)
        assert "Traceback" not in result.output, result.output
        if ok:
            assert result.exit_code == 0, result.output
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "--json").stdout)

    def revealed(self, ident: str) -> Any:
        args = ["--config-file", str(self.config_file), "cell", "show", ident]
        result = CliRunner().invoke(cli, [*args, "--reveal-secrets", "--json"])
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    def assert_no_secret(self, text: str) -> None:
        for secret in self.secrets:
            for form in {secret, quote(secret, safe="")}:
                assert form not in text, f"password leaked into output: {text!r}"


def cellgate_beside(
    nova: Deployment,
    server: Server,
    tmp_path: Path,
    *,
    api_options: str = "",
    sync: bool = True,
) -> Cellgate:
    """cellgate configured with Nova's defaults and a fresh API database on ``server``."""
    api = server.new_database()
    raw_api = api.render(hide_password=False)
    config = tmp_path / "cellgate-nova.conf"
    config.write_text(
        "[DEFAULT]\n"
        f"state_path = {tmp_path / 'state'}\n"
        f"transport_url = {nova.default_transport}\n"
        "[api_database]\n"
        f"connection = {raw_api}\n"
        f"{api_options}"
        "[database]\n"
        f"connection = {translate_database_url(nova.default_database)}\n"
        "connect_timeout = 2\n",
        encoding="utf-8",
    )
    side = Cellgate(nova, config, api, [*url_passwords(raw_api), *nova_secrets(nova)])
    if sync:
        side.run("api-db", "sync")
    return side
