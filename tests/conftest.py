"""Shared fixtures: the database backends every database test runs on."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import Broker, Server, close_pools
from tests.xdist_groups import pytest_collection_modifyitems

__all__ = ["pytest_collection_modifyitems"]  # a hook: xdist_group under pytest 9.2

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("mariadb", id="mariadb", marks=pytest.mark.backends),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.backends),
]


@pytest.fixture(scope="session", autouse=True)
def _backend_pools() -> Iterator[None]:
    """At the end of the session (on each xdist worker), drop what the pools made.

    ``tests/support.py`` makes PostgreSQL databases and RabbitMQ vhosts ahead of
    need and drops them behind the tests; this is where the last ones go, and
    where the run fails if anything made here is still on a server.
    """
    yield
    close_pools()


@pytest.fixture(params=BACKENDS)
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Server]:
    """A database backend that makes fresh, uniquely named databases."""
    srv = Server(request.param, tmp_path)
    srv.check()
    yield srv
    srv.drop_all()


@pytest.fixture(params=[p for p in BACKENDS if p.values[0] != "sqlite"])
def network_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Server]:
    """Like ``server``, for tests about the network: MariaDB and PostgreSQL only."""
    srv = Server(request.param, tmp_path)
    srv.check()
    yield srv
    srv.drop_all()


@pytest.fixture(autouse=True)
def _clean_environ(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test sees the developer's own config or data directory."""
    monkeypatch.delenv("CELLGATE_CONFIG", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def broker() -> Iterator[Broker]:
    """The local RabbitMQ, making one vhost (and user) per call; all removed after."""
    b = Broker()
    b.check()
    yield b
    b.drop_all()
