"""A deployment per test: an API database and a local cell database on one backend."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from cellgate.config import Settings, load_settings
from cellgate.sql.api_database import ApiDatabase
from cellgate.urls import DatabaseURL, url_passwords
from tests.cli_runner import CliUser
from tests.support import Server


@dataclass
class Deployment(CliUser):
    """A config file pointing at fresh databases, and a way to run the CLI on it."""

    server: Server
    config_file: Path
    api_url: DatabaseURL
    local_url: DatabaseURL
    secrets: list[str]

    def new_cell_url(self) -> DatabaseURL:
        url = self.server.new_database()
        self.secrets.extend(url_passwords(url.render(hide_password=False)))
        return url

    def settings(self) -> Settings:
        return load_settings(self.config_file)

    @contextmanager
    def api(self) -> Iterator[ApiDatabase]:
        api = ApiDatabase(self.settings().api_database)
        try:
            yield api
        finally:
            api.close()


@pytest.fixture
def deployment(server: Server, tmp_path: Path) -> Deployment:
    """A deployment on each backend in turn."""
    return make_deployment(server, tmp_path)


@pytest.fixture
def sqlite_deployment(tmp_path: Path) -> Deployment:
    """A deployment on SQLite only, for tests whose subject is not the database."""
    return make_deployment(Server("sqlite", tmp_path), tmp_path)


def make_deployment(server: Server, tmp_path: Path) -> Deployment:
    api_url = server.new_database()
    local_url = server.new_database()
    config = tmp_path / "cellgate.conf"
    config.write_text(
        "[DEFAULT]\n"
        f"state_path = {tmp_path / 'state'}\n"
        "transport_url = memory://local\n"
        "[api_database]\n"
        f"connection = {api_url.render(hide_password=False)}\n"
        "[database]\n"
        f"connection = {local_url.render(hide_password=False)}\n"
        "connect_timeout = 2\n"
        "[cells]\n"
        "verify_timeout = 2\n",
        encoding="utf-8",
    )
    secrets = [
        *url_passwords(api_url.render(hide_password=False)),
        *url_passwords(local_url.render(hide_password=False)),
    ]
    return Deployment(server, config, api_url, local_url, secrets)
