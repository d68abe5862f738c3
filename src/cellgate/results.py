"""Per-cell outcomes: ``Ok(value)``, ``Failed(error)`` or ``TimedOut``.

Work that touches many cells reports one of these per cell instead of mixing
values, raw exceptions and sentinels in one dict (Nova's
``did_not_respond_sentinel``). Callers match on the type.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

from cellgate.errors import CellgateError

T = TypeVar("T")


@dataclass(frozen=True)
class Ok(Generic[T]):
    value: T


@dataclass(frozen=True)
class Failed:
    error: CellgateError


@dataclass(frozen=True)
class TimedOut:
    timeout: float  # the seconds the caller allowed


CellResult = Ok[T] | Failed | TimedOut
