"""Sampling: warm-up, batches, interleaved pairs, medians and tails.

Every figure is the median of many samples. A sample of a fast operation is
a *batch* of calls timed together (the per-call time is the batch time
divided by its size), so the timer's own cost (about 0.1 us) is noise, not
signal. The batch size is calibrated during warm-up so that one sample lasts
about ``target_s``.

A ratio compares two operations measured in the same process, *interleaved*:
A, B, B, A, A, B, ... so that drift (CPU frequency, other processes, a
garbage collection) lands on both sides. The ratio is the median of the
per-pair ratios, which cancels noise better than a ratio of medians.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Series:
    """Samples of one quantity, in the unit they were taken in."""

    samples: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    def quantile(self, q: float) -> float:
        """Linear-interpolated quantile, ``q`` in [0, 1]."""
        data = sorted(self.samples)
        if len(data) == 1:
            return data[0]
        pos = q * (len(data) - 1)
        low = math.floor(pos)
        high = min(low + 1, len(data) - 1)
        return data[low] + (data[high] - data[low]) * (pos - low)

    @property
    def p95(self) -> float:
        return self.quantile(0.95)

    @property
    def p05(self) -> float:
        return self.quantile(0.05)

    def scaled(self, factor: float) -> Series:
        return Series(tuple(s * factor for s in self.samples))

    def __len__(self) -> int:
        return len(self.samples)


@dataclass(frozen=True)
class Pair:
    """Two interleaved series and their per-pair ratios ``a / b``."""

    a: Series
    b: Series
    ratio: Series


def _per_call(fn: Callable[[], object], batch: int) -> float:
    start = time.perf_counter()
    for _ in range(batch):
        fn()
    return (time.perf_counter() - start) / batch


def calibrate(fn: Callable[[], object], *, target_s: float, warmup_s: float) -> int:
    """Warm ``fn`` up for about ``warmup_s`` seconds; return a batch size for ``target_s``."""
    calls = 0
    start = time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= warmup_s and calls >= 3:
            break
    per_call = elapsed / calls
    return max(1, min(100_000, round(target_s / per_call)))


def sample(
    fn: Callable[[], object], *, samples: int, target_s: float = 0.002, warmup_s: float = 0.1
) -> Series:
    """Per-call seconds of ``fn``, ``samples`` batches after a warm-up."""
    batch = calibrate(fn, target_s=target_s, warmup_s=warmup_s)
    return Series(tuple(_per_call(fn, batch) for _ in range(samples)))


def interleaved(
    a: Callable[[], object],
    b: Callable[[], object],
    *,
    samples: int,
    target_s: float = 0.002,
    warmup_s: float = 0.1,
) -> Pair:
    """Per-call seconds of ``a`` and ``b``, sampled alternately (ABBA order)."""
    batch_a = calibrate(a, target_s=target_s, warmup_s=warmup_s)
    batch_b = calibrate(b, target_s=target_s, warmup_s=warmup_s)
    sa: list[float] = []
    sb: list[float] = []
    for i in range(samples):
        if i % 2 == 0:
            sa.append(_per_call(a, batch_a))
            sb.append(_per_call(b, batch_b))
        else:
            sb.append(_per_call(b, batch_b))
            sa.append(_per_call(a, batch_a))
    return Pair(Series(tuple(sa)), Series(tuple(sb)), ratios(sa, sb))


def rotated(
    fns: Sequence[Callable[[], object]], *, samples: int, target_s: float = 0.002
) -> list[Series]:
    """Per-call seconds of each of ``fns``, sampled in an order that rotates every round."""
    batches = [calibrate(fn, target_s=target_s, warmup_s=0.1) for fn in fns]
    out: list[list[float]] = [[] for _ in fns]
    for i in range(samples):
        for j in range(len(fns)):
            k = (i + j) % len(fns)
            out[k].append(_per_call(fns[k], batches[k]))
    return [Series(tuple(s)) for s in out]


def interleaved_once(
    a: Callable[[], float], b: Callable[[], float], *, samples: int, warmup: int = 1
) -> Pair:
    """Like :func:`interleaved` for slow operations that time themselves.

    ``a`` and ``b`` each run one sample and return its measured value.
    """
    for _ in range(warmup):
        a()
        b()
    sa: list[float] = []
    sb: list[float] = []
    for i in range(samples):
        if i % 2 == 0:
            sa.append(a())
            sb.append(b())
        else:
            sb.append(b())
            sa.append(a())
    return Pair(Series(tuple(sa)), Series(tuple(sb)), ratios(sa, sb))


def ratios(a: Sequence[float], b: Sequence[float]) -> Series:
    return Series(tuple(x / y for x, y in zip(a, b, strict=True) if y > 0))


def timed(fn: Callable[[], object]) -> float:
    """Seconds one call of ``fn`` took."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start
