"""Unit tests for :mod:`cellgate.routing.breaker`: the state machine, on a fake clock.

Nothing here sleeps: the registry reads an injected clock, which the tests
move by hand. Failures are real error objects of the kinds the seams raise
(``CellTimeout``, a driver error PyMySQL would give), and application errors
are the ones the service really sees (not found, a conflict, a remote error).
"""

from __future__ import annotations

import threading
from pathlib import Path

import pymysql
import pytest
import sqlalchemy.exc

from cellgate.apidb.mappings import CellMapping
from cellgate.config import (
    DEFAULT_BREAKER_COOLDOWN,
    DEFAULT_BREAKER_THRESHOLD,
    Settings,
    load_settings,
    sample_config,
)
from cellgate.errors import (
    CellTimeout,
    CellUnavailable,
    ConfigError,
    InstanceNotFound,
    RemoteError,
    RPCTimeout,
)
from cellgate.routing.breaker import (
    BreakerRegistry,
    BreakerState,
    BreakerStatus,
    is_breaker_failure,
)
from cellgate.urls import StoredURL

SECRET = "s3cr3t-pw"
COOLDOWN = 30.0


class FakeClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def cell(name: str = "cell2", uuid: str = "2b2b2b2b-0000-4000-8000-000000000002") -> CellMapping:
    return CellMapping(
        uuid=uuid,
        name=name,
        transport_url=StoredURL(f"rabbit://u:{SECRET}@127.0.0.1:5672/{name}"),
        database_connection=StoredURL(f"mysql+pymysql://u:{SECRET}@127.0.0.1/{name}"),
        disabled=False,
        created_at=None,
        updated_at=None,
    )


