"""``config``, ``quickstart``, ``--debug`` and the embedded default, on SQLite."""

from __future__ import annotations

import json
import socket
from pathlib import Path

from click.testing import CliRunner

from cellgate.cli import cli
from cellgate.cli.exit_codes import ExitCode
from cellgate.config import OPTIONS
from tests.functional.conftest import Deployment


def _invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_config_sample_lists_every_option_and_needs_no_config(tmp_path: Path) -> None:
    broken = tmp_path / "broken.conf"
    broken.write_text("not ini at all\n")
    code, out, _ = _invoke("--config-file", str(broken), "config", "sample")
    assert code == 0
    for opt in OPTIONS:
        assert f"\n#{opt.name} =" in out
    assert out.count("[cells]") == 1  # one block per section: the file is loadable
    sample = tmp_path / "sample.conf"
    sample.write_text(out)
    code, _, err = _invoke("--config-file", str(sample), "config", "show")
    assert code == 0, err


def test_config_show_masks_and_names_the_source(sqlite_deployment: Deployment) -> None:
    shown = sqlite_deployment.json("config", "show")
    assert shown["source"] == str(sqlite_deployment.config_file)
    assert shown["transport_url"] == "memory://local"


def test_config_errors_are_exit_2_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.conf"
    bad.write_text("[api_database]\nconnection = mysql://u:hunter2secret@127.0.0.1/x\n")
    code, out, err = _invoke("--config-file", str(bad), "cell", "list")
    assert code == ExitCode.USAGE
    assert "use mysql+pymysql://" in err and "hunter2secret" not in out + err
    assert len(err.strip().splitlines()) == 1
    code, _, err = _invoke("--config-file", str(tmp_path / "missing.conf"), "cell", "list")
    assert code == ExitCode.USAGE and "does not exist" in err


def test_quickstart_sets_up_the_embedded_default_idempotently(tmp_path: Path) -> None:
    code, out, err = _invoke("quickstart", "--json")
    assert code == 0, err
    cells = json.loads(out)
    assert [c["name"] for c in cells] == ["cell0", "cell1", "cell2"]
    assert (tmp_path / "xdg" / "cellgate" / "api.sqlite").is_file()
    code, out_again, _ = _invoke("quickstart", "--json")
    assert code == 0 and json.loads(out_again) == cells
    code, out, _ = _invoke("cell", "verify", "--all", "--json")
    assert code == 0 and all(r["ok"] for r in json.loads(out))
    code, out, _ = _invoke("db", "version", "--all-cells", "--json")
    assert code == 0 and {r["status"] for r in json.loads(out)} == {"ok"}


def test_quickstart_refuses_a_server_api_database(tmp_path: Path) -> None:
    conf = tmp_path / "c.conf"
    conf.write_text("[api_database]\nconnection = postgresql://u:pw1234@127.0.0.1:1/api\n")
    code, _, err = _invoke("--config-file", str(conf), "quickstart")
    assert code == ExitCode.USAGE and "embedded SQLite" in err


def test_unknown_command_is_usage_exit_2() -> None:
    code, _, err = _invoke("cell", "frobnicate")
    assert code == 2 and "No such command" in err


def test_debug_shows_a_redacted_traceback(sqlite_deployment: Deployment) -> None:
    sqlite_deployment.run("api-db", "sync")
    result = sqlite_deployment.run("--debug", "cell", "show", "nope", ok=False)
    assert result.exit_code == ExitCode.NOT_FOUND
    assert "Traceback" in result.stderr and "CellNotFound" in result.stderr


def test_serve_api_blames_the_host_or_the_port_whichever_is_wrong(
    sqlite_deployment: Deployment,
) -> None:
    """13.7: an address this machine does not have is a --host problem, not a --port one."""
    sqlite_deployment.run("api-db", "sync")
    # 192.0.2.1 (TEST-NET-1) is on no machine; bind() fails locally, nothing is sent.
    bad_host = sqlite_deployment.run("serve", "api", "--host", "192.0.2.1", ok=False)
    assert bad_host.exit_code == ExitCode.USAGE, bad_host.output
    [line] = bad_host.stderr.splitlines()
    assert line.startswith("cellgate: error: cannot listen on 192.0.2.1:"), line
    assert "--host" in line and "--port" not in line
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = str(taken.getsockname()[1])
        in_use = sqlite_deployment.run(
            "serve", "api", "--host", "127.0.0.1", "--port", port, ok=False
        )
    assert in_use.exit_code == ExitCode.USAGE, in_use.output
    [line] = in_use.stderr.splitlines()
    assert "choose another --port" in line and "--host" not in line


def test_cell_verify_without_a_cell_says_what_to_give(sqlite_deployment: Deployment) -> None:
    """13.7: no argument is not "not both"; it names NAME|UUID and --all."""
    sqlite_deployment.run("api-db", "sync")
    for command in (["cell", "verify"], ["cell", "encrypt"], ["cell", "decrypt"]):
        neither = sqlite_deployment.run(*command, ok=False)
        assert neither.exit_code == ExitCode.USAGE, neither.output
        [line] = neither.stderr.splitlines()
        assert "NAME|UUID" in line and "--all" in line and "not both" not in line, line
    both = sqlite_deployment.run("cell", "verify", "c1", "--all", ok=False)
    assert both.exit_code == ExitCode.USAGE and "not both" in both.stderr
