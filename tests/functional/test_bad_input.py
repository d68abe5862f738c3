"""Bad input is the client's fault, never the cell's (issue 12.3).

A NUL byte in an instance name once reached PostgreSQL's driver, which
refuses it with an error that has no SQLSTATE; that was classed as an outage,
so three such requests from any tenant opened cell2's breaker for everyone.
Now the API answers 400 before any database is asked, and driver errors
about the data or the statement (psycopg's and PyMySQL's ``DataError``,
``ProgrammingError``, ``IntegrityError``, ``NotSupportedError``) are never
backend failures, whatever reaches the driver.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import sqlalchemy
import sqlalchemy.exc

from cellgate.routing.breaker import BreakerState
from cellgate.service.http import create_api
from cellgate.service.runner import HttpServer
from cellgate.sql.engines import is_backend_failure, translate_errors
from tests.functional.test_breaker import CTX, DEMO, _deployment
from tests.support import Server

BAD_NAMES = [
    "\u0000",
    "vm\u0000x",
    "a\nb",
    "a\rb",
    "\u001b[31mred",
    "tab\there",
    "\u007f",
    "\u0085",
]


def test_control_characters_are_400_and_never_open_the_breaker(
    server: Server, tmp_path: Path
) -> None:
    with _deployment(server, tmp_path) as d:
        service = HttpServer(create_api(d.app, d.app.settings.service), "127.0.0.1", 0).start()
        try:
            with httpx.Client(base_url=service.url, timeout=30, headers=DEMO) as client:
                for i in range(10):
                    name = BAD_NAMES[i % len(BAD_NAMES)]
                    got = client.post("/v1/instances", json={"name": name, "cell": "cell2"})
                    assert got.status_code == 400, got.text
                    error = got.json()["error"]
                    assert error["status"] == 400 and error["code"] == "InvalidRequest", error
                    assert "control character" in error["message"]
                bad_cell = client.post("/v1/instances", json={"name": "vm", "cell": "cell\u00002"})
                assert bad_cell.status_code == 400, bad_cell.text
                for path in ("/v1/instances/%00", "/v1/instances?marker=%00"):
                    got = client.get(path)
                    assert got.status_code == 400, (path, got.text)
                assert d.state() is BreakerState.CLOSED
                good = client.post("/v1/instances", json={"name": "vm-ok", "cell": "cell2"})
                assert good.status_code == 202, good.text
                assert client.get("/v1/instances").status_code == 200
        finally:
            service.stop()
        assert d.state() is BreakerState.CLOSED


def _driver_errors(server: Server) -> list[str]:
    """Statements each backend refuses for their data or their SQL, not for being down."""
    common = ["SELECT no_such_column FROM no_such_table", "SELEC 1", "INSERT INTO t VALUES (1)"]
    if server.kind == "postgresql":
        return [*common, "SELECT 'a\u0000b'", "SELECT 1/0", "SELECT CAST('x' AS INTEGER)"]
    return [*common, "INSERT INTO t VALUES ('abc')"]


def test_data_and_programming_errors_are_not_backend_failures(
    network_server: Server, tmp_path: Path
) -> None:
    url = network_server.new_database()
    engine = sqlalchemy.create_engine(url.sqlalchemy_url)
    try:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("CREATE TABLE t (id INTEGER PRIMARY KEY)"))
            conn.execute(sqlalchemy.text("INSERT INTO t VALUES (1)"))
            conn.commit()
        statements = [*_driver_errors(network_server), "INSERT INTO t VALUES (1)"]
        if network_server.kind == "postgresql":
            statements.append("SELECT %(v)s")
        for statement in statements:
            with engine.connect() as conn:
                with pytest.raises(sqlalchemy.exc.StatementError) as raised:
                    params = {"v": "a\u0000b"} if "%(v)s" in statement else None
                    if params:
                        conn.exec_driver_sql(statement, params)
                    else:
                        conn.execute(sqlalchemy.text(statement))
                assert not is_backend_failure(raised.value), (statement, raised.value)
                with pytest.raises(sqlalchemy.exc.StatementError), translate_errors("cell x"):
                    raise raised.value
                conn.rollback()
    finally:
        engine.dispose()
    assert CTX.request_id
