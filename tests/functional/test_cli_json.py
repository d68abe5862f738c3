"""``--json`` output has one schema per object kind, errors included (issue 13.8).

``docs/cli-json.schema.json`` holds the schemas (``$defs``, one per kind) and
which kind each command prints (``x-commands``). Every command with a
``--json`` option is listed there, and each one is run here on a real
deployment (SQLite, MariaDB and PostgreSQL) and its stdout validated with
``jsonschema``. The leaf schemas forbid unknown keys, so a command that names
a cell ``cell`` where the others say ``name`` fails here.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import click
import jsonschema
import pytest

from cellgate.cli import cli
from cellgate.cli.exit_codes import ExitCode
from cellgate.migrations.runner import MigrationLine, head
from cellgate.urls import url_passwords
from tests.functional.conftest import Deployment

SCHEMA_FILE = Path(__file__).parents[2] / "docs" / "cli-json.schema.json"
BROKER_PW = "Mq-s3cret/pw"


@cache
def _schema() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(loaded)
    return loaded


def _validate(kind: dict[str, Any], data: Any) -> None:
    schema = {"$defs": _schema()["$defs"], **kind}
    jsonschema.Draft202012Validator(schema).validate(data)


def _json_commands(group: click.Group, path: tuple[str, ...] = ()) -> set[str]:
    found: set[str] = set()
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if isinstance(command, click.Group):
            found |= _json_commands(command, (*path, name))
        elif command is not None and any(p.name == "as_json" for p in command.params):
            found.add(" ".join((*path, name)))
    return found


def test_every_json_command_has_a_documented_schema() -> None:
    assert _json_commands(cli) == set(_schema()["x-commands"])
    documented = (SCHEMA_FILE.parent / "cli.md").read_text(encoding="utf-8")
    for kind in _schema()["$defs"]:
        if not kind.endswith("_fields") and kind != "uuid_name":
            assert f"`{kind}`" in documented, f"docs/cli.md does not describe the kind {kind!r}"


class Checked:
    """Runs commands with ``--json`` and validates stdout against the command's schema."""

    def __init__(self, d: Deployment) -> None:
        self.d = d
        self.seen: set[str] = set()

    def __call__(self, *args: str, expect: int = 0) -> Any:
        result = self.d.run(*args, "--json", ok=False)
        assert result.exit_code == expect, result.output
        words = [a for a in args if not a.startswith("-")]
        command = next(
            " ".join(words[:n]) for n in (2, 1) if " ".join(words[:n]) in _schema()["x-commands"]
        )
        self.seen.add(command)
        kind = _schema()["x-commands"][command]
        if kind.get("x-json-lines"):
            lines = [json.loads(line) for line in result.stdout.splitlines()]
            for line in lines:
                _validate(kind, line)
            return lines
        data = json.loads(result.stdout)
        if "error" in data:  # a failure: the error document, never a half result
            self.error(data, expect)
        else:  # a report, also with exit codes other than 0 (verify, db sync)
            _validate(kind, data)
        return data

    def error(self, data: Any, expect: int) -> None:
        _validate({"$ref": "#/$defs/error"}, data)
        assert data["error"]["exit_code"] == expect


def _with_key(d: Deployment) -> None:
    key = d.run("cell", "generate-key").stdout.strip()
    d.secrets.append(key)
    text = d.config_file.read_text(encoding="utf-8")
    d.config_file.write_text(
        text.replace("[api_database]\n", f"[api_database]\nencryption_keys = {key}\n"),
        encoding="utf-8",
    )


