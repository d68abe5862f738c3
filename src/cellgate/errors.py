"""Every error cellgate raises on purpose, in one small tree.

Callers catch a branch, not a driver exception: SQLAlchemy, PyMySQL, psycopg
and kombu errors are translated at the seams (``cellgate.sql.engines``,
``cellgate.rpc.amqp.broker``) and chained with ``raise ... from``. Messages are
built here from typed keyword arguments and never contain a password: URLs are
passed in already masked.

::

    CellgateError
     ├── ConfigError                 a setting, URL or template is invalid
     │    ├── InvalidURL
     │    ├── EndpointInUse          another cell (or the API DB) has this database or queue
     │    └── EncryptionKeyError     credentials cannot be (de)crypted with the keys
     ├── MappingError                the API database says no
     │    ├── CellNotFound
     │    ├── HostNotMapped
     │    ├── DuplicateCell
     │    ├── CellInUse
     │    ├── StaleCell              changed since the caller read it
     │    ├── InstanceNotFound
     │    └── NovaImportConflict     a Nova import would clash: nothing was written
     ├── BackendError                a server could not be used
     │    ├── BackendUnavailable     refused, reset, bad credentials
     │    │    └── CellUnavailable   ... and it belongs to a cell
     │    │         ├── CellUnreadable  its mapping does not decrypt with the keys
     │    │         └── DeleteUnconfirmed  the cell did not confirm a delete: outcome unknown
     │    ├── BackendTimeout         no answer within the deadline
     │    │    ├── CellTimeout
     │    │    └── DeadlineExceeded   the REST request's own deadline passed (504)
     │    └── TransactionConflict    refused as a conflict (deadlock, Galera) on every attempt
     ├── MoveError                   an instance move between cells cannot go on
     │    ├── InstanceMoving         a move of this instance is unfinished
     │    ├── MoveVerifyFailed       the copy differs from the source: nothing was flipped
     │    └── MoveJobNotFound        no move job or drain with this id
     ├── RoutingError
     │    ├── UntargetedContext      cell code ran without a target cell
     │    └── NoValidCell            no enabled cell can take a new instance
     ├── MigrationError
     │    ├── SchemaMismatch         a database is not at the expected revision
     │    ├── MigrationLocked        another run holds the migration lock past the wait
     │    └── MigrationInterrupted   asked to stop (SIGINT/SIGTERM): stopped between revisions
     └── RPCError
          ├── RPCTimeout             no reply within the call's timeout
          ├── RemoteError            the remote method raised (type name + message)
          ├── UnsupportedVersion     the server cannot serve the requested version
          ├── NoTransport            RPC to a cell without a queue (cell0)
          ├── MalformedMessage       bytes that are not a valid envelope (or too big)
          ├── NoSuchMethod           (server side) no endpoint has that method
          └── WrongCell              (server side) a message for another cell arrived

The two server-side errors travel back to the caller as a ``RemoteError``
whose ``exc_type`` is their class name.

``BackendError`` sits beside ``RoutingError`` rather than under it because the
API database can be unreachable too, and that is not a routing problem.
Exit codes and HTTP statuses are not attributes of these classes: they belong
to the edges (``cellgate.cli.exit_codes``).

Text at the edges
-----------------
An error carries data, not advice for one audience: ``str(exc)`` is the
plain message, ``kind`` its class name, and ``hint`` a :class:`Hint` key with
the data it needs in ``hint_args`` (a cell's label, say). Each edge renders
the key in its own words: the CLI as a shell hint (``cellgate.cli.hints``:
"see 'cellgate cell list'"), the REST API as its own text or none
(``cellgate.service.hints``), so a REST client never reads a shell command.

For a transition, a raise site may still pass ``hint="free text"``: that text
is CLI-only (the REST API never shows it) and, so that CLI output is
unchanged until those sites are converted, ``str(exc)`` still appends it.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence


class Hint(enum.Enum):
    """What to do next, as a key; the edges hold the words (see the module docstring)."""

    LIST_CELLS = "list_cells"  # which cells exist
    CHOOSE_OTHER_NAME = "choose_other_name"  # a name or uuid is taken
    SHOW_CELL_AND_RETRY = "show_cell_and_retry"  # the cell changed meanwhile
    TARGET_CELL = "target_cell"  # library misuse: no target cell
    START_SERVER = "start_server"  # no RPC server answered
    UPGRADE_SERVER = "upgrade_server"  # RPC version too new for the server
    SYNC_API_DB = "sync_api_db"  # the API database is behind
    SYNC_CELL_DB = "sync_cell_db"  # a cell database is behind (hint_args: cell)
    USE_SYNC_COMMANDS = "use_sync_commands"  # Alembic run outside cellgate
    CONFIG_FILE = "config_file"  # no config file found
    SAMPLE_CONFIG = "sample_config"  # an unknown option
    TOKEN_NOT_SHOWN = "token_not_shown"  # a bad auth_tokens entry, not echoed
    ASCII_PASSWORD = "ascii_password"  # MySQL needs latin-1
    NAME_UUID_DIFFER = "name_uuid_differ"  # a name that is another cell's uuid
    TRANSPORT_SCHEME = "transport_scheme"  # not a transport URL
    FORCE_DELETE_CELL0 = "force_delete_cell0"  # deleting cell0
    MOVE_INSTANCES = "move_instances"  # the cell still has instances
    FORCE_UNMAP_HOSTS = "force_unmap_hosts"  # the cell still has hosts
    CELL0_KEEPS_FAILED_BUILDS = (
        "cell0_keeps_failed_builds"  # cell0 has no hosts, cannot be disabled
    )
    CELL0_HAS_NO_QUEUE = "cell0_has_no_queue"  # workers need a transport
    CHOOSE_OTHER_PORT = "choose_other_port"  # the listen port is taken
    CHOOSE_OTHER_HOST = "choose_other_host"  # the listen address is not this machine's
    ENCODE_AT_SIGN = "encode_at_sign"  # a raw '@' in a password
    ESCAPE_BRACES = "escape_braces"  # a literal brace in a template
    SET_TEMPLATE_OPTION = "set_template_option"  # hint_args: option
    ADD_TEMPLATE_FIELD = "add_template_field"  # hint_args: field, option
    LOCK_DIR_WRITABLE = "lock_dir_writable"  # SQLite lock file
    SET_ENCRYPTION_KEYS = "set_encryption_keys"  # no keys configured
    ADD_OLD_KEY = "add_old_key"  # a row sealed with a key no longer configured
    RESTORE_ROW = "restore_row"  # an altered or corrupt sealed row
    KEY_FORMAT = "key_format"  # what a key looks like
    USE_PYMYSQL = "use_pymysql"  # a mysql:// URL without the driver
    CELL0_CANNOT_BE_DISABLED = "cell0_cannot_be_disabled"  # it holds failed builds
    OWN_ENDPOINT = "own_endpoint"  # hint_args: resource (a cell needs its own)
    CELL0_NO_HOSTS = "cell0_no_hosts"  # discovery in cell0
    GENERATE_KEY = "generate_key"  # no key configured for an encrypting command
    REAL_DEPLOYMENT = "real_deployment"  # quickstart on a server database
    STRIP_NAME = "strip_name"  # hint_args: name (the name without its padding)
    CELL0_NAME_RESERVED = "cell0_name_reserved"  # only map-cell0 makes cell0
    CELL0_UUID_RESERVED = "cell0_uuid_reserved"  # only map-cell0 makes cell0
    RUN_AGAIN = "run_again"  # a stopped sync: run it again to finish
    KNOWN_REVISIONS = "known_revisions"  # hint_args: revisions
    ENCODE_QUERY_AT = "encode_query_at"  # an '@' in a URL's query string
    ENCODE_PASSWORD_CHARS = "encode_password_chars"  # '@', '?', '#' in a password
    REPAIR_MYSQL_REVISION = "repair_mysql_revision"  # hint_args: revision
    FIX_AND_RERUN = "fix_and_rerun"  # hint_args: revision (rolled back)
    RESUME_MOVE = "resume_move"  # hint_args: job (an unfinished move)
    FINISH_MOVES = "finish_moves"  # a cell with unfinished move jobs
    NOVA_IMPORT_DRY_RUN = "nova_import_dry_run"  # a dry run lists every import conflict


class CellgateError(Exception):
    """Root of every error cellgate raises deliberately.

    ``hint`` is a :class:`Hint` (rendered by each edge, with ``hint_args``),
    or for now a free-text CLI-only string (see the module docstring).
    """

    #: The cell the error is about (a label), where the raiser knows it.
    cell: str | None = None

    def __init__(
        self,
        message: str,
        *,
        hint: Hint | str | None = None,
        hint_args: Mapping[str, str] | None = None,
    ) -> None:
        self.message = message
        self.hint = hint
        self.hint_args: Mapping[str, str] = dict(hint_args or {})
        legacy = hint if isinstance(hint, str) and hint else None
        super().__init__(f"{message}; {legacy}" if legacy else message)

    @property
    def kind(self) -> str:
        """The error's class name, as API bodies name it (``code``)."""
        return type(self).__name__


