"""``LazyGroup``: a click group whose subcommands are imported when they run.

Commands are registered by import path (``"cellgate.cli.serve:serve"``) and
loaded only when invoked or listed in help. This is about start-up cost, not
cycles: ``cellgate --version`` would otherwise import every command module,
and with them the App, SQLAlchemy's ORM, Alembic and the web stack
(FastAPI, uvicorn), for a command that prints one line. Each command then
costs only the imports it needs: ``cell list`` no kombu or FastAPI, ``serve
api`` the web stack.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping

import click


class LazyGroup(click.Group):
    """A group with ``lazy_commands``: name -> ``"package.module:attribute"``."""

    def __init__(
        self, *args: object, lazy_commands: Mapping[str, str] | None = None, **kwargs: object
    ) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.lazy_commands = dict(lazy_commands or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy_commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        path = self.lazy_commands.get(cmd_name)
        if path is not None and cmd_name not in self.commands:
            self.add_command(_load(path), cmd_name)
        return super().get_command(ctx, cmd_name)


def _load(path: str) -> click.Command:
    module_name, _, attribute = path.partition(":")
    command = getattr(importlib.import_module(module_name), attribute)
    if not isinstance(command, click.Command):
        raise TypeError(f"{path} is not a click command")
    return command
