"""Every error cellgate raises on purpose, in one small tree.

Callers catch a branch, not a driver exception: SQLAlchemy, PyMySQL, psycopg
and kombu errors are translated at the seams (``cellgate.engines``,
``cellgate.amqp``) and chained with ``raise ... from``. Messages are
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
     │    └── InstanceNotFound
     ├── BackendError                a server could not be used
     │    ├── BackendUnavailable     refused, reset, bad credentials
     │    │    └── CellUnavailable   ... and it belongs to a cell
     │    └── BackendTimeout         no answer within the deadline
     │         └── CellTimeout
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
"""

from __future__ import annotations


class CellgateError(Exception):
    """Root of every error cellgate raises deliberately."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(f"{message}; {hint}" if hint else message)


class ConfigError(CellgateError):
    """A configuration value, URL or URL template is invalid."""


class InvalidURL(ConfigError):
    """A database or transport URL does not parse or is not supported.

    ``url`` is the *masked* rendering of the offending value.
    """

    def __init__(self, *, url: str, reason: str, hint: str | None = None) -> None:
        self.url = url
        self.reason = reason
        super().__init__(f"invalid URL {url!r}: {reason}", hint=hint)


class EndpointInUse(ConfigError):
    """A cell's database or message queue is already another cell's (or the API database).

    ``endpoint`` is where, without credentials (``127.0.0.1:3306/cell1``);
    ``other`` names who has it (``cell cell1`` or ``the API database``).
    """

    def __init__(self, *, kind: str, endpoint: str, other: str, cell: str) -> None:
        self.kind = kind
        self.endpoint = endpoint
        self.other = other
        self.cell = cell
        super().__init__(
            f"cell {cell}: the {kind} {endpoint} is already used by {other}",
            hint=f"every cell needs a {kind} of its own",
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
        super().__init__(f"no cell named or with uuid {ident!r}", hint="see 'cellgate cell list'")


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
            f"a cell with {field} {value!r} already exists",
            hint="choose another, or update the existing cell",
        )


class CellInUse(MappingError):
    """The requested change would orphan hosts or instances, or break cell0."""

    def __init__(self, *, ident: str, reason: str, hint: str | None = None) -> None:
        self.ident = ident
        self.reason = reason
        super().__init__(f"cell {ident!r} {reason}", hint=hint)


class StaleCell(MappingError):
    """A cell changed after the caller read it (optimistic locking)."""

    def __init__(self, *, ident: str, expected: int, found: int | None) -> None:
        now = f" (it is now at version {found})" if found is not None else ""
        super().__init__(
            f"cell {ident} changed since version {expected}{now}",
            hint="run 'cellgate cell show' to see the change, then retry",
        )


class InstanceNotFound(MappingError):
    """No instance with this uuid is visible to the caller."""

    def __init__(self, *, uuid: str) -> None:
        self.uuid = uuid
        super().__init__(f"instance {uuid!r} not found")


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
        hint: str | None = None,
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


class CellTimeout(BackendTimeout):
    """A cell did not answer within its deadline."""


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
            f"{what} needs a target cell but the context has none",
            hint="wrap the call in target_cell(ctx, cell)",
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
        hint: str,
        address: str | None = None,
    ) -> None:
        self.component = component
        self.address = address
        self.current = current
        self.expected = expected
        where = f"{component} {address}" if address else component
        super().__init__(f"{where} {self._state}", hint=hint)

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
            f"no reply to {method!r} from {target} within {timeout:g}s",
            hint="is a server for this topic running in that cell?",
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
            hint="upgrade the server, or pin the client to an older version",
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
            hint="let it finish, then run this command again, or wait longer with "
            "--lock-timeout; if no sync is running, see 'Migration lock' in docs/reliability.md",
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
            hint="run the same command again to finish",
        )
