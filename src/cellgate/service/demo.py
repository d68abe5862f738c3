"""``cellgate demo``: the whole request path, end to end, in one command.

Starts the all-in-one deployment and drives a scripted scenario through the
real HTTP API, the way a user and an operator would: look at the cells, add
one, discover hosts, boot instances across cells, show, list, act, take a cell
down (its database locked, so it stops answering) and list again, bring it
back, delete. Each step prints what it checked and how long it took; the demo
exits 0 only if every check held.
"""

from __future__ import annotations

import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx

from cellgate import admin
from cellgate.config import TokenGrant, embedded_settings
from cellgate.context import RequestContext
from cellgate.service.allinone import AllInOne

TOKEN = "demo-admin-token"
HEADERS = {"Authorization": f"Bearer {TOKEN}"}
CELL_DEADLINE = 2.0


class DemoFailed(Exception):
    """A scenario check did not hold."""


class Scenario:
    def __init__(self, echo: Callable[[str], None]) -> None:
        self.echo = echo
        self.failures = 0

    @contextmanager
    def step(self, title: str) -> Iterator[list[str]]:
        notes: list[str] = []
        started = time.perf_counter()
        try:
            yield notes
        except DemoFailed as exc:
            self.failures += 1
            self.echo(f"FAIL  {title}: {exc}")
            return
        elapsed = (time.perf_counter() - started) * 1000
        self.echo(f"ok    {title}  ({elapsed:.0f} ms)")
        for note in notes:
            self.echo(f"        {note}")


def check(condition: bool, message: str) -> None:
    if not condition:
        raise DemoFailed(message)


def run_demo(data_dir: Path | None, echo: Callable[[str], None]) -> bool:
    with tempfile.TemporaryDirectory(prefix="cellgate-demo-") as tmp:
        root = data_dir or Path(tmp)
        settings = embedded_settings(root)
        service = replace(
            settings.service,
            tokens=(TokenGrant(TOKEN, "demo", ("admin", "member")),),
            port=0,
            cell_timeout=CELL_DEADLINE,
            heartbeat_interval=1.0,
        )
        settings = replace(settings, service=service)
        echo(f"cellgate demo: all-in-one deployment in {root}")
        with (
            AllInOne(settings) as deployment,
            httpx.Client(base_url=deployment.url, headers=HEADERS, timeout=30) as http,
        ):
            echo(f"API at {deployment.url}\n")
            scenario = Scenario(echo)
            _scenario(scenario, deployment, http, root)
    echo("")
    echo(
        "demo passed: every check held"
        if not scenario.failures
        else f"demo FAILED: {scenario.failures} step(s) did not hold"
    )
    return scenario.failures == 0


def _json(response: httpx.Response, status: int = 200) -> Any:
    check(
        response.status_code == status,
        f"{response.request.method} {response.request.url.path}: "
        f"HTTP {response.status_code} {response.text[:200]}",
    )
    return response.json() if response.content else None