class ConfigError(CellgateError):
    """A configuration value, URL or URL template is invalid."""


class InvalidURL(ConfigError):
    """A database or transport URL does not parse or is not supported.

    ``url`` is the *masked* rendering of the offending value.
    """

    def __init__(
        self,
        *,
        url: str,
        reason: str,
        hint: Hint | str | None = None,
        hint_args: Mapping[str, str] | None = None,
    ) -> None:
        self.url = url
        self.reason = reason
        super().__init__(f"invalid URL {url!r}: {reason}", hint=hint, hint_args=hint_args)


class EndpointInUse(ConfigError):
    """A cell's database or message queue is already another cell's (or the API database).

    ``resource`` is ``database`` or ``message queue``; ``endpoint`` is where,
    without credentials (``127.0.0.1:3306/cell1``); ``other`` names who has it
    (``cell cell1`` or ``the API database``).
    """

    def __init__(self, *, resource: str, endpoint: str, other: str, cell: str) -> None:
        self.resource = resource
        self.endpoint = endpoint
        self.other = other
        self.cell = cell
        super().__init__(
            f"cell {cell}: the {resource} {endpoint} is already used by {other}",
            hint=Hint.OWN_ENDPOINT,
            hint_args={"resource": resource},
        )


class EncryptionKeyError(ConfigError):
    """Cell credentials cannot be encrypted or decrypted with the configured keys.

    A missing key, a wrong key and an altered row all land here: the fix is
    always in ``[api_database] encryption_keys``, never a retry.
    """


