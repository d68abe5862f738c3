"""Moving instances between cells: instances moved per second, and ``show`` while moving.

``python -m benchmarks moves [--backend sqlite|mariadb|postgresql] [--instances N] [--json PATH]``

Two cells and an API database on one backend; every instance has the two
``instance_actions`` rows the tests give it. Figures, each with the baseline
it is a ratio against, measured in the same run:

- ``moves_per_second``: a drain (``admin.drain_cell``, grace 0, waves of 10)
  of N instances, against ``raw_copies_per_second``, the same rows copied
  and deleted with no job, no verification and no flip
  (``celldb.rows.read_rows`` + ``write_copy`` + ``delete_rows``). The ratio
  ``move_over_raw_copy`` is what durability and verification cost.
- ``show_p99_moving_over_still``: while a drain runs in a thread, ``show`` of
  the instance being moved (the last one the mover reported) alternates with
  ``show`` of an instance that stays put; p99 of each and their ratio.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.deploy import Servers
from benchmarks.report import emit_json
from benchmarks.stats import Series
from cellgate import App, RequestContext, admin, load_settings
from cellgate.apidb import instances as mapping_db
from cellgate.celldb import queries, rows
from cellgate.celldb.schema import InstanceActionRow
from cellgate.config import ServiceSettings
from cellgate.service.instances import InstanceService
from cellgate.service.metrics import Metrics
from cellgate.urls import redact

CTX = RequestContext(request_id="req-bench-moves", project_id="bench", roles=("admin",))


def _config(tmp: Path, api_url: str) -> Path:
    path = tmp / "bench-moves.conf"
    path.write_text(
        f"[DEFAULT]\nstate_path = {tmp / 'state'}\ntransport_url = memory://bench\n"
        f"[api_database]\nconnection = {api_url}\n[database]\nconnection = {api_url}\n",
        encoding="utf-8",
    )
    return path


def _seed(app: App, cell: str, count: int, prefix: str) -> list[str]:
    mapping = app.cells.get(CTX, cell)
    made = []
    with app.db.session(CTX.for_cell(mapping)) as s, app.db.api_session() as api:
        for i in range(count):
            uuid = f"{prefix}-0000-4000-8000-{i:012d}"
            queries.add_instance(s, uuid=uuid, name=f"vm{i}", project_id="bench", user_id="u")
            for action in ("create", "start"):
                s.add(InstanceActionRow(instance_uuid=uuid, action=action, deleted=0))
            mapping_db.add_mapping(
                api, instance_uuid=uuid, cell=mapping, project_id="bench", user_id="u"
            )
            made.append(uuid)
    return made


def _raw_copies(app: App, uuids: list[str]) -> float:
    """Per second: read from cell A, write to cell B, delete from B; nothing recorded."""
    a = CTX.for_cell(app.cells.get(CTX, "bench-a"))
    b = CTX.for_cell(app.cells.get(CTX, "bench-b"))
    start = time.perf_counter()
    for uuid in uuids:
        with app.db.session(a) as src:
            found = rows.read_rows(src, uuid)
        with app.db.session(b) as dst:
            rows.write_copy(dst, uuid, found)
        with app.db.session(b) as dst:
            rows.delete_rows(dst, uuid)
    return len(uuids) / (time.perf_counter() - start)


def _drain_rate(app: App, expected: int) -> float:
    start = time.perf_counter()
    report = admin.drain_cell(app, "bench-a", to="bench-b", wave_size=10, canary=1, grace=0)
    elapsed = time.perf_counter() - start
    if report.moved != expected or report.failure is not None:
        raise RuntimeError(f"drain moved {report.moved} of {expected}: {report.failure}")
    return expected / elapsed


def _show_while_moving(app: App, still: str) -> tuple[Series, Series]:
    """Alternate show(moving) and show(still) while a drain of bench-b -> bench-a runs."""
    service = InstanceService(app, ServiceSettings(cell_timeout=30), Metrics(app.cells))
    current: list[str] = []
    done = threading.Event()

    def follow(event: dict[str, Any]) -> None:
        if event.get("event") == "started":
            current.append(event["instance"])

    def drain() -> None:
        try:
            admin.drain_cell(app, "bench-b", to="bench-a", grace=0, on_progress=follow)
        finally:
            done.set()

    moving: list[float] = []
    steady: list[float] = []
    thread = threading.Thread(target=drain, name="bench-drain")
    thread.start()
    while not done.is_set():
        if not current:
            time.sleep(0.001)
            continue
        for uuid, into in ((current[-1], moving), (still, steady)):
            start = time.perf_counter()
            service.show(CTX, uuid)
            into.append(time.perf_counter() - start)
    thread.join()
    return Series(tuple(moving)), Series(tuple(steady))


def run(backend: str, instances: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="cellgate-bench-moves-") as tmp_dir:
        tmp = Path(tmp_dir)
        servers = Servers(backend, tmp)
        servers.check()
        try:
            api_url, a_url, b_url = servers.new_databases(["api", "a", "b"])
            with App(load_settings(_config(tmp, api_url))) as app:
                admin.sync_api(app)
                for name, url in (("bench-a", a_url), ("bench-b", b_url)):
                    admin.create_cell(
                        app, name=name, transport_url=f"memory://{name}", database_connection=url
                    )
                admin.sync_cells(app, all_cells=True)
                moved = _seed(app, "bench-a", instances, "00000000")
                raw = _raw_copies(app, moved)
                rate = _drain_rate(app, instances)
                (still,) = _seed(app, "bench-a", 1, "11111111")
                moving, steady = _show_while_moving(app, still)
        finally:
            servers.drop_all()
    p99_moving, p99_still = moving.quantile(0.99), steady.quantile(0.99)
    return {
        "backend": backend,
        "instances": instances,
        "rows_per_instance": 3,
        "moves_per_second": round(rate, 2),
        "raw_copies_per_second": round(raw, 2),
        "move_over_raw_copy": round(rate / raw, 3),
        "show_samples": {"moving": len(moving), "still": len(steady)},
        "show_p99_ms": {"moving": round(p99_moving * 1e3, 3), "still": round(p99_still * 1e3, 3)},
        "show_p99_moving_over_still": round(p99_moving / p99_still, 3),
    }


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks moves", description=__doc__)
    p.add_argument("--backend", choices=("sqlite", "mariadb", "postgresql"), default="sqlite")
    p.add_argument("--instances", type=int, default=200, help="instances to move (default 200)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = p.parse_args(argv)
    try:
        result = run(args.backend, args.instances)
    except Exception as exc:  # a benchmark run: one redacted line, not a traceback
        print(f"benchmarks moves: {redact(str(exc))}", file=sys.stderr)
        return 1
    emit_json(result, args.json)
    return 0
