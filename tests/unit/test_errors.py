"""Unit tests for :mod:`cellgate.errors` and the CLI's exit-code table.

Each error class builds its message from keyword arguments and keeps those
arguments as attributes; ``str()`` is the plain message (a free-text hint,
the transition path, is still appended), and a :class:`Hint` key is rendered
by each edge: the CLI's words (``cellgate.cli.hints``) or the REST API's,
which never contain a shell command. The class tree
must match the one drawn in the ``cellgate.errors`` docstring, because callers
catch branches of it; and every branch must map to the exit code documented in
``cellgate.cli.exit_codes``.
"""

from __future__ import annotations

import inspect

import pytest

from cellgate import errors
from cellgate.cli.exit_codes import ExitCode, exit_code_for
from cellgate.cli.hints import CLI_HINTS, cli_hint, cli_message
from cellgate.errors import (
    BackendError,
    BackendTimeout,
    BackendUnavailable,
    CellgateError,
    CellInUse,
    CellNotFound,
    CellTimeout,
    CellUnavailable,
    CellUnreadable,
    ConfigError,
    DeadlineExceeded,
    DeleteUnconfirmed,
    DuplicateCell,
    EncryptionKeyError,
    EndpointInUse,
    Hint,
    HostNotMapped,
    InstanceMoving,
    InstanceNotFound,
    InvalidURL,
    MalformedMessage,
    MappingError,
    MigrationError,
    MigrationInterrupted,
    MigrationLocked,
    MoveError,
    MoveJobNotFound,
    MoveVerifyFailed,
    NoSuchMethod,
    NoTransport,
    NovaImportConflict,
    NoValidCell,
    RemoteError,
    RoutingError,
    RPCError,
    RPCTimeout,
    SchemaMismatch,
    StaleCell,
    TransactionConflict,
    UnsupportedVersion,
    UntargetedContext,
    WrongCell,
)
from cellgate.service import http
from cellgate.service.hints import REST_HINTS, rest_hint, rest_message

# --------------------------------------------------------------------------
# The class tree
# --------------------------------------------------------------------------

#: Each class and its direct parent, as drawn in the errors.py docstring.
TREE: dict[type[Exception], type[Exception]] = {
    CellgateError: Exception,
    ConfigError: CellgateError,
    InvalidURL: ConfigError,
    EndpointInUse: ConfigError,
    EncryptionKeyError: ConfigError,
    MappingError: CellgateError,
    CellNotFound: MappingError,
    HostNotMapped: MappingError,
    DuplicateCell: MappingError,
    CellInUse: MappingError,
    StaleCell: MappingError,
    NovaImportConflict: MappingError,
    BackendError: CellgateError,
    BackendUnavailable: BackendError,
    CellUnavailable: BackendUnavailable,
    CellUnreadable: CellUnavailable,
    DeleteUnconfirmed: CellUnavailable,
    BackendTimeout: BackendError,
    CellTimeout: BackendTimeout,
    DeadlineExceeded: BackendTimeout,
    TransactionConflict: BackendError,
    RoutingError: CellgateError,
    UntargetedContext: RoutingError,
    MigrationError: CellgateError,
    SchemaMismatch: MigrationError,
    MigrationLocked: MigrationError,
    MigrationInterrupted: MigrationError,
    RPCError: CellgateError,
    RPCTimeout: RPCError,
    RemoteError: RPCError,
    UnsupportedVersion: RPCError,
    NoTransport: RPCError,
    NoSuchMethod: RPCError,
    WrongCell: RPCError,
    MalformedMessage: RPCError,
    InstanceNotFound: MappingError,
    NoValidCell: RoutingError,
    MoveError: CellgateError,
    InstanceMoving: MoveError,
    MoveVerifyFailed: MoveError,
    MoveJobNotFound: MoveError,
    errors.NovaImportConflict: MappingError,
}


@pytest.mark.parametrize(("cls", "parent"), TREE.items(), ids=lambda c: c.__name__)
def test_direct_parent_matches_the_documented_tree(
    cls: type[Exception], parent: type[Exception]
) -> None:
    assert cls.__bases__[0] is parent
    assert cls.__bases__ in ((parent,), (parent, ValueError))  # ValueError: bad input


