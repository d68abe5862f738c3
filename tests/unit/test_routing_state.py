"""MappingCache and EngineRegistry on SQLite: TTL, background refresh, generation, misses, bounds."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import event, text
from sqlalchemy.orm import Session

from cellgate import App, RequestContext, load_settings
from cellgate.apidb import instances as mapping_db
from cellgate.apidb.mappings import create_cell, delete_cell, get_cell
from cellgate.apidb.updates import update_cell
from cellgate.config import ApiDatabaseSettings
from cellgate.errors import BackendUnavailable, CellNotFound
from cellgate.routing.cache import MappingCache
from cellgate.routing.locator import InstanceLocator
from cellgate.sql.api_database import ApiDatabase
from cellgate.sql.registry import EngineRegistry
from cellgate.urls import DatabaseURL, TemplateDefaults

#: The context that cache lookups here are made with.
CTX = RequestContext(request_id="req-test")

DEFAULTS = TemplateDefaults(database=None, transport=None)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def api(tmp_path: Path) -> Iterator[ApiDatabase]:
    db = ApiDatabase(ApiDatabaseSettings(DatabaseURL.parse(f"sqlite:///{tmp_path}/api.sqlite")))
    db.upgrade()
    yield db
    db.close()


def _create(api: ApiDatabase, name: str) -> str:
    with api.session() as s:
        return create_cell(
            s,
            name=name,
            transport_url=f"memory://{name}",
            database_connection=f"sqlite:////cellgate-never-opened/{name}.db",
            defaults=DEFAULTS,
        ).uuid


def _count_queries(api: ApiDatabase) -> list[str]:
    seen: list[str] = []
    event.listen(
        api.engine, "before_cursor_execute", lambda _c, _cur, stmt, *_a: seen.append(stmt)
    )
    return seen


def test_hits_are_served_from_memory_until_the_ttl(api: ApiDatabase) -> None:
    uuid1 = _create(api, "c1")
    clock = Clock()
    cache = MappingCache(api, ttl=30, clock=clock)
    assert cache.get(CTX, "c1").uuid == uuid1
    queries = _count_queries(api)
    for _ in range(50):
        assert cache.get(CTX, uuid1).name == "c1"
        assert cache.get(CTX, "c1").uuid == uuid1
    assert queries == []
    assert cache.hits == 101  # the first lookup found it in the snapshot it loaded


def test_after_the_ttl_an_unchanged_generation_costs_one_small_read(api: ApiDatabase) -> None:
    _create(api, "c1")
    clock = Clock()
    cache = MappingCache(api, ttl=30, clock=clock)
    cache.get(CTX, "c1")
    queries = _count_queries(api)
    clock.now += 31
    assert cache.age == 31
    cache.get(CTX, "c1")
    assert cache.wait_refreshed(10)  # the re-check runs in the background
    selects = [q for q in queries if q.lstrip().upper().startswith("SELECT")]
    assert len(selects) == 1 and "mapping_generation" in selects[0]
    assert cache.age == 0 and not cache.refresh_failed  # confirmed: young again


def test_a_write_elsewhere_is_seen_after_the_ttl(api: ApiDatabase) -> None:
    _create(api, "c1")
    clock = Clock()
    cache = MappingCache(api, ttl=30, clock=clock)
    assert cache.generation == -1  # nothing loaded yet
    assert cache.get(CTX, "c1").disabled is False
    generation = cache.generation
    with api.session() as s:
        update_cell(s, "c1", disabled=True, defaults=DEFAULTS)
    assert cache.get(CTX, "c1").disabled is False  # within the TTL: the snapshot
    clock.now += 31
    # Past the TTL: the snapshot at once, while one refresh runs in the background.
    assert cache.get(CTX, "c1").disabled is False
    assert cache.wait_refreshed(10)
    assert cache.get(CTX, "c1").disabled is True
    assert cache.generation == generation + 1
    assert cache.list(CTX) == [] and len(cache.list(CTX, include_disabled=True)) == 1


def test_revalidate_reloads_everything_in_the_background_while_serving_the_snapshot(
    api: ApiDatabase,
) -> None:
    uuid1 = _create(api, "c1")
    cache = MappingCache(api, ttl=3600, clock=Clock())
    assert cache.get(CTX, "c1").disabled is False
    # A change that did not move the generation (raw SQL, as a repair would be):
    # a TTL refresh would keep the snapshot; a SIGHUP's full reload must not.
    with api.session() as s:
        s.execute(
            text("UPDATE cell_mapping SET disabled = :t WHERE uuid = :u"), {"t": True, "u": uuid1}
        )
    reads = threading.Event()
    release = threading.Event()

    def slow_read(*_args: object) -> None:
        if threading.current_thread().name.startswith("cellgate-mapping"):
            reads.set()
            release.wait(10)

    event.listen(api.engine, "before_cursor_execute", slow_read)
    cache.revalidate()
    assert reads.wait(10), "revalidate() started no background read"
    # The reload is stuck in the API database; lookups answer from the snapshot meanwhile.
    assert cache.get(CTX, "c1").disabled is False
    assert cache.get(CTX, uuid1).name == "c1"
    release.set()
    assert cache.wait_refreshed(10)
    assert cache.get(CTX, "c1").disabled is True


def test_a_miss_reloads_once_then_raises(api: ApiDatabase) -> None:
    cache = MappingCache(api, ttl=3600, clock=Clock())
    assert cache.list(CTX) == []
    uuid2 = _create(api, "c2")
    assert cache.get(CTX, "c2").uuid == uuid2  # a miss falls through to the database
    with pytest.raises(CellNotFound):
        cache.get(CTX, "nope")
    assert cache.misses == 2


def test_deleted_cell_stops_resolving_after_invalidate(api: ApiDatabase) -> None:
    _create(api, "c3")
    cache = MappingCache(api, ttl=3600, clock=Clock())
    cache.get(CTX, "c3")
    with api.session() as s:
        delete_cell(s, "c3")
    cache.invalidate()
    with pytest.raises(CellNotFound):
        cache.get(CTX, "c3")


def test_stale_snapshot_is_served_while_the_api_database_is_down(
    api: ApiDatabase, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    c4 = _create(api, "c4")
    clock = Clock()
    cache = MappingCache(api, ttl=30, clock=clock)
    cache.get(CTX, "c4")
    api.close()
    (tmp_path / "api.sqlite").rename(tmp_path / "gone.sqlite")
    (tmp_path / "api.sqlite").mkdir()  # now unopenable
    clock.now += 31
    with caplog.at_level(logging.DEBUG, "cellgate.routing.cache"):
        assert cache.get(CTX, "c4").name == "c4"
        assert cache.wait_refreshed(10)
        assert cache.refresh_failed and cache.age == 31
        assert cache.get(CTX, "c4").name == "c4"  # still served; no retry within a second
        assert cache.wait_refreshed(10) and len(_failures(caplog)) == 1
        for _ in range(3):  # retried once a second later, in the background; warned once
            clock.now += 1.5
            assert cache.get(CTX, c4).name == "c4"
            assert cache.wait_refreshed(10) and cache.refresh_failed
        assert len(_failures(caplog)) == 4
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1, [r.getMessage() for r in warnings]
        assert "refreshing them failed" in warnings[0].getMessage()
        assert "BackendUnavailable" not in warnings[0].getMessage()  # the error's own text
        clock.now += 31  # a TTL later, the next failure is a warning again
        cache.get(CTX, "c4")
        assert cache.wait_refreshed(10)
        assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 2

    # A change made during the outage is seen by the first refresh after it.
    moved = ApiDatabase(
        ApiDatabaseSettings(DatabaseURL.parse(f"sqlite:///{tmp_path}/gone.sqlite"))
    )
    with moved.session() as s:
        update_cell(s, "c4", disabled=True, defaults=DEFAULTS)
    moved.close()
    (tmp_path / "api.sqlite").rmdir()
    (tmp_path / "gone.sqlite").rename(tmp_path / "api.sqlite")
    clock.now += 1.5
    assert cache.get(CTX, "c4").disabled is False  # the old snapshot, at once
    assert cache.wait_refreshed(10)
    assert not cache.refresh_failed and cache.age == 0
    assert cache.get(CTX, "c4").disabled is True

    # With nothing to fall back on, the outage is raised (and a miss raises it too).
    (tmp_path / "api.sqlite").rename(tmp_path / "gone.sqlite")
    (tmp_path / "api.sqlite").mkdir()
    api.close()
    with pytest.raises(BackendUnavailable):
        cache.get(CTX, "no-such-cell")
    cache.invalidate()
    with pytest.raises(BackendUnavailable):
        cache.get(CTX, "c4")
    assert cache.refresh_failed and cache.age is None


def _failures(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The cache's log lines about failed background refreshes."""
    return [r.getMessage() for r in caplog.records if "refreshing" in r.getMessage()]