def _scenario(s: Scenario, d: AllInOne, http: httpx.Client, root: Path) -> None:
    booted: list[dict[str, Any]] = []
    with s.step("GET /healthz") as notes:
        notes.append(str(_json(http.get("/healthz"))))
    with s.step("GET /v1/cells: cell0 and two cells, all healthy") as notes:
        cells = _json(http.get("/v1/cells"))["cells"]
        check({c["name"] for c in cells} == {"cell0", "cell1", "cell2"}, f"cells: {cells}")
        check(all(c["health"]["reachable"] for c in cells), "a cell is unreachable")
        notes += [f"{c['name']}: {c['transport_url']}  {c['database_connection']}" for c in cells]
    with s.step("operator adds cell3 (mapping, migration, worker) and reloads") as notes:
        d.add_cell("cell3")
        names = [c["name"] for c in _json(http.get("/v1/cells"))["cells"]]
        check("cell3" in names, f"cell3 missing from {names}")
        notes.append(f"cells now: {', '.join(names)}")
    with s.step("discover hosts from the cells' service rows") as notes:
        results = admin.discover_hosts(d.app)
        hosts = _json(http.get("/v1/hosts"))["hosts"]
        check(len(hosts) == 3, f"hosts: {hosts}")
        notes.append(", ".join(f"{h['host']} -> {h['cell_name']}" for h in hosts))
        check(len(results) == 3, f"discovery covered {len(results)} cells")
    with s.step("boot 6 instances: the scheduler spreads them over the cells") as notes:
        for i in range(6):
            booted.append(
                _json(http.post("/v1/instances", json={"name": f"vm{i}"}), 202)["instance"]
            )
        spread = sorted({b["cell"] for b in booted})
        check(spread == ["cell1", "cell2", "cell3"], f"spread: {spread}")
        notes.append(", ".join(f"{b['name']}@{b['cell']}" for b in booted))
    with s.step("show each instance (mapping -> cell -> its database) until active") as notes:
        deadline = time.monotonic() + 15
        for b in booted:
            while True:
                shown = _json(http.get(f"/v1/instances/{b['uuid']}"))["instance"]
                if shown["status"] == "active" or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            check(shown["status"] == "active", f"{b['name']} is {shown['status']}")
        notes.append(f"all 6 active, each built by its cell's worker (e.g. host {shown['host']})")
    with s.step("list across cells, two per page") as notes:
        names, marker = [], None
        while True:
            params = {"limit": 2, **({"marker": marker} if marker else {})}
            page = _json(http.get("/v1/instances", params=params))
            names += [i["name"] for i in page["instances"]]
            marker = page["next_marker"]
            if not marker:
                break
        check(sorted(names) == [f"vm{i}" for i in range(6)], f"listed {names}")
        notes.append(f"pages merged in creation order: {', '.join(names)}")
    target = booted[0]
    with s.step(f"stop, start and reboot {target['name']} by RPC to its cell") as notes:
        for action, state in (("stop", "stopped"), ("start", "active"), ("reboot", "active")):
            result = _json(
                http.post(f"/v1/instances/{target['uuid']}/action", json={"action": action})
            )["instance"]
            check(result["status"] == state, f"{action}: {result['status']}")
            notes.append(f"{action} -> {state}")
        refused = http.post(f"/v1/instances/{target['uuid']}/action", json={"action": "start"})
        check(refused.status_code == 409, f"start on active gave {refused.status_code}")
        notes.append("start while active -> 409 InvalidState")
    down = "cell2"
    lock = sqlite3.connect(root / f"{down}.sqlite", timeout=1, isolation_level=None)
    try:
        d.stop_worker(down)
        lock.execute("BEGIN EXCLUSIVE")  # the cell's database stops answering
        with s.step(f"{down} goes down: list still answers within the deadline") as notes:
            started = time.perf_counter()
            page = _json(http.get("/v1/instances"))
            took = time.perf_counter() - started
            check([c["name"] for c in page["down_cells"]] == [down], f"down: {page['down_cells']}")
            minimal = [i for i in page["instances"] if i.get("cell_down")]
            in_down = [b for b in booted if b["cell"] == down]
            check(len(minimal) == len(in_down), f"{len(minimal)} minimal records")
            check(len(page["instances"]) == 6, f"{len(page['instances'])} instances listed")
            check(took < CELL_DEADLINE + 2, f"took {took:.1f}s")
            notes.append(
                f"answered in {took:.1f}s (deadline {CELL_DEADLINE:g}s); "
                f"{len(minimal)} instance(s) of {down} shown as UNKNOWN"
            )
    finally:
        if lock.in_transaction:
            lock.execute("ROLLBACK")
        lock.close()
    with s.step(f"{down} recovers without a restart") as notes:
        d.start_worker(d.app.cells.get(RequestContext(request_id="req-demo"), down))
        page = _json(http.get("/v1/instances"))
        check(page["down_cells"] == [], f"still down: {page['down_cells']}")
        check(not any(i.get("cell_down") for i in page["instances"]), "minimal records remain")
        notes.append("full records again from every cell")
    with s.step("delete every instance") as notes:
        for b in booted:
            _json(http.delete(f"/v1/instances/{b['uuid']}"), 204)
        left = _json(http.get("/v1/instances"))["instances"]
        check(left == [], f"left: {left}")
        notes.append("6 deleted; list is empty")
