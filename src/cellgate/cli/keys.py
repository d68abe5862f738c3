"""``cellgate cell rotate-key | encrypt | decrypt | generate-key``: credentials at rest.

These join the ``cell`` group (in :mod:`cellgate.cli.cells`). Each rewriting command reports what it changed
(cell names and key ids only: never a URL or a key), supports ``--dry-run``,
and can be re-run safely after an interruption.
"""

from __future__ import annotations

import click

from cellgate import admin
from cellgate.apidb.audit import local_actor
from cellgate.apidb.updates import ResealMode
from cellgate.cli.render import emit_json, progress
from cellgate.cli.state import CliState, pass_state

_dry_run = click.option("--dry-run", is_flag=True, help="Report what would change; write nothing.")
_json = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


@click.command("rotate-key")
@_dry_run
@_json
@pass_state
def rotate_key(state: CliState, dry_run: bool, as_json: bool) -> None:
    """Re-encrypt every encrypted cell URL with the first configured key.

    One transaction per cell; re-run it after an interruption. Plaintext rows
    are left alone ('cell encrypt --all' converts them). Once it reports no
    changes, the other keys can be removed from [api_database] encryption_keys.
    """
    _run(state, "rotate-key", None, dry_run=dry_run, as_json=as_json)


def _one_or_all_command(mode: ResealMode, help_text: str) -> click.Command:
    """``cell encrypt`` / ``cell decrypt``: the same command for either direction."""

    @click.command(mode, help=help_text)
    @click.argument("ident", metavar="[NAME|UUID]", required=False)
    @click.option("--all", "all_cells", is_flag=True, help="Every cell.")
    @_dry_run
    @_json
    @pass_state
    def command(
        state: CliState, ident: str | None, all_cells: bool, dry_run: bool, as_json: bool
    ) -> None:
        _run(state, mode, one_or_all(ident, all_cells), dry_run=dry_run, as_json=as_json)

    return command


encrypt = _one_or_all_command(
    "encrypt", "Encrypt plaintext cell URLs with the first configured key."
)
decrypt = _one_or_all_command(
    "decrypt", "Store cell URLs as plaintext again (e.g. before a downgrade)."
)


@click.command("generate-key")
def generate_key() -> None:
    """Print a new random key for [api_database] encryption_keys (a secret)."""
    click.echo(admin.generate_key())


KEY_COMMANDS = (rotate_key, encrypt, decrypt, generate_key)


def one_or_all(ident: str | None, all_cells: bool) -> str | None:
    """``ident``, after checking that exactly one of a cell and ``--all`` was given."""
    if ident and all_cells:
        raise click.UsageError("give a cell NAME|UUID or --all, not both")
    if not ident and not all_cells:
        raise click.UsageError("say which cells: give a cell NAME|UUID, or --all for every cell")
    return ident


def _run(
    state: CliState, mode: ResealMode, ident: str | None, *, dry_run: bool, as_json: bool
) -> None:
    report = admin.reseal_cells(
        state.app,
        mode,
        ident=ident,
        dry_run=dry_run,
        actor=local_actor(),
        on_cell=None if as_json else progress,
    )
    if as_json:
        emit_json(report.to_dict())
    else:
        click.echo(_summary(report))


def _summary(report: admin.ResealReport) -> str:
    verb = "would change" if report.dry_run else "changed"
    key = f" (key {report.key_id})" if report.key_id else ""
    names = ", ".join(c["name"] for c in report.changed)
    listed = f": {names}" if report.dry_run and names else ""
    return (
        f"{report.mode}{key}: {verb} {len(report.changed)} cell(s){listed}, "
        f"{report.unchanged} already done; audit entries: {verb} {report.audit_changed}"
        + (f", {report.audit_unreadable} unreadable" if report.audit_unreadable else "")
    )