def _refreshing(cache: MappingCache) -> bool:
    return any(t.name == REFRESHER and t.is_alive() for t in threading.enumerate())


REFRESHER = "cellgate-mapping-refresh"


class Gate:
    """Holds each background refresh after its read, before it installs, until opened."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.entered = threading.Event()
        self.refreshes = 0
        event.listen(Session, "after_commit", self._hold)

    def _hold(self, _session: Session) -> None:
        if threading.current_thread().name == REFRESHER:
            self.refreshes += 1
            self.entered.set()
            self.open.wait(10)

    def remove(self) -> None:
        self.open.set()
        event.remove(Session, "after_commit", self._hold)


def test_after_the_ttl_no_lookup_waits_and_one_refresh_runs(api: ApiDatabase) -> None:
    c5 = _create(api, "c5")
    clock = Clock()
    cache = MappingCache(api, ttl=30, clock=clock)
    cache.get(CTX, "c5")
    with api.session() as s:
        update_cell(s, "c5", disabled=True, defaults=DEFAULTS)
    gate = Gate()
    try:
        clock.now += 31
        started = time.monotonic()
        assert cache.get(CTX, "c5").disabled is False
        assert gate.entered.wait(10)  # the refresh is in the API database, held there
        # Concurrent callers get the snapshot at once and start no second refresh.
        with ThreadPoolExecutor(8) as pool:
            found = list(pool.map(lambda _: cache.get(CTX, c5).name, range(200)))
        assert found == ["c5"] * 200 and len(cache.list(CTX, include_disabled=True)) == 1
        assert time.monotonic() - started < 5  # the held refresh waits up to 10 s
        assert gate.refreshes == 1 and not cache.wait_refreshed(0.01)
        gate.open.set()
        assert cache.wait_refreshed(10)
    finally:
        gate.remove()
    assert cache.get(CTX, "c5").disabled is True  # the change, picked up in the background
    assert gate.refreshes == 1 and not _refreshing(cache)


def test_invalidate_beats_a_refresh_in_flight(api: ApiDatabase) -> None:
    _create(api, "c6")
    clock = Clock()
    cache = MappingCache(api, ttl=30, clock=clock)
    cache.get(CTX, "c6")
    old = cache.generation
    gate = Gate()
    try:
        clock.now += 31
        cache.get(CTX, "c6")
        assert gate.entered.wait(10)  # it has read the old generation
        with api.session() as s:
            update_cell(s, "c6", disabled=True, defaults=DEFAULTS)
        cache.invalidate()  # what SIGHUP does
        gate.open.set()
        assert cache.wait_refreshed(10)
    finally:
        gate.remove()
    assert cache.generation == -1  # the refresh begun before invalidate() installed nothing
    assert cache.get(CTX, "c6").disabled is True  # a synchronous load
    assert cache.generation == old + 1


def test_close_stops_the_refresher(api: ApiDatabase) -> None:
    _create(api, "c7")
    clock = Clock()
    cache = MappingCache(api, ttl=30, clock=clock)
    cache.get(CTX, "c7")
    gate = Gate()
    try:
        clock.now += 31
        cache.get(CTX, "c7")
        assert gate.entered.wait(10)
        started = time.monotonic()
        cache.close()  # waits briefly, not for a hung refresh
        assert time.monotonic() - started < 5
        gate.open.set()
        assert cache.wait_refreshed(10)
    finally:
        gate.remove()
    assert cache.generation == -1 and not _refreshing(cache)
    with pytest.raises(RuntimeError, match="closed"):
        cache.get(CTX, "c7")
    assert gate.refreshes == 1 and not _refreshing(cache)


def test_after_fork_the_parents_refresh_is_forgotten(api: ApiDatabase) -> None:
    _create(api, "c8")
    clock = Clock()
    cache = MappingCache(api, ttl=30, clock=clock)
    cache.get(CTX, "c8")
    gate = Gate()
    try:
        clock.now += 31
        cache.get(CTX, "c8")
        assert gate.entered.wait(10)
        cache._after_fork_in_child()  # that refresh's thread does not exist in a child
        cache.get(CTX, "c8")  # so a lookup past the TTL starts one of its own
        deadline = time.monotonic() + 10
        while gate.refreshes < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert gate.refreshes == 2
    finally:
        gate.remove()
    for thread in threading.enumerate():
        if thread.name == REFRESHER:
            thread.join(10)


def test_engine_registry_is_bounded_and_keyed_by_url(tmp_path: Path) -> None:
    registry = EngineRegistry(max_engines=3, connect_timeout=1, query_timeout=1)
    urls = []
    for i in range(10):
        (tmp_path / f"c{i}.db").touch()
        urls.append(DatabaseURL.parse(f"sqlite:///{tmp_path}/c{i}.db"))
    for url in urls:
        with registry.get(url).connect() as conn:
            conn.execute(text("SELECT 1"))
    assert len(registry) == 3 and registry.created == 10 and registry.evicted == 7
    assert registry.get(urls[-1]) is registry.get(urls[-1])
    assert registry.created == 10
    registry.close()
    with pytest.raises(RuntimeError, match="closed"):
        registry.get(urls[0])


def test_engine_in_use_is_not_evicted(tmp_path: Path) -> None:
    registry = EngineRegistry(max_engines=1, connect_timeout=1, query_timeout=1)
    for name in ("a", "b"):
        (tmp_path / f"{name}.db").touch()
    a = DatabaseURL.parse(f"sqlite:///{tmp_path}/a.db")
    b = DatabaseURL.parse(f"sqlite:///{tmp_path}/b.db")
    engine_a = registry.get(a)
    with engine_a.connect():
        registry.get(b)
        assert len(registry) == 2  # a is busy: over the bound until it is idle
        assert registry.checked_out() == 1
    registry.get(b)
    registry.close()


def test_sighup_reloads_the_mappings_in_the_background(api: ApiDatabase, tmp_path: Path) -> None:
    uuid = _create(api, "hup")
    conf = tmp_path / "hup.conf"
    conf.write_text(f"[api_database]\nconnection = sqlite:///{tmp_path}/api.sqlite\n")
    previous = signal.getsignal(signal.SIGHUP)
    with App(load_settings(conf)) as app:
        try:
            app.install_sighup_handler()
            assert app.cells.get(CTX, "hup").name == "hup"
            generation = app.cells.generation
            assert generation >= 0
            with api.session() as s:  # renamed without moving the generation
                s.execute(
                    text("UPDATE cell_mapping SET name = 'hup2' WHERE uuid = :u"), {"u": uuid}
                )
            os.kill(os.getpid(), signal.SIGHUP)
            assert app.cells.generation == generation  # the snapshot is kept meanwhile
            assert app.cells.wait_refreshed(10)
            assert app.cells.get(CTX, uuid).name == "hup2"
        finally:
            signal.signal(signal.SIGHUP, previous)


def test_instance_locator_caches_forgets_and_is_bounded(api: ApiDatabase) -> None:
    _create(api, "loc")
    uuids = [f"00000000-0000-4000-8000-00000000000{i}" for i in range(5)]
    with api.session() as s:
        cell = get_cell(s, "loc")
        for u in uuids:
            mapping_db.add_mapping(s, instance_uuid=u, cell=cell, project_id="p", user_id=None)
    locator = InstanceLocator(api, max_entries=3)
    assert locator.locate(uuids[0]) is not None and locator.misses == 1
    queries = _count_queries(api)
    location = locator.locate(uuids[0])
    assert location is not None and location.cell_uuid == cell.uuid and queries == []
    assert locator.hits == 1
    for u in uuids:
        locator.locate(u)
    assert len(locator) == 3  # bounded, least recently used out
    with api.session() as s:
        mapping_db.queue_for_delete(s, uuids[4])
    assert locator.locate(uuids[4]) is not None  # still cached...
    locator.forget(uuids[4])
    assert locator.locate(uuids[4]) is None  # ...until forgotten: then the database says no
    assert locator.locate("00000000-0000-4000-8000-0000000000ff") is None
