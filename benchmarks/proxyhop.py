"""What cellgate's routing costs next to one proxy hop (HAProxy) on the same read.

Query routers in the Vitess or ProxySQL style put a process between the
client and the database: every statement pays a network hop more. cellgate
routes inside the client instead (a dict lookup, a context, a session on an
engine it keeps). ``routing_overhead_over_proxy_hop`` compares the two on the
same "show instance" read of cell 1, sampled in rotation in one run::

    (routed - direct) / (through HAProxy - direct)

where *direct* is a session on an engine for cell 1 already in hand, *routed*
is the whole cellgate path (``benchmarks.routing.show_functions``) and
*through HAProxy* is the direct read on an engine whose URL points at an
HAProxy (Debian's package, TCP mode, started here on a fixed loopback port)
in front of the same server. SQLite has no network to put a proxy on: the
figure is null there, with the reason.
"""

from __future__ import annotations

import itertools
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy.orm import Session

from benchmarks.deploy import PROJECT, Deployment
from benchmarks.routing import Plan, show_functions
from benchmarks.stats import Series, rotated
from cellgate import App
from cellgate.celldb import queries
from cellgate.sql.engines import make_engine
from cellgate.urls import DatabaseURL

#: HAProxy's listen port: fixed, outside the ephemeral range, apart from the test fixtures'.
PORT = 23480
HAPROXY = "haproxy"
START_TIMEOUT = 10.0


def unavailable(d: Deployment) -> str | None:
    if d.backend == "sqlite":
        return "SQLite has no network hop to put a proxy on: run with --backend mariadb|postgresql"
    if shutil.which(HAPROXY) is None and not Path("/usr/sbin/haproxy").exists():
        return "haproxy is not installed (scripts/packages installs it)"
    return None


@contextmanager
def haproxy(target_port: int) -> Iterator[int]:
    """An HAProxy forwarding :data:`PORT` to ``127.0.0.1:target_port``; yields its port."""
    binary = shutil.which(HAPROXY) or "/usr/sbin/haproxy"
    with tempfile.TemporaryDirectory(prefix="cgb-haproxy-") as tmp:
        config = Path(tmp) / "haproxy.cfg"
        config.write_text(
            "global\n    maxconn 200\n"
            "defaults\n    mode tcp\n    timeout connect 2s\n"
            "    timeout client 60s\n    timeout server 60s\n"
            f"listen cell\n    bind 127.0.0.1:{PORT}\n"
            f"    server db 127.0.0.1:{target_port}\n",
            encoding="utf-8",
        )
        proc = subprocess.Popen(
            [binary, "-db", "-f", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + START_TIMEOUT
            while True:
                try:
                    socket.create_connection(("127.0.0.1", PORT), timeout=0.5).close()
                    break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"haproxy did not start on port {PORT}") from None
                    time.sleep(0.05)
            yield PORT
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


def overhead_over_hop(app: App, d: Deployment, plan: Plan) -> tuple[float, Series, Series, Series]:
    """``(ratio, routed, direct, proxied)``: see the module docstring."""
    routed, direct = show_functions(app, d)
    url = app.db.url_for(d.cells[0])
    port = url.sqlalchemy_url.port or (3306 if d.backend == "mariadb" else 5432)
    settings = app.settings.database
    with haproxy(port) as hop:
        proxied_url = DatabaseURL(url.sqlalchemy_url.set(port=hop))
        engine = make_engine(
            proxied_url,
            connect_timeout=settings.connect_timeout,
            query_timeout=settings.query_timeout,
        )
        ids = itertools.cycle(d.instances)

        def proxied() -> object:
            with Session(engine, expire_on_commit=False) as session, session.begin():
                found = queries.get_instance(session, next(ids), project_id=PROJECT)
            assert found is not None
            return found

        try:
            a, b, c = rotated(
                [routed, direct, proxied], samples=plan.micro_samples, target_s=plan.target_s
            )
        finally:
            engine.dispose()
    hop_cost = c.median - b.median
    ratio = (a.median - b.median) / hop_cost if hop_cost > 0 else float("inf")
    return ratio, a, b, c