def test_the_tree_covers_every_error_class_in_the_module() -> None:
    defined = {
        obj
        for obj in vars(errors).values()
        if isinstance(obj, type)
        and issubclass(obj, Exception)
        and obj.__module__ == errors.__name__
    }
    assert defined == set(TREE)


def test_every_documented_class_appears_in_the_docstring() -> None:
    doc = errors.__doc__ or ""
    for cls in TREE:
        assert cls.__name__ in doc


def test_deep_chains() -> None:
    assert CellUnavailable.__mro__[:5] == (
        CellUnavailable,
        BackendUnavailable,
        BackendError,
        CellgateError,
        Exception,
    )
    assert CellTimeout.__mro__[:5] == (
        CellTimeout,
        BackendTimeout,
        BackendError,
        CellgateError,
        Exception,
    )
    # Backend problems are not routing problems (the API database can fail too).
    assert not issubclass(BackendError, RoutingError)
    assert not issubclass(CellTimeout, BackendUnavailable)
    assert not issubclass(CellUnavailable, BackendTimeout)


# --------------------------------------------------------------------------
# Messages, attributes and hints
# --------------------------------------------------------------------------


def test_cellgate_error_message_and_hint() -> None:
    err = CellgateError("it broke", hint="try again")
    assert err.message == "it broke"
    assert err.hint == "try again"
    assert str(err) == "it broke; try again"
    assert err.args == ("it broke; try again",)


def test_cellgate_error_without_hint() -> None:
    err = CellgateError("it broke")
    assert err.hint is None
    assert str(err) == "it broke"


def test_empty_hint_is_not_appended() -> None:
    assert str(CellgateError("it broke", hint="")) == "it broke"


@pytest.mark.parametrize("cls", [ConfigError, MappingError, RoutingError, MigrationError])
def test_plain_branches_take_a_message_and_hint(cls: type[CellgateError]) -> None:
    err = cls("bad thing", hint="do this")
    assert str(err) == "bad thing; do this"
    assert (err.message, err.hint) == ("bad thing", "do this")


def test_invalid_url() -> None:
    err = InvalidURL(url="rabbit://u:***@h", reason="no vhost", hint="add one")
    assert (err.url, err.reason, err.hint) == ("rabbit://u:***@h", "no vhost", "add one")
    assert err.message == "invalid URL 'rabbit://u:***@h': no vhost"
    assert str(err) == "invalid URL 'rabbit://u:***@h': no vhost; add one"
    assert str(InvalidURL(url="x", reason="y")) == "invalid URL 'x': y"


def test_cell_not_found() -> None:
    err = CellNotFound(ident="cell1")
    assert err.ident == "cell1"
    assert err.message == "no cell named or with uuid 'cell1'"
    assert (err.hint, err.cell, err.kind) == (Hint.LIST_CELLS, "cell1", "CellNotFound")
    # str() is the plain message; each edge renders the hint in its own words.
    assert str(err) == "no cell named or with uuid 'cell1'"
    assert cli_message(err) == "no cell named or with uuid 'cell1'; see 'cellgate cell list'"
    assert rest_message(err) == "no cell named or with uuid 'cell1'; GET /v1/cells lists the cells"


def test_host_not_mapped() -> None:
    err = HostNotMapped(host="compute-7")
    assert err.host == "compute-7"
    assert err.hint is None
    assert str(err) == "host 'compute-7' is not mapped to a cell"


def test_duplicate_cell() -> None:
    err = DuplicateCell(field="name", value="cell1")
    assert (err.field, err.value) == ("name", "cell1")
    assert err.message == "a cell with name 'cell1' already exists"
    assert str(err) == "a cell with name 'cell1' already exists"
    assert cli_message(err) == (
        "a cell with name 'cell1' already exists; choose another, or update the existing cell"
    )


def test_cell_in_use() -> None:
    err = CellInUse(ident="cell1", reason="still has 3 hosts", hint="use --force")
    assert (err.ident, err.reason, err.hint) == ("cell1", "still has 3 hosts", "use --force")
    assert str(err) == "cell 'cell1' still has 3 hosts; use --force"
    assert str(CellInUse(ident="cell0", reason="is cell0")) == "cell 'cell0' is cell0"


