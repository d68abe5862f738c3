"""Per-cell circuit breakers: stop calling a cell that keeps failing, then probe it.

Why: a cell whose database or broker is down costs every call its full
timeout (a connect timeout, or the API's cell deadline) and, in a
scatter-gather, a thread. A list request would pay that on every page, and a
hung cell piles up abandoned threads. After ``threshold`` consecutive
*backend* failures the cell's breaker opens: for ``cooldown`` seconds every
call to that cell fails at once with a
:class:`~cellgate.errors.CellUnavailable` that says so, without opening a
connection. Then exactly one call is let through as a probe; its outcome
closes the breaker or opens it for another cool-down::

    closed ──threshold consecutive failures──► open
      ▲                                         │ cooldown elapsed: the next call
      │ probe succeeded                         ▼ is the probe, the others fail fast
      └────────────────────────────────────  half_open ──probe failed──► open

What counts (:func:`is_breaker_failure`): a
:class:`~cellgate.errors.BackendError` (``CellUnavailable``, ``CellTimeout``:
the server refused, reset, rejected us or did not answer) or a raw driver
error that :func:`cellgate.sql.engines.is_backend_failure` recognises. Application
errors (an instance not found, a constraint conflict, bad SQL, a remote
method that raised) prove the cell answered and never count; nor does an
``RPCTimeout``, which is about one topic or server (a missing worker, a slow
method), not about reaching the cell. A call that ends in such an error is
neither a success nor a failure: it leaves the count alone, and a probe that
ends that way hands the probe to the next caller.

The registry is keyed by cell uuid and owned by the ``App`` (no module
state). The seams that talk to a cell (``app.db.session`` and the RPC
client's ``call``/``cast``) each admit one :class:`Attempt` and settle it
once; scatter-gather is covered through them, so one failure is counted once.
The clock is injectable so tests never sleep.
"""

from __future__ import annotations

import enum
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final

from cellgate import forksafe
from cellgate.apidb.mappings import CellMapping
from cellgate.config import DEFAULT_BREAKER_COOLDOWN, DEFAULT_BREAKER_THRESHOLD
from cellgate.errors import BackendError, CellUnavailable, DeadlineExceeded
from cellgate.sql.engines import is_backend_failure

#: Cells tracked at most; beyond that, the least recently used closed ones are forgotten.
DEFAULT_MAX_CELLS: Final = 4096


class BreakerState(enum.Enum):
    """A breaker's state; ``gauge`` is its value in ``cellgate_cell_breaker_state``."""

    CLOSED = "closed"  # calls go through; failures are counted
    HALF_OPEN = "half_open"  # the cool-down is over: one probe is in flight
    OPEN = "open"  # calls fail fast until the cool-down is over

    @property
    def gauge(self) -> int:
        return _GAUGE[self]


_GAUGE: Final = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}


@dataclass(frozen=True)
class BreakerStatus:
    """What one cell's breaker says right now (a copy; it does not change)."""

    state: BreakerState
    consecutive_failures: int = 0
    #: Seconds until the next call will probe the cell; ``None`` unless open.
    #: ``0.0`` while open means the cool-down is over and the next call probes.
    retry_after: float | None = None
    #: Class name of the last failure counted, ``None`` if there was none.
    last_error: str | None = None
    #: How many times the breaker opened (a failed probe re-opens it: counted).
    trips: int = 0
    #: The cell's name, else its uuid: the ``cell`` label of the metrics.
    label: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape of ``"breaker"`` in ``GET /v1/cells``."""
        return {
            "state": self.state.value,
            "consecutive_failures": self.consecutive_failures,
            "retry_after": None if self.retry_after is None else round(self.retry_after, 3),
        }


CLOSED: Final = BreakerStatus(BreakerState.CLOSED)


def is_breaker_failure(exc: BaseException) -> bool:
    """True if ``exc`` says the cell's server could not be used (it counts)."""
    if isinstance(exc, DeadlineExceeded):  # the request's time ran out, not the cell
        return False
    return isinstance(exc, BackendError) or is_backend_failure(exc)


