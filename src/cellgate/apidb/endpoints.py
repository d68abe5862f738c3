"""Where a cell's database and message queue really are, so that no two cells share one.

A cell owns its database and its queue. Two cells pointed at one RabbitMQ
vhost consume each other's messages (builds stay ``building`` for ever,
actions fail with ``WrongCell``); two cells on one database see each other's
instances; a cell whose database *is* the API database gets cell tables
migrated into it. So ``cell create`` and ``cell update`` refuse all three,
before anything is written.

Raw strings cannot be compared: a template renders differently from its
text, ``rabbit://`` and ``amqp://`` are the same protocol, a port may be
implied, host names are case-insensitive, and the options in a query change
nothing about *where* the data lives. Each URL is therefore rendered with this
host's template defaults and reduced to an :class:`Endpoint`: protocol family,
host, port, and database or vhost (for SQLite, the file's absolute path). Two
loopback names (``localhost``, ``127.0.0.1``, ``::1``) are one host. Only the
place is compared; user names and passwords are not part of it, so the
endpoint text in a message never holds a secret.

The check reads every live cell, so two creates racing for one endpoint must
not both pass it. Every cell-mapping writer first takes the mapping
generation row's lock (:func:`~cellgate.apidb.mappings.lock_mappings`; the
write bumps that row anyway), so writers run one after another, and the check
reads the other cells with a locking read, which sees every row committed
before the lock was granted (a plain read under MariaDB's repeatable read
might not). SQLite's ``BEGIN IMMEDIATE`` already serialises writers. A cell
whose stored URL no longer renders on this host (a template needing a default
this host lacks, a key this host does not have) cannot be compared and is
skipped.

A PostgreSQL multi-host URL (a primary and its standbys) is every one of
its servers: two URLs that share any server and the database name share the
database, since after a failover either may be writing to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

from sqlalchemy import select
from sqlalchemy.orm import Session

from cellgate.apidb.schema import CellMappingRow
from cellgate.errors import ConfigError, EndpointInUse
from cellgate.keyring import KeyRing, url_binding
from cellgate.urls import DatabaseURL, StoredURL, TemplateDefaults, TransportURL

_LOOPBACK: Final = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})
_DEFAULT_PORTS: Final = {"mysql": 3306, "postgresql": 5432, "amqp": 5672}
_FAMILY: Final = {"rabbit": "amqp", "amqp": "amqp", "memory": "memory"}


@dataclass(frozen=True)
class Endpoint:
    """One place data or messages live: compared, and shown in messages (no secrets)."""

    family: str  # sqlite | mysql | postgresql | amqp | memory
    host: str | None
    port: int | None
    name: str  # database, vhost, SQLite path or memory:// name

    def __str__(self) -> str:
        if self.family in {"sqlite", "memory"}:
            return f"{self.family} {self.name}"
        return f"{self.host}:{self.port}/{self.name}"


def _host(name: str | None) -> str:
    host = (name or "localhost").lower()
    return "localhost" if host in _LOOPBACK else host


def database_endpoint(url: DatabaseURL) -> Endpoint | None:
    """Where ``url``'s data lives (the first server of a multi-host URL).

    ``None`` for an in-memory SQLite database (never shared).
    """
    found = database_endpoints(url)
    return found[0] if found else None


def database_endpoints(url: DatabaseURL) -> tuple[Endpoint, ...]:
    """Every server ``url``'s data may live on, in order; empty for in-memory SQLite."""
    sa = url.sqlalchemy_url
    if url.backend == "sqlite":
        if sa.database in (None, "", ":memory:"):
            return ()
        return (Endpoint("sqlite", None, None, str(Path(sa.database).expanduser().resolve())),)
    return tuple(
        Endpoint(url.backend, _host(host), port or _DEFAULT_PORTS[url.backend], sa.database or "")
        for host, port in url.hosts
    )


def transport_endpoints(url: TransportURL) -> set[Endpoint]:
    """Every broker ``url`` may deliver to, with its vhost; empty for ``none:///``."""
    family = _FAMILY.get(url.scheme)
    if family is None:
        return set()
    if family == "memory":
        return {Endpoint("memory", None, None, h.hostname) for h in url.hosts}
    vhost = url.virtual_host or "/"
    return {
        Endpoint(family, _host(h.hostname), h.port or _DEFAULT_PORTS[family], vhost)
        for h in url.hosts
    }


def refuse_shared_endpoints(
    session: Session,
    *,
    label: str,
    transport_url: str,
    database_connection: str,
    defaults: TemplateDefaults,
    ring: KeyRing,
    exclude_id: int | None = None,
) -> None:
    """Raise :class:`EndpointInUse` if another live cell (or the API database) uses either URL.

    ``label`` names the cell being written, ``exclude_id`` its own row on an
    update, ``ring`` decrypts the other cells' stored URLs. Call it in the
    writing transaction after :func:`~cellgate.apidb.mappings.lock_mappings`.
    """
    databases = set(database_endpoints(defaults.database_url(StoredURL(database_connection))))
    transports = transport_endpoints(defaults.transport_url(StoredURL(transport_url)))
    shared_db = databases & _api_endpoints(session)
    if shared_db:
        raise EndpointInUse(
            resource="database",
            endpoint=str(min(shared_db, key=str)),
            other="the API database",
            cell=label,
        )
    stmt = select(CellMappingRow).where(CellMappingRow.deleted == 0).with_for_update(read=True)
    if exclude_id is not None:
        stmt = stmt.where(CellMappingRow.id != exclude_id)
    for row in session.scalars(stmt):
        other = row.name or row.uuid
        try:
            theirs_db = ring.decrypt(
                row.database_connection,
                what=f"cell {other} database_connection",
                bound_to=url_binding(row.uuid, "database_connection"),
            )
            theirs_mq = ring.decrypt(
                row.transport_url,
                what=f"cell {other} transport_url",
                bound_to=url_binding(row.uuid, "transport_url"),
            )
            other_db = set(database_endpoints(defaults.database_url(StoredURL(theirs_db))))
            other_mq = transport_endpoints(defaults.transport_url(StoredURL(theirs_mq)))
        except ConfigError:
            continue  # cannot be rendered here, so cannot be compared (module docstring)
        shared_db = databases & other_db
        if shared_db:
            raise EndpointInUse(
                resource="database",
                endpoint=str(min(shared_db, key=str)),
                other=f"cell {other}",
                cell=label,
            )
        shared = transports & other_mq
        if shared:
            raise EndpointInUse(
                resource="message queue",
                endpoint=str(min(shared, key=str)),
                other=f"cell {other}",
                cell=label,
            )


def _api_endpoints(session: Session) -> set[Endpoint]:
    bind = session.get_bind()
    return set(database_endpoints(DatabaseURL(bind.engine.url)))
