"""Load on the all-in-one service: requests per second, 5xx answers, p50, p99, p99/p50.

``python -m benchmarks load [--quick] [--cells auto|servers|sqlite] [--requests N]
[--concurrency C] [--json PATH]``

The service is :class:`cellgate.service.allinone.AllInOne` (the REST API and a
worker per cell sharing one ``App``, on 127.0.0.1, port chosen by the
kernel) with its embedded SQLite API database and SQLite cells, plus, with
``--cells servers`` (the default ``auto`` picks it when MariaDB, PostgreSQL
and RabbitMQ answer on 127.0.0.1), one cell on MariaDB and one on PostgreSQL,
each with a RabbitMQ vhost of its own. Databases, users and vhosts are this
run's own, uniquely named (``cgb_<random>``), and dropped at the end, also on
an error.

The clients run in a child process of their own (``--drive``), so they do
not share the service's interpreter lock: ``concurrency`` threads, each with
a keep-alive ``httpx.Client`` (30 s timeout), send ``requests`` requests in
all, back to back, in a fixed mix drawn with a fixed seed: show an instance
(50 %), list a page of 20 across cells (20 %), create an instance in a cell
taken in turn (15 %), stop/start/reboot (10 %) and delete one this run
created (5 %; a show while there is none). A 4xx is an ordinary answer (an action refused in the
instance's state is 409); a 5xx, or no answer, is a failure, and its status,
code and public message are kept in the JSON (``failures``).

Figures: ``requests_per_second`` (answered requests / wall time),
``count_5xx`` (goal 0), ``p50_ms``, ``p99_ms``, ``p99_over_p50`` (goal < 10),
with per-kind p50/p99 and the status counts beside them.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

from benchmarks.deploy import Servers, Vhost
from benchmarks.report import emit_json
from benchmarks.stats import Series
from cellgate.config import TokenGrant, embedded_settings
from cellgate.service.allinone import AllInOne
from cellgate.urls import redact

#: The issue's load: 2,000 requests from 20 concurrent clients.
REQUESTS = 2000
QUICK_REQUESTS = 200
CONCURRENCY = 20
#: Instances made in each cell before the clock starts, for shows and actions.
SEEDED_PER_CELL = 10
MIX = (("show", 50), ("list", 20), ("create", 15), ("action", 10), ("delete", 5))
GOALS = {"count_5xx": "= 0", "p99_over_p50": "< 10"}
SEED = 12


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def servers_answer() -> bool:
    """MariaDB, PostgreSQL and RabbitMQ all listen on 127.0.0.1 (their usual ports)."""
    return all(_answers("127.0.0.1", port) for port in (3306, 5432, 5672))


class _Resources(contextlib.ExitStack):
    """Databases and vhosts this run made, dropped on exit whatever happened."""

    def __init__(self, tmp: Path) -> None:
        super().__init__()
        self.tmp = tmp

    def database(self, kind: str, name: str) -> str:
        servers = Servers(kind, self.tmp)
        try:
            servers.check()
        except SystemExit as exc:  # a measurement that fails, not the end of the suite
            raise RuntimeError(str(exc)) from None
        self.callback(servers.drop_all)
        (url,) = servers.new_databases([name])
        return url

    def vhost(self) -> str:
        vhost = Vhost()
        self.callback(vhost.drop)
        try:
            return vhost.create()
        except SystemExit as exc:
            raise RuntimeError(str(exc)) from None


def _service(tmp: Path, token: str) -> AllInOne:
    settings = embedded_settings(tmp / "state")
    grant = TokenGrant(token, "bench", ("admin", "member"))
    service = replace(settings.service, tokens=(grant,), listen="127.0.0.1", port=0)
    return AllInOne(replace(settings, service=service))


def _seed(client: Any, cells: list[str]) -> list[str]:
    made = []
    for cell in cells:
        for i in range(SEEDED_PER_CELL):
            answer = client.post("/v1/instances", json={"name": f"seed-{cell}-{i}", "cell": cell})
            answer.raise_for_status()
            made.append(answer.json()["instance"]["uuid"])
    return made


def run(cells: str, requests: int, concurrency: int) -> dict[str, Any]:
    import httpx

    use_servers = cells == "servers" or (cells == "auto" and servers_answer())
    token = "bench-load-" + str(random.SystemRandom().randrange(10**12))
    with (
        tempfile.TemporaryDirectory(prefix="cellgate-bench-load-") as tmp_dir,
        _Resources(Path(tmp_dir)) as made,
    ):
        tmp = Path(tmp_dir)
        with _service(tmp, token) as service:
            names = ["cell1", "cell2"]
            if use_servers:
                for name, kind in (("cell-mariadb", "mariadb"), ("cell-pg", "postgresql")):
                    service.add_cell(
                        name,
                        database_connection=made.database(kind, name.replace("-", "_")),
                        transport_url=made.vhost(),
                    )
                    names.append(name)
            headers = {"Authorization": f"Bearer {token}"}
            with httpx.Client(base_url=service.url, headers=headers, timeout=30) as client:
                seeded = _seed(client, names)
            spec = {
                "url": service.url,
                "token": token,
                "cells": names,
                "instances": seeded,
                "requests": requests,
                "concurrency": concurrency,
            }
            spec_file = tmp / "spec.json"
            spec_file.write_text(json.dumps(spec), encoding="utf-8")
            done = subprocess.run(
                [sys.executable, "-m", "benchmarks", "load", "--drive", str(spec_file)],
                capture_output=True,
                text=True,
                timeout=max(300, requests),  # bounded: a hung service fails the run
                check=False,
            )
            if done.returncode != 0:
                raise RuntimeError(f"the load client failed: {done.stderr.strip()[-500:]}")
            driven = json.loads(done.stdout)
    return _figures(driven, names, use_servers, requests, concurrency)


def _figures(
    driven: dict[str, Any], cells: list[str], servers: bool, requests: int, concurrency: int
) -> dict[str, Any]:
    samples: list[dict[str, Any]] = driven["samples"]
    answered = [s for s in samples if s["status"] is not None]
    all_latency = Series(tuple(s["seconds"] for s in answered))
    p50, p99 = all_latency.median, all_latency.quantile(0.99)
    statuses = Counter(str(s["status"]) for s in samples)
    failures = [s for s in samples if s["status"] is None or s["status"] >= 500]
    per_kind: dict[str, dict[str, float | int]] = {}
    for kind, _ in MIX:
        series = Series(tuple(s["seconds"] for s in answered if s["kind"] == kind))
        if series.samples:
            per_kind[kind] = {
                "count": len(series.samples),
                "p50_ms": round(series.median * 1e3, 3),
                "p99_ms": round(series.quantile(0.99) * 1e3, 3),
            }
    ratio = p99 / p50 if p50 else None
    figures = {
        "requests": len(samples),
        "concurrency": concurrency,
        "cells": cells,
        "backends": (
            "SQLite API database; cells on SQLite + memory://, MariaDB + RabbitMQ, "
            "PostgreSQL + RabbitMQ"
            if servers
            else "SQLite API database and cells, memory:// transport (servers not used)"
        ),
        "requests_per_second": round(len(answered) / driven["wall_seconds"], 2),
        "count_5xx": len(failures),
        "p50_ms": round(p50 * 1e3, 3),
        "p99_ms": round(p99 * 1e3, 3),
        "max_ms": round(max(all_latency.samples) * 1e3, 3),
        "p99_over_p50": round(ratio, 3) if ratio is not None else None,
        "statuses": dict(sorted(statuses.items())),
        "per_kind": per_kind,
        "failures": [
            {"kind": s["kind"], "status": s["status"], "error": s["error"]} for s in failures[:20]
        ],
    }
    figures["goals"] = {
        "count_5xx": {"goal": GOALS["count_5xx"], "met": figures["count_5xx"] == 0},
        "p99_over_p50": {"goal": GOALS["p99_over_p50"], "met": ratio is not None and ratio < 10},
    }
    assert requests == len(samples), (requests, len(samples))
    return figures


# -- the client process -------------------------------------------------------------------


def drive(spec: dict[str, Any]) -> dict[str, Any]:
    """Send the load (in the child process); every request's kind, status and latency."""
    import httpx

    rng = random.Random(SEED)
    kinds = [kind for kind, weight in MIX for _ in range(weight)]
    plan = [rng.choice(kinds) for _ in range(spec["requests"])]
    known: list[str] = list(spec["instances"])
    created: list[str] = []
    lock = threading.Lock()
    turn = itertools.count()
    cells = itertools.cycle(spec["cells"])
    samples: list[dict[str, Any]] = []
    headers = {"Authorization": f"Bearer {spec['token']}"}

    def one(client: httpx.Client, kind: str, n: int) -> dict[str, Any]:
        pick = random.Random(SEED * 1_000_003 + n)
        with lock:
            instance = pick.choice(known)
            cell = next(cells)
            victim = None
            if kind == "delete" and created:
                victim = created.pop(pick.randrange(len(created)))
                known.remove(victim)
            elif kind == "delete":
                kind = "show"  # nothing of this run's to delete yet
        start = time.perf_counter()
        try:
            if kind == "show":
                answer = client.get(f"/v1/instances/{instance}")
            elif kind == "list":
                answer = client.get("/v1/instances", params={"limit": 20})
            elif kind == "create":
                answer = client.post("/v1/instances", json={"name": f"load-{n}", "cell": cell})
            elif kind == "action":
                action = pick.choice(("stop", "start", "reboot"))
                answer = client.post(f"/v1/instances/{instance}/action", json={"action": action})
            else:
                answer = client.delete(f"/v1/instances/{victim}")
        except httpx.HTTPError as exc:
            return {
                "kind": kind,
                "status": None,
                "seconds": time.perf_counter() - start,
                "error": redact(f"{type(exc).__name__}: {exc}"),
            }
        seconds = time.perf_counter() - start
        error = None
        if answer.status_code >= 500:
            try:
                detail = answer.json()["error"]
                error = f"{detail['code']}: {detail['message']}"
            except (ValueError, KeyError, TypeError):
                error = answer.text[:200]
        elif kind == "create" and answer.status_code == 202:
            uuid = answer.json()["instance"]["uuid"]
            with lock:
                created.append(uuid)
                known.append(uuid)
        return {"kind": kind, "status": answer.status_code, "seconds": seconds, "error": error}

    def client_thread() -> None:
        with httpx.Client(base_url=spec["url"], headers=headers, timeout=30) as client:
            while True:
                n = next(turn)
                if n >= len(plan):
                    return
                sample = one(client, plan[n], n)
                with lock:
                    samples.append(sample)

    threads = [threading.Thread(target=client_thread) for _ in range(spec["concurrency"])]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"wall_seconds": time.perf_counter() - start, "samples": samples}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks load", description=__doc__)
    p.add_argument("--quick", action="store_true", help=f"{QUICK_REQUESTS} requests")
    p.add_argument(
        "--cells",
        choices=("auto", "servers", "sqlite"),
        default="auto",
        help="also cells on MariaDB/PostgreSQL with RabbitMQ (auto: if they answer)",
    )
    p.add_argument("--requests", type=int, help=f"requests in all (default {REQUESTS})")
    p.add_argument("--concurrency", type=int, default=CONCURRENCY)
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.add_argument("--drive", metavar="SPEC", help=argparse.SUPPRESS)  # the client process
    args = p.parse_args(argv)
    if args.drive:
        print(json.dumps(drive(json.loads(Path(args.drive).read_text(encoding="utf-8")))))
        return 0
    requests = args.requests or (QUICK_REQUESTS if args.quick else REQUESTS)
    try:
        result = run(args.cells, requests, args.concurrency)
    except Exception as exc:  # a benchmark run: one redacted line, not a traceback
        print(f"benchmarks load: {redact(str(exc))}", file=sys.stderr)
        return 1
    emit_json(result, args.json)
    return 0
