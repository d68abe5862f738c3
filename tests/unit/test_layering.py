"""Imports go one way: edges (cli, service) -> App -> data layer -> leaf types.

Every module of the package is imported (so each is importable on its own)
and its import statements are read from its source, function-local ones
included, so a forbidden edge cannot hide in a function body.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import cellgate

PACKAGE = Path(cellgate.__file__).parent
DATA_LAYER = (
    "cellgate.apidb",
    "cellgate.celldb",
    "cellgate.sql",
    "cellgate.migrations",
    "cellgate.routing",
    "cellgate.rpc",
)
EDGES = ("cellgate.cli", "cellgate.service")

#: module prefix -> prefixes it must never import.
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "cellgate.config": (*DATA_LAYER, "cellgate.app", "cellgate.admin", *EDGES),
    "cellgate.keyring": (*DATA_LAYER, "cellgate.config", "cellgate.app"),
    "cellgate.urls": (*DATA_LAYER, "cellgate.app"),
    "cellgate.errors": ("cellgate",),
    "cellgate.keyset": ("cellgate",),
    "cellgate.app": ("cellgate.admin", *EDGES),
    "cellgate.cellaccess": ("cellgate.app", "cellgate.admin", *EDGES),
    "cellgate.admin": ("click", "cellgate.cli", "cellgate.service"),
    # The pure schema and query functions: no engine, no migration runner.
    "cellgate.apidb": ("cellgate.sql", "cellgate.migrations", "cellgate.app"),
    "cellgate.celldb": ("cellgate.sql", "cellgate.migrations", "cellgate.app"),
    **{layer: ("cellgate.app", "cellgate.admin", *EDGES) for layer in DATA_LAYER[2:]},
    "cellgate.service": ("cellgate.cli",),
    # What cellgate knows of Nova: pure, like apidb; admin brings the engines.
    "cellgate.nova": (
        "cellgate.sql",
        "cellgate.migrations",
        "cellgate.app",
        "cellgate.admin",
        *EDGES,
    ),
}

#: Third-party packages only one place may import.
CONFINED = {
    "kombu": "cellgate.rpc.amqp",
    "cryptography": "cellgate.keyring",
    "fastapi": "cellgate.service",
    "uvicorn": "cellgate.service",
}


def _modules() -> list[str]:
    names = ["cellgate"]
    for info in pkgutil.walk_packages([str(PACKAGE)], prefix="cellgate."):
        if ".migrations.api." in info.name or ".migrations.cell." in info.name:
            continue  # Alembic script directories: loaded by Alembic, not imported
        if info.name == "cellgate.__main__":
            continue  # runs the CLI when imported
        names.append(info.name)
    return sorted(names)


def _source(module: str) -> Path:
    relative = Path(*module.split(".")[1:])
    package = PACKAGE / relative / "__init__.py"
    return package if package.exists() else (PACKAGE / relative).with_suffix(".py")


def _imports(module: str) -> set[str]:
    tree = ast.parse(_source(module).read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


MODULES = _modules()


def test_the_walk_finds_the_layers() -> None:
    for expected in ("cellgate.admin.cells", "cellgate.sql.registry", "cellgate.rpc.amqp.rabbit"):
        assert expected in MODULES


@pytest.mark.parametrize("module", MODULES)
def test_module_imports_on_its_own(module: str) -> None:
    importlib.import_module(module)


@pytest.mark.parametrize("module", MODULES)
def test_no_forbidden_edge(module: str) -> None:
    imported = _imports(module)
    for owner, banned in FORBIDDEN.items():
        if not _within(module, owner):
            continue
        for name in imported:
            for prefix in banned:
                if _within(name, prefix) and not _within(name, owner):
                    raise AssertionError(
                        f"{module} imports {name} ({owner} must not import {prefix})"
                    )


@pytest.mark.parametrize("module", MODULES)
def test_heavy_packages_stay_where_they_belong(module: str) -> None:
    for name in _imports(module):
        for package, home in CONFINED.items():
            if _within(name, package):
                assert _within(module, home), f"{module} imports {name}; only {home} may"


def test_one_class_named_target() -> None:
    owners = [
        module
        for module in MODULES
        if any(
            isinstance(node, ast.ClassDef) and node.name == "Target"
            for node in ast.walk(ast.parse(_source(module).read_text(encoding="utf-8")))
        )
    ]
    assert owners == ["cellgate.rpc.target"]


def test_one_place_builds_engines() -> None:
    callers = sorted(
        module
        for module in MODULES
        if "create_engine(" in _source(module).read_text(encoding="utf-8")
        or "make_engine(" in _source(module).read_text(encoding="utf-8")
    )
    assert all(_within(m, "cellgate.sql") for m in callers), callers