class _Breaker:
    """One cell's state; every field is guarded by the registry's lock."""

    __slots__ = (
        "epoch",
        "failures",
        "label",
        "last_error",
        "opened_at",
        "probing",
        "state",
        "trips",
    )

    def __init__(self, label: str) -> None:
        self.label = label
        self.state = BreakerState.CLOSED
        self.failures = 0
        self.opened_at = 0.0
        self.probing = False
        self.last_error: str | None = None
        self.trips = 0
        # Bumped on every change of state, so a call admitted before the change
        # (say, one that hung through a whole cool-down) cannot settle the new one.
        self.epoch = 0


class Attempt:
    """One admitted call to a cell. Settle it once; later settlements are ignored.

    ``succeeded()``: the cell answered. ``failed(error)``: it could not be
    used (only call this for errors that count). ``abandoned()``: neither,
    e.g. an application error; a probe that ends this way is handed on.
    """

    __slots__ = ("_cell", "_epoch", "_probe", "_registry", "_settled")

    def __init__(self, registry: BreakerRegistry | None, cell: str, epoch: int, probe: bool):
        self._registry = registry
        self._cell = cell
        self._epoch = epoch
        self._probe = probe
        self._settled = registry is None

    @property
    def probe(self) -> bool:
        """True if this call is the one probe of a half-open breaker."""
        return self._probe

    def succeeded(self) -> None:
        if self._settle():
            assert self._registry is not None
            self._registry._record(self._cell, self._epoch, self._probe, None)

    def failed(self, error: BaseException) -> None:
        if self._settle():
            assert self._registry is not None
            self._registry._record(self._cell, self._epoch, self._probe, error)

    def abandoned(self) -> None:
        if self._settle() and self._probe:
            assert self._registry is not None
            self._registry._release_probe(self._cell, self._epoch)

    def settle(self, error: BaseException | None) -> None:
        """Success if ``error`` is None, a failure if it counts, else abandoned."""
        if error is None:
            self.succeeded()
        elif is_breaker_failure(error):
            self.failed(error)
        else:
            self.abandoned()

    def _settle(self) -> bool:
        # One thread owns an attempt, so a plain flag is enough.
        if self._settled:
            return False
        self._settled = True
        return True


#: An attempt no breaker watches: for a disabled registry, and for cleanup calls
#: (see ``CellDatabases.session(ctx, guarded=False)``) that must not be refused.
UNGUARDED: Final = Attempt(None, "", 0, False)


