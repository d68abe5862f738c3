"""Unit tests for :mod:`cellgate.routing.fanout`.

Hung cells are simulated by functions that block on a ``threading.Event``;
the ``release`` fixture sets it at teardown so no test leaves a thread behind.
Time is only bounded from above, generously: "returned well before the hang
would have ended" proves the deadline works without making the tests flaky.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from cellgate.apidb.mappings import CellMapping
from cellgate.errors import CellNotFound, CellTimeout, CellUnavailable, RoutingError
from cellgate.results import CellResult, Failed, Ok, TimedOut
from cellgate.routing.breaker import BreakerRegistry, BreakerState
from cellgate.routing.fanout import FanoutPool
from cellgate.urls import StoredURL

SLACK = 2.0  # seconds allowed past a deadline; only proves "did not hang"
LONG = 30.0  # a deadline that a correct test never comes near


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """Set at teardown: every function blocked on it returns, so its thread ends."""
    event = threading.Event()
    yield event
    event.set()


@pytest.fixture
def pool() -> Iterator[FanoutPool]:
    with FanoutPool(max_workers=4) as p:
        yield p


def hang_until(event: threading.Event) -> Callable[[object], str]:
    def fn(_: object) -> str:
        event.wait()
        return "released"

    return fn


def wait_until(predicate: Callable[[], bool], within: float = 10.0) -> bool:
    end = time.monotonic() + within
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def test_all_ok(pool: FanoutPool) -> None:
    results = pool.scatter_gather({"a": 1, "b": 2, "c": 3}, lambda n: n * 10, timeout=LONG)
    assert results == {"a": Ok(10), "b": Ok(20), "c": Ok(30)}


def test_empty_items_gives_empty_dict(pool: FanoutPool) -> None:
    assert pool.scatter_gather({}, lambda n: n, timeout=1.0) == {}


def test_mixed_ok_failed_timed_out(pool: FanoutPool, release: threading.Event) -> None:
    not_found = CellNotFound(ident="cell2")

    def fn(item: str) -> str:
        if item == "fail":
            raise not_found
        if item == "hang":
            release.wait()
        return item.upper()

    started = time.monotonic()
    results = pool.scatter_gather({"c1": "ok", "c2": "fail", "c3": "hang"}, fn, timeout=0.5)

    assert time.monotonic() - started < 0.5 + SLACK
    assert results == {"c1": Ok("OK"), "c2": Failed(not_found), "c3": TimedOut(timeout=0.5)}
    failed = results["c2"]
    assert isinstance(failed, Failed)
    assert failed.error is not_found  # a CellgateError is kept as-is, not wrapped


def test_result_types_support_match(pool: FanoutPool, release: threading.Event) -> None:
    def fn(item: int) -> int:
        if item < 0:
            release.wait()
        return item

    results = pool.scatter_gather({"ok": 1, "slow": -1}, fn, timeout=0.3)
    seen: list[str] = []
    for result in results.values():
        match result:
            case Ok(value=value):
                seen.append(f"ok {value}")
            case Failed():
                seen.append("failed")
            case TimedOut(timeout=deadline):
                seen.append(f"timed out after {deadline}")
    assert seen == ["ok 1", "timed out after 0.3"]


def test_other_exception_comes_back_unchanged(pool: FanoutPool) -> None:
    # A bug in the caller's function is not "the cell cannot be reached"
    # (issue 11 part 4): no re-labelling, no CellUnavailable.
    bug = KeyError("instance_id")

    def fn(_: object) -> None:
        raise bug

    result = pool.scatter_gather({"cell-a": None}, fn, timeout=LONG)["cell-a"]

    assert isinstance(result, Failed)
    assert result.error is bug
    assert not isinstance(result.error, CellUnavailable)


@pytest.mark.parametrize(
    "error",
    [
        CellUnavailable(component="cell cell-a database", reason="connection refused"),
        CellTimeout(component="cell cell-a database", reason="timed out"),
        ConnectionResetError(),
    ],
    ids=lambda e: type(e).__name__,
)
def test_errors_are_kept_as_raised(pool: FanoutPool, error: Exception) -> None:
    def fn(_: object) -> None:
        raise error

    result = pool.scatter_gather({"k": None}, fn, timeout=LONG)["k"]
    assert isinstance(result, Failed)
    assert result.error is error


def _cell_mapping(name: str) -> CellMapping:
    return CellMapping(
        uuid="2b2b2b2b-0000-4000-8000-000000000002",
        name=name,
        transport_url=StoredURL(f"memory://{name}"),
        database_connection=StoredURL(f"sqlite:///{name}.sqlite"),
        disabled=False,
        created_at=None,
        updated_at=None,
    )


@pytest.mark.parametrize(
    ("raised", "state", "failures"),
    [
        (KeyError("instance_id"), BreakerState.CLOSED, 0),
        (ValueError("bad sort key"), BreakerState.CLOSED, 0),
        (CellUnavailable(component="cell c2 database", reason="refused"), BreakerState.OPEN, 3),
        (CellTimeout(component="cell c2 database", reason="timed out"), BreakerState.OPEN, 3),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Exception) else str(v),
)
def test_only_backend_failures_count_against_the_cells_breaker(
    pool: FanoutPool, raised: Exception, state: BreakerState, failures: int
) -> None:
    # A caller that re-raises a fan-out result under the cell's breaker, as
    # the service's show path does: a bug must leave the breaker closed.
    cell = _cell_mapping("c2")
    breakers = BreakerRegistry(threshold=3, cooldown=30.0, clock=lambda: 1000.0)

    def fn(_: object) -> None:
        raise raised

    for _ in range(3):
        result = pool.scatter_gather({cell.uuid: cell}, fn, timeout=LONG)[cell.uuid]
        assert isinstance(result, Failed)
        with pytest.raises(type(raised)), breakers.guard(cell):
            raise result.error
    status = breakers.status(cell.uuid)
    assert (status.state, status.consecutive_failures) == (state, failures)


def test_base_exception_is_not_turned_into_a_cell_failure(pool: FanoutPool) -> None:
    class Abort(BaseException):
        pass

    def fn(_: object) -> None:
        raise Abort

    with pytest.raises(Abort):
        pool.scatter_gather({"k": None}, fn, timeout=LONG)


def test_input_order_is_kept_not_completion_order(pool: FanoutPool) -> None:
    # Each item waits for the one after it, so they complete in reverse order.
    keys = ["d", "a", "c", "b"]
    done = {key: threading.Event() for key in keys}

    def fn(key: str) -> str:
        later = keys.index(key) + 1
        if later < len(keys):
            done[keys[later]].wait(LONG)
        done[key].set()
        return key

    results = pool.scatter_gather({key: key for key in keys}, fn, timeout=LONG)
    assert list(results) == keys
    assert all(results[key] == Ok(key) for key in keys)


def test_queued_work_is_cancelled_at_the_deadline(release: threading.Event) -> None:
    ran: list[str] = []

    def fn(key: str) -> str:
        ran.append(key)
        if key == "hang":
            release.wait()
        return key

    with FanoutPool(max_workers=1) as pool:
        # One thread: "hang" occupies it, "queued" never starts.
        results = pool.scatter_gather({"hang": "hang", "queued": "queued"}, fn, timeout=0.3)
        assert results == {"hang": TimedOut(0.3), "queued": TimedOut(0.3)}

        release.set()
        # Work still queued would run before this (FIFO); it must have been dropped.
        assert pool.scatter_gather({"after": "after"}, fn, timeout=LONG) == {"after": Ok("after")}
    assert ran == ["hang", "after"]


def test_pool_keeps_working_when_every_worker_hangs(release: threading.Event) -> None:
    with FanoutPool(max_workers=2) as pool:
        for _ in range(2):
            hung = pool.scatter_gather({"x": None}, hang_until(release), timeout=0.2)
            assert hung == {"x": TimedOut(0.2)}
        # Both workers are now stuck in calls that never return.
        started = time.monotonic()
        results = pool.scatter_gather(
            {f"c{i}": i for i in range(6)}, lambda n: n + 1, timeout=LONG
        )
        assert results == {f"c{i}": Ok(i + 1) for i in range(6)}
        assert time.monotonic() - started < LONG / 2


def test_work_queued_behind_another_callers_hung_tasks_runs(release: threading.Event) -> None:
    both_hanging = threading.Barrier(3)

    def hang(_: object) -> None:
        both_hanging.wait(LONG)
        release.wait()

    with FanoutPool(max_workers=2) as pool:
        hung: dict[str, CellResult[None]] = {}
        caller = threading.Thread(
            target=lambda: hung.update(pool.scatter_gather({"h1": 1, "h2": 2}, hang, timeout=0.5))
        )
        caller.start()
        both_hanging.wait(LONG)  # both workers are busy with work that will hang
        # This work can only start once the other caller writes off its threads.
        started = time.monotonic()
        results = pool.scatter_gather({"a": 1, "b": 2, "c": 3}, lambda n: -n, timeout=LONG)
        assert results == {"a": Ok(-1), "b": Ok(-2), "c": Ok(-3)}
        assert time.monotonic() - started < LONG / 2
        caller.join(LONG)
        assert hung == {"h1": TimedOut(0.5), "h2": TimedOut(0.5)}


def test_returning_hung_threads_do_not_grow_the_pool(release: threading.Event) -> None:
    hung_threads: list[threading.Thread] = []
    fresh_threads: set[threading.Thread] = set()

    def hang(_: object) -> None:
        hung_threads.append(threading.current_thread())
        release.wait()

    def fast(n: int) -> int:
        fresh_threads.add(threading.current_thread())
        time.sleep(0.05)  # keep both workers busy so the call needs two threads
        return n

    pool = FanoutPool(max_workers=2)
    pool.scatter_gather({"h1": 1, "h2": 2}, hang, timeout=0.3)
    assert pool.scatter_gather({i: i for i in range(4)}, fast, timeout=LONG) == {
        i: Ok(i) for i in range(4)
    }
    assert len(hung_threads) == 2
    assert all(t.daemon for t in hung_threads + list(fresh_threads))
    assert not fresh_threads & set(hung_threads)

    release.set()  # the hung calls return; two fresh workers already fill the pool
    assert wait_until(lambda: not any(t.is_alive() for t in hung_threads))
    assert all(t.is_alive() for t in fresh_threads)

    pool.close()  # idle workers exit
    assert wait_until(lambda: not any(t.is_alive() for t in fresh_threads))


def test_close_returns_promptly_with_hung_tasks(release: threading.Event) -> None:
    pool = FanoutPool(max_workers=2)
    pool.scatter_gather({"a": 1, "b": 2}, hang_until(release), timeout=0.2)
    started = time.monotonic()
    pool.close()
    assert time.monotonic() - started < SLACK


def test_close_during_a_call_fails_its_queued_work(release: threading.Event) -> None:
    running = threading.Event()

    def fn(key: str) -> str:
        running.set()
        release.wait()
        return key

    pool = FanoutPool(max_workers=1)
    results: dict[str, CellResult[str]] = {}
    caller = threading.Thread(
        target=lambda: results.update(
            pool.scatter_gather({"running": "running", "queued": "queued"}, fn, timeout=1.0)
        )
    )
    caller.start()
    assert running.wait(LONG)
    pool.close()
    caller.join(LONG)

    assert not caller.is_alive()
    assert results["running"] == TimedOut(1.0)
    queued = results["queued"]
    assert isinstance(queued, Failed)
    assert isinstance(queued.error, RoutingError)
    assert "closed" in str(queued.error)


def test_concurrent_callers_get_their_own_results() -> None:
    callers = 8
    start = threading.Barrier(callers)
    outcomes: dict[int, dict[str, CellResult[tuple[int, str]]]] = {}
    errors: list[BaseException] = []

    def call(n: int) -> None:
        try:
            items = {f"cell{j}": f"{n}-{j}" for j in range(5)}
            start.wait(LONG)
            outcomes[n] = shared.scatter_gather(items, lambda s: (n, s), timeout=LONG)
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    with FanoutPool(max_workers=3) as shared:
        threads = [threading.Thread(target=call, args=(n,)) for n in range(callers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(LONG)

    assert errors == []
    assert outcomes == {
        n: {f"cell{j}": Ok((n, f"{n}-{j}")) for j in range(5)} for n in range(callers)
    }


def test_hung_cell_does_not_keep_the_process_alive() -> None:
    script = textwrap.dedent(
        """
        import threading
        from cellgate.results import TimedOut
        from cellgate.routing.fanout import FanoutPool

        pool = FanoutPool(max_workers=1)
        forever = threading.Event()
        result = pool.scatter_gather({"x": 1}, lambda _: forever.wait(), timeout=0.2)
        assert result == {"x": TimedOut(0.2)}, result
        print("done")
        """
    )
    # Without close(): even a forgotten pool must not block interpreter exit.
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "done"


@pytest.fixture
def cpu_hog() -> Iterator[None]:
    """A thread that never yields willingly, with a short GIL switch interval.

    Together they make threads interleave at almost every bytecode, which is
    where a race between a worker publishing a result and the caller settling
    its call shows up (issue 14: false ``TimedOut`` for cells that answered).
    """
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            pass

    interval = sys.getswitchinterval()
    sys.setswitchinterval(5e-5)
    hog = threading.Thread(target=spin, name="cpu-hog", daemon=True)
    hog.start()
    try:
        yield
    finally:
        stop.set()
        hog.join(LONG)
        sys.setswitchinterval(interval)


@pytest.mark.usefixtures("cpu_hog")
def test_an_answer_is_never_reported_as_timed_out_under_load() -> None:
    # Thousands of no-op items on many workers: every call ends long before
    # its deadline, so any outcome but Ok is a false one.
    rounds, cells, workers = 30, 100, 100
    threads: set[threading.Thread] = set()

    def answer(n: int) -> int:
        threads.add(threading.current_thread())
        return n

    false: list[tuple[int, object, CellResult[int]]] = []
    with FanoutPool(max_workers=workers) as pool:
        for r in range(rounds):
            results = pool.scatter_gather({c: c for c in range(cells)}, answer, timeout=LONG)
            false += [(r, c, res) for c, res in results.items() if res != Ok(c)]
    assert false == []
    # No worker was written off (and replaced) for work that had finished.
    assert len(threads) <= workers


@pytest.mark.parametrize("timeout", [0, -1.0, float("nan"), float("inf")])
def test_timeout_must_be_finite_and_positive(pool: FanoutPool, timeout: float) -> None:
    with pytest.raises(ValueError, match="timeout"):
        pool.scatter_gather({"a": 1}, lambda n: n, timeout=timeout)


def test_max_workers_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_workers"):
        FanoutPool(max_workers=0)


def test_scatter_gather_after_close_raises() -> None:
    pool = FanoutPool()
    pool.close()
    pool.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        pool.scatter_gather({"a": 1}, lambda n: n, timeout=1.0)
    with pytest.raises(RuntimeError, match="closed"):
        pool.scatter_gather({}, lambda n: n, timeout=1.0)


def test_context_manager_closes() -> None:
    with FanoutPool() as pool:
        assert pool.scatter_gather({"a": 1}, lambda n: n, timeout=LONG) == {"a": Ok(1)}
    with pytest.raises(RuntimeError):
        pool.scatter_gather({"a": 1}, lambda n: n, timeout=1.0)