@pytest.mark.parametrize(
    "cls", [BackendError, BackendUnavailable, BackendTimeout, CellUnavailable, CellTimeout]
)
def test_backend_errors(cls: type[BackendError]) -> None:
    err = cls(component="cell 'cell1' database", reason="connection refused", hint="is it up?")
    assert (err.component, err.reason) == ("cell 'cell1' database", "connection refused")
    assert err.message == "cell 'cell1' database: connection refused"
    assert str(err) == "cell 'cell1' database: connection refused; is it up?"
    assert str(cls(component="API database", reason="timed out")) == "API database: timed out"


def test_an_unconfirmed_delete_says_the_outcome_is_unknown_and_a_retry_is_safe() -> None:
    err = DeleteUnconfirmed(uuid="u1", cell="cell2", cause="cell cell2 broker 10.0.0.5: reset")
    assert "10.0.0.5" in str(err) and "10.0.0.5" not in err.public_message
    assert err.public_message == (
        "cell cell2: did not confirm the delete of instance u1, so its outcome is unknown; "
        "retrying the delete is safe"
    )
    assert (err.uuid, err.cell) == ("u1", "cell2") and http._status(err) == 503


def test_an_unreadable_cell_tells_operators_why_and_clients_nothing() -> None:
    err = CellUnreadable(
        cell="cell2",
        reason="cell cell2 transport_url is encrypted with key 0a1b2c3d, which is not configured",
    )
    assert err.cell == "cell2" and err.component == "cell cell2"
    assert "key 0a1b2c3d" in str(err) and "cannot be decrypted" in str(err)
    assert err.public_message == "cell cell2: is unavailable"
    assert http._status(err) == 503


@pytest.mark.parametrize(
    ("cls", "generic"),
    [
        (BackendError, "cannot be used"),
        (BackendUnavailable, "cannot be reached"),
        (CellUnavailable, "cannot be reached"),
        (BackendTimeout, "did not answer in time"),
        (CellTimeout, "did not answer in time"),
    ],
)
def test_backend_errors_keep_the_address_out_of_the_public_message(
    cls: type[BackendError], generic: str
) -> None:
    err = cls(
        component="cell cell2 database",
        address="mysql+pymysql://nova:***@10.0.0.5:3306/nova_cell2",
        reason="Can't connect to MySQL server on '10.0.0.5' (timed out)",
        hint="is it up?",
    )
    assert err.address == "mysql+pymysql://nova:***@10.0.0.5:3306/nova_cell2"
    assert str(err) == (
        "cell cell2 database mysql+pymysql://nova:***@10.0.0.5:3306/nova_cell2: "
        "Can't connect to MySQL server on '10.0.0.5' (timed out); is it up?"
    )
    # Driver text is never public, and neither is the hint (it is for operators).
    assert err.public_message == f"cell cell2 database: {generic}"
    vouched = cls(
        component="cell cell2",
        address="10.0.0.5:5672",
        reason="no answer within 2s",
        public_reason="no answer within 2s",
    )
    assert str(vouched) == "cell cell2 10.0.0.5:5672: no answer within 2s"
    assert vouched.public_message == "cell cell2: no answer within 2s"
    assert cls(component="c", reason="r").public_message == f"c: {generic}"


def test_schema_mismatch_keeps_the_address_out_of_the_public_message() -> None:
    err = SchemaMismatch(
        component="API database",
        address="postgresql+psycopg://api:***@10.0.0.6/api",
        current="abc123",
        expected="def456",
        hint="run 'cellgate api-db sync'",
    )
    assert str(err) == (
        "API database postgresql+psycopg://api:***@10.0.0.6/api is at revision abc123, "
        "expected def456; run 'cellgate api-db sync'"
    )
    assert err.public_message == "API database is at revision abc123, expected def456"


def test_untargeted_context() -> None:
    err = UntargetedContext(what="instance_get")
    assert err.message == "instance_get needs a target cell but the context has none"
    assert err.hint is Hint.TARGET_CELL
    assert cli_hint(err) == "wrap the call in target_cell(ctx, cell)"
    assert rest_hint(err) is None
    assert str(err).startswith("instance_get needs a target cell")


def test_untargeted_context_keeps_what() -> None:
    assert UntargetedContext(what="instance_get").what == "instance_get"


