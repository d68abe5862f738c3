"""MappingCache and EngineRegistry on SQLite: TTL, generation, misses, bounds."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import event, text

from cellgate import App, RequestContext, load_settings
from cellgate.apidb import instances as mapping_db
from cellgate.apidb.database import ApiDatabase
from cellgate.apidb.mappings import create_cell, delete_cell, get_cell
from cellgate.apidb.updates import update_cell
from cellgate.config import ApiDatabaseSettings
from cellgate.errors import BackendUnavailable, CellNotFound
from cellgate.manage.migrate import sync_api
from cellgate.routing.cache import MappingCache
from cellgate.routing.connections import EngineRegistry
from cellgate.routing.locator import InstanceLocator
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
    sync_api(db)
    yield db
    db.close()


def _create(api: ApiDatabase, name: str) -> str:
    with api.session() as s:
        return create_cell(
            s,
            name=name,
            transport_url=f"memory://{name}",
            database_connection=f"sqlite:///{name}.db",
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
    cache.get(CTX, "c1")
    selects = [q for q in queries if q.lstrip().upper().startswith("SELECT")]
    assert len(selects) == 1 and "mapping_generation" in selects[0]


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
    assert cache.get(CTX, "c1").disabled is True
    assert cache.generation == generation + 1
    assert cache.list(CTX) == [] and len(cache.list(CTX, include_disabled=True)) == 1


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
    api: ApiDatabase, tmp_path: Path
) -> None:
    _create(api, "c4")
    clock = Clock()
    cache = MappingCache(api, ttl=30, clock=clock)
    cache.get(CTX, "c4")
    api.close()
    (tmp_path / "api.sqlite").rename(tmp_path / "gone.sqlite")
    (tmp_path / "api.sqlite").mkdir()  # now unopenable
    clock.now += 31
    assert cache.get(CTX, "c4").name == "c4"
    cache.invalidate()
    with pytest.raises(BackendUnavailable):
        cache.get(CTX, "c4")


def test_only_one_refresh_is_in_flight(api: ApiDatabase) -> None:
    _create(api, "c5")
    clock = Clock()
    cache = MappingCache(api, ttl=30, clock=clock)
    cache.get(CTX, "c5")
    clock.now += 31
    gate = threading.Event()
    entered = threading.Event()

    def slow(*_a: object) -> None:
        entered.set()
        gate.wait(10)

    event.listen(api.engine, "before_cursor_execute", slow)
    refresher = threading.Thread(target=cache.get, args=(CTX, "c5"))
    refresher.start()
    assert entered.wait(10)
    # While one thread refreshes, others answer from the current snapshot.
    assert cache.get(CTX, "c5").name == "c5"
    gate.set()
    refresher.join(10)
    event.remove(api.engine, "before_cursor_execute", slow)


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


def test_sighup_drops_the_cached_mappings(api: ApiDatabase, tmp_path: Path) -> None:
    _create(api, "hup")
    conf = tmp_path / "hup.conf"
    conf.write_text(f"[api_database]\nconnection = sqlite:///{tmp_path}/api.sqlite\n")
    previous = signal.getsignal(signal.SIGHUP)
    with App(load_settings(conf)) as app:
        try:
            app.install_sighup_handler()
            assert app.cells.get(CTX, "hup").name == "hup"
            assert app.cells.generation >= 0
            os.kill(os.getpid(), signal.SIGHUP)
            assert app.cells.generation == -1  # nothing cached until the next lookup
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
