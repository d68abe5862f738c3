"""The deployment a run measures: databases, a broker vhost, a config file, cells.

Everything is made for this run only and removed by :meth:`Deployment.close`:
a temporary directory (config file, SQLite files), uniquely named databases
and one user on MariaDB or PostgreSQL, and a RabbitMQ vhost with its own
user. Servers are reached on 127.0.0.1 only, as the test suite does
(``tests/support.py``): MariaDB as ``root`` without a password, PostgreSQL as
``postgres``, RabbitMQ through ``rabbitmqctl``.

Cells are mapped in stages (:meth:`Deployment.map_cells`), so the suite can
measure the same request with 1, 10, 100 and 1,000 cells mapped:

- cells 1-10 are on the chosen backend and migrated; cell 1 holds the
  instances the "show" figures read;
- cells 11-200 are on the chosen backend too (scatter-gather's cells); on
  MariaDB and PostgreSQL they are empty databases, since a scatter function
  only sleeps in them;
- cells 201-1,000 are SQLite files on every backend (only mapped, and touched
  once by the connection count).

SQLite cells are copies of one migrated file, so 1,000 cells cost a second,
not 1,000 Alembic runs.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import subprocess
import tempfile
import uuid as uuidlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pymysql
from sqlalchemy import insert

from cellgate import App, CellMapping, RequestContext, load_settings
from cellgate.apidb.mappings import bump_generation, create_cell
from cellgate.apidb.schema import CellMappingRow, InstanceMappingRow
from cellgate.celldb.schema import InstanceRow
from cellgate.config import Settings, template_defaults
from cellgate.migrations.runner import MigrationLine, upgrade
from cellgate.sql.api_database import ApiDatabase
from cellgate.sql.engines import make_engine
from cellgate.urls import DatabaseURL

MARIADB = {"host": "127.0.0.1", "port": 3306, "user": "root", "password": ""}
POSTGRES = "host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=3"

MAIN_CELLS = 10  # migrated cells on the chosen backend
SCATTER_CELLS = 200  # cells on the chosen backend (the largest scatter)
MAX_CELLS = 1000
INSTANCES = 1000  # rows in cell 1 (and mappings in the API database)
PROJECT = "bench"
TOKEN = "bench-" + secrets.token_hex(8)
_CTX = RequestContext(project_id=PROJECT, request_id="req-bench-setup")


def cell_name(number: int) -> str:
    return f"bench-{number:04d}"


class Servers:
    """Makes uniquely named databases on one backend, and drops them all at the end."""

    def __init__(self, kind: str, tmp: Path) -> None:
        self.kind = kind
        self.tmp = tmp
        self.run = secrets.token_hex(4)
        self.user = f"cgb_{self.run}"
        self.password = secrets.token_hex(12)
        self.made: list[str] = []
        self._user_made = False

    def _mariadb(self) -> Any:
        return pymysql.connect(**MARIADB, connect_timeout=3, autocommit=True)  # type: ignore[arg-type]

    def _postgres(self) -> psycopg.Connection[Any]:
        return psycopg.connect(POSTGRES, autocommit=True)

    def check(self) -> None:
        """Fail early, with a hint, if the server is not there."""
        try:
            if self.kind == "mariadb":
                self._mariadb().close()
            elif self.kind == "postgresql":
                self._postgres().close()
        except Exception as exc:
            raise SystemExit(
                f"benchmarks: {self.kind} on 127.0.0.1 is not reachable ({exc}); "
                "start it with scripts/services"
            ) from None

    def new_databases(self, suffixes: list[str]) -> list[str]:
        """URLs of new empty databases (or SQLite paths still to be created)."""
        if self.kind == "sqlite":
            return [f"sqlite:///{self.tmp / (s + '.sqlite')}" for s in suffixes]
        names = [f"{self.user}_{s}".replace("-", "_") for s in suffixes]
        if self.kind == "mariadb":
            with contextlib.closing(self._mariadb()) as conn, conn.cursor() as cur:
                if not self._user_made:
                    cur.execute(
                        f"CREATE USER '{self.user}'@'%%' IDENTIFIED BY %s", (self.password,)
                    )
                    self._user_made = True
                for name in names:
                    self.made.append(name)
                    cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
                    cur.execute(f"GRANT ALL ON `{name}`.* TO '{self.user}'@'%'")
            return [
                f"mysql+pymysql://{self.user}:{self.password}@127.0.0.1:3306/{n}" for n in names
            ]
        with self._postgres() as conn:
            if not self._user_made:
                conn.execute(f"CREATE ROLE {self.user} LOGIN PASSWORD '{self.password}'".encode())
                self._user_made = True
            for name in names:
                self.made.append(name)
                conn.execute(f"CREATE DATABASE {name} OWNER {self.user}".encode())
        return [
            f"postgresql+psycopg://{self.user}:{self.password}@127.0.0.1:5432/{n}" for n in names
        ]

    def room(self) -> int | None:
        """Connections the server still accepts from an ordinary user; None for SQLite."""
        if self.kind == "mariadb":
            with contextlib.closing(self._mariadb()) as conn, conn.cursor() as cur:
                cur.execute("SELECT @@max_connections")
                limit = int(cur.fetchone()[0])
                cur.execute("SHOW STATUS LIKE 'Threads_connected'")
                used = int(cur.fetchone()[1])
            return limit - used
        if self.kind == "postgresql":
            with self._postgres() as conn:
                limit = int(conn.execute("SHOW max_connections").fetchone()[0])
                reserved = int(conn.execute("SHOW superuser_reserved_connections").fetchone()[0])
                used = int(conn.execute("SELECT count(*) FROM pg_stat_activity").fetchone()[0])
            return limit - reserved - used
        return None

    def drop_all(self) -> None:
        if self.kind == "mariadb" and (self.made or self._user_made):
            with contextlib.closing(self._mariadb()) as conn, conn.cursor() as cur:
                for name in self.made:
                    cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
                if self._user_made:
                    cur.execute(f"DROP USER IF EXISTS '{self.user}'@'%'")
        elif self.kind == "postgresql" and (self.made or self._user_made):
            with self._postgres() as conn:
                for name in self.made:
                    conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)".encode())
                if self._user_made:
                    conn.execute(f"DROP ROLE IF EXISTS {self.user}".encode())
        self.made.clear()
        self._user_made = False


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


class Vhost:
    """A RabbitMQ vhost and user of this run's own; deleted by :meth:`drop`."""

    def __init__(self) -> None:
        self.name = f"cgb_{secrets.token_hex(5)}"
        self.password = secrets.token_hex(12)
        self._made = False

    def create(self) -> str:
        try:
            rabbitmqctl("add_vhost", self.name)
            self._made = True
            rabbitmqctl("add_user", self.name, self.password)
            rabbitmqctl("set_permissions", "-p", self.name, self.name, ".*", ".*", ".*")
        except (OSError, subprocess.SubprocessError) as exc:
            raise SystemExit(
                f"benchmarks: cannot create a RabbitMQ vhost with rabbitmqctl ({exc}); "
                "start RabbitMQ with scripts/services"
            ) from None
        return self.url

    @property
    def url(self) -> str:
        return f"rabbit://{self.name}:{self.password}@127.0.0.1:5672/{self.name}"

    def drop(self) -> None:
        if self._made:
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                rabbitmqctl("delete_vhost", self.name)
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                rabbitmqctl("delete_user", self.name)
            self._made = False


