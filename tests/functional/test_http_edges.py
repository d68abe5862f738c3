"""HTTP edge cases of the API: odd tokens, wrong methods, HEAD (issues 12.11, 13.10).

A bearer token with a non-ASCII byte once made ``secrets.compare_digest``
raise, a 500 and a traceback in the log per request; it is a 401 like any
wrong token. A 405 says which methods the path takes (``Allow``), and load
balancers' ``HEAD /healthz`` is a 200.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cellgate import App, admin, load_settings
from cellgate.service.http import create_api
from cellgate.service.runner import HttpServer


@pytest.fixture
def api(tmp_path: Path) -> Iterator[str]:
    conf = tmp_path / "c.conf"
    conf.write_text(
        f"[api_database]\nconnection = sqlite:///{tmp_path}/api.sqlite\n"
        "[api]\nauth_tokens = admin-tok:admin:admin+member\n",
        encoding="utf-8",
    )
    settings = load_settings(conf)
    with App(settings) as app:
        admin.sync_api(app)
        server = HttpServer(create_api(app, settings.service), "127.0.0.1", 0).start()
        try:
            yield server.url
        finally:
            server.stop()


@pytest.mark.parametrize("token", [b"t\xe9st", b"\xff\xfe", "tök".encode(), b"admin-tok\x80"])
def test_a_non_ascii_token_is_401_without_a_traceback(
    api: str, token: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        got = httpx.get(f"{api}/v1/instances", headers={b"Authorization": b"Bearer " + token})
    assert got.status_code == 401, got.text
    assert got.json()["error"]["code"] == "Unauthorized"
    assert got.headers["WWW-Authenticate"] == "Bearer"
    assert "Traceback" not in caplog.text and "unexpected error" not in caplog.text


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("PUT", "/v1/instances", {"GET", "POST"}),
        ("DELETE", "/healthz", {"GET", "HEAD"}),
        ("POST", "/v1/cells", {"GET"}),
        ("PATCH", "/v1/instances/x", {"GET", "DELETE"}),
    ],
)
def test_405_says_which_methods_are_allowed(
    api: str, method: str, path: str, allowed: set[str]
) -> None:
    got = httpx.request(method, f"{api}{path}", headers={"Authorization": "Bearer admin-tok"})
    assert got.status_code == 405, got.text
    assert got.json()["error"]["code"] == "MethodNotAllowed"
    assert {m.strip() for m in got.headers["Allow"].split(",")} >= allowed


def test_head_healthz_is_200(api: str) -> None:
    got = httpx.head(f"{api}/healthz")
    assert got.status_code == 200
    assert got.content == b""
