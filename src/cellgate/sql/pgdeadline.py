"""psycopg connections whose every wait on the server ends at a client-side deadline.

PostgreSQL's ``statement_timeout`` is enforced by the server, TCP keepalives
and ``tcp_user_timeout`` by the peer's kernel. A backend that is frozen
(SIGSTOP, a stalled VM, swap) or a path that stops relaying while the socket
stays open (a proxy, a half-dead NAT) still has its bytes acknowledged, so
none of them fires and a psycopg call waits for ever: a statement, a
``COMMIT``, the pool's pre-ping or its rollback on return, and with it the
pool slot and the request thread. PyMySQL has socket read timeouts; libpq has
no such option.

psycopg 3 runs every blocking call of a connection through
``Connection.wait(gen, interval, timeout)``, which raises psycopg's internal
``_WaitTimeout`` once ``timeout`` has passed. :class:`DeadlineConnection`
gives each of those waits a default timeout, so every call (one statement with
its results, a commit, a rollback, a ping) is bounded; the connect itself is
bounded by libpq's ``connect_timeout``, which psycopg applies per host.

A call abandoned at its deadline leaves the protocol in an unknown state, so
the connection is closed then and there and :class:`ClientDeadlineExceeded`
raised; SQLAlchemy's psycopg dialect reports an error on a closed connection
as a disconnect, so the pool invalidates it instead of handing it out again.
The server notices the closed socket when it runs again and rolls the
transaction back. A cancel request is not sent: to a frozen backend it would
be delivered only when the freeze ends, and through a partition it would
itself hang; ``statement_timeout`` (set a second earlier) already stops a
query that is merely slow.

This module imports psycopg, so :mod:`cellgate.sql.engines` loads it with the
first PostgreSQL connection (import cost: see that module's ``_Deferred``).
"""

from __future__ import annotations

from typing import Any

import psycopg
import psycopg.errors
from psycopg.abc import RV, PQGen

from cellgate import deadline

#: psycopg's internal "the wait's timeout expired" error. Pinned psycopg
#: (pyproject) and tests/ha/test_pg_client_timeout.py catch a rename.
_WAIT_TIMEOUT: type[Exception] = psycopg.errors._WaitTimeout
_INTERVAL = 0.1  # psycopg's own poll interval (it checks for Ctrl-C between polls)


class ClientDeadlineExceeded(psycopg.OperationalError):
    """The server did not answer within the client-side deadline; the connection is closed."""

    #: Read by :func:`cellgate.sql.engines.is_timeout` (no need to import this class there).
    client_deadline = True


class DeadlineConnection(psycopg.Connection[Any]):
    """A psycopg connection that gives up on any single wait after :attr:`deadline` seconds."""

    #: Seconds each call may wait for the server; ``None``: psycopg's default (for ever).
    deadline: float | None = None

    def wait(
        self, gen: PQGen[RV], interval: float = _INTERVAL, timeout: float | None = None
    ) -> RV:
        own = timeout is None and self.deadline is not None
        limit = self.deadline
        if own and limit is not None:
            # Within a request: no longer than what is left of its deadline.
            limit = max(deadline.bound(limit), 0.001)
        try:
            return super().wait(gen, interval, limit if own else timeout)
        except _WAIT_TIMEOUT:
            if not own or limit is None:
                raise  # psycopg asked for this timeout itself, and handles it
            self.close()  # mid-protocol: never to be used again
            raise ClientDeadlineExceeded(
                f"timed out: no answer from the server within {limit:g} s "
                "(client-side deadline); connection closed"
            ) from None


def connect(deadline: float, *args: Any, **kwargs: Any) -> DeadlineConnection:
    """``psycopg.connect``, returning a connection bounded by ``deadline`` per call."""
    conn = DeadlineConnection.connect(*args, **kwargs)
    conn.deadline = deadline
    return conn