class MappingError(CellgateError):
    """The API database has no answer, or a conflicting one."""


class CellNotFound(MappingError):
    """No live cell mapping matches ``ident`` (a name or a uuid)."""

    def __init__(self, *, ident: str) -> None:
        self.ident = ident
        self.cell = ident
        super().__init__(f"no cell named or with uuid {ident!r}", hint=Hint.LIST_CELLS)


class HostNotMapped(MappingError):
    """A compute host has no host mapping."""

    def __init__(self, *, host: str) -> None:
        self.host = host
        super().__init__(f"host {host!r} is not mapped to a cell")


class DuplicateCell(MappingError):
    """A live cell already uses this name or uuid."""

    def __init__(self, *, field: str, value: str) -> None:
        self.field = field
        self.value = value
        super().__init__(
            f"a cell with {field} {value!r} already exists", hint=Hint.CHOOSE_OTHER_NAME
        )


class CellInUse(MappingError):
    """The requested change would orphan hosts or instances, or break cell0."""

    def __init__(self, *, ident: str, reason: str, hint: Hint | str | None = None) -> None:
        self.ident = ident
        self.cell = ident
        self.reason = reason
        super().__init__(f"cell {ident!r} {reason}", hint=hint)


class StaleCell(MappingError):
    """A cell changed after the caller read it (optimistic locking)."""

    def __init__(self, *, ident: str, expected: int, found: int | None) -> None:
        now = f" (it is now at version {found})" if found is not None else ""
        self.cell = ident
        super().__init__(
            f"cell {ident} changed since version {expected}{now}", hint=Hint.SHOW_CELL_AND_RETRY
        )


class InstanceNotFound(MappingError):
    """No instance with this uuid is visible to the caller."""

    def __init__(self, *, uuid: str) -> None:
        self.uuid = uuid
        super().__init__(f"instance {uuid!r} not found")


