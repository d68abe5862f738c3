"""A password in the URL's query string (``?password=p@ss``) against real servers.

PyMySQL and libpq both take ``password`` as a query parameter, and an ``@``
inside it need not be encoded; the maskers once took the last ``@`` as the
end of the userinfo and showed such a URL whole (issue 12.1). Here the cell
really connects with that URL (``cell verify`` passes), and every place that
shows or stores a URL is scanned: CLI output (plain and ``--json``), the
dry-run diff, the audit rows as stored, the API's cell endpoints, and logs.
"""

from __future__ import annotations

import logging
from pathlib import Path
from urllib.parse import quote, unquote

import httpx
import pytest
import sqlalchemy

from cellgate import App, load_settings
from cellgate.errors import InvalidURL
from cellgate.logs import RedactingFilter
from cellgate.service.http import create_api
from cellgate.service.runner import HttpServer
from cellgate.urls import DatabaseURL
from tests.functional.conftest import make_deployment
from tests.functional.test_secret_scanner import Scanner, Secret
from tests.support import Server

TOKEN = "adm-tok-Qy7pX3"


def query_form(url: DatabaseURL, *, key: str = "password") -> tuple[str, Secret]:
    """``url`` with its password moved into the query, ``@`` and ``#`` left raw."""
    sa = url.sqlalchemy_url
    password = str(sa.password)
    assert "@" in password
    written = quote(password, safe="@:/,?")
    raw = f"{sa.drivername}://{sa.username}@{sa.host}/{sa.database}?{key}={written}"
    return raw, Secret("query-string password", password, sa.username)


def pieces(secret: Secret) -> Secret:
    """What a mask cut at the ``@`` lets through: the part after it, as a secret."""
    return Secret("after the '@'", secret.password.split("@", 1)[1], None)


def test_a_query_string_password_is_masked_everywhere(
    network_server: Server, tmp_path: Path
) -> None:
    d = make_deployment(network_server, tmp_path)
    first, secret = query_form(d.new_cell_url())
    second, secret2 = query_form(d.new_cell_url(), key="pass%77ord")
    scanner = Scanner([secret, pieces(secret), secret2, pieces(secret2)])
    d.run("api-db", "sync")
    outputs = [
        d.run(
            "cell",
            "create",
            "--name",
            "q",
            "--transport-url",
            "memory://q",
            "--database-connection",
            first,
        ),
        d.run("db", "sync", "--cell", "q"),
        d.run("cell", "verify", "q"),  # the driver reads the password from the query
        d.run("cell", "list"),
        d.run("cell", "list", "--json"),
        d.run("cell", "show", "q"),
        d.run("cell", "show", "q", "--json"),
        d.run("cell", "update", "q", "--database-connection", second, "--dry-run"),
        d.run("cell", "update", "q", "--database-connection", second, "--dry-run", "--json"),
        d.run("cell", "update", "q", "--database-connection", second),
        d.run("db", "sync", "--cell", "q"),
        d.run("cell", "verify", "q"),  # a percent-encoded key is still "password"
        d.run("cell", "history", "q"),
        d.run("cell", "history", "q", "--json"),
    ]
    for i, result in enumerate(outputs):
        scanner.scan(f"CLI output {i}", result.output)
    assert "?password=***" in outputs[3].output
    assert unquote(d.revealed("q")["database_connection"]) == unquote(second)

    engine = sqlalchemy.create_engine(d.api_url.sqlalchemy_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sqlalchemy.text("SELECT changes FROM cell_mapping_audit")).all()
    finally:
        engine.dispose()
    assert rows
    for (changes,) in rows:
        scanner.scan("audit row", changes)

    conf = d.config_file
    conf.write_text(conf.read_text() + f"[api]\nauth_tokens = {TOKEN}:admin:admin\n")
    settings = load_settings(conf)
    with App(settings) as app:
        server = HttpServer(create_api(app, settings.service), "127.0.0.1", 0).start()
        try:
            for path in ("/v1/cells", "/v1/cells/q"):
                got = httpx.get(
                    f"{server.url}{path}", headers={"Authorization": f"Bearer {TOKEN}"}
                )
                assert got.status_code == 200, got.text
                scanner.scan(f"GET {path}", got.text)
        finally:
            server.stop()

    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "cannot use %s", (first,), None)
    RedactingFilter().filter(record)
    scanner.scan("log record", record.getMessage())
    scanner.assert_clean()


@pytest.mark.parametrize("kind", ["mariadb", "postgresql"])
def test_an_at_after_a_port_in_the_query_is_refused(kind: str, tmp_path: Path) -> None:
    """With a port, SQLAlchemy reads ``u@h:1/db?password=p@ss`` as user ``u@h``: refuse it."""
    scheme = "mysql+pymysql" if kind == "mariadb" else "postgresql+psycopg"
    with pytest.raises(InvalidURL) as raised:
        DatabaseURL.parse(f"{scheme}://u@127.0.0.1:5432/db?password=Qp@ss-7Hk2")
    assert "ss-7Hk2" not in str(raised.value)
