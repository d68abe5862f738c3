"""The public namespace: ``cellgate.__all__`` is complete, sorted and importable."""

from __future__ import annotations

import inspect
import subprocess
import sys

import cellgate

#: Modules that are part of the public namespace themselves.
PUBLIC_MODULES = {"admin"}


def test_all_is_sorted_and_unique() -> None:
    assert cellgate.__all__ == sorted(set(cellgate.__all__))


def test_every_exported_name_resolves() -> None:
    for name in cellgate.__all__:
        value = getattr(cellgate, name)
        assert inspect.ismodule(value) == (name in PUBLIC_MODULES), name


def test_all_lists_exactly_the_public_names() -> None:
    for name in cellgate.__all__:
        getattr(cellgate, name)  # the lazy names are now in vars()
    public = {
        name
        for name, value in vars(cellgate).items()
        if not name.startswith("_")
        and (not inspect.ismodule(value) or name in PUBLIC_MODULES)
        and name not in {"annotations", "importlib", "TYPE_CHECKING", "Any"}
    }
    assert set(cellgate.__all__) == public
    assert set(cellgate.__all__) == set(cellgate._EXPORTS)
    assert set(dir(cellgate)) >= set(cellgate.__all__)


def test_admin_is_the_operator_api() -> None:
    from cellgate import admin

    assert admin is cellgate.admin
    assert admin.__all__ == sorted(set(admin.__all__))
    for name in admin.__all__:
        assert not name.startswith("_") and hasattr(admin, name), name


def test_importing_the_package_loads_no_orm() -> None:
    code = "import sys, cellgate; print(sorted(m for m in ('cellgate.app', 'alembic', 'sqlalchemy.orm') if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert out.strip() == "[]"


def test_an_unknown_name_is_an_attribute_error() -> None:
    try:
        cellgate.NoSuchThing  # type: ignore[attr-defined]  # noqa: B018
    except AttributeError as exc:
        assert "NoSuchThing" in str(exc)
    else:
        raise AssertionError("no AttributeError")
