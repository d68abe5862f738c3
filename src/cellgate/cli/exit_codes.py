"""The CLI's exit codes: one table, documented in docs/cli.md.

Domain errors carry no exit code of their own; this module maps each branch
of :mod:`cellgate.errors` to one, at the edge where it is needed.
"""

from __future__ import annotations

import enum

from cellgate.errors import (
    BackendError,
    CellgateError,
    CellInUse,
    CellNotFound,
    CellUnreadable,
    ConfigError,
    DuplicateCell,
    HostNotMapped,
    InstanceMoving,
    InstanceNotFound,
    MigrationError,
    MigrationInterrupted,
    MoveJobNotFound,
    MoveVerifyFailed,
    NovaImportConflict,
    RPCTimeout,
    StaleCell,
)


class ExitCode(enum.IntEnum):
    OK = 0
    ERROR = 1  # unexpected error (a bug): re-run with --debug
    USAGE = 2  # invalid usage or input (bad option, URL, template, config, encryption key);
    # also `cell list` when it printed every row but some did not decrypt (partial output)
    NOT_FOUND = 3  # no such cell, host, instance or move job
    CONFLICT = 4  # duplicate name/uuid, in use, changed meanwhile, or already being moved
    UNAVAILABLE = 5  # a database or broker is unreachable or timed out (RPC timeouts too)
    SCHEMA = 6  # a schema is not at the expected revision, or a migration failed
    VERIFY_FAILED = 7  # a move's copy did not match its source: the instance stayed put
    INTERRUPTED = 130  # stopped by SIGINT/SIGTERM (a sync stops between revisions)


_TABLE: tuple[tuple[type[CellgateError], ExitCode], ...] = (
    (ConfigError, ExitCode.USAGE),
    (CellNotFound, ExitCode.NOT_FOUND),
    (HostNotMapped, ExitCode.NOT_FOUND),
    (InstanceNotFound, ExitCode.NOT_FOUND),
    (MoveJobNotFound, ExitCode.NOT_FOUND),
    (InstanceMoving, ExitCode.CONFLICT),
    (MoveVerifyFailed, ExitCode.VERIFY_FAILED),
    (DuplicateCell, ExitCode.CONFLICT),
    (NovaImportConflict, ExitCode.CONFLICT),
    (CellInUse, ExitCode.CONFLICT),
    (StaleCell, ExitCode.CONFLICT),
    (CellUnreadable, ExitCode.USAGE),  # the configured keys are at fault, not a server
    (BackendError, ExitCode.UNAVAILABLE),
    (RPCTimeout, ExitCode.UNAVAILABLE),
    (MigrationInterrupted, ExitCode.INTERRUPTED),
    (MigrationError, ExitCode.SCHEMA),
)


def exit_code_for(error: BaseException) -> ExitCode:
    for cls, code in _TABLE:
        if isinstance(error, cls):
            return code
    return ExitCode.ERROR
