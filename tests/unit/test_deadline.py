"""cellgate.deadline: one deadline per thread of work, the earliest wins, lifted for undo."""

from __future__ import annotations

import threading
import time

import pytest

from cellgate import deadline
from cellgate.errors import BackendTimeout, DeadlineExceeded
from cellgate.routing.breaker import is_breaker_failure


def test_no_scope_means_no_deadline() -> None:
    assert deadline.remaining() is None
    assert deadline.bound(7.0) == 7.0
    deadline.check("anything")  # does not raise


def test_a_passed_deadline_stops_work_and_is_no_breaker_failure() -> None:
    with deadline.scope(time.monotonic() - 1):
        assert deadline.remaining() == 0.0
        assert deadline.bound(7.0) == 0.0
        with pytest.raises(DeadlineExceeded) as raised:
            deadline.check("a database statement")
    error = raised.value
    assert isinstance(error, BackendTimeout)
    assert "deadline passed before a database statement" in error.public_message
    assert not is_breaker_failure(error)


def test_the_earliest_deadline_wins_and_lifted_removes_it() -> None:
    far, near = time.monotonic() + 3600, time.monotonic() + 1800
    with deadline.scope(near):
        with deadline.scope(far):  # a later one does not extend it
            left = deadline.remaining()
            assert left is not None and left <= 1800
        with deadline.lifted():
            assert deadline.remaining() is None
        assert deadline.remaining() is not None
    assert deadline.remaining() is None


def test_the_deadline_is_per_thread() -> None:
    seen: list[float | None] = []
    with deadline.scope(time.monotonic() - 1):
        thread = threading.Thread(target=lambda: seen.append(deadline.remaining()))
        thread.start()
        thread.join()
    assert seen == [None]
