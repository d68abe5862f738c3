"""The public namespace: ``cellgate.__all__`` is complete, sorted and importable."""

from __future__ import annotations

import inspect

import cellgate


def test_all_is_sorted_and_unique() -> None:
    assert cellgate.__all__ == sorted(set(cellgate.__all__))


def test_all_lists_exactly_the_public_names() -> None:
    public = {
        name
        for name, value in vars(cellgate).items()
        if not name.startswith("_") and not inspect.ismodule(value) and name != "annotations"
    }
    assert set(cellgate.__all__) == public
