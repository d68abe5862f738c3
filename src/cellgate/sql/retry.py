"""Run a whole write transaction again when the database refused it as a conflict.

Why whole, and why here: on a multi-writer Galera cluster a transaction that
commits on one node can be refused at COMMIT because another node certified a
conflicting one first (MariaDB answers 1213, "Deadlock found"); InnoDB and
PostgreSQL pick a deadlock victim the same way (1213, SQLSTATE 40P01), and
PostgreSQL's serializable isolation refuses with 40001. In every case the
server has rolled the transaction back and nothing of it is left, so the only
correct reaction is to run the *whole* transaction again from its first
statement, in a fresh transaction, re-reading what it read. A retry of the
failed statement alone would build on reads the server has already discarded.
A lock wait that timed out (1205) is retried too: the transaction could not
take a lock another one held, and by the next attempt that one has usually
finished. SQLite's ``SQLITE_BUSY`` (after its busy timeout) is the same case.

Errors are classified by the driver's code (PyMySQL's ``args[0]``, psycopg's
``sqlstate``, sqlite3's ``sqlite_errorcode``), never by message text, and
anywhere in the exception's cause chain, since
:func:`~cellgate.sql.engines.translate_errors` may already have wrapped a
1205 into a :class:`~cellgate.errors.BackendTimeout`.

Waits between attempts use full jitter (a uniform draw between 0 and an
exponentially growing cap, as in AWS's "Exponential Backoff And Jitter"):
writers that collided once spread out instead of colliding again in step.

Why the bound is mostly one of *time*, and the waits short: a loser does not
gain priority by waiting. On a multi-writer Galera cluster every cell write
bumps one shared row, and while one writer waits the others (which won, and
do not wait) keep committing; a retried write wins roughly one try in three
against two busy writers, whatever it waited. What decides whether it lands
is how many tries it gets, not how long it sleeps between them, so the waits
are capped at :data:`BACKOFF_CAP` (a quarter of a second is already many
transaction times: enough to break the lock-step of two deadlocked
transactions, which is all the jitter is for), the count bound is generous
(``conflict_attempts``, default 64) and :data:`CONFLICT_BUDGET` seconds from
the first attempt end it in time: no retry starts past it. 16 attempts with
waits up to 1 s lost one or two of 200 writes of three writers on three
nodes (tests/ha/test_galera.py); 64 within 10 s lose none there.

The last conflict becomes :class:`~cellgate.errors.TransactionConflict`,
raised with nothing written (every attempt was rolled back). Each retry is
counted in :class:`RetryStats`, which the service exports to Prometheus
(``cellgate_db_conflict_retries_total``).

A connection that could not be had at the *start* of a transaction (the
server refused it, or is not the primary yet during a PostgreSQL failover,
or a pooled connection failed its pre-ping and the reconnect failed) is
retried too, on a fresh connection, at most :data:`CONNECT_ATTEMPTS` times
in all and for :data:`CONNECT_BUDGET` seconds (long enough for a standby's
promotion, short enough that a database that is really down is reported
within seconds), and counted with the code ``connect``: no statement of the
transaction was sent, so nothing of it can have been applied. The session
marks such an error (:func:`mark_start_failure`); any other connection
error (mid-transaction, or at COMMIT, after which the transaction may have
committed) is never retried here: the caller sees it and decides.

A transaction function passed here must be safe to run more than once: it
may read and write only through the session it is given (its effects vanish
with the rollback) and must not do anything outside it that cannot be
repeated (send a message, append to a caller's list) before it returns.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, TypeVar

from cellgate.config import DEFAULT_CONFLICT_ATTEMPTS
from cellgate.errors import TransactionConflict

T = TypeVar("T")

#: The first retry waits up to this (seconds); each later one up to twice the previous cap.
BACKOFF_BASE: Final = 0.05
#: No retry waits longer than this (seconds); the module docstring says why so short.
BACKOFF_CAP: Final = 0.25
#: No conflict retry starts later than this after the first attempt (seconds).
CONFLICT_BUDGET: Final = 10.0
#: Attempts in all for a transaction whose connection could not be had at its start.
CONNECT_ATTEMPTS: Final = 6
#: No start-of-transaction connection retry starts later than this (seconds).
CONNECT_BUDGET: Final = 5.0
#: The code a start-of-transaction connection retry is counted under.
CONNECT_CODE: Final = "connect"
#: The attribute :func:`mark_start_failure` sets on a driver error.
_START_FAILURE_ATTR: Final = "cellgate_before_first_statement"

#: MySQL/MariaDB: 1213 deadlock (and Galera's certification failure), 1205 lock wait timeout.
MYSQL_CONFLICT_CODES: Final = frozenset({1205, 1213})
#: PostgreSQL: 40001 serialization_failure, 40P01 deadlock_detected.
PG_CONFLICT_SQLSTATES: Final = frozenset({"40001", "40P01"})
#: SQLite: SQLITE_BUSY (5) and its extended codes (BUSY_RECOVERY 261, BUSY_SNAPSHOT 517, ...).
_SQLITE_BUSY: Final = 5


def conflict_code(exc: BaseException) -> str | None:
    """The driver's conflict code if ``exc`` (or what caused it) is a retryable conflict.

    ``"1213"``, ``"40P01"``, ``"SQLITE_BUSY"``; ``None`` for any other error,
    and for a :class:`TransactionConflict` (its attempts are spent: an outer
    retry must not multiply them).
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, TransactionConflict):
            return None
        code = _driver_code(getattr(current, "orig", None) or current)
        if code is not None:
            return code
        current = current.__cause__ or current.__context__
    return None