def outage() -> CellTimeout:
    # A real seam message: the URL in it is masked, as translate_errors builds it.
    return CellTimeout(
        component="cell cell2 database mysql+pymysql://u:***@127.0.0.1/cell2",
        reason="Lost connection to MySQL server during query (timed out)",
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def breakers(clock: FakeClock) -> BreakerRegistry:
    return BreakerRegistry(threshold=3, cooldown=COOLDOWN, clock=clock)


def fail(breakers: BreakerRegistry, target: CellMapping, times: int = 1) -> None:
    for _ in range(times):
        breakers.admit(target).failed(outage())


def test_a_new_cell_is_closed(breakers: BreakerRegistry) -> None:
    assert breakers.status(cell().uuid) == BreakerStatus(BreakerState.CLOSED)
    assert breakers.status(cell().uuid).to_dict() == {
        "state": "closed",
        "consecutive_failures": 0,
        "retry_after": None,
    }


def test_threshold_consecutive_failures_open_it(breakers: BreakerRegistry) -> None:
    target = cell()
    fail(breakers, target, 2)
    assert breakers.status(target.uuid).state is BreakerState.CLOSED
    assert breakers.status(target.uuid).consecutive_failures == 2
    fail(breakers, target)
    status = breakers.status(target.uuid)
    assert status.state is BreakerState.OPEN
    assert (status.consecutive_failures, status.trips) == (3, 1)
    assert status.retry_after == COOLDOWN
    assert status.last_error == "CellTimeout"
    assert status.to_dict() == {"state": "open", "consecutive_failures": 3, "retry_after": 30.0}


def test_an_open_breaker_fails_fast_with_a_one_line_message(
    breakers: BreakerRegistry, clock: FakeClock
) -> None:
    target = cell()
    fail(breakers, target, 3)
    clock.advance(COOLDOWN - 0.001)  # just short of the cool-down: still skipped
    with pytest.raises(CellUnavailable) as caught:
        breakers.admit(target)
    message = str(caught.value)
    assert message == (
        "cell cell2: skipped: 3 consecutive failures, retrying after 30s; last error CellTimeout"
    )
    assert "\n" not in message and SECRET not in message and "://" not in message
    assert breakers.status(target.uuid).retry_after == pytest.approx(0.001)


def test_a_success_resets_the_count(breakers: BreakerRegistry) -> None:
    target = cell()
    for _ in range(5):
        fail(breakers, target, 2)
        breakers.admit(target).succeeded()
    status = breakers.status(target.uuid)
    assert (status.state, status.consecutive_failures, status.trips) == (BreakerState.CLOSED, 0, 0)


@pytest.mark.parametrize(
    "error",
    [
        InstanceNotFound(uuid="0000"),
        RemoteError(exc_type="InvalidState", message="already stopped", method="act"),
        RPCTimeout(method="act", target="cell cell2 topic 'compute'", timeout=1.0),
        sqlalchemy.exc.IntegrityError(
            "INSERT", {}, pymysql.err.IntegrityError(1062, "Duplicate entry")
        ),
        sqlalchemy.exc.ProgrammingError("SELECT", {}, pymysql.err.ProgrammingError(1146, "x")),
        ValueError("a bug in the caller"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_application_errors_never_trip_it(breakers: BreakerRegistry, error: Exception) -> None:
    target = cell()
    assert not is_breaker_failure(error)
    for _ in range(10):
        with pytest.raises(type(error)), breakers.guard(target):
            raise error
    assert breakers.status(target.uuid) == BreakerStatus(BreakerState.CLOSED, label="cell2")


def test_application_errors_neither_count_nor_reset(breakers: BreakerRegistry) -> None:
    target = cell()
    fail(breakers, target, 2)
    breakers.admit(target).settle(InstanceNotFound(uuid="0000"))
    assert breakers.status(target.uuid).consecutive_failures == 2
    fail(breakers, target)
    assert breakers.status(target.uuid).state is BreakerState.OPEN


def test_raw_driver_outages_count(breakers: BreakerRegistry) -> None:
    refused = sqlalchemy.exc.OperationalError(
        "SELECT 1", {}, pymysql.err.OperationalError(2003, "Can't connect to MySQL server")
    )
    assert is_breaker_failure(refused)
    target = cell()
    for _ in range(3):
        with pytest.raises(sqlalchemy.exc.OperationalError), breakers.guard(target):
            raise refused
    status = breakers.status(target.uuid)
    assert (status.state, status.last_error) == (BreakerState.OPEN, "OperationalError")


def test_after_the_cooldown_one_probe_recovers_it(
    breakers: BreakerRegistry, clock: FakeClock
) -> None:
    target = cell()
    fail(breakers, target, 3)
    clock.advance(COOLDOWN)
    assert breakers.status(target.uuid).retry_after == 0.0  # the next call probes
    probe = breakers.admit(target)
    assert probe.probe
    assert breakers.status(target.uuid).state is BreakerState.HALF_OPEN
    with pytest.raises(CellUnavailable, match="a probe is in progress; last error CellTimeout"):
        breakers.admit(target)
    probe.succeeded()
    status = breakers.status(target.uuid)
    assert (status.state, status.consecutive_failures, status.retry_after) == (
        BreakerState.CLOSED,
        0,
        None,
    )
    assert not breakers.admit(target).probe


def test_a_failed_probe_opens_it_for_another_cooldown(
    breakers: BreakerRegistry, clock: FakeClock
) -> None:
    target = cell()
    fail(breakers, target, 3)
    clock.advance(COOLDOWN + 5)
    breakers.admit(target).failed(outage())
    status = breakers.status(target.uuid)
    assert (status.state, status.consecutive_failures, status.trips) == (BreakerState.OPEN, 4, 2)
    assert status.retry_after == COOLDOWN  # counted from the failed probe
    with pytest.raises(CellUnavailable, match="skipped: 4 consecutive failures"):
        breakers.admit(target)


def test_an_abandoned_probe_hands_the_probe_on(
    breakers: BreakerRegistry, clock: FakeClock
) -> None:
    target = cell()
    fail(breakers, target, 3)
    clock.advance(COOLDOWN)
    with pytest.raises(KeyboardInterrupt), breakers.guard(target):
        raise KeyboardInterrupt
    nxt = breakers.admit(target)
    assert nxt.probe and breakers.status(target.uuid).consecutive_failures == 3


def test_exactly_one_probe_among_concurrent_callers(
    breakers: BreakerRegistry, clock: FakeClock
) -> None:
    target = cell()
    fail(breakers, target, 3)
    clock.advance(COOLDOWN)
    callers = 16
    start = threading.Barrier(callers)
    probes: list[object] = []
    refused: list[CellUnavailable] = []
    lock = threading.Lock()

    def call() -> None:
        start.wait(timeout=10)
        try:
            attempt = breakers.admit(target)
        except CellUnavailable as exc:
            with lock:
                refused.append(exc)
        else:
            with lock:
                probes.append(attempt)

    threads = [threading.Thread(target=call) for _ in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert len(probes) == 1 and len(refused) == callers - 1
    assert all("a probe is in progress" in str(e) for e in refused)


def test_an_outcome_from_before_a_change_of_state_is_ignored(
    breakers: BreakerRegistry, clock: FakeClock
) -> None:
    target = cell()
    slow = breakers.admit(target)  # admitted while closed; it hangs through what follows
    fail(breakers, target, 3)
    slow.succeeded()  # a stale success must not close an open breaker
    assert breakers.status(target.uuid).state is BreakerState.OPEN
    clock.advance(COOLDOWN)
    probe = breakers.admit(target)
    slow.failed(outage())  # settled already: ignored
    probe.succeeded()
    assert breakers.status(target.uuid).state is BreakerState.CLOSED


def test_breakers_are_per_cell(breakers: BreakerRegistry) -> None:
    down, up = cell("cell2"), cell("cell1", uuid="1a1a1a1a-0000-4000-8000-000000000001")
    fail(breakers, down, 3)
    breakers.admit(up).succeeded()
    assert breakers.status(up.uuid).state is BreakerState.CLOSED
    assert {s.label: s.state for s in breakers.statuses().values()} == {
        "cell2": BreakerState.OPEN,
        "cell1": BreakerState.CLOSED,
    }


def test_threshold_zero_disables_it(clock: FakeClock) -> None:
    breakers = BreakerRegistry(threshold=0, cooldown=COOLDOWN, clock=clock)
    target = cell()
    assert not breakers.enabled
    fail(breakers, target, 100)
    breakers.admit(target)  # never refused
    assert breakers.status(target.uuid).state is BreakerState.CLOSED
    assert breakers.statuses() == {}


def test_the_registry_is_bounded_but_keeps_open_breakers(clock: FakeClock) -> None:
    breakers = BreakerRegistry(threshold=1, cooldown=COOLDOWN, clock=clock, max_cells=2)
    cells = [cell(f"c{i}", uuid=f"{i:08d}-0000-4000-8000-000000000000") for i in range(4)]
    fail(breakers, cells[0])  # open: must survive
    for c in cells[1:]:
        breakers.admit(c).succeeded()
    kept = breakers.statuses()
    assert cells[0].uuid in kept and kept[cells[0].uuid].state is BreakerState.OPEN
    assert len(kept) == 2


def test_after_fork_a_probe_in_flight_is_released(
    breakers: BreakerRegistry, clock: FakeClock
) -> None:
    target = cell()
    fail(breakers, target, 3)
    clock.advance(COOLDOWN)
    breakers.admit(target)  # the probe's thread does not exist in a forked child
    breakers._after_fork_in_child()
    assert breakers.admit(target).probe


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"threshold": -1}, "threshold"), ({"cooldown": 0}, "cooldown"), ({"max_cells": 0}, "max")],
)
def test_invalid_arguments_are_refused(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        BreakerRegistry(**kwargs)  # type: ignore[arg-type]


# --------------------------------------------------------------------------
# [cells] breaker_threshold, breaker_cooldown
# --------------------------------------------------------------------------


def _load(tmp_path: Path, body: str) -> Settings:
    conf = tmp_path / "c.conf"
    conf.write_text(body, encoding="utf-8")
    return load_settings(conf, {"XDG_DATA_HOME": str(tmp_path / "x"), "HOME": str(tmp_path)})


def test_settings_defaults_and_values(tmp_path: Path) -> None:
    default = load_settings(None, {"XDG_DATA_HOME": str(tmp_path), "HOME": str(tmp_path)}).cells
    assert (
        (default.breaker_threshold, default.breaker_cooldown)
        == (
            DEFAULT_BREAKER_THRESHOLD,
            DEFAULT_BREAKER_COOLDOWN,
        )
        == (3, 30.0)
    )
    cells = _load(tmp_path, "[cells]\nbreaker_threshold = 5\nbreaker_cooldown = 0.3\n").cells
    assert (cells.breaker_threshold, cells.breaker_cooldown) == (5, 0.3)
    off = _load(tmp_path, "[cells]\nbreaker_threshold = 0\n").cells
    assert off.breaker_threshold == 0


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("breaker_threshold", "-1", "must be an integer of at least 0"),
        ("breaker_threshold", "two", "must be an integer of at least 0"),
        ("breaker_cooldown", "-5", "must be a positive number"),
        ("breaker_cooldown", "0", "must be a positive number"),
    ],
)
def test_invalid_settings_are_config_errors(
    tmp_path: Path, option: str, value: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=rf"\[cells\] {option} {message}"):
        _load(tmp_path, f"[cells]\n{option} = {value}\n")


def test_config_sample_shows_both_settings() -> None:
    text = sample_config()
    section = text.split("[cells]", 1)[1].split("\n[", 1)[0]
    assert "#breaker_threshold = 3\n" in section
    assert "#breaker_cooldown = 30.0\n" in section
