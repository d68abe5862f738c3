"""One run of the suite: set up, measure in stages as cells are mapped, report, clean up."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from benchmarks import (
    api,
    capacity,
    heap,
    listing,
    locator,
    proxyhop,
    routing,
    rpc,
    scatter,
    startup,
)
from benchmarks.deploy import MAIN_CELLS, MAX_CELLS, SCATTER_CELLS, Deployment
from benchmarks.report import Report
from benchmarks.routing import FULL, QUICK, Plan
from benchmarks.stats import Series
from cellgate import App, CellMapping
from cellgate.urls import redact

T = TypeVar("T")


class Progress:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    def step(self, what: str) -> None:
        print(f"[{time.perf_counter() - self.start:6.1f}s] {what}", file=sys.stderr, flush=True)

    def timed(self, what: str, fn: Callable[[], T]) -> T:
        self.step(what)
        return fn()


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git_commit() -> str | None:
    try:
        root = Path(__file__).resolve().parent.parent
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def meta(args: Any, argv: list[str], plan: Plan) -> dict[str, Any]:
    return {
        "backend": args.backend,
        "transport": args.transport,
        "cells": MAIN_CELLS,
        "cells_scatter": 100,
        "cells_max": MAX_CELLS,
        "quick": args.quick,
        "versions": {
            "python": platform.python_version(),
            "sqlalchemy": _version("SQLAlchemy"),
            "kombu": _version("kombu"),
            "cellgate": _version("cellgate"),
            "fastapi": _version("fastapi"),
            "uvicorn": _version("uvicorn"),
            "httpx": _version("httpx"),
            "oslo.messaging": _version("oslo.messaging"),
        },
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "platform": platform.platform(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": shlex.join(["python", "-m", "benchmarks", *argv]),
        "git": _git_commit(),
        "plan": dict(plan.__dict__),
    }


class Phases:
    """The measurements, in stages as cells are mapped; a failing step is reported, not fatal.

    Each stage has an ``App`` of its own, closed before the next opens, so that
    connections one stage left open (up to ``max_engines`` idle engines) do not
    count against the database server's connection limit in the next.
    """

    def __init__(self, args: Any, report: Report, plan: Plan, progress: Progress) -> None:
        self.args = args
        self.backend: str = args.backend
        self.report = report
        self.plan = plan
        self.progress = progress
        self.series_too = bool(args.plot) or not args.quick
        self.failures: list[str] = []
        self.listed: list[CellMapping] = []  # cells benchmarks.listing has filled

    def step(self, what: str, names: tuple[str, ...], fn: Callable[[], None]) -> None:
        self.progress.step(what)
        try:
            fn()
        except Exception as exc:  # one broken measurement must not lose the others
            text = redact(str(exc)).strip().splitlines()
            message = f"failed: {type(exc).__name__}: {text[0] if text else ''}"
            for name in names:
                self.report.put(name, None, note=message)
            self.failures.append(f"{what}: {message}")
            self.progress.step(f"  {message}")

    def cli_startup(self) -> None:
        names = ("cli_version_ms", "cli_startup_over_import_sqlalchemy")

        def measure() -> None:
            samples = 5 if self.args.quick else 21
            pair = startup.version_over_import_sqlalchemy(samples)
            self.report.put("cli_version_ms", pair.a, scale=1e3)
            self.report.put("cli_startup_over_import_sqlalchemy", pair.ratio)

        self.step("CLI start-up: cellgate --version vs import sqlalchemy", names, measure)

    def failover(self) -> None:
        name = "pg_failover_recovery_s"
        if not self.args.clusters:
            self.report.put(name, None, note="not run: needs --clusters")
            return

        def measure() -> None:
            from benchmarks import failover

            crashed, frozen = failover.pg_failover_recovery(1 if self.args.quick else 3)
            note = (
                f"promote + crash of the old primary, {len(crashed.samples)} trial(s); "
                f"old primary frozen instead: {frozen.median:.2f} s"
            )
            self.report.put(name, crashed, note=note)

        self.step("PostgreSQL failover (primary + standby)", (name,), measure)

    def rabbit_cluster(self) -> None:
        name = "rabbit_node_loss_casts_lost"
        if not self.args.rabbit_cluster:
            self.report.put(
                name, None, note="needs --rabbit-cluster (a 3-node RabbitMQ cluster it starts)"
            )
            return

        def measure() -> None:
            # The cluster and the drill are the cluster tests' own (tests/ha/).
            from tests.ha import rabbit, rabbit_drill

            why = rabbit.available()
            if why is not None:
                raise RuntimeError(why)
            with (
                rabbit.running_cluster() as cluster,
                tempfile.TemporaryDirectory(prefix="cgbench-") as tmp,
                rabbit_drill.cell_app(cluster, Path(tmp)) as (app, vhost),
            ):
                outcome = rabbit_drill.kill_leader_during_loop(cluster, app, vhost)
                started = cluster.startup_seconds
            self.report.put(
                name,
                outcome.lost,
                note=f"{outcome.summary()}; cluster started in {started:.0f}s",
            )

        self.step("RabbitMQ cluster: SIGKILL of the quorum queue's leader", (name,), measure)

    def show_point(self, app: App, d: Deployment, cells: int) -> Any:
        pair = routing.show(app, d, self.plan)
        points = self.report.series.setdefault(
            "show_vs_cells",
            {
                "cells": [],
                "routed_us": [],
                "routed_p95_us": [],
                "direct_us": [],
                "direct_p95_us": [],
                "ratio": [],
            },
        )
        points["cells"].append(cells)
        points["routed_us"].append(round(pair.a.median * 1e6, 3))
        points["routed_p95_us"].append(round(pair.a.p95 * 1e6, 3))
        points["direct_us"].append(round(pair.b.median * 1e6, 3))
        points["direct_p95_us"].append(round(pair.b.p95 * 1e6, 3))
        points["ratio"].append(round(pair.ratio.median, 4))
        return pair

    def run(self) -> None:
        self.cli_startup()
        self.failover()
        self.rabbit_cluster()
        self.progress.step(f"setting up {self.backend} + {self.args.transport}")
        with Deployment.create(self.backend, self.args.transport) as d:
            with App(d.settings) as app:
                self.ten_cells(app, d)
            with App(d.settings) as app:
                self.hundred_cells(app, d)
            self.tuned(d)
            if self.series_too:
                self.curve(d)
            with App(d.settings) as app:
                self.thousand_cells(app, d)
            self.progress.step("cleaning up")

    # -- 1 and 10 cells ---------------------------------------------------------
    def ten_cells(self, app: App, d: Deployment) -> None:
        r, plan = self.report, self.plan
        if self.series_too:
            d.map_cells(app, 1)
            self.step("show, 1 cell mapped", (), lambda: self.show_point(app, d, 1))
        d.map_cells(app, MAIN_CELLS)

        def lookup() -> None:
            pair = routing.lookup(app, d, plan)
            r.put("lookup_cached_us", pair.a, scale=1e6)
            r.put("lookup_db_us", pair.b, scale=1e6)
            # the speedup is db/cached, per interleaved pair
            r.put("lookup_speedup", Series(tuple(1 / x for x in pair.ratio.samples)))

        self.step(
            "lookup: cache vs API database",
            ("lookup_cached_us", "lookup_db_us", "lookup_speedup"),
            lookup,
        )

        def show() -> None:
            pair = self.show_point(app, d, MAIN_CELLS)
            r.put("show_routed_us", pair.a, scale=1e6)
            r.put("show_direct_us", pair.b, scale=1e6)
            r.put("show_routed_over_direct", pair.ratio)

        self.step(
            f"show, {MAIN_CELLS} cells mapped",
            ("show_routed_us", "show_direct_us", "show_routed_over_direct"),
            show,
        )

        self.step(
            "show via InstanceService",
            ("show_service_over_direct",),
            lambda: r.put(
                "show_service_over_direct",
                routing.show_service(app, d, plan).ratio,
                note="InstanceService.show (the API's path: adds its Prometheus timing "
                "and to_dict) vs direct + to_dict",
            ),
        )
        self.step(
            "target_cell",
            ("target_cell_us",),
            lambda: r.put("target_cell_us", routing.target_cell(app, d, plan), scale=1e6),
        )
        self.locator(app, d)
        self.nova_show(app, d)
        self.proxy_hop(app, d)
        self.gc_pauses(d)
        self.rpc(app, d)
        for nodelay in (False, True):
            self.api(app, d, nodelay)
        for clients in api.LATENCY_CLIENTS:
            self.api_latency(app, d, clients)

    def locator(self, app: App, d: Deployment) -> None:
        names = (
            "locator_hit_rate_zipf_1x",
            "locator_hit_rate_zipf_2x",
            "locator_hit_rate_zipf_4x",
        )

        def measure() -> None:
            rates = locator.hit_rates(app, d, 500 if self.args.quick else 10_000)
            note = (
                f"locator of {rates.capacity} entries, lookups Zipf(s={locator.ZIPF_S}) over "
                "a working set of Nx its size; a cyclic scan at 2x: "
                f"{rates.cyclic[rates.multiples.index(2.0)]:.2f}"
            )
            for name, multiple in zip(names, (1.0, 2.0, 4.0), strict=True):
                self.report.put(name, rates.at(multiple), note=note)
            self.report.series["locator_hit_rate"] = {
                "capacity": rates.capacity,
                "multiples": list(rates.multiples),
                "zipf": [round(v, 4) for v in rates.zipf],
                "cyclic": [round(v, 4) for v in rates.cyclic],
            }

        self.step("instance locator hit rate (Zipf)", names, measure)

    def nova_show(self, app: App, d: Deployment) -> None:
        name = "show_over_nova"
        from benchmarks import nova_show

        why = "needs --nova" if not self.args.nova else nova_show.unavailable()
        if why is not None:
            self.report.put(name, None, note=f"not run: {why}")
            return

        def measure() -> None:
            pair = nova_show.show_over_nova(app, d, self.plan)
            note = (
                f"routed show {pair.a.median * 1e6:.0f} us vs Nova 34.0.0's "
                f"compute API get {pair.b.median * 1e6:.0f} us (medians, {self.backend}, "
                f"{len(pair.a.samples)} interleaved samples each)"
            )
            self.report.put(name, pair.ratio, note=note)

        self.step("show vs Nova's own show (nova-manage deployment)", (name,), measure)

    def proxy_hop(self, app: App, d: Deployment) -> None:
        name = "routing_overhead_over_proxy_hop"
        why = proxyhop.unavailable(d)
        if why is not None:
            self.report.put(name, None, note=f"not run: {why}")
            return

        def measure() -> None:
            ratio, routed, direct, proxied = proxyhop.overhead_over_hop(app, d, self.plan)
            note = (
                f"(routed - direct) / (through HAProxy - direct), {self.backend}: "
                f"routed {routed.median * 1e6:.0f} us, direct {direct.median * 1e6:.0f} us, "
                f"through HAProxy {proxied.median * 1e6:.0f} us (medians)"
            )
            self.report.put(name, ratio, note=note)

        self.step("routing vs one HAProxy hop", (name,), measure)

    def gc_pauses(self, d: Deployment) -> None:
        names = ("gc_full_pause_ms", "gc_full_pause_frozen_ms")

        def measure() -> None:
            pauses = heap.full_collection_pauses(d.config, 5 if self.args.quick else 21)
            note = (
                "gc.collect() in a fresh process that built the API service "
                f"({self.backend} API database); frozen: {pauses.frozen} objects"
            )
            self.report.put(names[0], pauses.before_s * 1e3, note=note)
            self.report.put(names[1], pauses.after_s * 1e3, note=note)

        self.step("full GC pause after start-up, heap frozen or not", names, measure)

    def api_latency(self, app: App, d: Deployment, clients: int) -> None:
        r = self.report
        names = (f"api_show_p50_ms_{clients}", f"api_show_p99_ms_{clients}")

        def measure() -> None:
            series, errors = api.show_latency(app, d, self.plan, clients)
            note = (
                f"{clients} client threads in this process sending shows back to back, "
                f"{len(series.samples)} requests, {errors} non-200 answers"
            )
            r.put(names[0], series.median * 1e3, note=note)
            r.put(names[1], series.quantile(0.99) * 1e3, note=note)

        self.step(f"HTTP show latency, {clients} clients", names, measure)

    def rpc(self, app: App, d: Deployment) -> None:
        names = ("rpc_call_us", "rpc_cast_per_s", "rpc_call_over_raw_kombu")
        self.step(f"RPC server on {self.args.transport}", names, lambda: self.rpc_steps(app, d))

    def rpc_steps(self, app: App, d: Deployment) -> None:
        r, plan, transport = self.report, self.plan, self.args.transport
        with rpc.cellgate_server(app, d.cells[0]) as (client, endpoint):
            self.step(
                f"RPC call over {transport}",
                ("rpc_call_us",),
                lambda: r.put(
                    "rpc_call_us",
                    rpc.call_series(client, plan),
                    scale=1e6,
                    note=f"over {transport}://; server and client in this process",
                ),
            )
            self.step(
                f"RPC cast over {transport}",
                ("rpc_cast_per_s",),
                lambda: r.put(
                    "rpc_cast_per_s",
                    rpc.cast_rate(client, endpoint, plan),
                    note=f"{rpc.CASTS} casts from the first send to the last handled",
                ),
            )
            url = d.rabbit_url
            if url is None:
                for name in ("rpc_call_over_raw_kombu", "rpc_call_over_raw_kombu_like_cellgate"):
                    r.put(
                        name,
                        None,
                        note="needs --transport rabbit: the baseline is a bare kombu "
                        "request/reply on the same RabbitMQ vhost",
                    )
            else:

                def raw() -> None:
                    pair = rpc.against_raw_kombu(client, url, plan)
                    r.put(
                        "rpc_call_over_raw_kombu",
                        pair.ratio,
                        note=f"median call: cellgate {pair.a.median * 1e6:.0f} us, raw "
                        f"kombu {pair.b.median * 1e6:.0f} us (interleaved)",
                    )

                def raw_like() -> None:
                    pair = rpc.against_raw_kombu(client, url, plan, like_cellgate=True)
                    r.put(
                        "rpc_call_over_raw_kombu_like_cellgate",
                        pair.ratio,
                        note="the raw server built like cellgate's (acks first, prefetch 16, "
                        "replies from a thread pool on a second connection): median "
                        f"{pair.b.median * 1e6:.0f} us",
                    )

                self.step("RPC call vs raw kombu", ("rpc_call_over_raw_kombu",), raw)
                self.step(
                    "RPC call vs raw kombu built like cellgate",
                    ("rpc_call_over_raw_kombu_like_cellgate",),
                    raw_like,
                )
            if not rpc.oslo_available():
                r.put(
                    "rpc_call_over_oslo_messaging",
                    None,
                    note="oslo.messaging is not importable here (pip install "
                    "oslo.messaging, then run with --transport rabbit)",
                )
            elif url is None:
                r.put(
                    "rpc_call_over_oslo_messaging",
                    None,
                    note="needs --transport rabbit (oslo.messaging's rabbit driver)",
                )
            else:

                def oslo() -> None:
                    pair = rpc.against_oslo(client, url, plan)
                    r.put(
                        "rpc_call_over_oslo_messaging",
                        pair.ratio,
                        note=f"median call: cellgate {pair.a.median * 1e6:.0f} us, "
                        f"oslo.messaging {pair.b.median * 1e6:.0f} us (interleaved)",
                    )

                self.step("RPC call vs oslo.messaging", ("rpc_call_over_oslo_messaging",), oslo)

    def api(self, app: App, d: Deployment, nodelay: bool) -> None:
        r = self.report
        suffix = "_nodelay" if nodelay else ""
        names = (f"api_show_rps{suffix}", f"api_healthz_rps{suffix}")
        ratio = f"api_show_over_healthz{suffix}"

        def measure() -> None:
            pair, errors = api.throughput(app, d, self.plan, nodelay=nodelay)
            r.put(names[0], pair.a)
            r.put(names[1], pair.b)
            if nodelay:
                note = (
                    "what-if: the same server with its listening socket made with "
                    "IPPROTO_TCP, so that asyncio sets TCP_NODELAY on its connections"
                )
            else:
                note = (
                    f"{api.CONCURRENCY} client threads in this process (they share the GIL "
                    "with uvicorn)"
                )
            r.put(ratio, pair.ratio, note=f"{note}; {errors} non-200 answers")

        what = "HTTP, what-if TCP_NODELAY" if nodelay else f"HTTP, {api.CONCURRENCY} clients"
        self.step(what, (*names, ratio), measure)

    # -- 100 and 200 cells ------------------------------------------------------
    def hundred_cells(self, app: App, d: Deployment) -> None:
        r, plan = self.report, self.plan
        d.map_cells(app, 100)
        if self.series_too:
            self.step("show, 100 cells mapped", (), lambda: self.show_point(app, d, 100))
        hundred = d.cells[:100]

        setup = scatter.default_setup(app, self.backend)
        cells = app.settings.cells

        def single_vs_many() -> None:
            pair, churn = scatter.single_vs_many(setup, hundred, plan)
            r.put("scatter_100_ms", pair.a, scale=1e3)
            r.put("scatter_single_ms", pair.b, scale=1e3)
            r.put(
                "scatter_100_over_single",
                pair.ratio,
                note=f"[cells] scatter_workers = {cells.scatter_workers}: all 100 cells at once",
            )
            r.put(
                "scatter_100_engines_created",
                churn.engines,
                note="engines created per 100-cell scatter after the warm-up; [cells] "
                f"max_engines = {cells.max_engines}",
            )
            r.put(
                "scatter_100_connections_opened",
                churn.connections,
                note="connections opened per 100-cell scatter after the warm-up: the 100 "
                f"cells need 100 at once; [cells] max_idle_connections = "
                f"{cells.max_idle_connections} are kept, the rest for idle_grace = "
                f"{cells.idle_grace:g} s",
            )

        self.step(
            "scatter-gather: 1 vs 100 cells",
            (
                "scatter_100_ms",
                "scatter_single_ms",
                "scatter_100_over_single",
                "scatter_100_engines_created",
                "scatter_100_connections_opened",
            ),
            single_vs_many,
        )

        def hung() -> None:
            overrun, fewest_ok = scatter.hung(setup, hundred, plan)
            r.put("scatter_hung_overrun_ms", overrun)
            r.put("scatter_hung_ok", fewest_ok, note="fewest Ok results of 100 in any sample")

        self.step(
            "scatter-gather, one cell hung", ("scatter_hung_overrun_ms", "scatter_hung_ok"), hung
        )

        def repeated() -> None:
            fewest_ok, threads = scatter.repeated_hung(setup, hundred)
            bound = cells.scatter_workers + cells.scatter_hung_threads
            r.put(
                "scatter_hung_repeated_ok",
                fewest_ok,
                note=f"fewest Ok of 100 in {scatter.REPEATED_HUNG} calls in a row, one cell "
                "hung through all of them",
            )
            r.put(
                "scatter_hung_repeated_threads",
                threads,
                note=f"most fan-out threads alive after one of those calls; bound "
                f"scatter_workers + scatter_hung_threads = {bound}",
            )
            r.goal("scatter_hung_repeated_threads", f"<= {bound}", lambda v: v <= bound)

        self.step(
            f"scatter-gather, one cell hung through {scatter.REPEATED_HUNG} calls",
            ("scatter_hung_repeated_ok", "scatter_hung_repeated_threads"),
            repeated,
        )

        self.listing(app, d)

    def listing(self, app: App, d: Deployment) -> None:
        """A sorted page of 100 over 10 and 100 cells (``benchmarks.listing``)."""
        rows = 1_000 if self.args.quick else 10_000
        for count in (10, 100):
            names = (
                f"list_page100_rows_read_{count}_cells",
                f"list_page100_rows_read_over_nova_{count}_cells",
                f"list_page100_{count}_cells_over_single",
            )
            if count > MAIN_CELLS and self.backend != "sqlite":
                for name in names:
                    self.report.put(
                        name, None, note=f"only {MAIN_CELLS} cells are migrated on {self.backend}"
                    )
                continue

            def measure(count: int = count, names: tuple[str, ...] = names) -> None:
                cells = d.cells[:count]
                listing.fill(app, cells[len(self.listed) :], rows)
                self.listed = cells
                cost = listing.page_cost(app, cells, self.plan)
                note = f"{rows} rows in each cell; Nova reads {listing.PAGE * count}"
                self.report.put(names[0], cost.rows_read, note=f"{note}; {cost.fetches} fetches")
                self.report.put(names[1], cost.rows_read / (listing.PAGE * count), note=note)
                self.report.put(names[2], cost.latency.ratio, note="page over one of the cells")

            self.step(f"listing: a page of 100 over {count} cells", names, measure)

    def tuned(self, d: Deployment) -> None:
        """What-if: the idle bound enforced at once (``[cells] idle_grace = 0``)."""
        r, plan = self.report, self.plan
        hundred = d.cells[:100]
        name = "scatter_100_over_single_grace0"
        note = "what-if: [cells] idle_grace = 0: idle connections above max_idle_connections closed at once"

        def measure() -> None:
            with (
                App(d.settings) as app,
                scatter.variant(app, self.backend, "idle_grace 0", idle_grace=0.0) as s,
            ):
                pair, churn = scatter.single_vs_many(s, hundred, plan)
                r.put(name, pair.ratio, note=f"{note} ({churn.connections:g} opened per call)")

        self.step("scatter-gather, idle_grace 0", (name,), measure)

    def curve(self, d: Deployment) -> None:
        points: dict[str, Any] = {}
        self.report.series["scatter_vs_cells"] = points

        def default() -> None:
            with App(d.settings) as app:
                d.map_cells(app, SCATTER_CELLS)
                points.update(
                    scatter.curve(scatter.default_setup(app, self.backend), d.cells, self.plan)
                )

        def tuned() -> None:
            room = d.servers.room()
            with (
                App(d.settings) as app,
                scatter.variant(app, self.backend, "idle_grace 0", idle_grace=0.0) as setup,
            ):
                points.update(scatter.curve_tuned(setup, d.cells, self.plan, room=room))

        self.step("scatter-gather curve", (), default)
        self.step("scatter-gather curve, what-if", (), tuned)

    # -- 1,000 cells ------------------------------------------------------------
    def thousand_cells(self, app: App, d: Deployment) -> None:
        r = self.report
        d.map_cells(app, MAX_CELLS)

        def show() -> None:
            pair = self.show_point(app, d, MAX_CELLS)
            r.put("show_routed_1000_cells_us", pair.a, scale=1e6)
            r.put("show_routed_over_direct_1000_cells", pair.ratio)
            ten = r.figures.get("show_routed_over_direct")
            if ten:
                r.goal(
                    "show_routed_over_direct_1000_cells",
                    f"within 5% of {ten:.3f}",
                    lambda v: abs(v / ten - 1) <= 0.05,
                )

        self.step(
            f"show, {MAX_CELLS} cells mapped",
            ("show_routed_1000_cells_us", "show_routed_over_direct_1000_cells"),
            show,
        )

        def touch() -> None:
            cap = capacity.touch_all(app, d.cells)
            bound = app.settings.cells.max_idle_connections
            r.put(
                "open_connections_1000_cells",
                cap.pooled,
                note=f"{cap.engines} engines kept of {cap.cells} cells touched; bound "
                f"[cells] max_idle_connections = {bound}, counted {cap.settled_s:.1f} s after "
                f"the last call ([cells] idle_grace = {app.settings.cells.idle_grace:g}); "
                f"last engine's pool: {cap.pool_kind}",
            )
            r.goal("open_connections_1000_cells", f"<= {bound}", lambda v: v <= bound)
            r.put(
                "db_fds_1000_cells",
                cap.db_fds,
                note="file descriptors that are .sqlite files or TCP connections to "
                "3306/5432 (API database included)",
            )
            r.put("rss_mb_1000_cells", cap.rss_after_mb)
            r.put("rss_mb_growth_1000_cells", cap.rss_after_mb - cap.rss_before_mb)

        self.step(
            f"touching {MAX_CELLS} cells once each",
            (
                "open_connections_1000_cells",
                "db_fds_1000_cells",
                "rss_mb_1000_cells",
                "rss_mb_growth_1000_cells",
            ),
            touch,
        )


GALERA_FIGURES = (
    "galera_two_writer_success",
    "galera_two_writer_success_without_retry",
    "retry_attempts_per_100_writes",
)


def galera_figures(report: Report, *, enabled: bool, progress: Progress) -> None:
    """The Galera figures (``benchmarks.galera``), or null with the reason."""
    if not enabled:
        for name in GALERA_FIGURES:
            report.put(name, None, note="needs --galera (starts a 3-node cluster, as root)")
        return
    progress.step("Galera: two writers on two nodes, without and with the retry")
    from benchmarks import galera

    try:
        found = galera.measure()
    except Exception as exc:  # the cluster could not start here: reported, not fatal
        for name in GALERA_FIGURES:
            report.put(name, None, note=f"the Galera cluster is not up: {redact(str(exc))}")
        return
    for name in GALERA_FIGURES:
        report.put(name, found[name])
    report.notes["galera_two_writer_success"] = (
        f"{2 * galera.WRITES} cell creates, 2 writers on 2 nodes at once; "
        f"cluster start-up {found['startup_s']:.1f}s"
    )


def set_goals(report: Report) -> None:
    report.goal("lookup_speedup", ">= 50", lambda v: v >= 50)
    report.goal("show_routed_over_direct", "<= 1.15", lambda v: v <= 1.15)
    report.goal("scatter_100_over_single", "<= 2.0", lambda v: v <= 2.0)
    report.goal("scatter_100_engines_created", "= 0", lambda v: v == 0)
    report.goal("locator_hit_rate_zipf_2x", ">= 0.7", lambda v: v >= 0.7)
    report.goal("gc_full_pause_frozen_ms", "<= 10", lambda v: v <= 10)
    report.goal("routing_overhead_over_proxy_hop", "<= 0.25", lambda v: v <= 0.25)
    report.goal("show_over_nova", "<= 0.05", lambda v: v <= 0.05)
    for count in (10, 100):
        report.goal(
            f"list_page100_rows_read_over_nova_{count}_cells", "<= 0.5", lambda v: v <= 0.5
        )
    report.goal("scatter_hung_overrun_ms", "<= 50", lambda v: v <= 50)
    report.goal("scatter_hung_ok", "= 99", lambda v: v == 99)
    report.goal("scatter_hung_repeated_ok", "= 99", lambda v: v == 99)
    report.goal("rss_mb_1000_cells", "<= 300", lambda v: v <= 300)
    report.goal("rpc_call_over_raw_kombu", "<= 1.3", lambda v: v <= 1.3)
    report.goal("rpc_call_over_oslo_messaging", "<= 0.5", lambda v: v <= 0.5)
    report.goal("api_show_over_healthz", ">= 0.6", lambda v: v >= 0.6)
    report.goal("rabbit_node_loss_casts_lost", "= 0", lambda v: v == 0)
    report.goal("api_show_over_healthz_nodelay", ">= 0.5 (what-if)", lambda v: v >= 0.5)
    report.goal("cli_startup_over_import_sqlalchemy", "<= 2.0", lambda v: v <= 2.0)
    report.goal("galera_two_writer_success", "= 1.0", lambda v: v == 1.0)


def _terminate(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through every clean-up


def main(args: Any, argv: list[str]) -> int:
    plan = QUICK if args.quick else FULL
    signal.signal(signal.SIGTERM, _terminate)
    progress = Progress()
    report = Report(meta=meta(args, argv, plan))
    set_goals(report)
    phases = Phases(args, report, plan, progress)
    phases.run()
    galera_figures(report, enabled=args.galera, progress=progress)
    report.meta["duration_s"] = round(time.perf_counter() - progress.start, 1)
    report.meta["failures"] = phases.failures
    print(report.table())
    if report.notes:
        print("\nnotes:\n" + report.notes_text())
    if args.json:
        report.write_json(Path(args.json))
        print(f"\nJSON: {args.json}")
    if args.plot:
        from benchmarks import plots

        for path in plots.write(report.series, report.meta, Path(args.plot)):
            print(f"plot: {path}")
    if phases.failures:
        print("\nfailed measurements:\n" + "\n".join(f"- {f}" for f in phases.failures))
        return 3
    return 0
