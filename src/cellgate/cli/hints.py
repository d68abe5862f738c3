"""The CLI's words for :class:`~cellgate.errors.Hint` keys: shell commands and options.

Domain errors carry a hint *key* and its data (``hint_args``); this table is
where those become operator advice such as "see 'cellgate cell list'". The
REST API has its own table (``cellgate.service.hints``) and never uses this
one, so a shell command reaches a terminal and nothing else.
"""

from __future__ import annotations

from typing import Final

from cellgate.errors import CellgateError, Hint

_KEY_FORMAT: Final = (
    "each key is 32 random bytes, url-safe base64 encoded (44 characters); "
    "'cellgate cell generate-key' prints a new one"
)

#: Every key's CLI text; ``{name}`` fields come from the error's ``hint_args``.
CLI_HINTS: Final[dict[Hint, str]] = {
    Hint.LIST_CELLS: "see 'cellgate cell list'",
    Hint.CHOOSE_OTHER_NAME: "choose another, or update the existing cell",
    Hint.SHOW_CELL_AND_RETRY: "run 'cellgate cell show' to see the change, then retry",
    Hint.TARGET_CELL: "wrap the call in target_cell(ctx, cell)",
    Hint.START_SERVER: "is a server for this topic running in that cell?",
    Hint.UPGRADE_SERVER: "upgrade the server, or pin the client to an older version",
    Hint.SYNC_API_DB: "run 'cellgate api-db sync'",
    Hint.SYNC_CELL_DB: "run 'cellgate db sync --cell {cell}'",
    Hint.USE_SYNC_COMMANDS: "use 'cellgate api-db sync' or 'cellgate db sync'",
    Hint.CONFIG_FILE: "pass --config-file, set CELLGATE_CONFIG, or run 'cellgate config sample'",
    Hint.SAMPLE_CONFIG: "see 'cellgate config sample' for every option",
    Hint.TOKEN_NOT_SHOWN: "the entry itself is not shown because it holds a token",
    Hint.ASCII_PASSWORD: "use a password of ASCII characters",
    Hint.NAME_UUID_DIFFER: (
        "names and uuids are both accepted wherever a cell is named, so they must differ"
    ),
    Hint.TRANSPORT_SCHEME: "give the cell a rabbit://, amqp:// or memory:// transport URL",
    Hint.FORCE_DELETE_CELL0: "pass --force to delete it anyway; 'cell map-cell0' re-creates it",
    Hint.MOVE_INSTANCES: "delete or move its instances first",
    Hint.FORCE_UNMAP_HOSTS: "pass --force to remove those mappings with the cell",
    Hint.CELL0_KEEPS_FAILED_BUILDS: "cell0 only keeps instances that failed to build",
    Hint.CELL0_NO_HOSTS: "it only keeps instances that failed to build",
    Hint.CELL0_HAS_NO_QUEUE: "workers serve cells with a transport; cell0 has none",
    Hint.CHOOSE_OTHER_PORT: "choose another --port, or stop what is using it",
    Hint.CHOOSE_OTHER_HOST: (
        "--host must be an address of this machine (e.g. 127.0.0.1, or 0.0.0.0 for all)"
    ),
    Hint.ENCODE_AT_SIGN: "percent-encode it as %40",
    Hint.ESCAPE_BRACES: "write a literal brace as '{{{{' or '}}}}'",
    Hint.SET_TEMPLATE_OPTION: "set {option} in this host's config file",
    Hint.ADD_TEMPLATE_FIELD: "add a {field} to {option}, or remove the placeholder",
    Hint.LOCK_DIR_WRITABLE: "the database's directory must be writable by the user running sync",
    Hint.SET_ENCRYPTION_KEYS: f"set [api_database] encryption_keys ({_KEY_FORMAT})",
    Hint.ADD_OLD_KEY: (
        "add that key to [api_database] encryption_keys "
        "(keep old keys until 'cellgate cell rotate-key' has run)"
    ),
    Hint.RESTORE_ROW: "restore the row from a backup, or set the URL again with "
    "'cellgate cell update'",
    Hint.KEY_FORMAT: _KEY_FORMAT,
    Hint.USE_PYMYSQL: "use mysql+pymysql://",
    Hint.CELL0_CANNOT_BE_DISABLED: "it holds instances that failed to build",
    Hint.OWN_ENDPOINT: "every cell needs a {resource} of its own",
    Hint.GENERATE_KEY: "set [api_database] encryption_keys; 'cellgate cell generate-key' makes a key",
    Hint.REAL_DEPLOYMENT: "use 'cellgate api-db sync' and 'cellgate cell create' for a real deployment",
    Hint.STRIP_NAME: "did you mean {name!r}?",
    Hint.CELL0_NAME_RESERVED: "'cellgate cell map-cell0' creates cell0; choose another name",
    Hint.CELL0_UUID_RESERVED: "'cellgate cell map-cell0' creates cell0; omit --uuid for a new one",
    Hint.RUN_AGAIN: "run the same command again to finish",
    Hint.KNOWN_REVISIONS: "known revisions: {revisions}",
    Hint.ENCODE_QUERY_AT: "percent-encode '@' in the query string as %40",
    Hint.ENCODE_PASSWORD_CHARS: "percent-encode '@', '?' and '#' in a password (%40, %3F, %23)",
    Hint.REPAIR_MYSQL_REVISION: (
        "MariaDB/MySQL cannot roll back DDL, so part of {revision} may be applied: "
        "fix the cause, then run the same command again, which applies the rest "
        "(see 'A revision failed half-way' in docs/reliability.md)"
    ),
    Hint.FIX_AND_RERUN: "{revision} was rolled back; fix the cause and run the same command again",
    Hint.RESUME_MOVE: "finish it with 'cellgate instance move --resume {job}' (or --rollback)",
    Hint.FINISH_MOVES: "finish each with 'cellgate instance move --resume JOB' once its grace "
    "period is over, or undo it with --rollback JOB",
    Hint.NOVA_IMPORT_DRY_RUN: (
        "'cellgate nova import --dry-run' lists every conflict (docs/nova.md, Import)"
    ),
}


def cli_hint(exc: CellgateError) -> str | None:
    """The hint as the CLI prints it: a key in CLI words, or a free-text hint as given."""
    hint = exc.hint
    if isinstance(hint, Hint):
        return CLI_HINTS[hint].format_map(dict(exc.hint_args))
    return hint or None


def error_text(exc: BaseException) -> str:
    """A failure in a per-cell row as the CLI shows it: :func:`cli_message`, or ``str``."""
    return cli_message(exc) if isinstance(exc, CellgateError) else str(exc)


def cli_message(exc: CellgateError) -> str:
    """``message; hint`` as the CLI prints it (the text after ``cellgate: error:``)."""
    hint = cli_hint(exc)
    return f"{exc.message}; {hint}" if hint else exc.message
