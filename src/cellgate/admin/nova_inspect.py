"""``cellgate nova inspect``: describe a Nova deployment's API database, never write it.

An operator deciding whether to adopt cellgate first wants to see what
cellgate sees: which Nova schema revision, which cells (URLs masked,
templates shown as the templates they are), how many hosts and instance
mappings each has, and how many instances are still being scheduled. The
readers here are also what :mod:`cellgate.admin.nova_import` reads with.

Nova's database is read through an engine the *server* keeps read-only
(:func:`~cellgate.sql.engines.make_engine` ``read_only=True``), with plain
``SELECT`` statements in one short read transaction: no row locks, no
``FOR UPDATE``, nothing Nova's own writers could wait on. The URL is Nova's
(``[api_database] connection`` from ``nova.conf``); its driver is translated
to the one cellgate ships (:mod:`cellgate.nova.urls`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy
from sqlalchemy import Connection, Engine, case, func, select

from cellgate.app import App
from cellgate.errors import SchemaMismatch
from cellgate.nova import schema as nova
from cellgate.nova.urls import database_translation, translate_database_url
from cellgate.sql.engines import translate_errors
from cellgate.urls import DatabaseURL, StoredURL, mask_url

#: What errors about the Nova API database call it.
COMPONENT = "Nova API database"
_NOT_NOVA_HINT = "is --nova-api-db the nova_api database ([api_database] connection in nova.conf)?"


@dataclass(frozen=True)
class NovaRevision:
    """Which schema revision a Nova API database is at, and how that is recorded."""

    version_table: str | None  # alembic_version | migrate_version | None
    revision: str | None
    known: bool  # one of the alembic revisions cellgate knows (nova.schema.API_REVISIONS)
    head: bool  # Nova's API head

    def to_dict(self) -> dict[str, Any]:
        return {
            "version_table": self.version_table,
            "revision": self.revision,
            "known": self.known,
            "head": self.head,
            "expected_head": nova.API_HEAD,
        }

    def describe(self) -> str:
        if self.version_table == "migrate_version":
            return (
                f"sqlalchemy-migrate version {self.revision} (older than Xena: not a known head)"
            )
        if self.revision is None:
            return "no version recorded"
        state = (
            "Nova's API head"
            if self.head
            else "a known older revision"
            if self.known
            else "unknown to cellgate"
        )
        return f"alembic revision {self.revision} ({state})"


@dataclass(frozen=True)
class NovaCell:
    """One row of Nova's ``cell_mappings``, URLs kept as Nova wrote them (masked when shown)."""

    id: int
    uuid: str
    name: str | None
    transport_url: StoredURL
    database_connection: StoredURL
    disabled: bool
    created_at: dt.datetime | None

    @property
    def is_cell0(self) -> bool:
        return self.uuid == nova.CELL0_UUID

    @property
    def label(self) -> str:
        return self.name or self.uuid

    @property
    def is_template(self) -> bool:
        return self.transport_url.is_template or self.database_connection.is_template


@dataclass(frozen=True)
class CellSummary:
    """A cell as inspect shows it: its mapping, its hosts, its instance mappings."""

    cell: NovaCell
    hosts: tuple[str, ...]
    instance_mappings: int
    queued_for_delete: int

    def to_dict(self) -> dict[str, Any]:
        c = self.cell
        return {
            "uuid": c.uuid,
            "name": c.name,
            "is_cell0": c.is_cell0,
            "transport_url": str(c.transport_url),
            "database_connection": str(c.database_connection),
            "database_driver": database_translation(c.database_connection.reveal()),
            "template": c.is_template,
            "disabled": c.disabled,
            "hosts": list(self.hosts),
            "host_count": len(self.hosts),
            "instance_mappings": self.instance_mappings,
            "queued_for_delete": self.queued_for_delete,
        }


@dataclass(frozen=True)
class NovaInspection:
    """What :func:`inspect_nova` found; every URL in it is masked."""

    database: str  # the masked URL read
    revision: NovaRevision
    cells: tuple[CellSummary, ...]
    counts: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "database": self.database,
            "schema": self.revision.to_dict(),
            "counts": dict(self.counts),
            "cells": [c.to_dict() for c in self.cells],
        }


@contextmanager
def nova_api_engine(app: App, url: str) -> Iterator[Engine]:
    """A read-only engine on the Nova API database at ``url`` (Nova's spelling).

    :raises InvalidURL: ``url`` is no database URL cellgate can use.
    :raises BackendUnavailable: the server cannot be reached (URL masked).
    """
    parsed = DatabaseURL.parse(translate_database_url(url))
    with (
        app.engines.transient(parsed, read_only=True) as engine,
        translate_errors(COMPONENT, address=mask_url(url)),
    ):
        yield engine


