"""Cell mappings: ``cell create | list | show | update | delete | history | map-cell0``.

Each function is one transaction on the API database of ``app`` (a write
runs whole again if the database refuses it as a conflict:
``ApiDatabase.write``), after
checking that its schema is at this code's head (so an old schema is reported
as :class:`~cellgate.errors.SchemaMismatch`, not as a driver's "no such
column"). Writes invalidate ``app``'s mapping cache, so the same ``App`` sees
its own change at once; other processes see it within ``[cells] cache_ttl``.
Templated URLs are validated against ``app``'s settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cellgate.apidb import mappings, updates
from cellgate.apidb.audit import AuditEntry
from cellgate.apidb.mappings import CellMapping, CellRead
from cellgate.apidb.updates import CellUpdate
from cellgate.app import App
from cellgate.config import template_defaults


@dataclass(frozen=True)
class DeletedCell:
    """A cell that :func:`delete_cell` removed (its URLs are scrubbed)."""

    cell: CellMapping

    def to_dict(self) -> dict[str, Any]:
        return {"uuid": self.cell.uuid, "name": self.cell.name, "deleted": self.cell.uuid}


@dataclass(frozen=True)
class Cell0Mapping:
    """cell0's mapping, and whether :func:`map_cell0` created it just now."""

    cell: CellMapping
    created: bool

    def to_dict(self) -> dict[str, Any]:
        return {**self.cell.to_dict(), "created": self.created}


def create_cell(
    app: App,
    *,
    name: str,
    transport_url: str,
    database_connection: str,
    uuid: str | None = None,
    disabled: bool = False,
    actor: str | None = None,
) -> CellMapping:
    """Map a new cell. URLs may be templates (``{username}``, ...).

    :raises DuplicateCell: the name or uuid is taken.
    :raises ConfigError: a URL or template is invalid.
    """
    app.api.require_current()
    defaults = template_defaults(app.settings)
    created = app.api.write(
        lambda session: mappings.create_cell(
            session,
            name=name,
            transport_url=transport_url,
            database_connection=database_connection,
            uuid=uuid,
            disabled=disabled,
            defaults=defaults,
            actor=actor,
        )
    )
    app.cells.invalidate()
    return created


def list_cells(app: App, *, enabled_only: bool = False) -> list[CellMapping]:
    """Live cells, cell0 first, then by name; read from the API database, not the cache.

    :raises EncryptionKeyError: a row does not decrypt with the configured
        keys (:func:`read_cells` reports such rows instead of raising).
    """
    app.api.require_current()
    with app.api.session() as session:
        return mappings.list_cells(session, include_disabled=not enabled_only)


@dataclass(frozen=True)
class CellListing:
    """What :func:`read_cells` found: the cells, and the rows that do not decrypt."""

    read: CellRead

    @property
    def cells(self) -> list[CellMapping]:
        return self.read.cells

    @property
    def unreadable(self) -> list[mappings.UnreadableCell]:
        return self.read.unreadable

    @property
    def complete(self) -> bool:
        """True if every live row decrypted (``cell list`` exits 0)."""
        return self.read.complete

    def rows(self) -> list[dict[str, Any]]:
        """One dict per live cell, cell0 first, then by name; ``unreadable`` is
        ``None`` or why that row's URLs (then ``None``) could not be read."""
        rows = [{**c.to_dict(), "unreadable": None} for c in self.read.cells]
        rows += [c.to_dict() for c in self.read.unreadable]
        return sorted(rows, key=lambda r: (not r["is_cell0"], r["name"] or "", r["uuid"]))

    def to_dict(self) -> dict[str, Any]:
        return {"cells": self.rows(), "complete": self.complete}


def read_cells(app: App, *, enabled_only: bool = False) -> CellListing:
    """Like :func:`list_cells`, but a row that does not decrypt is reported, not raised.

    One row sealed with a key that is not configured (or altered) must not
    hide every other cell from the operator who has to fix it.
    """
    app.api.require_current()
    with app.api.session() as session:
        return CellListing(mappings.read_cells(session, include_disabled=not enabled_only))


def show_cell(app: App, ident: str) -> CellMapping:
    """The live cell named ``ident`` or with that uuid (:class:`CellNotFound` if none)."""
    app.api.require_current()
    with app.api.session() as session:
        return mappings.get_cell(session, ident)


def update_cell(
    app: App,
    ident: str,
    *,
    name: str | None = None,
    transport_url: str | None = None,
    database_connection: str | None = None,
    disabled: bool | None = None,
    expected_version: int | None = None,
    actor: str | None = None,
) -> CellMapping:
    """Change the given fields (``None``: leave as it is); return the cell as stored.

    :raises StaleCell: ``expected_version`` is given and the cell is at another.
    """
    app.api.require_current()
    defaults = template_defaults(app.settings)
    updated = app.api.write(
        lambda session: updates.update_cell(
            session,
            ident,
            name=name,
            transport_url=transport_url,
            database_connection=database_connection,
            disabled=disabled,
            expected_version=expected_version,
            defaults=defaults,
            actor=actor,
        )
    )
    app.cells.invalidate()
    return updated


def preview_update(
    app: App,
    ident: str,
    *,
    name: str | None = None,
    transport_url: str | None = None,
    database_connection: str | None = None,
    disabled: bool | None = None,
    expected_version: int | None = None,
) -> CellUpdate:
    """What :func:`update_cell` would change (a masked diff); writes nothing."""
    app.api.require_current()
    with app.api.session() as session:
        return updates.preview_update(
            session,
            ident,
            name=name,
            transport_url=transport_url,
            database_connection=database_connection,
            disabled=disabled,
            expected_version=expected_version,
            defaults=template_defaults(app.settings),
        )


def delete_cell(
    app: App, ident: str, *, force: bool = False, actor: str | None = None
) -> DeletedCell:
    """Delete a cell mapping; refused (:class:`CellInUse`) while hosts or instances are mapped.

    ``force`` also removes its host mappings and deleted-instance mappings.
    """
    app.api.require_current()
    deleted = app.api.write(
        lambda session: mappings.delete_cell(session, ident, force=force, actor=actor)
    )
    app.cells.invalidate()
    return DeletedCell(deleted)


def cell_history(app: App, ident: str) -> list[AuditEntry]:
    """Who changed a cell, what and when, oldest first; across renames and deletion."""
    app.api.require_current()
    with app.api.session() as session:
        return mappings.cell_history(session, ident)


def map_cell0(
    app: App, *, database_connection: str | None = None, actor: str | None = None
) -> Cell0Mapping:
    """Map cell0 if it is not mapped yet (idempotent).

    Its database defaults to ``[database] connection`` with ``_cell0``
    appended; it has no message queue.
    """
    settings = app.settings
    url = database_connection or settings.cell0_database().render(hide_password=False)
    app.api.require_current()
    defaults = template_defaults(settings)
    cell0, created = app.api.write(
        lambda session: mappings.map_cell0(
            session, database_connection=url, defaults=defaults, actor=actor
        )
    )
    if created:
        app.cells.invalidate()
    return Cell0Mapping(cell0, created)
