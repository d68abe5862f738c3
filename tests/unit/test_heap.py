"""Freezing the start-up heap: everything tracked then is outside later collections."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from cellgate.service.heap import freeze_startup_heap


@pytest.fixture
def _unfrozen() -> Iterator[None]:
    yield
    gc.unfreeze()  # the test process keeps collecting as before


@pytest.mark.usefixtures("_unfrozen")
def test_objects_alive_at_start_up_are_frozen_and_later_garbage_is_still_collected() -> None:
    class Node:
        other: object = None

    long_lived = Node()
    frozen = freeze_startup_heap()
    assert frozen == gc.get_freeze_count() > 0
    assert gc.is_tracked(long_lived)
    # A cycle made after the freeze is found by the next collection.
    a, b = Node(), Node()
    a.other, b.other = b, a
    del a, b
    assert gc.collect() >= 2
