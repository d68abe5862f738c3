"""The request deadline: one monotonic instant that bounds all the work of a request.

The REST API gives each request a deadline (``[api] request_timeout``); it
travels on the :class:`~cellgate.context.RequestContext` (``ctx.deadline``)
and, for the thread doing the work, in a context variable set by
:func:`scope`. The database seam reads it (:func:`remaining`): a statement is
not started once it has passed, and each driver wait is bounded by what is
left of it (PyMySQL's socket timeouts, the PostgreSQL client-side deadline).
API database calls take no context argument, which is why the variable
exists; a cell session enters the scope of its own ``ctx`` on whichever
fan-out thread runs it.

Work that undoes a half-done request runs in :func:`lifted`: it must not be
cut short by the deadline that made it necessary (its own timeouts bound it).
This module imports nothing of cellgate but the errors.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from cellgate.errors import DeadlineExceeded

#: The monotonic deadline of the work on this thread, or ``None``.
_current: ContextVar[float | None] = ContextVar("cellgate_deadline", default=None)


def at(budget: float) -> float:
    """The monotonic instant ``budget`` seconds from now."""
    return time.monotonic() + budget


@contextmanager
def scope(deadline: float | None) -> Iterator[None]:
    """Bound the work of this thread by ``deadline`` (a ``time.monotonic()`` instant).

    An enclosing scope's earlier deadline stays in force; ``None`` adds none.
    """
    current = _current.get()
    if deadline is None or (current is not None and current <= deadline):
        yield
        return
    token = _current.set(deadline)
    try:
        yield
    finally:
        _current.reset(token)


@contextmanager
def lifted() -> Iterator[None]:
    """No request deadline in this block (compensation of a half-done request)."""
    token = _current.set(None)
    try:
        yield
    finally:
        _current.reset(token)


def remaining() -> float | None:
    """Seconds left before this thread's deadline (0 if it passed); ``None``: none."""
    current = _current.get()
    if current is None:
        return None
    return max(0.0, current - time.monotonic())


def bound(timeout: float) -> float:
    """``timeout``, or what is left of the deadline if that is shorter."""
    left = remaining()
    return timeout if left is None else min(timeout, left)


def check(what: str) -> None:
    """Raise :class:`DeadlineExceeded` if this thread's deadline has passed."""
    if expired():
        raise exceeded(what)


def expired() -> bool:
    current = _current.get()
    return current is not None and time.monotonic() >= current


def exceeded(what: str) -> DeadlineExceeded:
    reason = f"the request's deadline passed before {what}"
    return DeadlineExceeded(component="request", reason=reason, public_reason=reason)
