"""``RPCServer``: serve endpoint objects on one cell's transport.

Endpoints are plain objects. A public method (no leading underscore) named
in a request is called as ``method(ctx, **args)``, where ``ctx`` is the
caller's :class:`~cellgate.context.RequestContext`, targeted at this server's
cell. Requests run on a small thread pool, so one slow method does not block
the others.

Everything that can go wrong with a request is answered, not raised: a bad
message is logged and dropped, an unknown method, a version mismatch, a
message for another cell or an exception in the method become an error reply
(type name and public message, :func:`cellgate.rpc.wire.public_text`) that
the client raises as a typed error; a backend error's full text, address
included, goes to this worker's log only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from cellgate.apidb.mappings import CellMapping
from cellgate.context import RequestContext
from cellgate.errors import (
    BackendError,
    MalformedMessage,
    NoSuchMethod,
    SchemaMismatch,
    UnsupportedVersion,
    WrongCell,
)
from cellgate.rpc.target import Target, version_compatible
from cellgate.rpc.transport import Incoming, Listener, Transport
from cellgate.rpc.wire import Reply, Request, decode_request
from cellgate.urls import redact

log = logging.getLogger(__name__)

DEFAULT_SERVER_WORKERS = 8


class RPCServer:
    """Dispatches requests for ``target`` on ``transport`` to ``endpoints``."""

    def __init__(
        self,
        transport: Transport,
        target: Target,
        endpoints: Sequence[object],
        cell: CellMapping,
        *,
        workers: int = DEFAULT_SERVER_WORKERS,
        owns_transport: bool = False,
    ) -> None:
        if target.fanout:
            raise ValueError("a server listens on a topic (and its server name), not a fanout")
        self.target = target
        self.cell = cell
        self._transport = transport
        self._endpoints = list(endpoints)
        self._workers = workers
        self._owns_transport = owns_transport
        self._listener: Listener | None = None
        self._pool: ThreadPoolExecutor | None = None

    @property
    def running(self) -> bool:
        return self._listener is not None

    def start(self) -> RPCServer:
        if self._listener is None:
            self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="cellgate-rpc")
            self._listener = self._transport.listen(self.target, self._on_message)
        return self

    def stop(self) -> None:
        """Stop listening, let running requests finish, release the transport."""
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.stop()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        if self._owns_transport:
            self._transport.close()

    def __enter__(self) -> RPCServer:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def _on_message(self, incoming: Incoming) -> None:
        pool = self._pool
        if pool is None:
            return
        try:
            pool.submit(self._handle, incoming)
        except RuntimeError:  # shutting down: the message is dropped, like a dead server
            log.debug("server for %s stopping; dropped a message", self.target)

    def _handle(self, incoming: Incoming) -> None:
        try:
            request = decode_request(incoming.body)
        except MalformedMessage as exc:
            log.warning(
                "cell %s %s: dropped a malformed message: %s", self.cell.label, self.target, exc
            )
            return
        reply = self.dispatch(request)
        if incoming.wants_reply:
            try:
                incoming.reply(reply.encode())
            except MalformedMessage as exc:  # the result was not JSON
                incoming.reply(Reply.failure(request.id, exc).encode())
            except Exception as exc:  # the reply could not be sent; the caller times out
                log.warning(
                    "cell %s: could not send the reply to %r: %s",
                    self.cell.label,
                    request.method,
                    redact(str(exc)),
                )
        elif not reply.ok:
            log.warning(
                "cell %s: cast %r failed: %s: %s",
                self.cell.label,
                request.method,
                reply.error_type,
                reply.error_message,
            )

    def dispatch(self, request: Request) -> Reply:
        """Run one request against the endpoints; always returns a reply."""
        if not version_compatible(request.version, self.target.version):
            error = UnsupportedVersion(
                requested=str(request.version), supported=str(self.target.version)
            )
            detail = {"requested": str(request.version), "supported": str(self.target.version)}
            return Reply.failure(request.id, error, detail)
        if request.ctx.get("cell_uuid") not in (None, self.cell.uuid):
            return Reply.failure(
                request.id, WrongCell(expected=self.cell.label, got=request.ctx.get("cell_uuid"))
            )
        method = self._find(request.method)
        if method is None:
            return Reply.failure(request.id, NoSuchMethod(method=request.method))
        ctx = RequestContext.from_dict(request.ctx, cell=self.cell)
        try:
            return Reply(request.id, result=method(ctx, **request.args))
        except Exception as exc:  # the method's failure is the caller's answer
            if isinstance(exc, BackendError | SchemaMismatch):
                # The full message (address, driver text; password masked) stays
                # here, in the worker's log: the reply carries the public one.
                log.warning(
                    "cell %s: %r failed: %s", self.cell.label, request.method, redact(str(exc))
                )
            else:
                log.info(
                    "cell %s: %r raised %s", self.cell.label, request.method, type(exc).__name__
                )
            return Reply.failure(request.id, exc)

    def _find(self, name: str) -> Callable[..., Any] | None:
        if name.startswith("_"):
            return None
        for endpoint in self._endpoints:
            method = getattr(endpoint, name, None)
            if callable(method):
                return method  # type: ignore[no-any-return]
        return None
