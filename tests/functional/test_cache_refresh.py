"""The mapping cache's background refresh against a hung API database (MariaDB, PostgreSQL).

The API database is reached through a :class:`~tests.support.TcpProxy`. Once
``cache_ttl`` has passed with the proxy blackholed, lookups of cached cells
must still answer at once (stale-while-revalidate): only the background
refresh waits out ``[api_database] connect_timeout``, fails, and is logged
(without the password). After ``forward()`` the next refresh succeeds, and a
mapping change made meanwhile becomes visible without ``invalidate()``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cellgate import App, RequestContext, load_settings
from cellgate.apidb.mappings import create_cell
from cellgate.apidb.updates import update_cell
from cellgate.config import ApiDatabaseSettings
from cellgate.errors import BackendTimeout, BackendUnavailable
from cellgate.sql.api_database import ApiDatabase
from cellgate.urls import DatabaseURL, TemplateDefaults
from tests.functional.test_e2e_processes import wait_for
from tests.support import Server, TcpProxy

pytestmark = pytest.mark.backends

CTX = RequestContext(request_id="req-cache-refresh")
DEFAULTS = TemplateDefaults(database=None, transport=None)

CONNECT_TIMEOUT = 4.0  # [api_database] connect_timeout and query_timeout
CACHE_TTL = 1.0  # [cells] cache_ttl
FAST = CONNECT_TIMEOUT / 2  # a lookup of a cached cell answers well within this
SLACK = 4.0  # added to every "it ends" bound: a loaded CI machine, never a hidden hang
RECOVERY = 20.0


def _port(server: Server) -> int:
    return 3306 if server.kind == "mariadb" else 5432


@pytest.fixture
def direct(network_server: Server) -> Iterator[ApiDatabase]:
    """The API database, migrated and with two cells, reached without the proxy."""
    url = network_server.new_database()
    api = ApiDatabase(ApiDatabaseSettings(url))
    try:
        api.upgrade()
        with api.session() as s:
            for name in ("alpha", "beta"):  # each its own (never used) database
                create_cell(
                    s,
                    name=name,
                    transport_url=f"memory://{name}",
                    database_connection=network_server.new_database().render(hide_password=False),
                    defaults=DEFAULTS,
                )
        yield api
    finally:
        api.close()


@pytest.fixture
def proxy(network_server: Server) -> Iterator[TcpProxy]:
    with TcpProxy("127.0.0.1", _port(network_server)) as p:
        yield p


@pytest.fixture
def app(direct: ApiDatabase, proxy: TcpProxy, tmp_path: Path) -> Iterator[App]:
    url = direct.settings.connection
    proxied = DatabaseURL(url.sqlalchemy_url.set(port=proxy.port))
    conf = tmp_path / "cache.conf"
    conf.write_text(
        f"[DEFAULT]\nstate_path = {tmp_path / 'state'}\n"
        "[api_database]\n"
        f"connection = {proxied.render(hide_password=False)}\n"
        f"connect_timeout = {CONNECT_TIMEOUT:g}\n"
        f"query_timeout = {CONNECT_TIMEOUT:g}\n"
        f"[cells]\ncache_ttl = {CACHE_TTL:g}\n",
        encoding="utf-8",
    )
    with App(load_settings(conf)) as application:
        yield application


def test_a_hung_api_database_costs_lookups_nothing_after_the_ttl(
    app: App, direct: ApiDatabase, proxy: TcpProxy, caplog: pytest.LogCaptureFixture
) -> None:
    password = str(direct.settings.connection.sqlalchemy_url.password)
    assert len(password) >= 3, "the test databases' URLs carry passwords"
    beta = app.cells.get(CTX, "beta").uuid
    assert app.cells.get(CTX, "alpha").disabled is False
    assert not app.cells.refresh_failed

    proxy.blackhole()
    with direct.session() as s:  # a change the App cannot see while its API database hangs
        update_cell(s, "alpha", disabled=True, defaults=DEFAULTS)
    time.sleep(CACHE_TTL * 1.5)  # the snapshot is now past its TTL

    with caplog.at_level(logging.INFO, "cellgate.routing.cache"):
        # Lookups answer from the snapshot at once, while the refresh hangs behind them.
        slowest = 0.0
        until = time.monotonic() + CONNECT_TIMEOUT + 1
        while time.monotonic() < until or not app.cells.refresh_failed:
            started = time.monotonic()
            assert app.cells.get(CTX, "alpha").disabled is False  # the stale snapshot
            assert app.cells.get(CTX, beta).name == "beta"
            assert len(app.cells.list(CTX, include_disabled=True)) == 2
            slowest = max(slowest, time.monotonic() - started)
            assert time.monotonic() < until + CONNECT_TIMEOUT + SLACK, "no refresh failed"
            time.sleep(0.05)
        assert slowest < FAST, f"a cached lookup took {slowest:.1f} s with the API database hung"
        age = app.cells.age
        assert age is not None and age > CONNECT_TIMEOUT  # how stale, for /metrics
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert warnings and "refreshing them failed" in warnings[0], warnings
        assert "API database" in warnings[0], warnings
        assert password not in caplog.text

        # A miss cannot be answered from memory: the outage, after one connect timeout.
        started = time.monotonic()
        with pytest.raises((BackendTimeout, BackendUnavailable)):
            app.cells.get(CTX, "gamma")
        assert time.monotonic() - started < 2 * CONNECT_TIMEOUT + SLACK

        # Back: a later refresh succeeds and brings the change made meanwhile.
        proxy.forward()
        wait_for(
            "the change made during the outage",
            lambda: app.cells.get(CTX, "alpha").disabled,
            RECOVERY,
            0.1,
        )
        assert not app.cells.refresh_failed
        age = app.cells.age
        assert age is not None and age < CACHE_TTL + SLACK
        assert password not in caplog.text
