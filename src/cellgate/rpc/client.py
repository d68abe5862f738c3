"""``RPCClient``: call or cast a method on a cell's servers, with a timeout.

A client is cheap: it binds a transport (shared, from the App's registry),
a :class:`~cellgate.rpc.target.Target` and the caller's context. ``prepare``
returns a new client with overrides and leaves this one unchanged, as
oslo.messaging's does.

Given the ``App``'s breaker registry (``app.rpc.client`` passes it), each
``call`` and ``cast`` is admitted by the cell's circuit breaker and settles
it: a broker that cannot be used counts as a failure, an ``RPCTimeout`` or a
remote error does not (see ``cellgate.routing.breaker``).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from typing import Any

from cellgate.config import DEFAULT_RPC_TIMEOUT
from cellgate.context import RequestContext
from cellgate.errors import (
    BackendUnavailable,
    CellUnavailable,
    MalformedMessage,
    RemoteError,
    RPCError,
    RPCTimeout,
    UnsupportedVersion,
)
from cellgate.routing.breaker import Attempt, BreakerRegistry
from cellgate.rpc.target import Target
from cellgate.rpc.transport import Transport
from cellgate.rpc.wire import Request, decode_reply


@dataclass(frozen=True)
class RPCClient:
    transport: Transport
    target: Target
    ctx: RequestContext
    timeout: float = DEFAULT_RPC_TIMEOUT
    #: The cells' circuit breakers; ``None``: calls are not guarded.
    breakers: BreakerRegistry | None = field(default=None, repr=False, compare=False)
    #: Casts wait for the broker's confirm (see :meth:`Transport.cast`).
    confirm: bool = False

    @property
    def _cell(self) -> str:
        return self.ctx.cell.label if self.ctx.cell else "?"

    def prepare(
        self,
        *,
        timeout: float | None = None,
        server: str | None = None,
        version: str | None = None,
        fanout: bool | None = None,
        confirm: bool | None = None,
    ) -> RPCClient:
        """A copy with some settings overridden; this client is unchanged."""
        target = self.target
        if server is not None or version is not None or fanout is not None:
            target = Target(
                topic=target.topic,
                server=server if server is not None else target.server,
                fanout=fanout if fanout is not None else target.fanout,
                version=version if version is not None else target.version,
            )
        return replace(
            self,
            target=target,
            timeout=timeout if timeout is not None else self.timeout,
            confirm=confirm if confirm is not None else self.confirm,
        )

    def call(self, method: str, **kwargs: Any) -> Any:
        """Invoke ``method(ctx, **kwargs)`` on one server and return its result.

        :raises RPCTimeout: no reply within ``timeout``.
        :raises RemoteError: the method raised; ``exc_type`` names its class.
        :raises UnsupportedVersion: the server is older than ``target.version``.
        :raises CellUnavailable: the cell's broker could not be used, or the
            cell's circuit breaker is open.
        """
        request = Request.new(method, kwargs, self.ctx.to_dict(), self.target.version)
        body = request.encode()
        with self._guarded():
            try:
                answer = self.transport.call(self.target, body, self.timeout)
            except TimeoutError:
                raise RPCTimeout(
                    method=method, target=f"cell {self._cell} {self.target}", timeout=self.timeout
                ) from None
            except BackendUnavailable as exc:
                raise self._unavailable(exc) from exc
        try:
            reply = decode_reply(answer)
        except MalformedMessage as exc:
            raise RPCError(
                f"malformed reply to {method!r} from cell {self._cell}: {exc}"
            ) from None
        if reply.ok:
            return reply.result
        detail = reply.error_detail or {}
        if reply.error_type == "UnsupportedVersion":
            raise UnsupportedVersion(
                requested=detail.get("requested", str(self.target.version)),
                supported=detail.get("supported", "?"),
            )
        raise RemoteError(
            exc_type=reply.error_type or "Exception",
            message=reply.error_message or "",
            method=method,
        )

    def cast(self, method: str, **kwargs: Any) -> None:
        """Send ``method(ctx, **kwargs)`` without waiting for a reply (to every server if fanout).

        With ``confirm`` (``prepare(confirm=True)``) it returns once the
        broker has the message for a queue a server consumes from.

        :raises CellUnavailable: the broker could not be used or, confirmed,
            did not take the message.
        """
        request = Request.new(method, kwargs, self.ctx.to_dict(), self.target.version)
        with self._guarded():
            try:
                self.transport.cast(self.target, request.encode(), confirm=self.confirm)
            except BackendUnavailable as exc:
                raise self._unavailable(exc) from exc

    def _guarded(self) -> AbstractContextManager[Attempt | None]:
        """The cell's breaker around one send (admitted outside the seam's ``try``,
        so its own ``CellUnavailable`` is not wrapped a second time)."""
        if self.breakers is None or self.ctx.cell is None:
            return nullcontext()
        return self.breakers.guard(self.ctx.cell)

    def _unavailable(self, exc: BackendUnavailable) -> CellUnavailable:
        return CellUnavailable(
            component=f"cell {self._cell} {exc.component}",
            address=exc.address,
            reason=exc.reason,
            public_reason=exc.public_reason,
        )
