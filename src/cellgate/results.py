"""Per-cell outcomes: ``Ok(value)``, ``Failed(error)`` or ``TimedOut``.

Work that touches many cells reports one of these per cell instead of mixing
values, raw exceptions and sentinels in one dict (Nova's
``did_not_respond_sentinel``). Callers match on the type.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from cellgate.errors import CellgateError

T = TypeVar("T")


@dataclass(frozen=True)
class Ok(Generic[T]):
    value: T


@dataclass(frozen=True)
class Failed:
    """The work raised ``error``, kept as raised (never re-labelled).

    A :class:`~cellgate.errors.BackendError` means the cell could not be
    used; another :class:`~cellgate.errors.CellgateError` is an answer or a
    refusal; anything else is a bug in the caller's code, not an outage.
    """

    error: Exception


@dataclass(frozen=True)
class TimedOut:
    timeout: float  # the seconds the caller allowed


CellResult = Ok[T] | Failed | TimedOut


def raise_bugs(results: Iterable[CellResult[Any]]) -> None:
    """Raise the first ``Failed`` error that is not a ``CellgateError``.

    For callers that turn failed cells into "down" reports: an exception
    cellgate did not raise on purpose is a bug in the work itself, and must
    surface as one (a 500, a traceback), not as a cell outage.
    """
    for result in results:
        if isinstance(result, Failed) and not isinstance(result.error, CellgateError):
            raise result.error