class BreakerRegistry:
    """Every cell's breaker, keyed by cell uuid; thread-safe; one per ``App``.

    ``threshold=0`` disables it: :meth:`admit` lets every call through and
    nothing is recorded, so every cell reports closed.
    """

    def __init__(
        self,
        *,
        threshold: int = DEFAULT_BREAKER_THRESHOLD,
        cooldown: float = DEFAULT_BREAKER_COOLDOWN,
        clock: Callable[[], float] = time.monotonic,
        max_cells: int = DEFAULT_MAX_CELLS,
    ) -> None:
        if threshold < 0:
            raise ValueError(f"threshold must be 0 (disabled) or more, not {threshold}")
        if not cooldown > 0:
            raise ValueError(f"cooldown must be above 0 seconds, not {cooldown}")
        if max_cells < 1:
            raise ValueError(f"max_cells must be at least 1, not {max_cells}")
        self.threshold = threshold
        self.cooldown = cooldown
        self._clock = clock
        self._max_cells = max_cells
        self._lock = threading.Lock()
        self._breakers: OrderedDict[str, _Breaker] = OrderedDict()
        forksafe.register(self)

    @property
    def enabled(self) -> bool:
        return self.threshold > 0

    def admit(self, cell: CellMapping) -> Attempt:
        """Let one call to ``cell`` through, or refuse it at once.

        :raises CellUnavailable: the breaker is open and its cool-down is not
            over, or it is half-open and another call is already the probe.
        """
        if not self.enabled:
            return UNGUARDED
        with self._lock:
            breaker = self._get_locked(cell)
            if breaker.state is BreakerState.CLOSED:
                return Attempt(self, cell.uuid, breaker.epoch, False)
            now = self._clock()
            if breaker.state is BreakerState.OPEN and now >= breaker.opened_at + self.cooldown:
                breaker.state = BreakerState.HALF_OPEN
                breaker.epoch += 1
                breaker.probing = False
            if breaker.state is BreakerState.HALF_OPEN and not breaker.probing:
                breaker.probing = True
                return Attempt(self, cell.uuid, breaker.epoch, True)
            raise self._skipped(breaker)

    @contextmanager
    def guard(
        self, cell: CellMapping, *, counts: Callable[[BaseException], bool] = is_breaker_failure
    ) -> Iterator[Attempt]:
        """Admit a call, and settle it from how the ``with`` block ends.

        Normal exit: success. An exception for which ``counts`` is true: a
        failure. Any other exception (``BaseException`` included): abandoned.
        """
        attempt = self.admit(cell)
        try:
            yield attempt
        except BaseException as exc:
            if counts(exc):
                attempt.failed(exc)
            else:
                attempt.abandoned()
            raise
        attempt.succeeded()

    def status(self, cell_uuid: str) -> BreakerStatus:
        """The breaker of one cell (closed, no failures, if it was never used)."""
        with self._lock:
            breaker = self._breakers.get(cell_uuid)
            return CLOSED if breaker is None else self._status_locked(breaker)

    def statuses(self) -> dict[str, BreakerStatus]:
        """Every tracked cell's breaker, by cell uuid (for the metrics)."""
        with self._lock:
            return {uuid: self._status_locked(b) for uuid, b in self._breakers.items()}

    def _status_locked(self, breaker: _Breaker) -> BreakerStatus:
        retry_after = None
        if breaker.state is BreakerState.OPEN:
            retry_after = max(0.0, breaker.opened_at + self.cooldown - self._clock())
        return BreakerStatus(
            state=breaker.state,
            consecutive_failures=breaker.failures,
            retry_after=retry_after,
            last_error=breaker.last_error,
            trips=breaker.trips,
            label=breaker.label,
        )

    def _get_locked(self, cell: CellMapping) -> _Breaker:
        breaker = self._breakers.get(cell.uuid)
        if breaker is None:
            if len(self._breakers) >= self._max_cells:
                self._forget_one_closed_locked()
            breaker = self._breakers[cell.uuid] = _Breaker(cell.label)
        else:
            breaker.label = cell.label  # a renamed cell is reported by its new name
            self._breakers.move_to_end(cell.uuid)
        return breaker

    def _forget_one_closed_locked(self) -> None:
        # Open and half-open breakers are kept: forgetting one would let calls
        # through. There are few of those; the bound is about the many idle ones.
        for uuid, breaker in self._breakers.items():
            if breaker.state is BreakerState.CLOSED:
                del self._breakers[uuid]
                return

    def _record(self, cell: str, epoch: int, probe: bool, error: BaseException | None) -> None:
        with self._lock:
            breaker = self._breakers.get(cell)
            if breaker is None or breaker.epoch != epoch:
                return  # admitted before the state changed: too late to matter
            if error is None:
                if probe or breaker.state is BreakerState.CLOSED:
                    breaker.state = BreakerState.CLOSED
                    breaker.failures = 0
                    breaker.last_error = None
                    breaker.probing = False
                    if probe:
                        breaker.epoch += 1
                return
            breaker.failures += 1
            breaker.last_error = type(error).__name__
            if probe or breaker.failures >= self.threshold:
                breaker.state = BreakerState.OPEN
                breaker.opened_at = self._clock()
                breaker.probing = False
                breaker.trips += 1
                breaker.epoch += 1

    def _release_probe(self, cell: str, epoch: int) -> None:
        with self._lock:
            breaker = self._breakers.get(cell)
            if breaker is not None and breaker.epoch == epoch:
                breaker.probing = False

    def _skipped(self, breaker: _Breaker) -> CellUnavailable:
        if breaker.state is BreakerState.OPEN:
            wait = f"retrying after {self.cooldown:g}s"
        else:
            wait = "a probe is in progress"
        last = f"; last error {breaker.last_error}" if breaker.last_error else ""
        reason = f"skipped: {breaker.failures} consecutive failures, {wait}{last}"
        # Written here from counts and a class name: clients may read it.
        return CellUnavailable(
            component=f"cell {breaker.label}", reason=reason, public_reason=reason
        )

    def _after_fork_in_child(self) -> None:
        """A new lock; a probe in flight in the parent has no thread here: release it."""
        self._lock = threading.Lock()
        for breaker in self._breakers.values():
            breaker.probing = False
