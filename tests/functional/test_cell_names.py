"""Cell names: cell0's is reserved, and a name is printable text (issues 13.3, 13.4).

A normal cell named ``cell0`` (or given cell0's uuid) once made ``cell
map-cell0`` fail for good; a newline in a name split a ``cell list`` row in
two, an ANSI escape repainted the terminal, and spaces were silently
stripped. Each is now refused by the library, so by the CLI too, with one
line and exit 2, and nothing is written. The REST API refuses the same
characters in any cell it is given (400).
"""

from __future__ import annotations

import pytest

from cellgate.apidb.mappings import CELL0_UUID, create_cell
from cellgate.errors import ConfigError
from cellgate.urls import TemplateDefaults
from tests.functional.conftest import Deployment

BAD_NAMES = {
    "newline": "a\nb",
    "carriage return": "a\rb",
    "ANSI escape": "\x1b[31mred",
    "tab": "tab\there",
    "NUL": "nul\x00x",
    "DEL": "del\x7fx",
    "C1 control": "c1\x85x",
    "bidi override": "ab\u202ecd",
    "line separator": "a\u2028b",
    "leading space": " lead",
    "trailing space": "trail ",
    "only spaces": "   ",
}
RESERVED = ["cell0", "CELL0", "Cell0"]


def _create(d: Deployment, name: str, *extra: str) -> tuple[int, str]:
    result = d.run(
        "cell", "create", "--name", name, "--transport-url", "memory://x",
        "--database-connection", d.new_cell_url().render(hide_password=False), *extra, ok=False,
    )  # fmt: skip
    return result.exit_code, result.stderr


def _assert_one_line(code: int, err: str, *words: str) -> None:
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("cellgate: error: "), err
    for word in words:
        assert word in err, err


def test_cell0_name_and_uuid_are_reserved(deployment: Deployment) -> None:
    d = deployment
    d.run("api-db", "sync")
    for name in RESERVED:
        _assert_one_line(*_create(d, name), "reserved for cell0")
    _assert_one_line(*_create(d, "notcell0", "--uuid", CELL0_UUID), "reserved for cell0")
    _assert_one_line(*_create(d, "notcell0", "--uuid", CELL0_UUID.upper()), "reserved")
    assert d.json("cell", "list") == []
    d.run("cell", "create", "--name", "cell1", "--transport-url", "memory://c1",
          "--database-connection", d.new_cell_url().render(hide_password=False))  # fmt: skip
    for name in RESERVED:
        result = d.run("cell", "update", "cell1", "--name", name, ok=False)
        _assert_one_line(result.exit_code, result.stderr, "reserved for cell0")
    d.run("cell", "map-cell0")  # still possible: nothing took cell0's name or uuid
    cells = d.json("cell", "list")
    assert [c["name"] for c in cells] == ["cell0", "cell1"]
    assert cells[0]["uuid"] == CELL0_UUID
    assert [e["action"] for e in d.json("cell", "history", "cell1")] == ["create"]


@pytest.mark.parametrize("kind", list(BAD_NAMES))
def test_names_must_be_printable_and_unpadded(deployment: Deployment, kind: str) -> None:
    d = deployment
    d.run("api-db", "sync")
    name = BAD_NAMES[kind]
    code, err = _create(d, name)
    _assert_one_line(code, err, "cell name")
    assert "\x1b" not in err and "\x00" not in err
    assert d.json("cell", "list") == []
    d.run("cell", "create", "--name", "ok1", "--transport-url", "memory://ok",
          "--database-connection", d.new_cell_url().render(hide_password=False))  # fmt: skip
    result = d.run("cell", "update", "ok1", "--name", name, ok=False)
    _assert_one_line(result.exit_code, result.stderr, "cell name")
    assert [c["name"] for c in d.json("cell", "list")] == ["ok1"]
    with d.api() as api, api.session() as session, pytest.raises(ConfigError):
        create_cell(
            session,
            name=name,
            transport_url="memory://lib",
            database_connection="sqlite:///lib.sqlite",
            defaults=TemplateDefaults(database=None, transport=None),
        )