class MoveError(CellgateError):
    """An instance move (or a drain) between cells cannot go on."""


class InstanceMoving(MoveError):
    """The instance has an unfinished move job: it cannot be acted on or moved again.

    ``job`` is the job's id and ``state`` its state (``moving``, ``waiting``
    for its grace period, ``rolling_back``).
    """

    def __init__(self, *, uuid: str, job: str, state: str) -> None:
        self.uuid = uuid
        self.job = job
        self.state = state
        super().__init__(
            f"instance {uuid} is being moved between cells (move job {job}, {state})",
            hint=Hint.RESUME_MOVE,
            hint_args={"job": job},
        )


class MoveVerifyFailed(MoveError):
    """The target's copy of an instance differs from its source; the move stopped.

    Nothing was flipped: the instance stays, intact and visible, in its
    source cell, and the copy was removed. ``reason`` says what differed.
    """

    def __init__(self, *, uuid: str, job: str, reason: str) -> None:
        self.uuid = uuid
        self.job = job
        self.reason = reason
        super().__init__(
            f"move job {job}: the copy of instance {uuid} does not match its source "
            f"({reason}); the instance stays in its source cell"
        )


class MoveJobNotFound(MoveError):
    """No move job (or drain) has this id."""

    def __init__(self, *, job: str) -> None:
        self.job = job
        super().__init__(f"no move job or drain with id {job!r}")


class BackendError(CellgateError):
    """A database or message broker could not be used.

    The message has two audiences. ``str(exc)`` is for operators (CLI, logs):
    ``"{component} {address}: {reason}"``, exactly as detailed as the driver
    allows, passwords masked. :attr:`public_message` is for API clients:
    ``"{component}: {reason}"`` with no address, and with the reason replaced
    by a generic one for the class unless the raiser vouched for it.

    - ``component`` names the subject and never an address (``cell cell2
      database``, ``API database``);
    - ``address`` is where it lives (a masked URL, ``host:port``); it only
      ever appears in ``str(exc)``;
    - ``reason`` says what went wrong, often in the driver's own words, which
      may name a host; it only ever appears in ``str(exc)``;
    - ``public_reason``, given only by code that wrote the reason itself from
      no address (a circuit breaker's "skipped: ...", a deadline's "no answer
      within 2s"), is what clients read instead of the generic reason.
      Driver text is never public: nothing proves it names no host.
    """

    #: What a client reads when the raiser gave no ``public_reason``.
    generic_reason = "cannot be used"

    def __init__(
        self,
        *,
        component: str,
        reason: str,
        hint: Hint | str | None = None,
        address: str | None = None,
        public_reason: str | None = None,
    ) -> None:
        self.component = component
        self.address = address
        self.reason = reason
        self.public_reason = public_reason
        where = f"{component} {address}" if address else component
        super().__init__(f"{where}: {reason}", hint=hint)

    @property
    def public_message(self) -> str:
        """One line for API clients: the subject and a reason, never an address."""
        return f"{self.component}: {self.public_reason or self.generic_reason}"


class BackendUnavailable(BackendError):
    """The server refused, reset or rejected the connection."""

    generic_reason = "cannot be reached"


class BackendTimeout(BackendError):
    """The server did not answer within its deadline."""

    generic_reason = "did not answer in time"


class CellUnavailable(BackendUnavailable):
    """A cell's database or transport is unavailable."""


class CellUnreadable(CellUnavailable):
    """A cell's mapping cannot be decrypted with the configured keys: that cell is unusable.

    Raised for the one cell whose row is encrypted with a key that is not
    configured, or was altered (``reason`` is the
    :class:`EncryptionKeyError` message: it names the column and the key id,
    never a value). The other cells are unaffected. Clients read only the
    generic reason; operators find the row and the cause in ``str(exc)``, the
    log line written when the mappings are loaded, and ``cell list``.
    """

    generic_reason = "is unavailable"

    def __init__(self, *, cell: str, reason: str) -> None:
        self.cell = cell
        super().__init__(
            component=f"cell {cell}",
            reason=f"its mapping cannot be decrypted: {reason}",
            hint=Hint.ADD_OLD_KEY,
        )


