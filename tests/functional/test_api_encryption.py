"""The service on encrypted cell mappings: transparent with the key, 503 for that cell without it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from cellgate import App, load_settings
from cellgate.apidb.mappings import create_cell
from cellgate.config import Settings
from cellgate.keyring import generate_key, key_id
from cellgate.service.http import create_api
from cellgate.service.runner import HttpServer
from cellgate.sql.api_database import ApiDatabase
from cellgate.urls import TemplateDefaults

ADMIN = {"Authorization": "Bearer admin-tok"}
PASSWORD = "enc-p@ss-Kq9"


def settings_with(tmp: Path, *keys: str) -> Settings:
    conf = tmp / f"c{len(keys)}-{'-'.join(k[:4] for k in keys)}.conf"
    conf.write_text(
        f"[api_database]\nconnection = sqlite:///{tmp}/api.sqlite\n"
        f"encryption_keys = {', '.join(keys)}\n"
        "[api]\nauth_tokens = admin-tok:admin:admin+member\ncell_timeout = 2\n",
        encoding="utf-8",
    )
    return load_settings(conf)


@contextmanager
def serving(settings: Settings) -> Iterator[httpx.Client]:
    app = App(settings)
    server = HttpServer(create_api(app, settings.service), "127.0.0.1", 0).start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            yield client
    finally:
        server.stop()
        app.close()


def test_the_service_reads_encrypted_mappings_and_fails_clearly_without_the_key(
    tmp_path: Path,
) -> None:
    key, stranger = generate_key(), generate_key()
    settings = settings_with(tmp_path, key)
    api = ApiDatabase(settings.api_database)
    api.upgrade()
    with api.session() as session:
        create_cell(
            session,
            name="c1",
            transport_url=f"rabbit://u:{PASSWORD.replace('@', '%40')}@127.0.0.9:1/v",
            database_connection=f"sqlite:///{tmp_path}/c1.sqlite",
            defaults=TemplateDefaults(database=None, transport=None),
        )
    api.close()

    with serving(settings) as client:
        response = client.get("/v1/cells", headers=ADMIN)
        assert response.status_code == 200, response.text
        (cell,) = response.json()["cells"]
        assert cell["name"] == "c1" and cell["transport_url"] == "rabbit://u:***@127.0.0.9:1/v"

    # Without its key, the cell is listed (for admins: which row and why) but
    # unavailable; the listing itself still answers (issue 12.9).
    with serving(settings_with(tmp_path, stranger)) as client:
        response = client.get("/v1/cells", headers=ADMIN)
        body = response.text
        assert response.status_code == 200, body
        (cell,) = response.json()["cells"]
        assert f"encrypted with key {key_id(key)}" in cell["unreadable"]
        assert cell["health"] == {"reachable": False, "error": "cell c1: is unavailable"}
        one = client.get("/v1/cells/c1", headers=ADMIN)
        assert one.status_code == 503 and one.json()["error"]["message"] == (
            "cell c1: is unavailable"
        )
        for secret in (key, stranger, PASSWORD, "p%40ss", "gAAAA"):
            assert secret not in body and secret not in one.text
