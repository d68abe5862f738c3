"""A PostgreSQL multi-host URL connects to the server that fits, on the local PostgreSQL.

The first host is a closed port (refused at once), the second the local
server: libpq tries them in order. ``target_session_attrs`` is honoured:
``read-write`` takes the local primary, ``read-only`` finds no server that
fits and is a :class:`BackendUnavailable`, one line, the password masked.
The primary/standby failover itself is tests/ha/test_pg_failover.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from sqlalchemy import text

from cellgate.errors import BackendUnavailable
from cellgate.sql.engines import make_engine, translate_errors
from cellgate.urls import DatabaseURL
from tests.support import Server

pytestmark = pytest.mark.backends


@pytest.fixture
def postgres(tmp_path: Path) -> Iterator[Server]:
    srv = Server("postgresql", tmp_path)
    srv.check()
    yield srv
    srv.drop_all()


def _multi_host(server: Server, attrs: str) -> tuple[DatabaseURL, str]:
    single = server.new_database().sqlalchemy_url
    password = single.password or ""
    raw = (
        f"postgresql+psycopg://{single.username}:{quote(password, safe='')}@/{single.database}"
        f"?host=127.0.0.2:1&host=127.0.0.1:5432&target_session_attrs={attrs}"
    )
    return DatabaseURL.parse(raw), password


def test_a_multi_host_url_reaches_the_first_server_that_fits(postgres: Server) -> None:
    url, _ = _multi_host(postgres, "read-write")
    engine = make_engine(url, connect_timeout=2, query_timeout=5)
    try:
        with translate_errors("test database"), engine.connect() as conn:
            row = conn.execute(
                text("SELECT current_database(), inet_server_port(), pg_is_in_recovery()")
            ).one()
        assert tuple(row) == (url.database, 5432, False)
    finally:
        engine.dispose()


def test_no_server_fitting_target_session_attrs_is_unavailable(postgres: Server) -> None:
    url, password = _multi_host(postgres, "read-only")
    engine = make_engine(url, connect_timeout=2, query_timeout=5)
    try:
        with (
            pytest.raises(BackendUnavailable) as caught,
            translate_errors("test database", address=str(url)),
            engine.connect(),
        ):
            pass
    finally:
        engine.dispose()
    message = str(caught.value)
    assert "\n" not in message
    assert password not in message and quote(password, safe="") not in message
