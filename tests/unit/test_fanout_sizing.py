"""FanoutPool sizing: every cell at once up to max_workers, and a bound on hung threads.

No timing asserts: "at once" is proved by a barrier that only opens when
every call is running, "bounded" by counting the pool's threads by name.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

import pytest

from cellgate.results import Failed, Ok, TimedOut
from cellgate.routing.fanout import FanoutPool
from tests.unit.test_fanout import LONG, wait_until


@pytest.fixture
def release() -> Iterator[threading.Event]:
    event = threading.Event()
    yield event
    event.set()


def pool_threads(pool: FanoutPool) -> list[threading.Thread]:
    prefix = f"{pool._name}_"  # the pool names its threads; a test may look
    return [t for t in threading.enumerate() if t.name.startswith(prefix)]


def test_a_hundred_cells_run_at_once() -> None:
    barrier = threading.Barrier(100, timeout=LONG)

    def meet(n: int) -> int:
        barrier.wait()  # opens only once all 100 calls are running together
        return n

    with FanoutPool(max_workers=128) as pool:
        results = pool.scatter_gather({i: i for i in range(100)}, meet, timeout=LONG)
        assert results == {i: Ok(i) for i in range(100)}
        assert pool.threads() == (100, 0)  # sized from the cells, not max_workers


def test_more_cells_than_workers_run_max_workers_at_once() -> None:
    lock = threading.Lock()
    running = {"now": 0, "most": 0}

    def count(n: int) -> int:
        with lock:
            running["now"] += 1
            running["most"] = max(running["most"], running["now"])
        barrier.wait()  # the first 8 meet; then the next 8, and so on
        with lock:
            running["now"] -= 1
        return n

    barrier = threading.Barrier(8, timeout=LONG)
    with FanoutPool(max_workers=8) as pool:
        results = pool.scatter_gather({i: i for i in range(40)}, count, timeout=LONG)
    assert results == {i: Ok(i) for i in range(40)}
    assert running["most"] == 8


def test_hung_threads_past_the_bound_are_not_replaced(
    release: threading.Event, caplog: pytest.LogCaptureFixture
) -> None:
    def hang(_: object) -> str:
        release.wait()
        return "released"

    pool = FanoutPool(max_workers=4, max_hung=2)
    items = {i: i for i in range(4)}
    first = pool.scatter_gather(items, hang, timeout=0.2)
    assert all(isinstance(r, TimedOut) for r in first.values())
    assert pool.threads() == (0, 4)  # written off: 4 hung, none counted as workers

    with caplog.at_level(logging.WARNING, logger="cellgate.routing.fanout"):
        second = pool.scatter_gather(items, hang, timeout=0.2)
        third = pool.scatter_gather(items, hang, timeout=0.2)
    assert all(isinstance(r, TimedOut) for r in [*second.values(), *third.values()])
    # 4 + 2 replacements and no more: max_workers + max_hung threads in all.
    assert len(pool_threads(pool)) == 6
    assert pool.threads() == (0, 6)
    assert "not replacing them" in caplog.text

    release.set()  # the stuck calls return: 4 rejoin as workers, the other 2 exit
    assert wait_until(lambda: pool.threads() == (4, 0))
    assert wait_until(lambda: len(pool_threads(pool)) == 4)
    assert pool.scatter_gather(items, lambda n: n, timeout=LONG) == {i: Ok(i) for i in items}
    pool.close()


def test_healthy_cells_answer_while_one_cell_hangs_through_repeated_calls(
    release: threading.Event,
) -> None:
    def maybe_hang(n: int) -> int:
        if n == 0:
            release.wait()
        return n

    pool = FanoutPool(max_workers=16, max_hung=4)
    items = {i: i for i in range(10)}
    for _ in range(12):
        results = pool.scatter_gather(items, maybe_hang, timeout=0.3)
        assert isinstance(results[0], TimedOut)
        assert {k: v for k, v in results.items() if k} == {i: Ok(i) for i in range(1, 10)}
        assert len(pool_threads(pool)) <= 16 + 4
    pool.close()


def test_idle_threads_exit() -> None:
    pool = FanoutPool(max_workers=8, idle_timeout=0.05)
    assert pool.scatter_gather({i: i for i in range(8)}, lambda n: n, timeout=LONG) == {
        i: Ok(i) for i in range(8)
    }
    assert wait_until(lambda: pool.threads() == (0, 0) and not pool_threads(pool))
    # and the pool still works: threads start again
    assert pool.scatter_gather({"a": 1}, lambda n: n, timeout=LONG) == {"a": Ok(1)}
    pool.close()


def test_work_never_run_for_lack_of_threads_is_timed_out_not_failed(
    release: threading.Event,
) -> None:
    pool = FanoutPool(max_workers=1, max_hung=0)
    pool.scatter_gather({"stuck": 0}, lambda _: release.wait(), timeout=0.2)
    results = pool.scatter_gather({"a": 1}, lambda n: n, timeout=0.2)
    assert isinstance(results["a"], TimedOut) and not isinstance(results["a"], Failed)
    pool.close()


def test_max_hung_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="max_hung"):
        FanoutPool(max_hung=-1)