class DeleteUnconfirmed(CellUnavailable):
    """A delete was sent towards a cell that did not confirm it: it may have been done.

    The call failed or got no reply (``cause``: the cell's or the RPC's error),
    so whether the cell deleted the instance is unknown; nothing was changed
    in the API database. Deleting again is safe and converges: the cell
    deletes the instance if it still has it, and the mapping is removed once
    the cell confirms. Clients read exactly that, with no address.
    """

    def __init__(self, *, uuid: str, cell: str, cause: str) -> None:
        self.uuid = uuid
        self.cell = cell
        public = (
            f"did not confirm the delete of instance {uuid}, so its outcome is unknown; "
            "retrying the delete is safe"
        )
        super().__init__(component=f"cell {cell}", reason=f"{public} ({cause})")
        self.public_reason = public


class CellTimeout(BackendTimeout):
    """A cell did not answer within its deadline."""


class DeadlineExceeded(BackendTimeout):
    """The request's deadline (``[api] request_timeout``) passed before its work was done.

    Raised by the database seam before a statement (or when a driver wait cut
    short by the deadline fails); HTTP 504. It says the request ran out of
    time, not that a server is down, so it never counts against a breaker.
    """


class TransactionConflict(BackendError):
    """A write transaction was refused as conflicting with concurrent ones, every time.

    Raised by :func:`cellgate.sql.retry.run_transaction` after ``attempts``
    whole attempts were each rolled back by the server (``code`` is the last
    driver code: ``1213`` deadlock or Galera certification failure, ``1205``
    lock wait timeout, ``40001``/``40P01`` on PostgreSQL, ``SQLITE_BUSY``).
    Nothing of the transaction was written, so running the same request
    again later is safe; ``retry_after`` (whole seconds) says when.
    """

    generic_reason = "is busy with conflicting writes"

    def __init__(self, *, component: str, attempts: int, code: str, retry_after: int = 1) -> None:
        self.attempts = attempts
        self.code = code
        self.retry_after = retry_after
        reason = (
            f"the transaction conflicted with concurrent writes {attempts} times in a row "
            f"(error {code}); nothing was written, try again"
        )
        super().__init__(component=component, reason=reason, public_reason=reason)


class RoutingError(CellgateError):
    """A request could not be routed to a cell."""


class UntargetedContext(RoutingError):
    """Cell-level code ran with a context that names no cell.

    cellgate never falls back to a default cell database: that fallback is
    how Nova's untargeted queries silently read the wrong data.
    """

    def __init__(self, *, what: str) -> None:
        self.what = what
        super().__init__(
            f"{what} needs a target cell but the context has none", hint=Hint.TARGET_CELL
        )


class NoValidCell(RoutingError):
    """No enabled cell (cell0 aside) can take a new instance."""

    def __init__(self, *, reason: str) -> None:
        self.reason = reason
        super().__init__(f"no cell can take the instance: {reason}")


class MigrationError(CellgateError):
    """A migration could not be applied."""


class SchemaMismatch(MigrationError):
    """A database's schema is not at the revision this code expects."""

    def __init__(
        self,
        *,
        component: str,
        current: str | None,
        expected: str,
        hint: Hint | str,
        hint_args: Mapping[str, str] | None = None,
        address: str | None = None,
    ) -> None:
        self.component = component
        self.address = address
        self.current = current
        self.expected = expected
        where = f"{component} {address}" if address else component
        super().__init__(f"{where} {self._state}", hint=hint, hint_args=hint_args)

    @property
    def _state(self) -> str:
        return f"is at revision {self.current or 'none (empty)'}, expected {self.expected}"

    @property
    def public_message(self) -> str:
        """As ``str(exc)`` without the address (see :class:`BackendError`) and the hint."""
        return f"{self.component} {self._state}"


class RPCError(CellgateError):
    """An RPC call or cast could not be completed."""


class RPCTimeout(RPCError):
    """No reply arrived within the call's timeout."""

    def __init__(self, *, method: str, target: str, timeout: float) -> None:
        self.method = method
        self.target = target
        self.timeout = timeout
        super().__init__(
            f"no reply to {method!r} from {target} within {timeout:g}s", hint=Hint.START_SERVER
        )


