"""``cellgate nova verify``'s edges that need no Nova: its options, and a database that is not Nova's.

The findings themselves are tested on real Nova deployments
(tests/nova/test_verify.py).
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from cellgate.cli import cli
from cellgate.cli.nova_verify import Duration
from tests.support import Server


def _verify(tmp_path: Path, *args: str) -> Result:
    config = tmp_path / "cellgate.conf"
    config.write_text(f"[api_database]\nconnection = sqlite:///{tmp_path / 'api.sqlite'}\n")
    return CliRunner().invoke(cli, ["--config-file", str(config), "nova", "verify", *args])


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90), ("90s", 90), ("30m", 1800), ("1h30m", 5400), ("2d", 172800), ("1.5h", 5400)],
)
def test_durations(text: str, seconds: float) -> None:
    assert Duration().convert(text, None, None) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "0", "-5m", "1x", "h", "5m3", "1h 30m"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(click.BadParameter):
        Duration().convert(text, None, None)


def test_a_bad_option_is_a_usage_error(tmp_path: Path) -> None:
    result = _verify(tmp_path, "--nova-api-db", "sqlite:///x", "--unscheduled-after", "soon")
    assert result.exit_code == 2
    assert result.output.startswith("cellgate: error: ") and "Traceback" not in result.output


def test_a_database_that_is_not_novas_is_refused(server: Server, tmp_path: Path) -> None:
    url = server.new_database()
    if server.kind == "sqlite":  # an existing file, with no tables
        from cellgate.sql.engines import make_engine

        make_engine(url, connect_timeout=2, query_timeout=2, create_missing=True).dispose()
        Path(url.database or "").touch()
    result = _verify(tmp_path, "--nova-api-db", url.render(hide_password=False))
    assert result.exit_code == 2, result.output
    assert "is not a Nova API database" in result.output
    assert result.stdout == ""


def test_an_unreachable_nova_api_database_is_exit_5(tmp_path: Path) -> None:
    result = _verify(
        tmp_path, "--nova-api-db", "mysql+pymysql://nova:s3cr3t-x@127.0.0.2:1/nova_api"
    )
    assert result.exit_code == 5, result.output
    assert "Nova API database" in result.output and "s3cr3t-x" not in result.output


def test_the_url_can_come_from_the_environment(tmp_path: Path) -> None:
    config = tmp_path / "cellgate.conf"
    config.write_text(f"[api_database]\nconnection = sqlite:///{tmp_path / 'api.sqlite'}\n")
    result = CliRunner(
        env={"CELLGATE_NOVA_API_DB": "mysql+pymysql://nova:s3cr3t-y@127.0.0.2:1/n"}
    ).invoke(cli, ["--config-file", str(config), "nova", "verify"])
    assert result.exit_code == 5, result.output  # it was used: the server it names is down
    assert "127.0.0.2" in result.output and "s3cr3t-y" not in result.output
