"""The object behind ``ctx.obj``: settings and one ``App``, built on first use.

``config sample`` must work with a broken config, so nothing is loaded until a
command asks for it. Every command that touches a database gets the same
``App`` (one API database engine per process, as in the service) and it is
closed when the command ends.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from cellgate.config import Settings, load_settings

if TYPE_CHECKING:
    from cellgate.app import App


class CliState:
    def __init__(self, config_file: Path | None, debug: bool) -> None:
        self.config_file = config_file
        self.debug = debug
        self._settings: Settings | None = None
        self._app: App | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(self.config_file)
            if self._settings.sets_nothing:
                # `config sample > cellgate.conf` then a command: say what it will use.
                s = self._settings
                click.echo(
                    f"cellgate: warning: {s.source} sets no option (empty or all commented "
                    f"out); using the embedded default: API database "
                    f"{s.api_database.connection}, cell database {s.database.connection}",
                    err=True,
                )
        return self._settings

    @property
    def app(self) -> App:
        """The command's ``App``, built from :attr:`settings` on first use."""
        if self._app is None:
            # Imported here for its cost, not a cycle: the App brings SQLAlchemy's
            # ORM, Alembic and the RPC stack, which `--version` and
            # `config sample` never need.
            from cellgate.app import App

            self._app = App(self.settings)
        return self._app

    def close(self) -> None:
        if self._app is not None:
            self._app.close()
            self._app = None


pass_state = click.make_pass_decorator(CliState)
