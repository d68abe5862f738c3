"""Prometheus metrics for the API, in a registry owned by the service (not global).

- ``cellgate_cell_request_seconds{cell,op}``: latency of work done in a cell;
- ``cellgate_cell_errors_total{cell,op}``: such work that failed because the
  cell could not be used (see :func:`cell_failed`; a 409 or 404 is not an error of the cell);
- ``cellgate_cell_up{cell}``: 1 if the cell answered its last fan-out, else 0;
- ``cellgate_mapping_cache_{hits,misses}_total``, ``cellgate_mapping_cache_age_seconds``
  and ``cellgate_mapping_cache_refresh_failed``: read from the App's cache;
- ``cellgate_cell_breaker_state{cell}`` (0 closed, 1 half_open, 2 open) and
  ``cellgate_cell_breaker_trips_total{cell}``: read from the App's circuit
  breakers at scrape time, one series per cell that was called, like the
  other ``cell`` labels (the cell's name, else its uuid);
- ``cellgate_db_conflict_retries_total{database,code}``: write transactions run
  again because the database refused them as a conflict (``database`` is
  ``api`` or ``cell``; ``code`` the driver's: 1213, 1205, 40001, 40P01,
  SQLITE_BUSY), and ``cellgate_db_conflict_exhausted_total{database}``: writes
  that failed after their last attempt (``cellgate.sql.retry``); read from the
  App's counts at scrape time.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cellgate.apidb.mappings import CellMapping
from cellgate.errors import RPCTimeout
from cellgate.routing.breaker import BreakerRegistry, is_breaker_failure
from cellgate.routing.cache import MappingCache
from cellgate.sql.retry import RetryStats

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _CacheCollector(Collector):
    def __init__(self, cache: MappingCache) -> None:
        self._cache = cache

    def collect(self) -> Iterable[Metric]:
        yield CounterMetricFamily(
            "cellgate_mapping_cache_hits", "Cell lookups served from memory.", self._cache.hits
        )
        yield CounterMetricFamily(
            "cellgate_mapping_cache_misses",
            "Cell lookups that went to the API database.",
            self._cache.misses,
        )
        age = GaugeMetricFamily(
            "cellgate_mapping_cache_age_seconds",
            "Seconds since the cell mappings in memory were loaded or last confirmed.",
        )
        seconds = self._cache.age
        if seconds is not None:  # nothing loaded: no sample
            age.add_metric([], seconds)
        yield age
        yield GaugeMetricFamily(
            "cellgate_mapping_cache_refresh_failed",
            "1 if the last read of the API database for the mapping cache failed, else 0.",
            1 if self._cache.refresh_failed else 0,
        )


class _BreakerCollector(Collector):
    def __init__(self, breakers: BreakerRegistry) -> None:
        self._breakers = breakers

    def collect(self) -> Iterable[Metric]:
        state = GaugeMetricFamily(
            "cellgate_cell_breaker_state",
            "The cell's circuit breaker: 0 closed, 1 half_open (probing), 2 open (skipped).",
            labels=["cell"],
        )
        trips = CounterMetricFamily(
            "cellgate_cell_breaker_trips",
            "Times the cell's circuit breaker opened.",
            labels=["cell"],
        )
        for status in self._breakers.statuses().values():
            state.add_metric([status.label], status.state.gauge)
            trips.add_metric([status.label], status.trips)
        yield state
        yield trips


class _RetryCollector(Collector):
    def __init__(self, retries: RetryStats) -> None:
        self._retries = retries

    def collect(self) -> Iterable[Metric]:
        retried = CounterMetricFamily(
            "cellgate_db_conflict_retries",
            "Write transactions run again, whole, after the database refused them as a conflict.",
            labels=["database", "code"],
        )
        for (database, code), count in sorted(self._retries.retries().items()):
            retried.add_metric([database, code], count)
        exhausted = CounterMetricFamily(
            "cellgate_db_conflict_exhausted",
            "Write transactions refused as a conflict on every attempt (nothing written).",
            labels=["database"],
        )
        for database, count in sorted(self._retries.exhausted_counts().items()):
            exhausted.add_metric([database], count)
        yield retried
        yield exhausted


def cell_failed(exc: BaseException) -> bool:
    """Whether ``exc`` means the cell did not serve the work.

    Its database or broker could not be used, or its workers did not reply in
    time. Answers the cell gave (not found, invalid state, a conflict) are not
    failures of the cell, so they do not move ``cellgate_cell_errors_total``.
    """
    return is_breaker_failure(exc) or isinstance(exc, RPCTimeout)


class Metrics:
    def __init__(
        self,
        cache: MappingCache,
        breakers: BreakerRegistry | None = None,
        retries: RetryStats | None = None,
    ) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram(
            "cellgate_cell_request_seconds",
            "Time spent on one operation in one cell.",
            ["cell", "op"],
            registry=self.registry,
        )
        self.errors = Counter(
            "cellgate_cell_errors",
            "Operations in a cell that failed.",
            ["cell", "op"],
            registry=self.registry,
        )
        self.up = Gauge(
            "cellgate_cell_up",
            "1 if the cell answered its last fan-out, else 0.",
            ["cell"],
            registry=self.registry,
        )
        self.registry.register(_CacheCollector(cache))
        if breakers is not None:
            self.registry.register(_BreakerCollector(breakers))
        if retries is not None:
            self.registry.register(_RetryCollector(retries))

    @contextmanager
    def timed(self, cell: CellMapping, op: str) -> Iterator[None]:
        started = time.perf_counter()
        label = cell.name or cell.uuid
        try:
            yield
        except Exception as exc:
            if cell_failed(exc):
                self.errors.labels(label, op).inc()
            raise
        finally:
            self.latency.labels(label, op).observe(time.perf_counter() - started)

    def cell_up(self, cell: CellMapping, up: bool) -> None:
        self.up.labels(cell.name or cell.uuid).set(1 if up else 0)

    def render(self) -> bytes:
        return generate_latest(self.registry)
