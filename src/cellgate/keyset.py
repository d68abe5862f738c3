"""Keyset ordering that a database and Python agree on, for merging cells.

A listing across cells asks every cell for its rows in one order and merges
them in Python (``cellgate.routing.listing``). The merge is only right if
each cell orders its rows exactly as the Python comparator does, and if a
page boundary (the values of the last row shown) selects exactly the rows
after it in that same order. Three engines disagree by default:

- **NULLs**: PostgreSQL puts them last in ascending order, MariaDB and
  SQLite first. Here NULL is the smallest value in both directions
  (ascending: first; descending: last), spelled as ``col IS NULL`` terms so
  every dialect orders alike.
- **Text**: MariaDB's default collations ignore case and PostgreSQL's
  follow the locale; Python compares code points. Text keys are compared by
  code point on every engine (``BINARY`` on MySQL/MariaDB, ``COLLATE "C"``
  on PostgreSQL, SQLite's default ``BINARY``): UTF-8 byte order is code
  point order. A listing sorted by name is therefore case-sensitive ("B"
  before "a"), the same on every backend and across cells of mixed engines.
- **Directions** may differ per key, so a keyset predicate cannot be a row
  value comparison ``(a, b) > (x, y)``; it is the expanded OR of prefixes.

Nothing here knows which table it orders: callers map key names to columns.
This module is a leaf (SQLAlchemy only) so that ``celldb`` and ``routing``
can both use it.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import String, and_, false, or_
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql import ColumnElement
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import FunctionElement

Direction = Literal["asc", "desc"]


@dataclass(frozen=True)
class SortKey:
    """One sort key: a column name and a direction."""

    name: str
    direction: Direction = "asc"

    def __str__(self) -> str:
        return f"{self.name}:{self.direction}"


class BadSortSpec(ValueError):
    """A sort specification names an unknown key or direction."""

    def __init__(self, spec: str, allowed: Sequence[str]) -> None:
        self.spec = spec
        self.allowed = tuple(allowed)
        super().__init__(
            f"bad sort {spec!r}: use KEY[:asc|desc] separated by commas, "
            f"KEY one of {', '.join(allowed)}"
        )


def parse(spec: str, allowed: Sequence[str]) -> tuple[SortKey, ...]:
    """``"name:desc,created_at"`` -> keys; each key at most once."""
    keys: list[SortKey] = []
    for part in spec.split(","):
        name, _, direction = part.strip().partition(":")
        direction = direction or "asc"
        if name not in allowed or direction not in ("asc", "desc"):
            raise BadSortSpec(spec, allowed)
        if any(k.name == name for k in keys):
            raise BadSortSpec(spec, allowed)
        keys.append(SortKey(name, "asc" if direction == "asc" else "desc"))
    return tuple(keys)


class _CodePoints(FunctionElement[str]):
    """A text column compared by code point, whatever the column's collation."""

    type = String()
    inherit_cache = True
    name = "code_points"


@compiles(_CodePoints)
def _code_points_default(element: _CodePoints, compiler: SQLCompiler, **kw: Any) -> str:
    return compiler.process(element.clauses, **kw)  # SQLite: BINARY already


@compiles(_CodePoints, "mysql", "mariadb")
def _code_points_mysql(element: _CodePoints, compiler: SQLCompiler, **kw: Any) -> str:
    return f"BINARY {compiler.process(element.clauses, **kw)}"


@compiles(_CodePoints, "postgresql")
def _code_points_postgresql(element: _CodePoints, compiler: SQLCompiler, **kw: Any) -> str:
    return f'({compiler.process(element.clauses, **kw)}) COLLATE "C"'


def _comparable(column: ColumnElement[Any]) -> ColumnElement[Any]:
    if isinstance(column.type, String):
        return _CodePoints(column)
    return column


def order_by(
    columns: Mapping[str, ColumnElement[Any]], keys: Sequence[SortKey]
) -> list[ColumnElement[Any]]:
    """ORDER BY terms for ``keys`` (NULL smallest, text by code point)."""
    terms: list[ColumnElement[Any]] = []
    for key in keys:
        column = columns[key.name]
        value = _comparable(column)
        if key.direction == "asc":
            terms += [column.is_(None).desc(), value.asc()]
        else:
            terms += [column.is_(None).asc(), value.desc()]
    return terms


def after(
    columns: Mapping[str, ColumnElement[Any]], keys: Sequence[SortKey], values: Sequence[Any]
) -> ColumnElement[bool]:
    """Rows strictly after the row whose key values are ``values``.

    The last key must be unique (a uuid) for pages never to repeat or skip.
    """
    if len(values) != len(keys):
        raise ValueError(f"{len(keys)} sort keys but {len(values)} marker values")
    clauses: list[ColumnElement[bool]] = []
    equal: list[ColumnElement[bool]] = []
    for key, value in zip(keys, values, strict=True):
        column = columns[key.name]
        clauses.append(and_(*equal, _beyond(column, key.direction, value)))
        equal.append(column.is_(None) if value is None else _comparable(column) == value)
    return or_(*clauses)


def _beyond(column: ColumnElement[Any], direction: Direction, value: Any) -> ColumnElement[bool]:
    if direction == "asc":  # NULL first
        return column.is_not(None) if value is None else _comparable(column) > value
    if value is None:  # NULL last: nothing is beyond it
        return false()
    return or_(_comparable(column) < value, column.is_(None))


@functools.total_ordering
class _Reversed:
    __slots__ = ("value",)

    def __init__(self, value: tuple[Any, ...]) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Reversed) and self.value == other.value

    def __lt__(self, other: _Reversed) -> bool:
        return self.value > other.value

    def __hash__(self) -> int:
        return hash(self.value)


def sort_key(keys: Sequence[SortKey], values: Sequence[Any]) -> tuple[Any, ...]:
    """A Python value that orders rows as :func:`order_by` orders them."""
    out: list[Any] = []
    for key, value in zip(keys, values, strict=True):
        rank = (0,) if value is None else (1, value)
        out.append(rank if key.direction == "asc" else _Reversed(rank))
    return tuple(out)