def mark_start_failure(exc: BaseException) -> None:
    """Say that ``exc`` was raised getting a transaction's connection, before any statement.

    Called by the sessions of server databases (not SQLite: a file does not
    fail over) around the connection checkout, so :func:`run_transaction`
    may run the transaction again on a fresh connection.
    """
    setattr(exc, _START_FAILURE_ATTR, True)


def is_start_failure(exc: BaseException) -> bool:
    """Whether ``exc``, or what caused it, was marked by :func:`mark_start_failure`."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if getattr(current, _START_FAILURE_ATTR, False):
            return True
        current = current.__cause__ or current.__context__
    return False


def _driver_code(error: object) -> str | None:
    # By attribute, not by class: naming the drivers' classes would import
    # them (cellgate.sql.engines explains the import cost).
    module = type(error).__module__
    if module.startswith("pymysql"):
        # The server's error number, not its SQLSTATE: MySQL maps 1213 to
        # 40001 but 1205 to HY000, and many unrelated errors share HY000.
        code = error.args[0] if isinstance(error, Exception) and error.args else None
        return str(code) if code in MYSQL_CONFLICT_CODES else None
    if module.startswith("psycopg"):
        sqlstate = getattr(error, "sqlstate", None)
        return sqlstate if sqlstate in PG_CONFLICT_SQLSTATES else None
    sqlite_code = getattr(error, "sqlite_errorcode", None)
    if isinstance(sqlite_code, int):
        return "SQLITE_BUSY" if sqlite_code & 0xFF == _SQLITE_BUSY else None
    return None


@dataclass(frozen=True)
class RetryPolicy:
    """How many attempts, and how long to wait between them (full jitter).

    ``attempts`` and ``budget`` (seconds from the first attempt) bound the
    conflict retries, whichever is reached first; ``connect_attempts`` and
    ``connect_budget`` the start-of-transaction connection retries.
    """

    attempts: int = DEFAULT_CONFLICT_ATTEMPTS
    base: float = BACKOFF_BASE
    cap: float = BACKOFF_CAP
    budget: float = CONFLICT_BUDGET
    connect_attempts: int = CONNECT_ATTEMPTS
    connect_budget: float = CONNECT_BUDGET

    def delay(self, retry: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number ``retry`` (1 for the first retry)."""
        ceiling = min(self.cap, self.base * 2 ** (retry - 1))
        return (rng or _rng).uniform(0.0, ceiling)


_rng = random.Random()


class RetryStats:
    """Conflict retries counted per database kind and code; read by the metrics at scrape.

    ``database`` is ``api`` or ``cell``. Owned by the ``App`` (nothing global),
    shared by its API database and cell sessions; thread-safe.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._retries: dict[tuple[str, str], int] = {}
        self._exhausted: dict[str, int] = {}
        self._transactions: dict[str, int] = {}

    def retried(self, database: str, code: str) -> None:
        with self._lock:
            key = (database, code)
            self._retries[key] = self._retries.get(key, 0) + 1

    def exhausted(self, database: str) -> None:
        with self._lock:
            self._exhausted[database] = self._exhausted.get(database, 0) + 1

    def finished(self, database: str) -> None:
        """One write transaction ended (committed, refused or given up)."""
        with self._lock:
            self._transactions[database] = self._transactions.get(database, 0) + 1

    def retries(self) -> dict[tuple[str, str], int]:
        with self._lock:
            return dict(self._retries)

    def exhausted_counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._exhausted)

    def transactions(self) -> dict[str, int]:
        with self._lock:
            return dict(self._transactions)

    @property
    def total_retries(self) -> int:
        with self._lock:
            return sum(self._retries.values())


def run_transaction(
    attempt: Callable[[], T],
    *,
    component: str,
    database: str,
    policy: RetryPolicy,
    stats: RetryStats,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    on_retry: Callable[[int, str], None] | None = None,
) -> T:
    """Call ``attempt`` (one whole transaction) until it is not refused as a conflict.

    ``attempt`` must open and end its own transaction each time (see the
    module docstring). ``component`` names the database in the error (no
    address); ``database`` (``api`` or ``cell``) labels the counts.
    ``on_retry(retry, code)`` is called before each wait (tests use it to
    release a lock at the right moment, or to fail a server over).
    A connection error marked by :func:`mark_start_failure` is retried within
    ``policy.connect_attempts`` and ``policy.connect_budget``, then raised as it is.

    :raises TransactionConflict: refused as a conflict on every attempt, until
        ``policy.attempts`` or ``policy.budget`` ran out.
    """
    started = clock()
    conflicts = connects = retries = 0
    try:
        while True:
            try:
                return attempt()
            except Exception as exc:
                code = conflict_code(exc)
                if code is not None:
                    conflicts += 1
                    delay = policy.delay(conflicts)
                    if conflicts >= policy.attempts or clock() - started + delay > policy.budget:
                        stats.exhausted(database)
                        raise TransactionConflict(
                            component=component,
                            attempts=conflicts,
                            code=code,
                            retry_after=max(1, round(policy.cap)),
                        ) from exc
                elif is_start_failure(exc):
                    connects += 1
                    delay = policy.delay(connects)
                    if (
                        connects >= policy.connect_attempts
                        or clock() - started + delay > policy.connect_budget
                    ):
                        raise
                    code = CONNECT_CODE
                else:
                    raise
                retries += 1
                stats.retried(database, code)
                if on_retry is not None:
                    on_retry(retries, code)
                sleep(delay)
    finally:
        stats.finished(database)
