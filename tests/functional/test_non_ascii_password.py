"""A non-ASCII database password works on the real servers (issue 13.5).

PyMySQL encodes a ``str`` password as latin-1, so a MariaDB user made with a
non-ASCII password through a UTF-8 client (as here, and as the ``mysql``
client does) was refused with a plain "Access denied", and a character
outside latin-1 could not be sent at all. cellgate now sends the UTF-8 bytes
the server hashed. PostgreSQL (libpq, UTF-8) is checked alike. Each test
gives a fresh user such a password; the user is dropped with its database.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.functional.conftest import Deployment, make_deployment
from tests.support import Server, _mariadb, _pg_literal, _postgres

#: Latin-1 letters (sent wrongly before) and characters outside latin-1 (not sendable).
PASSWORD = "pässwörd-Ω✓-"


@pytest.fixture
def non_ascii_db(network_server: Server) -> tuple[str, str]:
    """``(url, password)``: a fresh database whose owner now has a non-ASCII password.

    The database and its user come from the server fixture (dropped with it);
    only the password is changed here, through a UTF-8 client.
    """
    made = network_server.new_database()
    name = made.database or ""
    password = PASSWORD + secrets.token_hex(3)
    if network_server.kind == "mariadb":
        with _mariadb() as conn, conn.cursor() as cur:  # utf8mb4, as the mysql client
            cur.execute(f"ALTER USER '{name}'@'%%' IDENTIFIED BY %s", (password,))
        url = f"mysql+pymysql://{name}:{quote(password, safe='')}@127.0.0.1:3306/{name}"
    else:
        with _postgres() as conn:
            conn.execute(f"ALTER ROLE {name} PASSWORD {_pg_literal(password)}")  # type: ignore[arg-type]
        url = f"postgresql+psycopg://{name}:{quote(password, safe='')}@127.0.0.1:5432/{name}"
    return url, password


@pytest.fixture
def network_deployment(network_server: Server, tmp_path: Path) -> Deployment:
    return make_deployment(network_server, tmp_path)


def test_a_cell_with_a_non_ascii_password_is_created_verified_and_migrated(
    network_deployment: Deployment, non_ascii_db: tuple[str, str]
) -> None:
    d = network_deployment
    url, password = non_ascii_db
    d.secrets.extend([password, quote(password, safe="")])
    d.run("api-db", "sync")
    d.run("cell", "create", "--name", "intl", "--transport-url", "memory://intl",
          "--database-connection", url)  # fmt: skip
    d.run("db", "sync", "--cell", "intl")  # connects, migrates: the password was accepted
    verify = d.run("cell", "verify", "intl", "--json")
    (report,) = json.loads(verify.stdout)
    checks = {c["component"]: c for c in report["checks"]}
    assert report["ok"] and checks["database"]["ok"], verify.stdout
