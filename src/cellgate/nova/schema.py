"""The part of Nova's schema cellgate reads, as SQLAlchemy Core tables.

Inspect, verify and import read a Nova deployment's ``nova_api`` database and
its cell databases; they never write (their engines are read-only at the
server: ``make_engine(read_only=True)``). These tables name only the columns
cellgate reads, with the types Nova declares, so a select never asks for a
column a supported Nova release lacks. They are *not* cellgate's own tables
(those are :mod:`cellgate.apidb.schema` and :mod:`cellgate.celldb.schema`)
and no migration creates them: Nova's own ``nova-manage`` does
(``tests/nova/deployment.py`` builds real ones for the tests).

Facts about Nova's schema that the readers depend on:

- ``cell_mappings.name`` is nullable and not unique; ``disabled`` may be NULL
  (enabled). A deleted cell is simply gone: no soft-delete columns in the API
  database.
- ``instance_mappings.cell_id`` NULL means the instance is still a build
  request; ``queued_for_delete`` and ``user_id`` NULL mean Nova's online data
  migrations have not run for the row.
- In a cell database ``instances.deleted`` is the row's ``id`` when it is
  soft-deleted (0 when live), ``services.deleted`` and
  ``compute_nodes.deleted`` likewise.
- Versions live in ``alembic_version``; databases older than Xena carry
  sqlalchemy-migrate's ``migrate_version`` instead.
"""

from __future__ import annotations

from typing import Final

from sqlalchemy import Boolean, Column, DateTime, Integer, MetaData, String, Table, Text

#: Nova's cell0: the same uuid and name as cellgate's.
CELL0_UUID: Final = "00000000-0000-0000-0000-000000000000"

#: Nova's API database revisions, oldest first (the alembic chain since Xena).
API_REVISIONS: Final = ("d67eeaabee36", "b30f573d3377", "cdeec0c85668")
#: Nova's cell ("main") database revisions, oldest first.
CELL_REVISIONS: Final = (
    "8f2f1571d55b",
    "16f1fbcab42b",
    "ccb0fa1a2252",
    "960aac0e09ea",
    "1b91788ec3a6",
    "1acf2c98e646",
    "13863f4e1612",
    "d60bddf7a903",
    "2903cd72dc14",
    "ab450ba04102",
)
API_HEAD: Final = API_REVISIONS[-1]
CELL_HEAD: Final = CELL_REVISIONS[-1]

api_metadata = MetaData()
cell_metadata = MetaData()

cell_mappings = Table(
    "cell_mappings",
    api_metadata,
    Column("id", Integer, primary_key=True),
    Column("uuid", String(36), nullable=False),
    Column("name", String(255)),
    Column("transport_url", Text),
    Column("database_connection", Text),
    Column("disabled", Boolean),
    Column("created_at", DateTime),
    Column("updated_at", DateTime),
)

host_mappings = Table(
    "host_mappings",
    api_metadata,
    Column("id", Integer, primary_key=True),
    Column("cell_id", Integer, nullable=False),
    Column("host", String(255), nullable=False),
    Column("created_at", DateTime),
)

instance_mappings = Table(
    "instance_mappings",
    api_metadata,
    Column("id", Integer, primary_key=True),
    Column("instance_uuid", String(36), nullable=False),
    Column("cell_id", Integer),
    Column("project_id", String(255), nullable=False),
    Column("user_id", String(255)),
    Column("queued_for_delete", Boolean),
    Column("created_at", DateTime),
)

build_requests = Table(
    "build_requests",
    api_metadata,
    Column("id", Integer, primary_key=True),
    Column("instance_uuid", String(36)),
    Column("project_id", String(255), nullable=False),
    Column("created_at", DateTime),
)

request_specs = Table(
    "request_specs",
    api_metadata,
    Column("id", Integer, primary_key=True),
    Column("instance_uuid", String(36), nullable=False),
)

#: The version tables: alembic's (both databases, since Xena) and sqlalchemy-migrate's.
alembic_version_api = Table(
    "alembic_version", api_metadata, Column("version_num", String(32), nullable=False)
)
alembic_version_cell = Table(
    "alembic_version", cell_metadata, Column("version_num", String(32), nullable=False)
)
migrate_version = Table(
    "migrate_version",
    MetaData(),
    Column("repository_id", String(250), primary_key=True),
    Column("version", Integer),
)

instances = Table(
    "instances",
    cell_metadata,
    Column("id", Integer, primary_key=True),
    Column("uuid", String(36), nullable=False),
    Column("project_id", String(255)),
    Column("user_id", String(255)),
    Column("host", String(255)),
    Column("hidden", Boolean),
    Column("deleted", Integer),
    Column("created_at", DateTime),
    Column("deleted_at", DateTime),
)

services = Table(
    "services",
    cell_metadata,
    Column("id", Integer, primary_key=True),
    Column("host", String(255)),
    Column("binary", String(255)),
    Column("topic", String(255)),
    Column("version", Integer),
    Column("disabled", Boolean),
    Column("deleted", Integer),
    Column("updated_at", DateTime),
)

compute_nodes = Table(
    "compute_nodes",
    cell_metadata,
    Column("id", Integer, primary_key=True),
    Column("host", String(255)),
    Column("hypervisor_hostname", String(255)),
    Column("mapped", Integer),
    Column("deleted", Integer),
)
