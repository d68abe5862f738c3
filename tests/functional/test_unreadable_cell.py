"""One cell mapping that does not decrypt costs that cell only (issues 12.9, 13.10).

A row sealed with a key that is no longer configured, or an altered token,
used to make every mapping load fail: after a restart or a SIGHUP every
request for every cell answered 503, and ``cell list`` listed nothing. Now
that cell alone is unavailable (503, a generic message for tenants), the
others serve, the log names the row and why, and ``cell list`` lists every
row, marking the one it cannot read (exit 2). On every backend: the API
database and the cells' databases are on the server under test.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from sqlalchemy import select, update

from cellgate import App, RequestContext, admin, load_settings
from cellgate.apidb.mappings import create_cell, map_cell0
from cellgate.apidb.schema import CellMappingRow
from cellgate.cli import cli
from cellgate.cli.exit_codes import ExitCode
from cellgate.config import Settings
from cellgate.errors import CellUnreadable, EncryptionKeyError
from cellgate.keyring import generate_key, key_id
from cellgate.migrations.runner import MigrationLine, upgrade
from cellgate.service.compute import Worker
from cellgate.service.http import create_api
from cellgate.service.runner import HttpServer
from cellgate.sql.api_database import ApiDatabase
from cellgate.sql.engines import make_engine
from cellgate.urls import DatabaseURL, TemplateDefaults, url_passwords
from tests.support import Server

DEFAULTS = TemplateDefaults(database=None, transport=None)
ADMIN = {"Authorization": "Bearer admin-tok"}
DEMO = {"Authorization": "Bearer demo-tok"}
CTX = RequestContext(request_id="req-unreadable")


@dataclass
class Setup:
    tmp: Path
    api_url: str
    cell_urls: dict[str, str]
    secrets: list[str]

    def config(self, *keys: str) -> Path:
        conf = self.tmp / f"keys-{'-'.join(key_id(k) for k in keys) or 'none'}.conf"
        conf.write_text(
            f"[api_database]\nconnection = {self.api_url}\n"
            f"encryption_keys = {', '.join(keys)}\n"
            "[api]\nauth_tokens = admin-tok:admin:admin+member, demo-tok:demo:member\n"
            "cell_timeout = 5\n"
            "[worker]\nheartbeat_interval = 0.5\n",
            encoding="utf-8",
        )
        self.secrets.extend(keys)
        return conf

    def settings(self, *keys: str) -> Settings:
        return load_settings(self.config(*keys))

    def assert_clean(self, text: str) -> None:
        for secret in self.secrets:
            assert secret not in text, f"a secret leaked: {text!r}"
        assert "gAAAA" not in text  # no Fernet token either


@pytest.fixture
def setup(server: Server, tmp_path: Path) -> Setup:
    api_url = server.new_database().render(hide_password=False)
    cells = {n: server.new_database().render(hide_password=False) for n in ("c0", "c1", "c2")}
    secrets = [*url_passwords(api_url)]
    for url in cells.values():
        secrets += url_passwords(url)
        engine = make_engine(
            DatabaseURL.parse(url), connect_timeout=5, query_timeout=10, create_missing=True
        )
        upgrade(engine, MigrationLine.CELL)
        engine.dispose()
    return Setup(tmp_path, api_url, cells, secrets)


def _create(setup: Setup, settings: Settings, name: str) -> None:
    api = ApiDatabase(settings.api_database)
    try:
        api.upgrade()
        with api.session() as session:
            if name == "c0":
                map_cell0(session, database_connection=setup.cell_urls["c0"], defaults=DEFAULTS)
            else:
                create_cell(
                    session,
                    name=name,
                    transport_url=f"memory://unreadable-{name}-{id(setup)}",
                    database_connection=setup.cell_urls[name],
                    defaults=DEFAULTS,
                )
    finally:
        api.close()


@contextmanager
def serving(settings: Settings, workers: tuple[str, ...]) -> Iterator[tuple[httpx.Client, App]]:
    app = App(settings)
    started = [Worker(app, app.cells.get(CTX, n), f"{n}-host", 0.5).start() for n in workers]
    server = HttpServer(create_api(app, settings.service), "127.0.0.1", 0).start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            yield client, app
    finally:
        server.stop()
        for worker in started:
            worker.stop()
        app.close()


def _boot(client: httpx.Client, name: str, cell: str) -> str:
    response = client.post("/v1/instances", json={"name": name, "cell": cell}, headers=DEMO)
    assert response.status_code == 202, response.text
    uuid: str = response.json()["instance"]["uuid"]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        shown = client.get(f"/v1/instances/{uuid}", headers=DEMO).json()["instance"]
        if shown["status"] == "active":
            return uuid
        time.sleep(0.05)
    raise AssertionError(f"{uuid} never became active")


def _cli(conf: Path, *args: str) -> Any:
    return CliRunner().invoke(cli, ["--config-file", str(conf), *args])


def _check_isolated(
    setup: Setup,
    client: httpx.Client,
    booted: dict[str, str],
    kid: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """c2 alone is unavailable; c1 serves; nothing leaks; the log names the row."""
    good = client.get(f"/v1/instances/{booted['c1']}", headers=DEMO)
    assert good.status_code == 200, good.text
    bad = client.get(f"/v1/instances/{booted['c2']}", headers=DEMO)
    assert bad.status_code == 503, bad.text
    assert bad.json()["error"] == {
        "status": 503,
        "code": "CellUnreadable",
        "message": "cell c2: is unavailable",
    }
    create_bad = client.post("/v1/instances", json={"name": "x", "cell": "c2"}, headers=DEMO)
    assert create_bad.status_code == 503 and "c2: is unavailable" in create_bad.text
    anywhere = client.post("/v1/instances", json={"name": "y"}, headers=DEMO)
    assert anywhere.status_code == 202 and anywhere.json()["instance"]["cell"] == "c1"

    page = client.get("/v1/instances", headers=DEMO).json()
    assert page["down_cells"] == [
        {"uuid": page["down_cells"][0]["uuid"], "name": "c2", "reason": "cell c2: is unavailable"}
    ]
    minimal = [i for i in page["instances"] if i.get("cell_down")]
    assert [i["uuid"] for i in minimal] == [booted["c2"]]
    assert booted["c1"] in {i["uuid"] for i in page["instances"]}

    cells = client.get("/v1/cells", headers=ADMIN)
    assert cells.status_code == 200, cells.text
    by_name = {c["name"]: c for c in cells.json()["cells"]}
    assert set(by_name) == {"cell0", "c1", "c2"}
    assert by_name["c1"]["health"]["reachable"] is True
    assert by_name["c2"]["health"] == {"reachable": False, "error": "cell c2: is unavailable"}
    assert kid in by_name["c2"]["unreadable"] and by_name["c2"]["transport_url"] is None
    one = client.get("/v1/cells/c2", headers=ADMIN)
    assert one.status_code == 503 and one.json()["error"]["code"] == "CellUnreadable"

    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "cell c2 (" in logged and "is unavailable until its mapping decrypts" in logged
    assert kid in logged
    for text in (bad.text, create_bad.text, json.dumps(page), cells.text, one.text, logged):
        setup.assert_clean(text)


def test_a_row_sealed_with_a_removed_key_costs_only_its_cell_after_a_restart(
    setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    kept, removed = generate_key(), generate_key()
    _create(setup, setup.settings(kept), "c0")
    _create(setup, setup.settings(kept), "c1")
    _create(setup, setup.settings(removed), "c2")  # the operator rotates keys...
    both = setup.settings(kept, removed)
    booted: dict[str, str] = {}
    with serving(both, ("c1", "c2")) as (client, _):
        booted = {n: _boot(client, f"vm-{n}", n) for n in ("c1", "c2")}

    # ... and removes the old key before `cell rotate-key`; then restarts.
    only_kept = setup.settings(kept)
    caplog.set_level(logging.WARNING)
    with serving(only_kept, ("c1",)) as (client, app):
        _check_isolated(setup, client, booted, key_id(removed), caplog)
        with pytest.raises(CellUnreadable):
            app.cells.get(CTX, "c2")
        assert [c.name for c in app.cells.unreadable(CTX)] == ["c2"]
        assert "c2" not in {c.name for c in app.cells.list(CTX, include_disabled=True)}

    # The admin API reports the row; the strict list raises as before.
    with App(only_kept) as app:
        listing = admin.read_cells(app)
        assert [c.name for c in listing.cells] == ["cell0", "c1"]
        assert [(c.name, c.encryption) for c in listing.unreadable] == [
            ("c2", f"aesgcm:{key_id(removed)}")
        ]
        assert not listing.complete
        assert [r["name"] for r in listing.to_dict()["cells"]] == ["cell0", "c1", "c2"]
        with pytest.raises(EncryptionKeyError, match=key_id(removed)):
            admin.list_cells(app)


def test_an_altered_row_costs_only_its_cell_after_a_sighup(
    setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    key = generate_key()
    settings = setup.settings(key)
    for name in ("c0", "c1", "c2"):
        _create(setup, settings, name)
    with serving(settings, ("c1", "c2")) as (client, app):
        booted = {n: _boot(client, f"vm-{n}", n) for n in ("c1", "c2")}
        with app.api.session() as session:  # someone edits the row by hand
            row = session.scalars(select(CellMappingRow).where(CellMappingRow.name == "c2")).one()
            session.execute(
                update(CellMappingRow)
                .where(CellMappingRow.id == row.id)
                .values(transport_url=row.transport_url[:-8] + "AAAAAAA=")
            )
        caplog.set_level(logging.WARNING)
        assert app.reload(wait=15)  # what SIGHUP does (a background reload)
        _check_isolated(setup, client, booted, key_id(key), caplog)


def test_cell_list_lists_every_row_and_marks_the_one_it_cannot_read(setup: Setup) -> None:
    kept, removed = generate_key(), generate_key()
    _create(setup, setup.settings(kept), "c1")
    _create(setup, setup.settings(removed), "c2")
    conf = setup.config(kept)

    table = _cli(conf, "cell", "list")
    assert table.exit_code == ExitCode.USAGE, table.output  # partial output: docs/cli.md
    lines = table.stdout.splitlines()
    assert lines[0].split()[:2] == ["NAME", "UUID"]
    (c1,) = [line for line in lines if line.startswith("c1 ")]
    (c2,) = [line for line in lines if line.startswith("c2 ")]
    assert "memory://" in c1 and "UNDECRYPTABLE" in c2 and "memory://" not in c2
    (error,) = table.stderr.strip().splitlines()
    assert error.startswith("cellgate: error: cell c2 is listed without its URLs: ")
    assert f"encrypted with key {key_id(removed)}" in error

    as_json = _cli(conf, "cell", "list", "--json")
    assert as_json.exit_code == ExitCode.USAGE
    rows = {r["name"]: r for r in json.loads(as_json.stdout)}
    assert rows["c1"]["unreadable"] is None and rows["c1"]["transport_url"].startswith("memory")
    assert key_id(removed) in rows["c2"]["unreadable"]
    assert rows["c2"]["transport_url"] is None and rows["c2"]["database_connection"] is None
    for result in (table, as_json):
        setup.assert_clean(result.output)

    fixed = setup.config(kept, removed)  # the old key back: complete again, exit 0
    again = _cli(fixed, "cell", "list", "--json")
    assert again.exit_code == 0, again.output
    assert all(r["unreadable"] is None for r in json.loads(again.stdout))