def test_schema_mismatch() -> None:
    err = SchemaMismatch(component="API database", current="abc123", expected="def456", hint="run")
    assert (err.component, err.current, err.expected) == ("API database", "abc123", "def456")
    assert str(err) == "API database is at revision abc123, expected def456; run"


def test_migration_locked_names_the_database_the_holder_and_what_to_do() -> None:
    err = MigrationLocked(component="API database sqlite:///x", line="api", waited=1.5)
    assert (err.component, err.line, err.waited) == ("API database sqlite:///x", "api", 1.5)
    assert err.message.startswith("API database sqlite:///x: another 'cellgate api-db sync'")
    assert "holds the migration lock of the api line (waited 1.5s)" in err.message
    assert "--lock-timeout" in (err.hint or "")
    assert "'cellgate db sync'" in str(MigrationLocked(component="c", line="cell", waited=1))
    assert "\n" not in str(err)


def test_schema_mismatch_on_an_empty_database() -> None:
    err = SchemaMismatch(
        component="cell 'cell1'", current=None, expected="def456", hint="run 'cellgate db sync'"
    )
    assert err.current is None
    assert err.message == "cell 'cell1' is at revision none (empty), expected def456"


@pytest.mark.parametrize(
    ("cls", "kwargs"),
    [
        (InvalidURL, {"url": "u", "reason": "r"}),
        (CellNotFound, {"ident": "i"}),
        (HostNotMapped, {"host": "h"}),
        (DuplicateCell, {"field": "f", "value": "v"}),
        (CellInUse, {"ident": "i", "reason": "r"}),
        (BackendError, {"component": "c", "reason": "r"}),
        (UntargetedContext, {"what": "w"}),
        (SchemaMismatch, {"component": "c", "current": None, "expected": "e", "hint": "h"}),
    ],
)
def test_typed_errors_take_keyword_arguments_only(
    cls: type[CellgateError], kwargs: dict[str, object]
) -> None:
    cls(**kwargs)  # fine
    with pytest.raises(TypeError):
        cls(*kwargs.values())


def test_errors_chain_with_raise_from() -> None:
    cause = OSError("connection refused")
    with pytest.raises(CellUnavailable) as info:
        try:
            raise cause
        except OSError as exc:
            raise CellUnavailable(component="cell1", reason="refused") from exc
    assert info.value.__cause__ is cause


# --------------------------------------------------------------------------
# CLI exit codes
# --------------------------------------------------------------------------


def test_exit_code_values_are_the_documented_ones() -> None:
    assert {c.name: int(c) for c in ExitCode} == {
        "OK": 0,
        "ERROR": 1,
        "USAGE": 2,
        "NOT_FOUND": 3,
        "CONFLICT": 4,
        "UNAVAILABLE": 5,
        "SCHEMA": 6,
        "VERIFY_FAILED": 7,
        "INTERRUPTED": 130,
    }


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (ConfigError("bad"), ExitCode.USAGE),
        (InvalidURL(url="x", reason="y"), ExitCode.USAGE),
        (CellNotFound(ident="c"), ExitCode.NOT_FOUND),
        (HostNotMapped(host="h"), ExitCode.NOT_FOUND),
        (DuplicateCell(field="name", value="c"), ExitCode.CONFLICT),
        (CellInUse(ident="c", reason="r"), ExitCode.CONFLICT),
        (BackendError(component="c", reason="r"), ExitCode.UNAVAILABLE),
        (BackendUnavailable(component="c", reason="r"), ExitCode.UNAVAILABLE),
        (BackendTimeout(component="c", reason="r"), ExitCode.UNAVAILABLE),
        (CellUnavailable(component="c", reason="r"), ExitCode.UNAVAILABLE),
        (CellTimeout(component="c", reason="r"), ExitCode.UNAVAILABLE),
        (CellUnreadable(cell="c", reason="r"), ExitCode.USAGE),  # the keys are at fault
        (DeleteUnconfirmed(uuid="u", cell="c", cause="r"), ExitCode.UNAVAILABLE),
        (TransactionConflict(component="c", attempts=8, code="1213"), ExitCode.UNAVAILABLE),
        (MigrationError("m"), ExitCode.SCHEMA),
        (SchemaMismatch(component="c", current=None, expected="e", hint="h"), ExitCode.SCHEMA),
        (MigrationLocked(component="c", line="cell", waited=1.0), ExitCode.SCHEMA),
        (InstanceNotFound(uuid="u"), ExitCode.NOT_FOUND),
        (MoveJobNotFound(job="j"), ExitCode.NOT_FOUND),
        (InstanceMoving(uuid="u", job="j", state="moving"), ExitCode.CONFLICT),
        (MoveVerifyFailed(uuid="u", job="j", reason="r"), ExitCode.VERIFY_FAILED),
        (NovaImportConflict(conflicts=["cell c: no name"]), ExitCode.CONFLICT),
        (MoveError("m"), ExitCode.ERROR),
        # Not in the table: unexpected, i.e. a bug.
        (UntargetedContext(what="w"), ExitCode.ERROR),
        (RoutingError("r"), ExitCode.ERROR),
        (MappingError("m"), ExitCode.ERROR),
        (CellgateError("c"), ExitCode.ERROR),
        (Exception("x"), ExitCode.ERROR),
        (ValueError("x"), ExitCode.ERROR),
        (KeyError("x"), ExitCode.ERROR),
        (KeyboardInterrupt(), ExitCode.ERROR),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else v.name,
)
def test_exit_code_for(error: BaseException, code: ExitCode) -> None:
    assert exit_code_for(error) is code


