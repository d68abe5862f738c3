"""No two cells share a database or a message queue, nor use the API database (every backend).

Spellings differ on purpose (host case, implied ports, query options,
templates), because the check compares where the data lives, not the text.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
import sqlalchemy

from cellgate.apidb.mappings import create_cell, list_cells
from cellgate.cli.exit_codes import ExitCode
from cellgate.config import Settings
from cellgate.errors import CellgateError, EndpointInUse
from cellgate.sql.api_database import ApiDatabase
from cellgate.urls import DatabaseURL, TemplateDefaults
from tests.functional.conftest import Deployment


@pytest.fixture
def synced(deployment: Deployment) -> Deployment:
    deployment.run("api-db", "sync")
    return deployment


def _respell(url: DatabaseURL) -> str:
    """The same database, written differently: upper-case host, explicit port, an option."""
    sa = url.sqlalchemy_url
    if url.backend == "sqlite":
        return f"sqlite:///{sa.database.replace('/', '//', 1) if sa.database else ''}"
    port = {"mysql": 3306, "postgresql": 5432}[url.backend]
    other = sa.set(host="LOCALHOST", port=port)
    return other.render_as_string(hide_password=False)


def _create(d: Deployment, name: str, transport: str, database: str, ok: bool = True) -> Any:
    return d.run(
        "cell",
        "create",
        "--name",
        name,
        "--transport-url",
        transport,
        "--database-connection",
        database,
        ok=ok,
    )


def _names(d: Deployment) -> list[str]:
    return [c["name"] for c in d.json("cell", "list")]


def test_a_second_cell_on_the_same_database_is_refused(synced: Deployment) -> None:
    url = synced.new_cell_url()
    _create(synced, "a", "memory://a", url.render(hide_password=False))
    result = _create(synced, "b", "memory://b", _respell(url), ok=False)
    assert result.exit_code == ExitCode.USAGE
    assert "already used by cell a" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert _names(synced) == ["a"]


def test_a_second_cell_on_the_same_queue_is_refused(synced: Deployment) -> None:
    _create(
        synced,
        "a",
        "rabbit://u:pw@127.0.0.1:5672/cells",
        synced.new_cell_url().render(hide_password=False),
    )
    result = _create(
        synced,
        "b",
        "amqp://other:pw2@Localhost/cells",
        synced.new_cell_url().render(hide_password=False),
        ok=False,
    )
    assert result.exit_code == ExitCode.USAGE
    assert "message queue localhost:5672/cells is already used by cell a" in result.stderr
    assert "pw" not in result.stderr
    assert _names(synced) == ["a"]


def test_the_api_database_is_refused_as_a_cell_database(synced: Deployment) -> None:
    api = synced.api_url.render(hide_password=False)
    result = _create(synced, "a", "memory://a", api, ok=False)
    assert result.exit_code == ExitCode.USAGE
    assert "already used by the API database" in result.stderr
    assert _names(synced) == []


def test_a_template_that_renders_to_another_cells_database_is_refused(
    synced: Deployment,
) -> None:
    # [database] connection is the template default: a cell on "{scheme}://..."
    # with nothing changed is this host's own local database.
    local = synced.local_url.render(hide_password=False)
    _create(synced, "a", "memory://a", local)
    template = "{scheme}://{username}:{password}@{hostname}:{port}/{path}"
    if synced.server.kind == "sqlite":
        template = "{scheme}:////{path}"  # {path} has no leading "/"
    result = _create(synced, "b", "memory://b", template, ok=False)
    assert result.exit_code == ExitCode.USAGE, result.output
    assert "already used by cell a" in result.stderr


def test_update_onto_another_cells_endpoints_is_refused(synced: Deployment) -> None:
    a_db = synced.new_cell_url()
    _create(synced, "a", "memory://a", a_db.render(hide_password=False))
    _create(synced, "b", "memory://b", synced.new_cell_url().render(hide_password=False))
    before = synced.json("cell", "show", "b")
    for option, value in (
        ("--database-connection", _respell(a_db)),
        ("--transport-url", "memory://a"),
    ):
        for extra in ((), ("--dry-run",)):
            result = synced.run("cell", "update", "b", option, value, *extra, ok=False)
            assert result.exit_code == ExitCode.USAGE, result.output
            assert "already used by cell a" in result.stderr
    assert synced.json("cell", "show", "b") == before
    # Its own endpoints are not "another cell's": an update that keeps them is fine.
    synced.run("cell", "update", "b", "--transport-url", "memory://b", "--disable")


def _race_creates(settings: Settings, shared: str, prefix: str, racers: int) -> list[object]:
    """``racers`` threads, each with its own API connection, create a cell on ``shared`` at once."""
    defaults = TemplateDefaults(database=None, transport=None)
    barrier = threading.Barrier(racers)
    outcomes: list[object] = [None] * racers

    def race(i: int) -> None:
        api = ApiDatabase(settings.api_database)
        try:
            barrier.wait(timeout=30)
            with api.session() as session:
                create_cell(
                    session,
                    name=f"{prefix}x{i}",
                    transport_url=f"memory://{prefix}x{i}",
                    database_connection=shared,
                    defaults=defaults,
                )
            outcomes[i] = "ok"
        except (CellgateError, sqlalchemy.exc.SQLAlchemyError) as exc:
            outcomes[i] = exc
        finally:
            api.close()

    threads = [threading.Thread(target=race, args=(i,)) for i in range(racers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return outcomes


@pytest.mark.timeout(120)
def test_racing_creates_on_one_endpoint_have_exactly_one_winner(synced: Deployment) -> None:
    settings = synced.settings()
    for attempt in range(3):
        shared = synced.new_cell_url().render(hide_password=False)
        outcomes = _race_creates(settings, shared, f"r{attempt}", racers=4)
        assert outcomes.count("ok") == 1, outcomes
        assert all(o == "ok" or isinstance(o, EndpointInUse) for o in outcomes), outcomes
    api = ApiDatabase(settings.api_database)
    try:
        with api.session() as session:
            assert len(list_cells(session)) == 3
    finally:
        api.close()
