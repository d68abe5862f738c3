"""Per-call routing through ``App`` on every backend: each call reaches its own cell."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from cellgate import (
    App,
    CellMapping,
    CellNotFound,
    CellTimeout,
    CellUnavailable,
    Failed,
    Ok,
    RequestContext,
    TimedOut,
    UntargetedContext,
    load_settings,
)
from cellgate.apidb.mappings import create_cell, delete_cell, map_cell0
from cellgate.apidb.updates import update_cell
from cellgate.celldb import queries
from cellgate.celldb.schema import InstanceRow
from cellgate.errors import Hint
from cellgate.keyset import SortKey
from cellgate.migrations.runner import MigrationLine, upgrade
from cellgate.sql.api_database import ApiDatabase
from cellgate.sql.engines import make_engine
from cellgate.urls import DatabaseURL, TemplateDefaults
from tests.support import Server, blackhole

#: The context that cache lookups here are made with.
CTX = RequestContext(request_id="req-test")

DEFAULTS = TemplateDefaults(database=None, transport=None)
CELLS = ("alpha", "beta", "gamma")


@dataclass
class Cells:
    app: App
    urls: dict[str, DatabaseURL]
    server: Server
    api_url: DatabaseURL


def _migrated(url: DatabaseURL, line: MigrationLine) -> DatabaseURL:
    engine = make_engine(url, connect_timeout=5, query_timeout=30, create_missing=True)
    upgrade(engine, line)
    engine.dispose()
    return url


def _config(tmp_path: Path, api_url: DatabaseURL, **cells: str) -> Path:
    conf = tmp_path / "app.conf"
    extra = "".join(f"{k} = {v}\n" for k, v in cells.items())
    conf.write_text(
        f"[api_database]\nconnection = {api_url.render(hide_password=False)}\n"
        f"[database]\nconnect_timeout = 2\nquery_timeout = 5\n[cells]\n{extra}",
        encoding="utf-8",
    )
    return conf


@pytest.fixture
def cells(server: Server, tmp_path: Path) -> Iterator[Cells]:
    yield from _cells(server, tmp_path)


@pytest.fixture
def network_cells(network_server: Server, tmp_path: Path) -> Iterator[Cells]:
    yield from _cells(network_server, tmp_path)


def _cells(server: Server, tmp_path: Path) -> Iterator[Cells]:
    api_url = _migrated(server.new_database(), MigrationLine.API)
    urls = {name: _migrated(server.new_database(), MigrationLine.CELL) for name in CELLS}
    api = ApiDatabase(load_settings(_config(tmp_path, api_url)).api_database)
    with api.session() as s:
        for name, url in urls.items():
            create_cell(
                s,
                name=name,
                transport_url=f"memory://{name}",
                database_connection=url.render(hide_password=False),
                defaults=DEFAULTS,
            )
        cell0_url = _migrated(server.new_database(), MigrationLine.CELL)  # its own: no sharing
        map_cell0(s, database_connection=cell0_url.render(hide_password=False), defaults=DEFAULTS)
    api.close()
    app = App(load_settings(_config(tmp_path, api_url, max_engines="8")))
    yield Cells(app, urls, server, api_url)
    app.close()


def _add_instance(app: App, ctx: RequestContext, name: str) -> str:
    instance_uuid = str(uuid.uuid4())
    with app.db.session(ctx) as s:
        s.add(InstanceRow(uuid=instance_uuid, name=name, project_id="p1", vm_state="active"))
    return instance_uuid


def _names(app: App, ctx: RequestContext) -> list[str]:
    with app.db.session(ctx) as s:
        return sorted(s.scalars(select(InstanceRow.name)).all())


def test_each_call_reaches_the_targeted_cell_only(cells: Cells) -> None:
    app = cells.app
    ctx = RequestContext(project_id="p1")
    for name in CELLS:
        with app.target_cell(ctx, name) as cctx:
            _add_instance(app, cctx, f"vm-in-{name}")
    for name in CELLS:
        with app.target_cell(ctx, name) as cctx:
            assert _names(app, cctx) == [f"vm-in-{name}"]


def test_target_cell_yields_a_copy(cells: Cells) -> None:
    ctx = RequestContext(project_id="p1")
    with cells.app.target_cell(ctx, "beta") as cctx:
        assert cctx.cell is not None and cctx.cell.name == "beta"
        assert cctx.request_id == ctx.request_id
    assert ctx.cell is None


def test_untargeted_context_never_falls_back(cells: Cells) -> None:
    with (
        pytest.raises(UntargetedContext, match="needs a target cell") as info,
        cells.app.db.session(RequestContext()),
    ):
        pass
    # The advice is a hint key now; str() is the plain message (issue 11 part 4).
    assert info.value.hint is Hint.TARGET_CELL


def test_updated_mapping_takes_effect_without_restart(cells: Cells, tmp_path: Path) -> None:
    app = cells.app
    ctx = RequestContext()
    with app.target_cell(ctx, "gamma") as cctx:
        _add_instance(app, cctx, "old-home")
    moved = _migrated(cells.server.new_database(), MigrationLine.CELL)
    api = ApiDatabase(load_settings(_config(tmp_path, cells.api_url)).api_database)
    with api.session() as s:  # another process's write
        update_cell(
            s, "gamma", database_connection=moved.render(hide_password=False), defaults=DEFAULTS
        )
    api.close()
    app.cells.invalidate()  # what SIGHUP or the TTL does
    with app.target_cell(ctx, "gamma") as cctx:
        assert _names(app, cctx) == []
        _add_instance(app, cctx, "new-home")
        assert _names(app, cctx) == ["new-home"]


def test_scatter_gather_skips_cell0_and_disabled_unless_asked(
    cells: Cells, tmp_path: Path
) -> None:
    app = cells.app
    api = ApiDatabase(load_settings(_config(tmp_path, cells.api_url)).api_database)
    with api.session() as s:
        update_cell(s, "gamma", disabled=True, defaults=DEFAULTS)
    api.close()
    app.cells.invalidate()

    def count(cctx: RequestContext) -> int:
        with app.db.session(cctx) as s:
            return s.scalar(select(func.count()).select_from(InstanceRow)) or 0

    results = app.scatter_gather(RequestContext(), None, count, timeout=10)
    assert {app.cells.get(CTX, u).name for u in results} == {"alpha", "beta"}
    assert all(isinstance(r, Ok) and r.value == 0 for r in results.values())
    everything = app.scatter_gather(
        RequestContext(), None, count, timeout=10, include_disabled=True, include_cell0=True
    )
    assert {app.cells.get(CTX, u).name for u in everything} == {"alpha", "beta", "gamma", "cell0"}


def test_scatter_gather_takes_names_and_uuids_and_refuses_the_rest_typed(
    cells: Cells,
) -> None:
    """Issue 13.10: a name gave a raw AttributeError; now it is resolved, or a typed error."""
    app = cells.app
    beta = app.cells.get(CTX, "beta")

    def name(cctx: RequestContext) -> str | None:
        assert cctx.cell is not None
        return cctx.cell.name

    results = app.scatter_gather(CTX, ["alpha", beta.uuid, app.cells.get(CTX, "gamma")], name)
    assert sorted(r.value for r in results.values() if isinstance(r, Ok)) == [
        "alpha",
        "beta",
        "gamma",
    ]
    assert beta.uuid in results
    with pytest.raises(CellNotFound):
        app.scatter_gather(CTX, ["alpha", "nope"], name)
    with pytest.raises(TypeError, match="not one str"):
        app.scatter_gather(CTX, "alpha", name)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not int"):
        app.scatter_gather(CTX, [42], name)  # type: ignore[list-item]
    listing = app.list_across_cells(
        CTX,
        lambda cctx, size, after: [],
        values=lambda row: (row,),
        sort=[SortKey("uuid")],
        limit=5,
        cells=["alpha", beta.uuid],
    )
    assert listing.asked == {app.cells.get(CTX, "alpha").uuid, beta.uuid}


def test_cell_queries_leave_soft_deleted_rows_out_unless_asked(cells: Cells) -> None:
    """Issue 13.10: the default is the safe one; deleted rows are an explicit opt-in."""
    app = cells.app
    with app.target_cell(CTX, "alpha") as cctx:
        kept = _add_instance(app, cctx, "kept")
        gone = _add_instance(app, cctx, "gone")
        with app.db.session(cctx) as s:
            assert queries.soft_delete_instance(s, gone)
        with app.db.session(cctx) as s:
            keys = queries.with_tiebreak([SortKey("name")])
            listed = queries.list_instances(s, project_id=None, keys=keys, limit=10)
            assert [i.uuid for i in listed] == [kept]
            assert queries.count_instances(s) == 1
            assert queries.get_instance(s, gone, project_id=None) is None
            assert sorted(s.scalars(queries.select_instances(InstanceRow.name))) == ["kept"]

            everything = queries.list_instances(
                s, project_id=None, keys=keys, limit=10, include_deleted=True
            )
            assert [i.name for i in everything] == ["gone", "kept"]
            assert queries.count_instances(s, include_deleted=True) == 2
            found = queries.get_instance(s, gone, project_id=None, include_deleted=True)
            assert found is not None and found.vm_state == "deleted"
            names = s.scalars(queries.select_instances(InstanceRow.name, include_deleted=True))
            assert sorted(names) == ["gone", "kept"]


def test_dead_and_hung_cells_cost_only_their_deadline(cells: Cells, tmp_path: Path) -> None:
    app = cells.app
    api = ApiDatabase(load_settings(_config(tmp_path, cells.api_url)).api_database)
    release = threading.Event()
    with api.session() as s:
        kind = cells.urls["alpha"].sqlalchemy_url.drivername
        dead = (
            "sqlite:////nonexistent-dir/x.db"
            if kind.startswith("sqlite")
            else (f"{kind}://u:hunter2pw@127.0.0.1:1/x")
        )
        update_cell(s, "beta", database_connection=dead, defaults=DEFAULTS)
    api.close()
    app.cells.invalidate()

    def probe(cctx: RequestContext) -> str:
        assert cctx.cell is not None
        if cctx.cell.name == "gamma":
            release.wait()  # a cell that does not answer before the deadline
            return "late"
        with app.db.session(cctx) as s:
            return str(s.execute(text("SELECT 1")).scalar())

    started = time.monotonic()
    try:
        results = app.scatter_gather(RequestContext(), None, probe, timeout=3)
    finally:
        release.set()
    elapsed = time.monotonic() - started
    by_name = {app.cells.get(CTX, u).name: r for u, r in results.items()}
    assert by_name["alpha"] == Ok("1")
    assert isinstance(by_name["beta"], Failed)
    assert isinstance(by_name["beta"].error, CellUnavailable)
    assert "hunter2pw" not in str(by_name["beta"].error)
    assert isinstance(by_name["gamma"], TimedOut)
    assert elapsed < 3 + 2  # the deadline, plus slack for a loaded machine


def test_engines_are_created_once_per_url_under_concurrency(cells: Cells) -> None:
    app = cells.app
    ctx = RequestContext()
    barrier = threading.Barrier(12)
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        name = CELLS[i % len(CELLS)]
        try:
            barrier.wait()
            with app.target_cell(ctx, name) as cctx:
                _add_instance(app, cctx, f"{name}-{i}")
        except BaseException as exc:  # collected and re-checked below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert app.engines.created == len(CELLS)
    for name in CELLS:
        with app.target_cell(ctx, name) as cctx:
            assert len(_names(app, cctx)) == 4
            assert all(n.startswith(name) for n in _names(app, cctx))


def test_deleted_cell_stops_resolving(cells: Cells, tmp_path: Path) -> None:
    app = cells.app
    assert app.cells.get(CTX, "beta").name == "beta"
    api = ApiDatabase(load_settings(_config(tmp_path, cells.api_url)).api_database)
    with api.session() as s:
        delete_cell(s, "beta")
    api.close()
    app.cells.invalidate()
    with pytest.raises(Exception, match="no cell named"):
        app.cells.get(CTX, "beta")


def test_new_cell_resolves_on_a_miss_without_invalidate(cells: Cells, tmp_path: Path) -> None:
    app = cells.app
    before = app.cells.generation
    app.cells.get(CTX, "alpha")
    api = ApiDatabase(load_settings(_config(tmp_path, cells.api_url)).api_database)
    url = _migrated(cells.server.new_database(), MigrationLine.CELL)
    with api.session() as s:
        created: CellMapping = create_cell(
            s,
            name="delta",
            transport_url="memory://d",
            database_connection=url.render(hide_password=False),
            defaults=DEFAULTS,
        )
    api.close()
    assert app.cells.get(CTX, "delta").uuid == created.uuid
    assert app.cells.generation > before


def test_blackholed_database_times_out_at_its_connect_timeout(
    network_cells: Cells, tmp_path: Path
) -> None:
    cells = network_cells
    app = cells.app
    kind = cells.urls["alpha"].sqlalchemy_url.drivername
    with blackhole() as port:
        api = ApiDatabase(load_settings(_config(tmp_path, cells.api_url)).api_database)
        with api.session() as s:
            update_cell(
                s,
                "beta",
                database_connection=f"{kind}://u:pw@127.0.0.1:{port}/x",
                defaults=DEFAULTS,
            )
        api.close()
        app.cells.invalidate()

        def probe(cctx: RequestContext) -> int:
            with app.db.session(cctx) as s:
                return int(s.execute(text("SELECT 1")).scalar() or 0)

        started = time.monotonic()
        results = app.scatter_gather(RequestContext(), None, probe, timeout=20)
        elapsed = time.monotonic() - started
    by_name = {app.cells.get(CTX, u).name: r for u, r in results.items()}
    assert by_name["alpha"] == Ok(1) and by_name["gamma"] == Ok(1)
    beta = by_name["beta"]
    assert isinstance(beta, Failed) and isinstance(beta.error, CellTimeout), beta
    assert elapsed < 20  # connect_timeout (2 s) ended it, not the scatter deadline