def test_exit_code_for_follows_subclasses() -> None:
    class CustomTimeout(CellTimeout):
        pass

    class CustomConfig(InvalidURL):
        pass

    assert exit_code_for(CustomTimeout(component="c", reason="r")) is ExitCode.UNAVAILABLE
    assert exit_code_for(CustomConfig(url="u", reason="r")) is ExitCode.USAGE


def test_rpc_errors_keep_their_fields() -> None:
    timeout = RPCTimeout(method="reboot", target="cell a topic 'compute'", timeout=2.5)
    assert (timeout.method, timeout.timeout) == ("reboot", 2.5)
    assert "no reply to 'reboot' from cell a topic 'compute' within 2.5s" in str(timeout)
    remote = RemoteError(exc_type="ValueError", message="bad", method="m")
    assert (remote.exc_type, remote.remote_message) == ("ValueError", "bad")
    assert str(remote) == "remote 'm' raised ValueError: bad"
    version = UnsupportedVersion(requested="1.4", supported="1.3")
    assert (version.requested, version.supported) == ("1.4", "1.3")
    assert NoTransport(cell="cell0").cell == "cell0"
    assert NoSuchMethod(method="x").method == "x"
    wrong = WrongCell(expected="a", got="b")
    assert (wrong.expected, wrong.got) == ("a", "b")


# --------------------------------------------------------------------------
# Hints: keys in the domain, words at the edges
# --------------------------------------------------------------------------

