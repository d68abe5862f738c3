"""``cellgate``: the operator CLI.

Each command parses its options, calls one :mod:`cellgate.admin` function
(or starts a service process) and renders the result. Errors are
:class:`~cellgate.errors.CellgateError` subclasses, turned into one line on
stderr and an exit code from :mod:`cellgate.cli.exit_codes`. ``--debug``
adds the (redacted) traceback; nothing else ever prints one.

Commands are loaded when they run (:class:`~cellgate.cli.lazy.LazyGroup`),
so ``cellgate --version`` imports none of them.

click's own usage errors (an unknown command or option, a bad option value, a
stray argument) become the same one line, ``cellgate: error: MESSAGE; HINT``
with exit 2, and their text is redacted: click quotes what was typed, which
may be a URL or a password pasted in the wrong place.
"""

from __future__ import annotations

import json
import logging
import sys
import traceback
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import click

from cellgate.cli.exit_codes import ExitCode, exit_code_for
from cellgate.cli.hints import cli_message
from cellgate.cli.lazy import LazyGroup
from cellgate.cli.state import CliState
from cellgate.errors import CellgateError
from cellgate.logs import configure_logging
from cellgate.urls import redact

#: Every top-level command, by import path; loaded on use.
COMMANDS = {
    "config": "cellgate.cli.misc:config",
    "api-db": "cellgate.cli.db:api_db",
    "db": "cellgate.cli.db:db",
    "cell": "cellgate.cli.cells:cell",
    "host": "cellgate.cli.hosts:host",
    "instance": "cellgate.cli.moves:instance",
    "quickstart": "cellgate.cli.misc:quickstart",
    "upgrade": "cellgate.cli.upgrade:upgrade",
    "nova": "cellgate.cli.nova:nova",
    "serve": "cellgate.cli.serve:serve",
    "all-in-one": "cellgate.cli.serve:all_in_one",
    "demo": "cellgate.cli.serve:demo",
}


#: The option that asks a command for JSON; errors then come as JSON too.
JSON_FLAG = "--json"


def emit_error_json(code: str, message: str, exit_code: int) -> None:
    """An error as the one JSON document on stdout (``--json``); see docs/cli.md.

    The one-line ``cellgate: error: ...`` still goes to stderr, for people and
    logs; a script reads stdout, which holds either the result or this. It is
    one line, so it also ends the JSON lines of ``instance move`` and ``cell
    drain`` as one more line.
    """
    body = {"error": {"code": code, "message": message, "exit_code": int(exit_code)}}
    click.echo(json.dumps(body, sort_keys=True))


class OneLineError(click.ClickException):
    """A click error as one redacted line (click calls :meth:`show` to print it)."""

    #: The command line asked for ``--json``: the error is also JSON on stdout.
    as_json = False
    code = "Error"

    def show(self, file: Any = None) -> None:
        click.echo(f"cellgate: error: {self.message}", err=True)
        if self.as_json:
            emit_error_json(self.code, self.message, self.exit_code)


class OneLineUsageError(OneLineError):
    """A usage error: exit 2 (``ExitCode.USAGE``)."""

    exit_code = ExitCode.USAGE
    code = "UsageError"


def _typed_values(args: Iterable[str], commands: set[str]) -> Iterator[str]:
    """What the operator typed that is not an option or command name: maybe a secret."""
    for arg in args:
        if arg.startswith("-"):
            _, eq, value = arg.partition("=")
            if eq:
                yield value
        elif arg not in commands:
            yield arg


def _command_names(group: click.Group) -> set[str]:
    names = set(group.commands) | set(getattr(group, "lazy_commands", ()))
    for sub in group.commands.values():
        if isinstance(sub, click.Group):
            names |= _command_names(sub)
    return names


def one_line(
    exc: click.ClickException, args: Iterable[str], group: click.Group, path: str
) -> OneLineError:
    """``exc`` as one line with every typed value masked; exit 2 for usage errors."""
    text = " ".join(exc.format_message().split()).rstrip(".")
    message = redact(text, list(_typed_values(args, _command_names(group))))
    context = exc.ctx if isinstance(exc, click.UsageError) else None
    if isinstance(exc, click.UsageError):
        message += f"; see '{context.command_path if context else path} --help'"
    error = (
        OneLineUsageError(message) if isinstance(exc, click.UsageError) else OneLineError(message)
    )
    error.as_json = JSON_FLAG in args
    return error


class CellgateGroup(LazyGroup):
    """A group that renders every error as one line with a documented exit code."""

    _argv: tuple[str, ...] = ()

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        if parent is None:
            self._argv = tuple(args)
        try:
            return super().make_context(info_name, args, parent, **extra)
        except OneLineError:
            raise
        except click.ClickException as exc:
            raise one_line(exc, self._argv, self, info_name or "cellgate") from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except OneLineError:
            raise
        except click.ClickException as exc:
            raise one_line(exc, self._argv, self, ctx.command_path) from None
        except (click.exceptions.Exit, click.Abort):
            raise
        except KeyboardInterrupt:
            # Ctrl-C: one line and a shell's exit code, not click's "Aborted!" and 1.
            click.echo("cellgate: interrupted", err=True)
            if JSON_FLAG in self._argv:
                emit_error_json("Interrupted", "interrupted", ExitCode.INTERRUPTED)
            ctx.exit(ExitCode.INTERRUPTED)
        except Exception as exc:
            state = ctx.obj if isinstance(ctx.obj, CliState) else None
            code = exit_code_for(exc)
            _report(exc, debug=bool(state and state.debug), as_json=JSON_FLAG in self._argv)
            ctx.exit(code)


def _report(exc: Exception, *, debug: bool, as_json: bool = False) -> None:
    if debug:
        click.echo(redact("".join(traceback.format_exception(exc))), err=True, nl=False)
    if isinstance(exc, CellgateError):
        message = redact(cli_message(exc))
        click.echo(f"cellgate: error: {message}", err=True)
        code = exc.kind
    else:
        message = redact(f"{type(exc).__name__}: {exc}")
        hint = "" if debug else " (re-run with --debug for the traceback)"
        click.echo(f"cellgate: unexpected error: {message}{hint}", err=True)
        message, code = f"unexpected error: {message}", "InternalError"
    if as_json:
        emit_error_json(code, message, exit_code_for(exc))


@click.group(
    cls=CellgateGroup,
    lazy_commands=COMMANDS,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.option(
    "--config-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Config file. Default: $CELLGATE_CONFIG, then ./cellgate.conf, "
    "then the embedded SQLite default.",
)
@click.option("--debug", is_flag=True, help="Log at DEBUG and show tracebacks (redacted).")
@click.version_option(package_name="cellgate")
@click.pass_context
def cli(ctx: click.Context, config_file: Path | None, debug: bool) -> None:
    """Map cells to their databases and message queues, and manage them."""
    state = CliState(config_file, debug)
    ctx.obj = state
    ctx.call_on_close(state.close)
    configure_logging(logging.DEBUG if debug else logging.WARNING)


def main() -> None:
    """Console-script entry point."""
    sys.exit(cli.main(prog_name="cellgate") or ExitCode.OK)
