"""The docs, checked: every example they show is run here, every pointer resolved.

A doc that shows output makes a claim; this module makes the claim a test, so
a doc cannot drift from the code unnoticed. The conventions (also in
docs/development.md, "Examples in the docs are tests"):

- A fenced block with info string ``console`` is a CLI transcript, run on a
  fresh embedded deployment (an empty directory and a config file holding
  only ``[DEFAULT] state_path``; nothing is set up, so a block starts with the
  commands it needs, such as ``cellgate quickstart``). Every line starting
  with ``$ `` is a ``cellgate`` command, run through click's ``CliRunner``;
  the lines up to the next command are its expected output, stdout and stderr
  interleaved as a terminal shows them. ``; echo "exit $?"`` after a command
  adds an ``exit N`` line; ``2>/dev/null`` keeps stdout only. Without either,
  the command must exit 0, unless its output ends with a ``cellgate: error:``
  line.
- A fenced block with info string ``http`` is a REST exchange, run against a
  fresh all-in-one deployment (cell0, cell1, cell2 on SQLite, one worker per
  cell) over real HTTP. A request is a ``METHOD /path`` line, header lines, a
  blank line and an optional JSON body; its response is an ``HTTP/1.1 NNN
  Reason`` line, optional header lines, and an optional JSON body (checked
  only when shown). ``$ADMIN_TOKEN`` (project ``ops``, roles admin+member),
  ``$ACME_TOKEN`` and ``$GLOBEX_TOKEN`` (member of their project) are the
  tokens; ``$INSTANCE`` is the uuid of the last instance an answer returned.
- Wildcards: a line that is only ``...`` matches any number of lines; ``...``
  inside a line or a JSON string matches any text; two or more spaces match
  any run of two or more (table columns); in JSON, ``"..."`` as a value
  matches any value, a ``"...": "..."`` member allows more members, and a
  last ``"..."`` element allows more elements.
- Every other block (``sh``, ``ini``, ``sql``, ``python``, ``text``) is not
  run: it must not claim an output.

Besides, every relative link in README.md and docs/*.md must reach an existing
file (and heading), and every ``src/...``/``tests/...`` path, ``path::name``
and ``test_...`` name a doc puts in backticks must exist.
"""

from __future__ import annotations

import http
import json
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from cellgate.cli import cli
from cellgate.config import load_settings
from cellgate.service.allinone import AllInOne

ROOT = Path(__file__).resolve().parents[2]
DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
TOKENS = {
    "$ADMIN_TOKEN": "admin-token",
    "$ACME_TOKEN": "acme-token",
    "$GLOBEX_TOKEN": "globex-token",
}
EXIT_SUFFIX = re.compile(r';\s*echo\s+"exit \$\?"\s*$')
REQUEST_LINE = re.compile(r"^(GET|POST|PUT|PATCH|DELETE) (/\S*)$")
STATUS_LINE = re.compile(r"^HTTP/1\.1 (\d{3}) (.+)$")
HEADER_LINE = re.compile(r"^([A-Za-z][A-Za-z0-9-]*): (.*)$")


@dataclass(frozen=True)
class Block:
    """One fenced block of a doc: where it is, its info string and its lines."""

    path: Path
    line: int  # of the opening fence, 1-based
    info: str
    body: tuple[str, ...]

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def fenced_blocks(path: Path) -> Iterator[Block]:
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        opening = re.match(r"^(\s*)(`{3,})(.*)$", lines[i])
        if not opening:
            i += 1
            continue
        indent, fence, info = opening.groups()
        start, body = i, []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            line = lines[i]
            body.append(line[len(indent) :] if line.startswith(indent) else line.lstrip())
            i += 1
        i += 1
        yield Block(path, start + 1, info.strip().split(" ")[0], tuple(body))


def blocks(info: str) -> list[Any]:
    return [
        pytest.param(block, id=block.where)
        for path in DOCS
        for block in fenced_blocks(path)
        if block.info == info
    ]


# -- matching with wildcards ------------------------------------------------