#: One instance of every class, with a hint wherever the class takes one.
SAMPLES: list[CellgateError] = [
    CellgateError("m", hint=Hint.LIST_CELLS),
    ConfigError("m", hint=Hint.CONFIG_FILE),
    InvalidURL(
        url="x", reason="r", hint=Hint.ADD_TEMPLATE_FIELD, hint_args={"field": "f", "option": "o"}
    ),
    EndpointInUse(resource="database", endpoint="h:1/d", other="cell c1", cell="c2"),
    MigrationInterrupted(component="c", line="api", reached="api_0002", target="api_0004"),
    EncryptionKeyError("m", hint=Hint.ADD_OLD_KEY),
    MappingError("m", hint=Hint.MOVE_INSTANCES),
    CellNotFound(ident="c"),
    HostNotMapped(host="h"),
    DuplicateCell(field="name", value="c"),
    CellInUse(ident="c", reason="r", hint=Hint.FORCE_DELETE_CELL0),
    StaleCell(ident="c", expected=1, found=2),
    NovaImportConflict(conflicts=["cell c: no name"]),
    InstanceNotFound(uuid="u"),
    BackendError(component="c", reason="r", hint=Hint.ASCII_PASSWORD),
    BackendUnavailable(component="c", reason="r"),
    CellUnavailable(component="c", reason="r"),
    CellUnreadable(cell="c", reason="r"),
    DeleteUnconfirmed(uuid="u", cell="c", cause="r"),
    BackendTimeout(component="c", reason="r"),
    CellTimeout(component="c", reason="r"),
    DeadlineExceeded(component="request", reason="r", public_reason="r"),
    TransactionConflict(component="c", attempts=8, code="1213"),
    RoutingError("m", hint=Hint.TARGET_CELL),
    UntargetedContext(what="w"),
    NoValidCell(reason="r"),
    MigrationError("m", hint=Hint.USE_SYNC_COMMANDS),
    SchemaMismatch(
        component="c", current=None, expected="e", hint=Hint.SYNC_CELL_DB, hint_args={"cell": "c"}
    ),
    MigrationLocked(component="c", line="cell", waited=1.0),
    RPCError("m", hint=Hint.START_SERVER),
    RPCTimeout(method="m", target="t", timeout=1.0),
    RemoteError(exc_type="E", message="m", method="m"),
    UnsupportedVersion(requested="1.1", supported="1.0"),
    NoTransport(cell="cell0"),
    MalformedMessage("m"),
    NoSuchMethod(method="m"),
    WrongCell(expected="a", got="b"),
    MoveError("m"),
    InstanceMoving(uuid="u", job="j", state="moving"),
    MoveVerifyFailed(uuid="u", job="j", reason="r"),
    MoveJobNotFound(job="j"),
    errors.NovaImportConflict(conflicts=["a", "b"]),
]


def _no_shell(text: str) -> None:
    assert "cellgate " not in text and "--" not in text, text


def test_the_samples_cover_every_class() -> None:
    assert {type(e) for e in SAMPLES} == set(TREE)


def test_every_hint_key_has_cli_words_and_rest_words_without_a_shell_command() -> None:
    assert set(CLI_HINTS) == set(Hint)
    assert set(REST_HINTS) <= set(Hint)
    for hint in Hint:
        err = CellgateError(
            "m",
            hint=hint,
            hint_args={
                "cell": "c",
                "field": "f",
                "option": "o",
                "resource": "database",
                "name": "n",
                "revision": "r",
                "revisions": "r1",
                "job": "j",
            },
        )
        assert cli_hint(err)  # every key renders on the CLI
        _no_shell(rest_message(err))


@pytest.mark.parametrize("err", SAMPLES, ids=lambda e: type(e).__name__)
def test_rest_rendering_of_every_error_has_no_shell_command(err: CellgateError) -> None:
    _no_shell(rest_message(err))
    # str() is free of CLI words too, except a free-text hint (the transition
    # path), which only the CLI may show.
    if not isinstance(err.hint, str):
        _no_shell(str(err))


def test_a_free_text_hint_is_cli_only() -> None:
    err = CellInUse(ident="c", reason="is busy", hint="pass --force to do it anyway")
    assert cli_message(err) == "cell 'c' is busy; pass --force to do it anyway"
    assert rest_message(err) == "cell 'c' is busy"
    assert rest_hint(err) is None


def test_hint_args_fill_the_cli_words() -> None:
    err = SchemaMismatch(
        component="cell cell3 database",
        current=None,
        expected="e",
        hint=Hint.SYNC_CELL_DB,
        hint_args={"cell": "cell3"},
    )
    assert cli_hint(err) == "run 'cellgate db sync --cell cell3'"
    assert rest_message(err) == "cell cell3 database is at revision none (empty), expected e"


def test_rest_error_classes_are_not_domain_errors() -> None:
    rest = [
        obj
        for obj in vars(http).values()
        if inspect.isclass(obj) and issubclass(obj, Exception) and obj.__module__ == http.__name__
    ]
    assert rest  # Unauthorized, Forbidden
    assert not any(issubclass(cls, CellgateError) for cls in rest)


def test_nova_import_conflict_lists_its_conflicts_in_one_line() -> None:
    many = [f"cell c{i}: no name" for i in range(7)]
    err = NovaImportConflict(conflicts=many)
    assert err.conflicts == tuple(many)
    assert "7 conflict(s): cell c0: no name; " in str(err) and "and 2 more" in str(err)
    assert "\n" not in str(err) and "cell c6" not in str(err)
