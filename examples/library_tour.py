"""A tour of cellgate's library API, on SQLite files in a temporary directory.

Run it with the project's interpreter, from any directory::

    .venv/bin/python examples/library_tour.py

It needs no servers: the API database and the cell databases are SQLite files
and the cells' transports are ``memory://``. The set-up does what an operator
does with the CLI, through ``cellgate.admin`` (one function per CLI verb);
everything in it uses only names exported by ``cellgate`` itself. ``tests/functional/test_examples.py``
runs this script, so the snippets in ``docs/library.md`` that come from here
keep working.
"""

from __future__ import annotations

import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from _tour import say
from sqlalchemy import text

from cellgate import (
    App,
    CellgateError,
    CellResult,
    CellUnavailable,
    Failed,
    Ok,
    RequestContext,
    TimedOut,
    UntargetedContext,
    admin,
    load_settings,
)
from cellgate.celldb import queries
from cellgate.celldb.schema import InstanceRow

#: The context that cache lookups here are made with.
CTX = RequestContext(request_id="req-test")

CELLS = ("cell1", "cell2", "cell3")
HUNG_CELL = "cell3"
DEADLINE = 1.0  # seconds a scatter-gather waits in this tour


def write_config(tmp: Path) -> Path:
    config = tmp / "cellgate.conf"
    config.write_text(
        "[DEFAULT]\n"
        f"state_path = {tmp / 'state'}\n"
        "transport_url = memory://local\n"
        "[api_database]\n"
        f"connection = sqlite:///{tmp / 'api.sqlite'}\n"
        "[database]\n"
        f"connection = sqlite:///{tmp / 'cellgate.sqlite'}\n"
        "connect_timeout = 2\n"
        "query_timeout = 5\n"
        "[cells]\n"
        "cache_ttl = 60\n"
        "scatter_timeout = 5\n",
        encoding="utf-8",
    )
    return config


def set_up(tmp: Path, app: App) -> None:
    admin.sync_api(app)  # cellgate api-db sync
    admin.map_cell0(app)  # cell0's database: cellgate_cell0.sqlite
    for name in CELLS:
        admin.create_cell(
            app,
            name=name,
            transport_url=f"memory://{name}",
            database_connection=f"sqlite:///{tmp / name}.sqlite",
        )
    for outcome in admin.sync_cells(app, all_cells=True):  # cellgate db sync --all-cells
        assert isinstance(outcome.result, Ok), outcome.to_dict()


def add_instance(app: App, cctx: RequestContext, name: str) -> None:
    with app.db.session(cctx) as session:  # one transaction on cctx.cell's database
        session.add(
            InstanceRow(
                uuid=str(uuid.uuid4()),
                name=name,
                project_id=cctx.project_id or "demo",
                vm_state="active",
            )
        )


def count_instances(app: App, cctx: RequestContext) -> int:
    with app.db.session(cctx) as session:
        return queries.count_instances(session)  # live rows: soft-deleted ones left out


def show(app: App, results: dict[str, CellResult[int]]) -> None:
    """One line per cell; the three outcomes are types, so ``match`` covers them all."""
    for cell_uuid, result in results.items():
        name = app.cells.get(CTX, cell_uuid).name
        match result:
            case Ok(value=count):
                say(f"   {name}: Ok, {count} instance(s)")
            case Failed(error=error):
                say(f"   {name}: Failed, {type(error).__name__}: {error}")
            case TimedOut(timeout=deadline):
                say(f"   {name}: TimedOut after {deadline:.1f} s")