def _pattern(expected: str, *, columns: bool) -> re.Pattern[str]:
    parts = []
    for piece in re.split(r"(\.\.\.| {2,})", expected):
        if piece == "...":
            parts.append(".*")
        elif columns and piece.startswith("  ") and not piece.strip():
            parts.append(" {2,}")
        else:
            parts.append(re.escape(piece))
    return re.compile("".join(parts))


def lines_match(expected: list[str], actual: list[str]) -> bool:
    """``expected`` lines (with wildcards) against ``actual``, whole."""
    memo: dict[tuple[int, int], bool] = {}

    def match(i: int, j: int) -> bool:
        if (i, j) not in memo:
            if i == len(expected):
                memo[i, j] = j == len(actual)
            elif expected[i].strip() == "...":
                memo[i, j] = match(i + 1, j) or (j < len(actual) and match(i, j + 1))
            else:
                memo[i, j] = (
                    j < len(actual)
                    and _pattern(expected[i].rstrip(), columns=True).fullmatch(actual[j].rstrip())
                    is not None
                    and match(i + 1, j + 1)
                )
        return memo[i, j]

    return match(0, 0)


def json_matches(expected: Any, actual: Any) -> bool:
    if expected == "...":
        return True
    if isinstance(expected, str):
        return (
            isinstance(actual, str)
            and _pattern(expected, columns=False).fullmatch(actual) is not None
        )
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return False
        keys = set(expected) - {"..."}
        if not keys <= set(actual) or ("..." not in expected and set(actual) != keys):
            return False
        return all(json_matches(expected[key], actual[key]) for key in keys)
    if isinstance(expected, list):
        if not isinstance(actual, list):
            return False
        if expected and expected[-1] == "...":
            expected = expected[:-1]
            actual = actual[: len(expected)]
        return len(expected) == len(actual) and all(
            json_matches(e, a) for e, a in zip(expected, actual, strict=True)
        )
    return type(expected) is type(actual) and expected == actual


def test_the_wildcards_match_what_they_should_and_nothing_else() -> None:
    assert lines_match(["a  ...  c", "...", "end"], ["a    b c   c", "x", "y", "end"])
    assert lines_match(["..."], [])
    assert not lines_match(["a b"], ["a  b"])
    assert not lines_match(["one"], ["one", "two"])
    assert json_matches({"a": "...", "...": "..."}, {"a": [1], "b": 2})
    assert json_matches({"l": [1, "..."]}, {"l": [1, 2, 3]})
    assert json_matches({"s": "cell ... not found"}, {"s": "cell 'x' not found"})
    assert not json_matches({"a": 1}, {"a": 1, "b": 2})
    assert not json_matches({"a": 1}, {"a": True})
    assert not json_matches([1], [1, 2])


# -- console blocks: CLI transcripts ------------------------------------------


@dataclass
class Command:
    args: list[str]
    expected: list[str]
    show_exit: bool
    stdout_only: bool
    text: str


def commands(block: Block) -> list[Command]:
    found: list[Command] = []
    lines = list(block.body)
    i = 0
    while i < len(lines):
        line = lines[i]
        assert line.startswith("$ "), f"{block.where}: output before any command: {line!r}"
        text = line[2:]
        while text.endswith("\\"):  # a command continued on the next line
            i += 1
            text = text[:-1] + lines[i].strip()
        show_exit = bool(EXIT_SUFFIX.search(text))
        text = EXIT_SUFFIX.sub("", text)
        stdout_only = text.rstrip().endswith("2>/dev/null")
        text = text.replace("2>/dev/null", "")
        args = shlex.split(text)
        assert args[:1] == ["cellgate"], (
            f"{block.where}: a console block runs cellgate commands only (use an sh block "
            f"for others): {line!r}"
        )
        i += 1
        expected = []
        while i < len(lines) and not lines[i].startswith("$ "):
            expected.append(lines[i])
            i += 1
        found.append(Command(args[1:], expected, show_exit, stdout_only, text))
    return found


