"""Every PostgreSQL call ends on the client side, even when the server never answers.

``statement_timeout`` is enforced by the server, and TCP keepalives and
``tcp_user_timeout`` by the peer's kernel: a frozen backend (SIGSTOP) or a
proxy that stops relaying still ACKs every byte, so none of them ends a call.
Each test here freezes a real server the tests started (``tests/ha/postgres.py``,
never the shared one) or stalls a real connection through the project's fault
proxy, and checks that the call fails with :class:`BackendTimeout`, that the
abandoned connection is never handed out again, and that the engine works
once the fault is gone. The only time bound checked is a generous cap
(:data:`CAP`, several times the deadline) that a hung call would pass.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
from sqlalchemy import text
from sqlalchemy.engine import Engine

from cellgate import App, RequestContext, load_settings
from cellgate.apidb.mappings import create_cell
from cellgate.errors import BackendTimeout, CellgateError
from cellgate.migrations.runner import MigrationLine, upgrade
from cellgate.sql.api_database import ApiDatabase
from cellgate.sql.engines import make_engine, translate_errors
from cellgate.urls import DatabaseURL, TemplateDefaults
from tests.ha.postgres import PgServer
from tests.support import Server, TcpProxy

pytestmark = [pytest.mark.cluster, pytest.mark.xdist_group("postgres-ha")]

QUERY_TIMEOUT = 3.0
CONNECT_TIMEOUT = 2.0
#: A call still blocked after this long is taken as hung (the deadline is
#: ``QUERY_TIMEOUT`` plus a second of grace; a pre-ping adds a reconnect).
CAP = 6 * QUERY_TIMEOUT


def _bounded(call: Callable[[], Any], heal: Callable[[], None]) -> Any:
    """Run ``call`` in a thread; its result, or raise its error; fail if still blocked at CAP.

    ``heal`` ends the fault before failing, so that the hung call (and the
    test's own clean-up, which waits for it) can finish.
    """
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = call()
        except BaseException as exc:  # re-raised in the test's thread
            outcome["error"] = exc

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(CAP)
    if worker.is_alive():
        heal()
        pytest.fail(f"the call was still blocked after {CAP:g} s: no client-side deadline")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _engine(url: Any) -> Engine:
    return make_engine(url, connect_timeout=CONNECT_TIMEOUT, query_timeout=QUERY_TIMEOUT)


def _pid(conn: sqlalchemy.Connection) -> int:
    return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


def _checkout_pid(engine: Engine) -> int:
    with engine.connect() as conn:
        return _pid(conn)


def _select_one(engine: Engine) -> int:
    with translate_errors("test database"), engine.connect() as conn:
        return int(conn.execute(text("SELECT 1")).scalar_one())


@pytest.fixture
def solo(solo_postgres: PgServer) -> Iterator[PgServer]:
    yield solo_postgres
    solo_postgres.resume()  # whatever the test did, the next one finds it running


def test_a_statement_to_a_frozen_backend_times_out_and_its_connection_is_dropped(
    solo: PgServer,
) -> None:
    engine = _engine(solo.url())
    try:
        with engine.connect() as conn:
            frozen = _pid(conn)
            solo.freeze(frozen)

            def statement() -> None:
                with translate_errors("test database"):
                    conn.execute(text("SELECT 1"))

            with pytest.raises(BackendTimeout, match="did not answer in time|timed out"):
                _bounded(statement, solo.resume)
        assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
        # The postmaster still answers, so the pool goes on, on a new backend:
        # the abandoned connection was not returned to it.
        assert _bounded(lambda: _checkout_pid(engine), solo.resume) != frozen
        solo.resume()
        with engine.connect() as conn:
            assert _pid(conn) != frozen
    finally:
        solo.resume()
        engine.dispose()


def test_a_pooled_connection_whose_backend_froze_is_replaced_at_checkout(
    solo: PgServer,
) -> None:
    engine = _engine(solo.url())
    try:
        with engine.connect() as conn:
            frozen = _pid(conn)
        solo.freeze(frozen)  # idle in the pool: the pre-ping meets it
        assert _bounded(lambda: _checkout_pid(engine), solo.resume) != frozen
    finally:
        solo.resume()
        engine.dispose()


def test_a_frozen_server_times_out_every_call_and_the_engine_recovers(solo: PgServer) -> None:
    engine = _engine(solo.url())
    try:
        assert _select_one(engine) == 1
        solo.freeze()  # the postmaster and every backend
        for _ in range(2):  # the pooled connection, then a new one (connect timeout)
            with pytest.raises(BackendTimeout):
                _bounded(lambda: _select_one(engine), solo.resume)
        solo.resume()
        assert _bounded(lambda: _select_one(engine), solo.resume) == 1
    finally:
        solo.resume()
        engine.dispose()


@pytest.fixture
def proxy(network_server: Server) -> Iterator[TcpProxy]:
    port = 3306 if network_server.kind == "mariadb" else 5432
    with TcpProxy("127.0.0.1", port) as p:
        yield p


def _through(server: Server, proxy: TcpProxy) -> Any:
    url = server.new_database()
    return url.sqlalchemy_url.set(host="127.0.0.1", port=proxy.port)


def test_a_stalled_connection_times_out_and_the_engine_recovers(
    network_server: Server, proxy: TcpProxy
) -> None:
    """A partition on a live connection: the proxy holds every answer (MariaDB too)."""
    engine = _engine(DatabaseURL(_through(network_server, proxy)))
    try:
        assert _select_one(engine) == 1
        with engine.connect() as conn:
            proxy.latency = 3600.0  # nothing the server sends gets through

            def statement() -> None:
                with translate_errors("test database"):
                    conn.execute(text("SELECT 1"))

            with pytest.raises(BackendTimeout):
                _bounded(statement, proxy.close)
        proxy.latency = 0.0
        proxy.drop()  # the held answers go with their connections
        assert _bounded(lambda: _select_one(engine), proxy.close) == 1
        assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    finally:
        engine.dispose()


def test_a_blackholed_server_times_out_and_the_engine_recovers(
    network_server: Server, proxy: TcpProxy
) -> None:
    """A partition that closes the live connections and holds every new one."""
    engine = _engine(DatabaseURL(_through(network_server, proxy)))
    try:
        assert _select_one(engine) == 1
        proxy.blackhole()
        for _ in range(2):
            with pytest.raises(BackendTimeout):
                _bounded(lambda: _select_one(engine), proxy.close)
        proxy.forward()
        assert _bounded(lambda: _select_one(engine), proxy.close) == 1
    finally:
        engine.dispose()


# -- the service's view: many threads, one stalled cell (issue 12.2's 20 lists) ---------------

THREADS = 20


def _migrated(url: DatabaseURL, line: MigrationLine) -> DatabaseURL:
    engine = make_engine(url, connect_timeout=5, query_timeout=30)
    upgrade(engine, line)
    engine.dispose()
    return url


def test_concurrent_calls_through_a_stall_give_back_every_pool_slot(
    network_server: Server, proxy: TcpProxy, tmp_path: Path
) -> None:
    """20 threads on one cell whose database stalls for 4 s, then heals: all recover.

    The breaker is off (``breaker_threshold = 0``), so every call meets the
    database. Before the client-side deadline, PostgreSQL's pool slots stayed
    with threads that never returned and the cell never served again.
    """
    api_url = _migrated(network_server.new_database(), MigrationLine.API)
    cell_url = _migrated(network_server.new_database(), MigrationLine.CELL)
    proxied = DatabaseURL(cell_url.sqlalchemy_url.set(host="127.0.0.1", port=proxy.port))
    conf = tmp_path / "app.conf"
    conf.write_text(
        f"[api_database]\nconnection = {api_url.render(hide_password=False)}\n"
        f"[database]\nconnect_timeout = {CONNECT_TIMEOUT:g}\nquery_timeout = {QUERY_TIMEOUT:g}\n"
        "[cells]\nbreaker_threshold = 0\n",
        encoding="utf-8",
    )
    settings = load_settings(conf)
    api = ApiDatabase(settings.api_database)
    with api.session() as s:
        create_cell(
            s,
            name="stalled",
            transport_url="memory://stalled",
            database_connection=proxied.render(hide_password=False),
            defaults=TemplateDefaults(database=None, transport=None),
        )
    api.close()
    outcomes: list[tuple[float, str]] = []  # (when it returned, "ok" or the error's class)
    lock = threading.Lock()
    stop = threading.Event()
    with App(settings) as app:

        def client() -> None:
            while not stop.is_set():
                try:
                    with (
                        app.target_cell(RequestContext(), "stalled") as cctx,
                        app.db.session(cctx) as session,
                    ):
                        session.execute(text("SELECT 1"))
                    result = "ok"
                except CellgateError as exc:
                    result = type(exc).__name__
                with lock:
                    outcomes.append((time.monotonic(), result))
                time.sleep(0.02)

        threads = [threading.Thread(target=client, daemon=True) for _ in range(THREADS)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        proxy.latency = 3600.0  # the partition: nothing comes back
        time.sleep(4.0)
        proxy.latency = 0.0  # healed (answers held until now stay held: those calls time out)
        healed = time.monotonic()
        deadline = healed + CAP
        while time.monotonic() < deadline:
            with lock:
                late_ok = sum(1 for when, r in outcomes if r == "ok" and when > healed + CAP / 3)
            if late_ok >= THREADS:
                break
            time.sleep(0.2)
        stop.set()
        join_by = time.monotonic() + CAP
        for t in threads:
            t.join(max(0.0, join_by - time.monotonic()))
        hung = sum(t.is_alive() for t in threads)
        if hung:
            proxy.close()  # let them go before the App closes
        assert not hung, f"{hung} of {THREADS} threads never returned"
        assert app.engines.checked_out() == 0
    errors = {r for _, r in outcomes if r != "ok"}
    assert errors <= {"CellTimeout", "CellUnavailable"}, errors
    assert "CellTimeout" in errors  # the stall was seen, as a timeout
    assert late_ok >= THREADS, f"only {late_ok} calls succeeded after the heal"