def tour(tmp: Path) -> None:
    say(f"cellgate library tour, in {tmp}")
    say()
    say("1. Set up with cellgate.admin: the API database, cell0 and three cells, all migrated")
    config = write_config(tmp)
    with App(load_settings(config)) as app:
        set_up(tmp, app)
        say("   sync_api; map_cell0; create_cell x3; sync_cells(all_cells=True): all ok")
        say()
        say("2. One App per process; its mapping cache loads on first use")
        names = [c.name for c in app.cells.list(CTX)]
        say(f"   cells: {', '.join(str(n) for n in names)} (generation {app.cells.generation})")
        with app.db.api_session() as session:
            live = session.scalar(text("SELECT count(*) FROM cell_mapping WHERE deleted = 0"))
        say(f"   the API database maps {live} live cells")

        say()
        say("3. Target a cell by name, then write and read rows in that cell only")
        ctx = RequestContext(project_id="demo", user_id="alice", roles=("member",))
        for number, name in enumerate(CELLS, start=1):
            with app.target_cell(ctx, name) as cctx:
                for i in range(number):
                    add_instance(app, cctx, f"{name}-vm{i + 1}")
        with app.target_cell(ctx, "cell1") as cctx, app.db.session(cctx) as session:
            rows = session.scalars(queries.select_instances(InstanceRow.name)).all()
        say(f"   cell1 holds: {', '.join(rows)}")
        assert cctx.cell is not None and ctx.cell is None
        say(f"   target_cell yields a copy naming {cctx.cell.name}; ctx.cell is still {ctx.cell}")
        carried = cctx.to_dict()  # what an RPC message carries: the cell uuid, never its URLs
        assert carried["cell_uuid"] == cctx.cell.uuid
        say(f"   to_dict() for RPC: {', '.join(sorted(carried))}")

        say()
        say("4. An untargeted context has no cell to fall back to")
        try:
            with app.db.session(ctx):
                pass
        except UntargetedContext as exc:
            say(f"   UntargetedContext: {exc}")

        say()
        say("5. Scatter-gather: count instances in every cell at once (cell0 is skipped)")
        results = app.scatter_gather(ctx, None, lambda c: count_instances(app, c), timeout=5)
        show(app, results)

        say()
        say(f"6. A cell that hangs costs only the deadline ({DEADLINE:.1f} s)")
        release = threading.Event()

        def count_or_hang(cctx: RequestContext) -> int:
            if cctx.cell is not None and cctx.cell.name == HUNG_CELL:
                release.wait()  # stands in for a database that stopped answering
                return -1  # never seen: the caller has gone at its deadline
            return count_instances(app, cctx)

        started = time.monotonic()
        results = app.scatter_gather(ctx, None, count_or_hang, timeout=DEADLINE)
        elapsed = time.monotonic() - started
        show(app, results)
        say(f"   scatter_gather returned after {elapsed:.1f} s")
        release.set()
        assert isinstance(results[app.cells.get(CTX, HUNG_CELL).uuid], TimedOut)
        assert elapsed < DEADLINE + 1.0

        say()
        say("7. A mapping changed elsewhere: seen after invalidate() (or cache_ttl)")
        gone = tmp / "moved-away.sqlite"  # never created: a missing SQLite file is an error
        before = app.cells.generation
        with App(app.settings) as operator:  # another process, as far as this App knows
            admin.update_cell(operator, "cell2", database_connection=f"sqlite:///{gone}")
        say("   an operator's App points cell2 at a database file that does not exist;")
        say("   within cache_ttl this App keeps the mapping it has:")
        cell2 = app.cells.get(CTX, "cell2")
        # No timeout=: the deadline is [cells] scatter_timeout.
        show(app, app.scatter_gather(ctx, [cell2], lambda c: count_instances(app, c)))
        app.cells.invalidate()
        results = app.scatter_gather(ctx, None, lambda c: count_instances(app, c), timeout=5)
        say(f"   after invalidate(): generation {before} -> {app.cells.generation}")
        show(app, results)
        failed = results[app.cells.get(CTX, "cell2").uuid]
        assert isinstance(failed, Failed) and isinstance(failed.error, CellUnavailable)

        say()
        say("8. The same errors raise directly outside scatter-gather")
        try:
            with app.target_cell(ctx, "cell2") as cctx:
                count_instances(app, cctx)
        except CellgateError as exc:
            say(f"   {type(exc).__name__} (a CellgateError)")
        try:
            with app.target_cell(ctx, "no-such-cell"):
                pass
        except CellgateError as exc:
            say(f"   {type(exc).__name__}: {exc.message}")
        say(f"   mapping cache: {app.cells.hits} hits, {app.cells.misses} misses")

    say()
    say("done: App closed its engines, pool and cache")


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="cellgate-tour-") as tmp:
        tour(Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
