"""The object behind ``ctx.obj``: settings and the API database, built on first use.

``config sample`` must work with a broken config, so nothing is loaded until a
command asks for it; whatever was opened is closed when the command ends.
"""

from __future__ import annotations

from pathlib import Path

import click

from cellgate.apidb.database import ApiDatabase
from cellgate.config import Settings, load_settings


class CliState:
    def __init__(self, config_file: Path | None, debug: bool) -> None:
        self.config_file = config_file
        self.debug = debug
        self._settings: Settings | None = None
        self._api: ApiDatabase | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(self.config_file)
        return self._settings

    @property
    def api(self) -> ApiDatabase:
        if self._api is None:
            self._api = ApiDatabase(self.settings.api_database)
        return self._api

    def current_api(self) -> ApiDatabase:
        """The API database, after checking its schema is at this code's head."""
        self.api.require_current()
        return self.api

    def close(self) -> None:
        if self._api is not None:
            self._api.close()


pass_state = click.make_pass_decorator(CliState)
