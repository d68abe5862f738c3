"""CLI start-up: a command imports only what it needs.

Each check runs in a fresh interpreter (``python -c``), since this test
process has long imported everything. ``--version`` and ``cell list`` on the
embedded default (SQLite, ``memory://``, plaintext rows) must not import the
web stack, the AMQP client or ``cryptography``; an ``App`` must not import
kombu before a rabbit transport is used.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

HEAVY = ("fastapi", "uvicorn", "kombu", "cryptography")

_RUN = """
import json, sys
from cellgate.cli import cli
try:
    cli.main(sys.argv[1:], prog_name="cellgate")
except SystemExit as exc:
    code = exc.code
sys.stdout.flush()
print("\\n" + json.dumps({"code": code, "loaded": [m for m in HEAVY if m in sys.modules]}))
"""


def _cellgate(tmp_path: Path, *args: str) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if k != "CELLGATE_CONFIG"}
    env.update(HOME=str(tmp_path), XDG_DATA_HOME=str(tmp_path / "data"))
    code = f"HEAVY = {HEAVY!r}\n{_RUN}"
    result = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=tmp_path,  # no ./cellgate.conf: the embedded default
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report: dict[str, object] = json.loads(result.stdout.strip().splitlines()[-1])
    return report


def test_version_imports_no_heavy_package(tmp_path: Path) -> None:
    report = _cellgate(tmp_path, "--version")
    assert report == {"code": 0, "loaded": []}


def test_cell_list_on_the_embedded_default_imports_no_heavy_package(tmp_path: Path) -> None:
    assert _cellgate(tmp_path, "quickstart")["code"] == 0
    report = _cellgate(tmp_path, "cell", "list", "--json")
    assert report == {"code": 0, "loaded": []}


def test_an_app_imports_kombu_only_for_a_rabbit_transport(tmp_path: Path) -> None:
    code = """
import sys
from cellgate import App, load_settings
from cellgate.urls import TransportURL
app = App(load_settings())
before = "kombu" in sys.modules
app.transports.get(TransportURL.parse("rabbit://guest:guest@127.0.0.9:1/"), "cell9")
print(before, "kombu" in sys.modules)
app.close()
"""
    env = {k: v for k, v in os.environ.items() if k != "CELLGATE_CONFIG"}
    env.update(HOME=str(tmp_path), XDG_DATA_HOME=str(tmp_path / "data"))
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.split() == ["False", "True"]
