"""Real database servers for tests: one fresh database (and user) per request.

Each :class:`Server` makes uniquely named databases, each owned by a uniquely
named user whose password contains characters that must be percent-encoded,
so every backend test also proves URLs with awkward passwords work. Everything
made is dropped at teardown. Under ``CI=true`` a server that does not answer
fails the test instead of skipping it.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from urllib.parse import quote

import psycopg
import pymysql
import pytest

from cellgate.urls import DatabaseURL

MARIADB = {"host": "127.0.0.1", "port": 3306, "user": "root", "password": ""}
POSTGRES = "host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=3"
#: Seeded into every server-side test user's password (percent-encoded in URLs).
# ASCII only: PyMySQL sends passwords latin-1 encoded, so a non-ASCII password
# set through a utf8 connection never matches (see docs/deployment.md).
AWKWARD = "p@ss:w/rd%,#?"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def unavailable(what: str, exc: BaseException) -> None:
    message = f"{what} is not reachable ({exc}); start it (scripts/services; see DEVELOPERS.md)"
    if in_ci():
        pytest.fail(message)
    pytest.skip(message)


@dataclass
class Server:
    """A backend kind that can make fresh databases."""

    kind: str  # sqlite | mariadb | postgresql
    tmp_path: object
    made: list[str] = field(default_factory=list)

    def new_database(self) -> DatabaseURL:
        name = f"cgt_{secrets.token_hex(5)}"
        password = f"{AWKWARD}{secrets.token_hex(4)}"
        self.made.append(name)
        if self.kind == "sqlite":
            return DatabaseURL.parse(f"sqlite:///{self.tmp_path}/{name}.sqlite")
        if self.kind == "mariadb":
            with _mariadb() as conn, conn.cursor() as cur:
                cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
                cur.execute(f"CREATE USER '{name}'@'%%' IDENTIFIED BY %s", (password,))
                cur.execute(f"GRANT ALL ON `{name}`.* TO '{name}'@'%'")
            return DatabaseURL.parse(
                f"mysql+pymysql://{name}:{quote(password, safe='')}@127.0.0.1:3306/{name}"
            )
        with _postgres() as conn:
            conn.execute(f"CREATE ROLE {name} LOGIN PASSWORD {_pg_literal(password)}".encode())
            conn.execute(f"CREATE DATABASE {name} OWNER {name}".encode())
        return DatabaseURL.parse(
            f"postgresql+psycopg://{name}:{quote(password, safe='')}@127.0.0.1:5432/{name}"
        )

    def drop_all(self) -> None:
        if self.kind == "mariadb" and self.made:
            with _mariadb() as conn, conn.cursor() as cur:
                for name in self.made:
                    cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
                    cur.execute(f"DROP USER IF EXISTS '{name}'@'%'")
        elif self.kind == "postgresql" and self.made:
            with _postgres() as conn:
                for name in self.made:
                    conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)".encode())
                    conn.execute(f"DROP ROLE IF EXISTS {name}".encode())
        self.made.clear()

    def check(self) -> None:
        try:
            if self.kind == "mariadb":
                _mariadb().close()
            elif self.kind == "postgresql":
                _postgres().close()
        except Exception as exc:  # any failure to connect means "not available"
            unavailable(self.kind, exc)


def _pg_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _mariadb() -> pymysql.connections.Connection[pymysql.cursors.Cursor]:
    return pymysql.connect(**MARIADB, connect_timeout=3, autocommit=True)  # type: ignore[arg-type]


def _postgres() -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(POSTGRES, autocommit=True)


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


@dataclass
class Broker:
    """The local RabbitMQ: fresh vhosts, each with its own user and awkward password."""

    made: list[str] = field(default_factory=list)

    def check(self) -> None:
        try:
            with socket.create_connection(("127.0.0.1", 5672), timeout=3):
                pass
        except OSError as exc:
            unavailable("RabbitMQ", exc)

    def new_vhost(self) -> str:
        """A transport URL for a new vhost owned by a new user."""
        name = f"cgt_{secrets.token_hex(5)}"
        password = f"{AWKWARD}{secrets.token_hex(4)}"
        self.made.append(name)
        _rabbitmqctl("add_vhost", name)
        _rabbitmqctl("add_user", name, password)
        _rabbitmqctl("set_permissions", "-p", name, name, ".*", ".*", ".*")
        return f"rabbit://{name}:{quote(password, safe='')}@127.0.0.1:5672/{name}"

    def drop_all(self) -> None:
        for name in self.made:
            _rabbitmqctl("delete_vhost", name)
            _rabbitmqctl("delete_user", name)
        self.made.clear()


@contextmanager
def blackhole() -> Iterator[int]:
    """A 127.0.0.1 port that accepts TCP connections and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)  # the kernel completes handshakes; nobody ever reads
        yield sock.getsockname()[1]