def read_revision(conn: Connection) -> NovaRevision:
    """The API database's recorded revision; :class:`SchemaMismatch` if it is no Nova API DB."""
    tables = set(sqlalchemy.inspect(conn).get_table_names())
    if not {"cell_mappings", "host_mappings", "instance_mappings"} <= tables:
        raise SchemaMismatch(
            component=COMPONENT, current=None, expected=nova.API_HEAD, hint=_NOT_NOVA_HINT
        )
    if "alembic_version" in tables:
        found = conn.scalars(select(nova.alembic_version_api.c.version_num)).first()
        return NovaRevision(
            "alembic_version", found, found in nova.API_REVISIONS, found == nova.API_HEAD
        )
    if "migrate_version" in tables:
        version = conn.scalars(select(nova.migrate_version.c.version)).first()
        return NovaRevision(
            "migrate_version", None if version is None else str(version), False, False
        )
    return NovaRevision(None, None, False, False)


def read_cells(conn: Connection) -> list[NovaCell]:
    """Every row of ``cell_mappings``, cell0 first, then by id (Nova's creation order)."""
    t = nova.cell_mappings
    rows = conn.execute(
        select(
            t.c.id,
            t.c.uuid,
            t.c.name,
            t.c.transport_url,
            t.c.database_connection,
            t.c.disabled,
            t.c.created_at,
        ).order_by(t.c.id)
    ).all()
    cells = [
        NovaCell(
            id=r.id,
            uuid=r.uuid,
            name=r.name,
            transport_url=StoredURL(r.transport_url or ""),
            database_connection=StoredURL(r.database_connection or ""),
            disabled=bool(r.disabled),  # NULL: enabled
            created_at=r.created_at,
        )
        for r in rows
    ]
    return sorted(cells, key=lambda c: (not c.is_cell0, c.id))


def read_hosts(conn: Connection) -> list[tuple[int, str]]:
    """``(cell_id, host)`` of every host mapping, by host."""
    t = nova.host_mappings
    return [
        (r.cell_id, r.host) for r in conn.execute(select(t.c.cell_id, t.c.host).order_by(t.c.host))
    ]


def _count(conn: Connection, table: sqlalchemy.Table, *where: Any) -> int:
    return conn.scalar(select(func.count()).select_from(table).where(*where)) or 0


def inspect_nova(app: App, nova_api_db: str) -> NovaInspection:
    """Describe the Nova deployment whose API database is at ``nova_api_db``; write nothing.

    :raises InvalidURL: the URL is not usable (exit 2 in the CLI).
    :raises BackendUnavailable: the database cannot be reached (exit 5).
    :raises SchemaMismatch: it has no Nova API tables (exit 6).
    """
    im = nova.instance_mappings
    with nova_api_engine(app, nova_api_db) as engine, engine.connect() as conn, conn.begin():
        revision = read_revision(conn)
        cells = read_cells(conn)
        hosts: dict[int, list[str]] = {}
        for cell_id, host in read_hosts(conn):
            hosts.setdefault(cell_id, []).append(host)
        per_cell = {
            r.cell_id: (int(r.total), int(r.queued or 0))  # MariaDB sums are Decimal
            for r in conn.execute(
                select(
                    im.c.cell_id,
                    func.count().label("total"),
                    func.sum(case((im.c.queued_for_delete.is_(True), 1), else_=0)).label("queued"),
                )
                .where(im.c.cell_id.is_not(None))
                .group_by(im.c.cell_id)
            )
        }
        counts = {
            "cells": len(cells),
            "host_mappings": sum(len(h) for h in hosts.values()),
            "instance_mappings": _count(conn, im),
            "unscheduled_instance_mappings": _count(conn, im, im.c.cell_id.is_(None)),
            "queued_for_delete_null": _count(conn, im, im.c.queued_for_delete.is_(None)),
            "user_id_null": _count(conn, im, im.c.user_id.is_(None)),
            "build_requests": _count(conn, nova.build_requests),
            "request_specs": _count(conn, nova.request_specs),
        }
    summaries = tuple(
        CellSummary(
            cell=c,
            hosts=tuple(hosts.get(c.id, ())),
            instance_mappings=per_cell.get(c.id, (0, 0))[0],
            queued_for_delete=per_cell.get(c.id, (0, 0))[1],
        )
        for c in cells
    )
    return NovaInspection(mask_url(nova_api_db), revision, summaries, counts)