class RemoteError(RPCError):
    """The remote endpoint raised; carries its type name and message, not its class.

    Exceptions are never re-created from their names (no dynamic imports):
    callers match on ``exc_type``, a plain string.
    """

    def __init__(self, *, exc_type: str, message: str, method: str) -> None:
        self.exc_type = exc_type
        self.remote_message = message
        self.method = method
        super().__init__(f"remote {method!r} raised {exc_type}: {message}")


class UnsupportedVersion(RPCError):
    """The server's target version cannot serve the requested version."""

    def __init__(self, *, requested: str, supported: str) -> None:
        self.requested = requested
        self.supported = supported
        super().__init__(
            f"requested RPC version {requested} is not supported (server has {supported})",
            hint=Hint.UPGRADE_SERVER,
        )


class NoTransport(RPCError):
    """The target cell has no message queue (cell0's ``none:///``)."""

    def __init__(self, *, cell: str) -> None:
        self.cell = cell
        super().__init__(f"cell {cell!r} has no message queue (none:///); RPC cannot reach it")


class NoSuchMethod(RPCError):
    """No endpoint of the server has a public method of that name."""

    def __init__(self, *, method: str) -> None:
        self.method = method
        super().__init__(f"no endpoint has a public method {method!r}")


class WrongCell(RPCError):
    """A message whose context names another cell reached this cell's server."""

    def __init__(self, *, expected: str, got: str | None) -> None:
        self.expected = expected
        self.got = got
        super().__init__(f"message for cell {got!r} reached cell {expected!r}'s server")


class MalformedMessage(RPCError, ValueError):
    """Bytes that are not a valid cellgate RPC envelope, or arguments that cannot be one."""


class MigrationLocked(MigrationError):
    """Another run held this line's migration lock on this database for the whole wait.

    ``component`` is a masked label of the database; ``line`` is ``api`` or ``cell``.
    """

    def __init__(self, *, component: str, line: str, waited: float) -> None:
        self.component = component
        self.line = line
        self.waited = waited
        command = "cellgate api-db sync" if line == "api" else "cellgate db sync"
        super().__init__(
            f"{component}: another '{command}' holds the migration lock "
            f"of the {line} line (waited {waited:g}s)",
            # Free text on purpose: the message names the command too, and the
            # REST API shows only public_message (which names neither).
            hint="let it finish, then run this command again, or wait longer with "
            "--lock-timeout; if no sync is running, see 'Migration lock' in docs/reliability.md",
        )

    @property
    def public_message(self) -> str:
        """Without the database's address or the command that holds the lock."""
        return (
            f"another run holds the migration lock of the {self.line} line "
            f"(waited {self.waited:g}s)"
        )


class MigrationInterrupted(MigrationError):
    """A sync was asked to stop and stopped cleanly after revision ``reached``.

    Nothing is half-applied: the next sync carries on from ``reached``.
    """

    def __init__(self, *, component: str, line: str, reached: str, target: str) -> None:
        self.component = component
        self.line = line
        self.reached = reached
        self.target = target
        super().__init__(
            f"{component}: stopped on request after revision {reached} of the {line} line "
            f"(head is {target}); nothing is half-applied",
            hint=Hint.RUN_AGAIN,
        )


class NovaImportConflict(MappingError):
    """Importing a Nova deployment would clash with cellgate's mappings or break its rules.

    Raised before anything is written, with every conflict found (a cell
    without a name, a name taken by another cellgate cell, two cells on one
    queue, a URL cellgate cannot route); ``cellgate nova import --dry-run``
    lists them too. Each is resolved in Nova or by an explicit option, never
    guessed.
    """

    def __init__(self, *, conflicts: Sequence[str]) -> None:
        self.conflicts = tuple(conflicts)
        shown = "; ".join(self.conflicts[:5])
        more = f"; and {len(self.conflicts) - 5} more" if len(self.conflicts) > 5 else ""
        super().__init__(
            f"Nova import refused, nothing was written: {len(self.conflicts)} conflict(s):"
            f" {shown}{more}",
            hint=Hint.NOVA_IMPORT_DRY_RUN,
        )