@pytest.mark.parametrize("block", blocks("console"))
def test_console_example(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "cellgate.conf"
    config.write_text(f"[DEFAULT]\nstate_path = {tmp_path / 'state'}\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    for command in commands(block):
        result = CliRunner().invoke(cli, command.args, env={"CELLGATE_CONFIG": str(config)})
        output = (result.stdout if command.stdout_only else result.output).splitlines()
        if command.show_exit:
            output.append(f"exit {result.exit_code}")
        elif not (output and output[-1].startswith("cellgate: error:")):
            assert result.exit_code == 0, f"{block.where}: $ {command.text}\n{result.output}"
        expected = command.expected
        assert lines_match(expected, output), (
            f"{block.where}: the output of `{command.text}` drifted from the doc.\n"
            "--- the doc shows:\n"
            + "\n".join(expected)
            + "\n--- the command printed:\n"
            + "\n".join(output)
        )


# -- http blocks: REST exchanges ----------------------------------------------


@dataclass
class Exchange:
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    status: int
    reason: str
    response_headers: dict[str, str]
    response_body: Any
    line: int


def _json(text: list[str], where: str) -> Any:
    joined = "\n".join(text).strip()
    if not joined:
        return None
    try:
        return json.loads(joined)
    except json.JSONDecodeError as exc:
        raise AssertionError(f"{where}: not JSON: {joined!r} ({exc})") from exc


def exchanges(block: Block) -> list[Exchange]:
    lines = list(block.body)
    found: list[Exchange] = []
    i = 0
    while i < len(lines):
        if not lines[i].strip():
            i += 1
            continue
        where = f"{block.path.relative_to(ROOT)}:{block.line + 1 + i}"
        request = REQUEST_LINE.match(lines[i])
        assert request, f"{where}: expected a request line (METHOD /path): {lines[i]!r}"
        i += 1
        headers = {}
        while i < len(lines) and (header := HEADER_LINE.match(lines[i])):
            headers[header[1]] = header[2]
            i += 1
        body = []
        while i < len(lines) and not STATUS_LINE.match(lines[i]):
            body.append(lines[i])
            i += 1
        assert i < len(lines), f"{where}: the request has no response (HTTP/1.1 NNN Reason)"
        status = STATUS_LINE.match(lines[i])
        assert status
        i += 1
        response_headers = {}
        while i < len(lines) and (header := HEADER_LINE.match(lines[i])):
            response_headers[header[1]] = header[2]
            i += 1
        response = []
        while i < len(lines) and not REQUEST_LINE.match(lines[i]):
            response.append(lines[i])
            i += 1
        found.append(
            Exchange(
                request[1],
                request[2],
                headers,
                _json(body, where),
                int(status[1]),
                status[2],
                response_headers,
                _json(response, where),
                block.line + 1 + i,
            )
        )
    return found


@pytest.fixture
def all_in_one(tmp_path: Path) -> Iterator[AllInOne]:
    config = tmp_path / "cellgate.conf"
    config.write_text(
        f"[DEFAULT]\nstate_path = {tmp_path / 'state'}\n[api]\nauth_tokens = "
        "admin-token:ops:admin+member, acme-token:acme:member, globex-token:globex:member\n",
        encoding="utf-8",
    )
    settings = load_settings(config)
    settings = replace(settings, service=replace(settings.service, port=0))
    with AllInOne(settings) as deployment:
        yield deployment


def _substitute(text: str, instance: str | None) -> str:
    for name, token in TOKENS.items():
        text = text.replace(name, token)
    if "$INSTANCE" in text:
        assert instance, "$INSTANCE before any answer returned an instance"
        text = text.replace("$INSTANCE", instance)
    return text


@pytest.mark.parametrize("block", blocks("http"))
def test_http_example(block: Block, all_in_one: AllInOne) -> None:
    instance: str | None = None
    with httpx.Client(base_url=all_in_one.url, timeout=30) as client:
        for ex in exchanges(block):
            assert http.HTTPStatus(ex.status).phrase == ex.reason, (
                f"{block.where}: HTTP {ex.status} is {http.HTTPStatus(ex.status).phrase!r}"
            )
            response = client.request(
                ex.method,
                _substitute(ex.path, instance),
                headers={k: _substitute(v, instance) for k, v in ex.headers.items()},
                content=None if ex.body is None else json.dumps(ex.body),
            )
            shown = f"{ex.method} {ex.path} -> {response.status_code} {response.text}"
            assert response.status_code == ex.status, f"{block.where}: {shown}"
            for name, value in ex.response_headers.items():
                actual = response.headers.get(name, "")
                assert _pattern(value, columns=False).fullmatch(actual), (
                    f"{block.where}: header {name}: {actual!r}, the doc shows {value!r}"
                )
            body = response.json() if response.content else None
            if ex.response_body is not None:
                assert json_matches(ex.response_body, body), (
                    f"{block.where}: the answer drifted from the doc.\n--- the doc shows:\n"
                    f"{json.dumps(ex.response_body)}\n--- the API answered:\n{json.dumps(body)}"
                )
            if isinstance(body, dict) and isinstance(body.get("instance"), dict):
                instance = body["instance"]["uuid"]


# -- pointers: links, paths, test names ---------------------------------------

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
CODE_SPAN = re.compile(r"`([^`\n]+)`")
REPO_PATH = re.compile(r"^((?:src|tests|scripts|docs|examples|benchmarks)/[\w./-]+?)(?:::(\w+))?$")


def _prose(path: Path) -> list[tuple[int, str]]:
    """The lines of a doc outside fenced blocks, numbered."""
    out, fence = [], None
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        opening = re.match(r"^\s*(`{3,})", line)
        if fence is None and opening:
            fence = opening[1]
        elif fence is not None and line.strip().startswith(fence):
            fence = None
        elif fence is None:
            out.append((number, line))
    return out


def anchors(path: Path) -> set[str]:
    """GitHub's heading anchors of a markdown file."""
    seen: dict[str, int] = {}
    found = set()
    for _, line in _prose(path):
        heading = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not heading:
            continue
        slug = re.sub(r"[^\w\- ]", "", heading[1].lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def _test_names() -> set[str]:
    names = set()
    for file in (ROOT / "tests").rglob("*.py"):
        names.add(file.name)
        names.update(re.findall(r"^\s*(?:async\s+)?def (test_\w+)", file.read_text("utf-8"), re.M))
    return names


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_pointer_in_the_doc_exists(doc: Path) -> None:
    wrong = []
    tests = _test_names()
    for number, line in _prose(doc):
        for target in LINK.findall(line):
            if re.match(r"^[a-z]+:", target):
                continue  # https:, mailto:
            file, _, anchor = target.partition("#")
            resolved = (doc.parent / file).resolve() if file else doc
            if not resolved.exists():
                wrong.append(f"{number}: link to a missing file: {target}")
            elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
                wrong.append(f"{number}: link to a missing heading: {target}")
        for span in CODE_SPAN.findall(line):
            span = span.strip().rstrip(".,;:")
            if any(c in span for c in "<>*{} "):
                continue  # a pattern, not a path
            if path := REPO_PATH.match(span):
                file, name = ROOT / path[1], path[2]
                if not file.exists():
                    wrong.append(f"{number}: no such path: {span}")
                elif name and not re.search(
                    rf"^\s*(?:async\s+)?(?:def|class) {name}\b",
                    file.read_text(encoding="utf-8"),
                    re.M,
                ):
                    wrong.append(f"{number}: {path[1]} defines no {name}")
            elif re.fullmatch(r"test_\w+(\.py)?", span) and span not in tests:
                wrong.append(f"{number}: no test or test file named {span}")
    assert not wrong, f"{doc.relative_to(ROOT)}:\n" + "\n".join(wrong)


OWNED = ["cli", "operations", "deployment", "reliability", "development", "security", "benchmarks"]
NOT_RUN = {"sh", "ini", "sql", "python", "text"}


@pytest.mark.parametrize("name", OWNED)
def test_every_block_is_run_or_claims_no_output(name: str) -> None:
    """A block that shows output must be a console or http block, which are run."""
    wrong = [
        f"{block.where}: info string {block.info!r}"
        for block in fenced_blocks(ROOT / "docs" / f"{name}.md")
        if block.info not in NOT_RUN | {"console", "http"}
    ]
    assert not wrong, (
        "use console or http (run), or one of "
        + ", ".join(sorted(NOT_RUN))
        + (":\n" + "\n".join(wrong))
    )