def test_every_command_prints_its_documented_schema(deployment: Deployment) -> None:
    d, run = deployment, Checked(deployment)
    run("api-db", "sync")
    run("api-db", "version")
    run("cell", "map-cell0", "--database-connection", d.new_cell_url().render(hide_password=False))
    for name in ("c1", "c2"):
        url = d.new_cell_url().render(hide_password=False)
        created = run(
            "cell", "create", "--name", name, "--transport-url", f"memory://{name}",
            "--database-connection", url,
        )  # fmt: skip
        assert created["name"] == name
    broker = f"rabbit://mq-user:{BROKER_PW.replace('/', '%2F')}@127.0.0.3:1/v%2Fhost"
    d.secrets.extend(url_passwords(broker))
    run(
        "cell", "create", "--name", "mq", "--transport-url", broker,
        "--database-connection", d.new_cell_url().render(hide_password=False),
    )  # fmt: skip

    # A database that is behind: current and head, in JSON and in the progress line.
    empty = d.new_cell_url()
    if d.server.kind == "sqlite":  # an empty database, not a missing file
        Path(str(empty.database)).touch()
    run(
        "cell", "create", "--name", "behind", "--transport-url", "memory://behind",
        "--database-connection", empty.render(hide_password=False),
    )  # fmt: skip
    behind = d.run("db", "version", "--cell", "behind", "--json")
    [row] = json.loads(behind.stdout)
    _validate(_schema()["x-commands"]["db version"], [row])
    assert (row["name"], row["status"], row["current"]) == ("behind", "behind head", None)
    assert row["head"] == head(MigrationLine.CELL)
    assert f": behind head: at none (empty), head {row['head']}" in behind.stderr
    assert behind.stderr.startswith("behind ")  # the cell, then where its database is
    assert "ok, at" not in behind.stderr

    synced = run("db", "sync", "--all-cells")
    assert {r["name"] for r in synced} == {"cell0", "c1", "c2", "mq", "behind"}
    run("db", "version", "--all-cells")
    assert {c["name"] for c in run("cell", "list")} == {"cell0", "c1", "c2", "mq", "behind"}
    run("cell", "show", "c1")
    run("cell", "update", "c1", "--disable")
    change = run("cell", "update", "c1", "--enable", "--dry-run")
    assert change["dry_run"] is True and change["name"] == "c1"
    run("cell", "history", "c1")

    reports = run("cell", "verify", "--all", expect=ExitCode.UNAVAILABLE)
    by_name = {r["name"]: r for r in reports}
    assert by_name["c2"]["ok"] is True
    [_, mq_check] = by_name["mq"]["checks"]
    # The broker as its own field: one host's URL, masked, user and vhost kept.
    assert mq_check["broker"] == "rabbit://mq-user:***@127.0.0.3:1/v%2Fhost", mq_check
    assert mq_check["component"] == "transport 127.0.0.3:1" and mq_check["ok"] is False

    run("host", "list")
    run("host", "discover")
    run("db", "archive-deleted", "--all-cells")
    run("db", "purge", "--all-cells", "--before", "2020-01-01")
    run("config", "show")
    run("upgrade", "check", expect=ExitCode.OK)
    drained = run("cell", "drain", "c1", "--to", "c2")
    assert drained[-1]["event"] == "result" and drained[-1]["status"] == "ok"
    deleted = run("cell", "delete", "c2")
    assert deleted["name"] == "c2" and deleted["uuid"] == deleted["deleted"]

    _with_key(d)
    encrypted = run("cell", "encrypt", "--all")
    assert {c["name"] for c in encrypted["cells"]} == {"cell0", "c1", "mq", "behind"}
    run("cell", "rotate-key")
    run("cell", "decrypt", "--all")

    # Errors under --json are JSON on stdout, with the exit code; stderr keeps its line.
    missing = d.run("cell", "show", "nope", "--json", ok=False)
    assert missing.exit_code == ExitCode.NOT_FOUND
    run.error(json.loads(missing.stdout), ExitCode.NOT_FOUND)
    assert json.loads(missing.stdout)["error"]["code"] == "CellNotFound"
    assert missing.stderr.startswith("cellgate: error: no cell named")
    for args, code in (
        (("cell", "verify"), ExitCode.USAGE),  # a usage error, from inside the command
        (("cell", "show"), ExitCode.USAGE),  # a usage error, from click's parser
        (("host", "delete", "nowhere"), ExitCode.NOT_FOUND),
        (("instance", "move", "00000000-0000-0000-0000-0000000000aa", "--to", "c1"), 3),
        (("cell", "drain", "nope", "--to", "c1"), ExitCode.NOT_FOUND),
    ):
        failed = d.run(*args, "--json", ok=False)
        assert failed.exit_code == code, failed.output
        *_, last = failed.stdout.splitlines()  # one line: also the end of JSON lines
        run.error(json.loads(last), code)
    # Without --json an error is the one line on stderr and nothing on stdout.
    plain = d.run("cell", "show", "nope", ok=False)
    assert plain.stdout == "" and plain.stderr.startswith("cellgate: error: ")


@pytest.mark.parametrize("flag", ["--json", None])
def test_unexpected_errors_under_json(
    sqlite_deployment: Deployment, monkeypatch: pytest.MonkeyPatch, flag: str | None
) -> None:
    """A bug is ``InternalError`` in JSON, exit 1, never a traceback."""
    from cellgate import admin

    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("a bug")

    sqlite_deployment.run("api-db", "sync")
    monkeypatch.setattr(admin, "read_cells", broken)
    args = ["cell", "list", *([flag] if flag else [])]
    result = sqlite_deployment.run(*args, ok=False)
    assert result.exit_code == 1
    if flag:
        body = json.loads(result.stdout)
        _validate({"$ref": "#/$defs/error"}, body)
        assert body["error"]["code"] == "InternalError" and "a bug" in body["error"]["message"]
    else:
        assert result.stdout == ""
