"""Output for people (aligned tables) and for scripts (``--json``).

Everything printed goes through here, and values reaching here are already
masked (``StoredURL`` and the URL types render masked by default).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import click


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def emit_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> None:
    """Print ``rows`` under ``columns`` (key, header) as an aligned table."""
    cells = [[as_text(row.get(key)) for key, _ in columns] for row in rows]
    headers = [header for _, header in columns]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    click.echo("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row_cells in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row_cells, widths, strict=True)).rstrip())


def emit_fields(data: dict[str, Any]) -> None:
    width = max(len(k) for k in data)
    for key, value in data.items():
        click.echo(f"{key.ljust(width)}  {as_text(value)}")


def progress(message: str) -> None:
    """A progress line on stderr, so stdout stays clean for tables and JSON."""
    click.echo(message, err=True)


def change_text(key: str, before: Any, after: Any) -> str:
    """One field change of a diff or an audit entry: ``key: before -> after``."""
    return f"{key}: {as_text(before)} -> {as_text(after)}"


def as_text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)
