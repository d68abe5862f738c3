"""Freezing the start-up heap, so full garbage collections stop walking it.

A service process imports SQLAlchemy, FastAPI, pydantic, kombu and builds its
App before it serves its first request: hundreds of thousands of objects that
live as long as the process. CPython's cyclic collector walks every tracked
object on each full (generation 2) collection, so a full collection in a
serving process paused every thread for tens of milliseconds, almost all of
it spent re-proving that the start-up objects are still alive
(``python -m benchmarks``: ``gc_full_pause_ms`` against
``gc_full_pause_frozen_ms``, measured in a fresh process that has built the
API service).

``gc.freeze()`` moves every object tracked at that moment into a permanent
generation that collections ignore; objects allocated afterwards (requests'
garbage, which is where cycles come from) are collected as before. The cost:
a start-up object that later becomes garbage in a reference cycle is never
freed. Start-up objects are the modules, the App, its engines and caches,
which the process keeps until it exits anyway, so that cost is nil here. The
collection just before the freeze clears start-up garbage, so none of it is
frozen with the rest.
"""

from __future__ import annotations

import gc


def freeze_startup_heap() -> int:
    """Collect once, then freeze every tracked object; returns how many are frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
