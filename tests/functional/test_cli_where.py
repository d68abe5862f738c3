"""Commands that migrate say where, and an unedited config says what it falls back to (13.6).

Following the README, ``config sample > cellgate.conf`` then ``api-db sync``
migrated an SQLite file in the home directory and never said which database
it touched.
"""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from cellgate.cli import cli
from tests.functional.conftest import Deployment


def _run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_an_all_commented_or_empty_config_warns_naming_the_embedded_default(
    tmp_path: Path,
) -> None:
    code, sample, _ = _run("config", "sample")
    assert code == 0
    commented = tmp_path / "cellgate.conf"
    commented.write_text(sample, encoding="utf-8")
    empty = tmp_path / "empty.conf"
    empty.write_text("", encoding="utf-8")
    xdg = tmp_path / "xdg" / "cellgate"
    for conf in (commented, empty):
        code, _, err = _run("--config-file", str(conf), "api-db", "sync")
        assert code == 0, err
        first, second, *_ = err.splitlines()
        assert first.startswith(f"cellgate: warning: {conf} sets no option")
        assert f"API database sqlite:///{xdg}/api.sqlite" in first
        assert f"cell database sqlite:///{xdg}/cellgate.sqlite" in first
        assert second.startswith(f"API database sqlite:///{xdg}/api.sqlite: ")
    configured = tmp_path / "set.conf"
    configured.write_text(f"[DEFAULT]\nstate_path = {tmp_path / 'state'}\n", encoding="utf-8")
    code, _, err = _run("--config-file", str(configured), "api-db", "sync")
    assert code == 0 and "warning" not in err
    assert err.splitlines()[0] == (
        f"API database sqlite:///{tmp_path / 'state'}/api.sqlite: upgrading to head"
    )


def test_syncs_name_the_database_they_migrate_masked(deployment: Deployment) -> None:
    synced = deployment.run("api-db", "sync")  # run() fails on any password in the output
    api = str(deployment.api_url)
    assert "***" in api or deployment.server.kind == "sqlite"
    assert synced.stderr.splitlines()[0] == f"API database {api}: upgrading to head"
    local = deployment.run("db", "sync")
    assert f"local ([database] connection) {deployment.local_url}: ok, at " in local.stderr
    cell = deployment.new_cell_url()
    deployment.run("cell", "create", "--name", "c1", "--transport-url", "memory://c1",
                   "--database-connection", cell.render(hide_password=False))  # fmt: skip
    cells = deployment.run("db", "sync", "--cell", "c1")
    assert f"c1 {cell}: ok, at " in cells.stderr