@dataclass
class Deployment:
    """One run's databases, broker and config; ``close()`` removes them all."""

    backend: str
    transport: str
    tmp: Path
    servers: Servers
    vhost: Vhost | None
    config: Path = field(init=False)
    settings: Settings = field(init=False)
    cells: list[CellMapping] = field(default_factory=list)
    instances: list[str] = field(default_factory=list)
    _backend_urls: list[str] = field(default_factory=list)
    _template: Path | None = None

    @classmethod
    @contextlib.contextmanager
    def create(cls, backend: str, transport: str) -> Iterator[Deployment]:
        tmp = Path(tempfile.mkdtemp(prefix="cellgate-bench-"))
        servers = Servers(backend, tmp)
        vhost = Vhost() if transport == "rabbit" else None
        deployment = cls(backend, transport, tmp, servers, vhost)
        try:
            servers.check()
            deployment._set_up()
            yield deployment
        finally:
            deployment.close()

    @property
    def rabbit_url(self) -> str | None:
        return self.vhost.url if self.vhost else None

    def _set_up(self) -> None:
        transport_url = self.vhost.create() if self.vhost else "memory://bench"
        api_url, local_url = self.servers.new_databases(["api", "local"])
        self.config = self.tmp / "cellgate.conf"
        self.config.write_text(
            "[DEFAULT]\n"
            f"state_path = {self.tmp / 'state'}\n"
            f"transport_url = {transport_url}\n"
            "[api]\n"
            f"auth_tokens = {TOKEN}:{PROJECT}:member\n"
            "[api_database]\n"
            f"connection = {api_url}\n"
            "[database]\n"
            f"connection = {local_url}\n"
            "[cells]\n"
            "cache_ttl = 600\n",
            encoding="utf-8",
        )
        self.settings = load_settings(self.config)
        api = ApiDatabase(self.settings.api_database)
        try:
            api.upgrade()
        finally:
            api.close()
        self._backend_urls = self.servers.new_databases(
            [f"c{n:04d}" for n in range(1, SCATTER_CELLS + 1)]
        )

    # -- cells --------------------------------------------------------------
    def _sqlite_cell(self, number: int) -> str:
        """A migrated SQLite cell file (a copy of one template)."""
        if self._template is None:
            self._template = self.tmp / "template.sqlite"
            engine = make_engine(
                DatabaseURL.parse(f"sqlite:///{self._template}"),
                connect_timeout=5,
                query_timeout=30,
                create_missing=True,
            )
            try:
                upgrade(engine, MigrationLine.CELL)
            finally:
                engine.dispose()
        path = self.tmp / f"c{number:04d}.sqlite"
        shutil.copyfile(self._template, path)
        return f"sqlite:///{path}"

    def _cell_url(self, number: int) -> str:
        if self.backend == "sqlite" or number > SCATTER_CELLS:
            return self._sqlite_cell(number)
        url = self._backend_urls[number - 1]
        if number <= MAIN_CELLS:
            engine = make_engine(DatabaseURL.parse(url), connect_timeout=5, query_timeout=60)
            try:
                upgrade(engine, MigrationLine.CELL)
            finally:
                engine.dispose()
        return url

    def _transport_for(self, number: int) -> str:
        # One vhost is one cell's queue: cellgate refuses two cells on one.
        if number == 1 and self.vhost is not None:
            return self.vhost.url
        return f"memory://{cell_name(number)}"

    def map_cells(self, app: App, count: int) -> None:
        """Map cells until ``count`` are mapped; ``app`` sees them at once."""
        start = len(self.cells) + 1
        if count < start:
            return
        defaults = template_defaults(self.settings)
        rows = []
        with app.db.api_session() as session:
            for number in range(start, count + 1):
                url = self._cell_url(number)
                if number <= MAIN_CELLS:  # the validating path an operator takes
                    self.cells.append(
                        create_cell(
                            session,
                            name=cell_name(number),
                            transport_url=self._transport_for(number),
                            database_connection=url,
                            defaults=defaults,
                        )
                    )
                else:  # hundreds more: one bulk insert
                    rows.append(
                        {
                            "uuid": str(uuidlib.uuid4()),
                            "name": cell_name(number),
                            "transport_url": self._transport_for(number),
                            "database_connection": url,
                            "disabled": False,
                            "deleted": 0,
                        }
                    )
            if rows:
                session.execute(insert(CellMappingRow), rows)
                bump_generation(session)
        app.cells.invalidate()
        for row in rows:
            self.cells.append(app.cells.get(_CTX, row["uuid"]))
        if start == 1:
            self._add_instances(app, self.cells[0])

    def _add_instances(self, app: App, cell: CellMapping) -> None:
        """``INSTANCES`` rows in ``cell`` and their mappings in the API database."""
        self.instances = [str(uuidlib.uuid4()) for _ in range(INSTANCES)]
        with app.target_cell(_CTX, cell) as cctx, app.db.session(cctx) as session:
            session.execute(
                insert(InstanceRow),
                [
                    {
                        "uuid": u,
                        "name": f"vm-{i}",
                        "project_id": PROJECT,
                        "vm_state": "active",
                        "deleted": 0,
                    }
                    for i, u in enumerate(self.instances)
                ],
            )
        with app.db.api_session() as session:
            cell_id = session.scalar(
                CellMappingRow.__table__.select()
                .with_only_columns(CellMappingRow.id)
                .where(CellMappingRow.uuid == cell.uuid)
            )
            session.execute(
                insert(InstanceMappingRow),
                [
                    {
                        "instance_uuid": u,
                        "cell_id": cell_id,
                        "project_id": PROJECT,
                        "queued_for_delete": False,
                    }
                    for u in self.instances
                ],
            )

    def close(self) -> None:
        errors = []
        try:
            self.servers.drop_all()
        except Exception as exc:  # report, but still remove the rest
            errors.append(f"dropping databases: {exc}")
        if self.vhost is not None:
            self.vhost.drop()
        shutil.rmtree(self.tmp, ignore_errors=True)
        if errors:
            raise RuntimeError("; ".join(errors))
