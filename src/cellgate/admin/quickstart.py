"""``quickstart``: the embedded default, a whole deployment in SQLite files, no servers.

:func:`quickstart` is idempotent: it migrates the API database, maps cell0
and two cells (each its own SQLite file and in-process transport), and
migrates every cell database. Running it again changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable

from cellgate.admin.migrate import cell_database, sync_api, sync_databases
from cellgate.apidb.mappings import CellMapping, create_cell, list_cells, map_cell0
from cellgate.app import App
from cellgate.config import Settings, template_defaults
from cellgate.errors import ConfigError, Hint
from cellgate.results import Failed

EMBEDDED_CELLS = ("cell1", "cell2")


def _embedded_database(settings: Settings, name: str) -> str:
    """cell1 is this host's own cell database ([database] connection); others get a file."""
    if name == EMBEDDED_CELLS[0]:
        return settings.database.connection.render(hide_password=False)
    return f"sqlite:///{settings.state_path / (name + '.sqlite')}"


def quickstart(app: App, on_step: Callable[[str], None] = lambda _: None) -> list[CellMapping]:
    """Create (or complete) the embedded deployment of ``app``'s settings; return its cells.

    :raises ConfigError: ``[api_database] connection`` is not SQLite (this
        sets up the embedded deployment only).
    """
    settings = app.settings
    if settings.api_database.connection.backend != "sqlite":
        raise ConfigError(
            "this sets up the embedded SQLite deployment only, "
            "but [api_database] connection is not SQLite",
            hint=Hint.REAL_DEPLOYMENT,
        )
    info = sync_api(app, "head")
    on_step(f"API database {settings.api_database.connection}: at {info.current}")
    defaults = template_defaults(settings)
    with app.api.session() as session:
        _, created = map_cell0(
            session,
            database_connection=settings.cell0_database().render(hide_password=False),
            defaults=defaults,
        )
        on_step("cell0: mapped" if created else "cell0: already mapped")
        existing = {c.name for c in list_cells(session)}
        for name in EMBEDDED_CELLS:
            if name in existing:
                on_step(f"{name}: already mapped")
                continue
            create_cell(
                session,
                name=name,
                transport_url=f"memory://{name}",
                database_connection=_embedded_database(settings, name),
                defaults=defaults,
            )
            on_step(f"{name}: mapped")
        cells = list_cells(session)
    app.cells.invalidate()
    for outcome in sync_databases(app, [cell_database(c) for c in cells]):
        if isinstance(outcome.result, Failed):
            raise outcome.result.error
        on_step(f"{outcome.database.label} database: migrated to head")
    return cells
