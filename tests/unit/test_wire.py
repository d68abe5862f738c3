"""The RPC envelope: round trips, validation, and arbitrary bytes never crash."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cellgate.rpc.target import Target, version_compatible
from cellgate.rpc.wire import (
    MAX_MESSAGE_BYTES,
    MalformedMessage,
    Reply,
    Request,
    decode_reply,
    decode_request,
)


def test_request_round_trip() -> None:
    request = Request.new("reboot", {"instance": "u1", "hard": True}, {"project_id": "p"}, "1.2")
    assert decode_request(request.encode()) == request


def test_reply_round_trips() -> None:
    assert decode_reply(Reply("i", result={"a": [1, 2]}).encode()) == Reply(
        "i", result={"a": [1, 2]}
    )
    failed = decode_reply(Reply.failure("i", ValueError("no"), {"k": "v"}).encode())
    assert (failed.ok, failed.error_type, failed.error_message) == (False, "ValueError", "no")
    assert failed.error_detail == {"k": "v"}


def test_failure_messages_are_redacted() -> None:
    reply = Reply.failure("i", RuntimeError("mysql+pymysql://u:hunter2secret@127.0.0.1/x"))
    assert "hunter2secret" not in reply.encode().decode()


def test_non_json_arguments_are_refused_before_sending() -> None:
    with pytest.raises(MalformedMessage, match="plain JSON"):
        Request.new("m", {"x": object()}, {}, None).encode()
    with pytest.raises(MalformedMessage):
        Request.new("m", {"x": float("nan")}, {}, None).encode()


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\xff\xfe",
        b"null",
        b"[]",
        b'{"cellgate": 2, "id": "x"}',
        b'{"cellgate": 1}',
        b'{"cellgate": 1, "id": "x", "method": "", "args": {}, "ctx": {}}',
        b'{"cellgate": 1, "id": "x", "method": "m", "args": [], "ctx": {}}',
        b'{"cellgate": 1, "id": "x", "method": "m", "args": {}, "ctx": []}',
        b'{"cellgate": 1, "id": "x", "method": "m", "args": {}, "ctx": {}, "version": 1}',
        b"[" * 100_000,
    ],
)
def test_malformed_requests_are_refused(body: bytes) -> None:
    with pytest.raises(MalformedMessage):
        decode_request(body)


def test_oversized_messages_are_refused_unparsed() -> None:
    with pytest.raises(MalformedMessage, match="exceeds"):
        decode_request(b" " * (MAX_MESSAGE_BYTES + 1))


@settings(max_examples=300, database=None)
@given(st.binary(max_size=512))
def test_arbitrary_bytes_never_crash_the_decoders(body: bytes) -> None:
    for decode in (decode_request, decode_reply):
        with contextlib.suppress(MalformedMessage):  # anything else fails the test
            decode(body)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=200, database=None)
@given(st.dictionaries(st.text(max_size=10), json_values, max_size=5))
def test_any_json_arguments_round_trip(args: dict[str, object]) -> None:
    request = Request.new("m", args, {}, None)
    assert decode_request(request.encode()).args == json.loads(json.dumps(args))


def test_targets_validate_and_versions_compare() -> None:
    assert str(Target("compute", server="h1")) == "topic 'compute' (h1)"
    for bad in (
        {"topic": ""},
        {"topic": "a b"},
        {"topic": "t", "version": "1"},
        {"topic": "t", "fanout": True, "server": "h"},
    ):
        with pytest.raises(ValueError):
            Target(**bad)  # type: ignore[arg-type]
    assert version_compatible("1.2", "1.3") and version_compatible(None, "1.0")
    assert not version_compatible("1.4", "1.3") and not version_compatible("2.0", "1.9")
