"""The RPC message envelope: versioned JSON, validated on the way in.

Request::

    {"cellgate": 1, "id": "<uuid>", "method": "reboot", "args": {...},
     "ctx": {...RequestContext.to_dict()...}, "version": "1.2" | null}

Reply::

    {"cellgate": 1, "id": "<request id>", "result": <json>}            # success
    {"cellgate": 1, "id": "<request id>",
     "error": {"type": "...", "message": "...", "detail": {...}}}

Decoding never trusts its input: any bytes that are not a well-formed
envelope raise :class:`MalformedMessage`, which a server logs and drops; a
worker never crashes on a bad message. Errors travel as a type *name* and a
public message (:func:`public_text`: a backend error's public message, never
the address of the server that failed); the client raises
:class:`~cellgate.errors.RemoteError` and never imports a class by name.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any, Final

from cellgate.errors import CellgateError, MalformedMessage
from cellgate.urls import redact

WIRE_VERSION: Final = 1
#: The largest message body accepted, to bound memory per message.
MAX_MESSAGE_BYTES: Final = 4 * 1024 * 1024


@dataclass(frozen=True)
class Request:
    id: str
    method: str
    args: dict[str, Any]
    ctx: dict[str, Any]
    version: str | None

    @classmethod
    def new(
        cls, method: str, args: dict[str, Any], ctx: dict[str, Any], version: str | None
    ) -> Request:
        return cls(str(uuid.uuid4()), method, args, ctx, version)

    def encode(self) -> bytes:
        return _dump(
            {
                "cellgate": WIRE_VERSION,
                "id": self.id,
                "method": self.method,
                "args": self.args,
                "ctx": self.ctx,
                "version": self.version,
            }
        )


@dataclass(frozen=True)
class Reply:
    id: str
    result: Any = None
    error_type: str | None = None
    error_message: str | None = None
    error_detail: dict[str, str] | None = None

    @property
    def ok(self) -> bool:
        return self.error_type is None

    @classmethod
    def failure(
        cls, request_id: str, exc: BaseException, detail: dict[str, str] | None = None
    ) -> Reply:
        return cls(
            request_id,
            error_type=type(exc).__name__,
            error_message=public_text(exc),
            error_detail=detail,
        )

    def encode(self) -> bytes:
        body: dict[str, Any] = {"cellgate": WIRE_VERSION, "id": self.id}
        if self.ok:
            body["result"] = self.result
        else:
            body["error"] = {
                "type": self.error_type,
                "message": self.error_message,
                "detail": self.error_detail or {},
            }
        return _dump(body)


#: Packages whose exceptions' text is the driver's own words (hosts, ports,
#: users, database names): never sent back, only logged by the worker.
_DRIVER_PACKAGES: Final = ("sqlalchemy", "pymysql", "psycopg", "sqlite3", "kombu", "amqp")


def public_text(exc: BaseException) -> str:
    """What an error reply says about ``exc``: nothing that tells where a server lives.

    The reply reaches the caller and, through the REST API, any token. A
    backend error's :attr:`~cellgate.errors.BackendError.public_message` names
    the subject and a reason by kind (``cell cell1 database: cannot be
    reached``), never the masked URL, host, port, user, database name or
    driver text its ``str()`` holds for the worker's log. A driver's exception
    that escaped translation is named by its class only. Everything else (an
    endpoint's own ``ValueError("flavor does not fit")``) keeps its message,
    redacted.
    """
    if isinstance(exc, CellgateError):
        public = getattr(exc, "public_message", None)
        return redact(public if isinstance(public, str) else exc.message)
    if type(exc).__module__.split(".")[0] in _DRIVER_PACKAGES:
        return f"the worker's {type(exc).__name__}; see the worker's log"
    return redact(str(exc))


def _dump(data: dict[str, Any]) -> bytes:
    try:
        body = json.dumps(data, separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise MalformedMessage(f"RPC arguments and results must be plain JSON: {exc}") from None
    if len(body) > MAX_MESSAGE_BYTES:  # refused here, not silently dropped by the receiver
        raise MalformedMessage(f"message of {len(body)} bytes exceeds {MAX_MESSAGE_BYTES}")
    return body


def _load(body: bytes) -> dict[str, Any]:
    if len(body) > MAX_MESSAGE_BYTES:
        raise MalformedMessage(f"message of {len(body)} bytes exceeds {MAX_MESSAGE_BYTES}")
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise MalformedMessage("message is not JSON") from None
    if not isinstance(data, dict) or data.get("cellgate") != WIRE_VERSION:
        raise MalformedMessage("message is not a cellgate v1 envelope")
    if not isinstance(data.get("id"), str):
        raise MalformedMessage("message has no id")
    return data


def decode_request(body: bytes) -> Request:
    data = _load(body)
    method, args, ctx, version = (data.get(k) for k in ("method", "args", "ctx", "version"))
    if not isinstance(method, str) or not method:
        raise MalformedMessage("request has no method")
    if not isinstance(args, dict) or not all(isinstance(k, str) for k in args):
        raise MalformedMessage("request args must be an object")
    if not isinstance(ctx, dict):
        raise MalformedMessage("request ctx must be an object")
    if version is not None and not isinstance(version, str):
        raise MalformedMessage("request version must be a string")
    return Request(data["id"], method, args, ctx, version)


def decode_reply(body: bytes) -> Reply:
    data = _load(body)
    if "error" in data:
        error = data["error"]
        if not isinstance(error, dict):
            raise MalformedMessage("reply error must be an object")
        detail = error.get("detail")
        return Reply(
            data["id"],
            error_type=str(error.get("type") or "Exception"),
            error_message=str(error.get("message") or ""),
            error_detail={str(k): str(v) for k, v in detail.items()}
            if isinstance(detail, dict)
            else None,
        )
    return Reply(data["id"], result=data.get("result"))
