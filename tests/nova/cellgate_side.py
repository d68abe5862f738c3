"""cellgate next to a Nova deployment: a config whose defaults are Nova's, and the CLI on it.

A Nova operator adopting cellgate points cellgate's ``[database] connection``
and ``[DEFAULT] transport_url`` at what Nova's were (that is what templated
cell URLs render against, in Nova and in cellgate alike); cellgate's own API
database is a new one on the same server. :class:`Cellgate` runs the CLI
on that config and fails a test whose output holds any password of either
side.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

from cellgate.nova.urls import translate_database_url
from cellgate.urls import DatabaseURL, url_passwords
from tests.cli_runner import CliUser
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
class Cellgate(CliUser):
    """A cellgate config (API database of its own) beside ``nova``, and its CLI."""

    nova: Deployment
    config_file: Path
    api_url: DatabaseURL
    secrets: list[str] = field(default_factory=list)


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
