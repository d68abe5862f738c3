"""Real Nova deployments, built by ``nova-manage``, and cheap copies of them.

:func:`build` makes the API database and three cell databases on one
backend, runs Nova's own ``nova-manage api_db sync``, ``cell_v2 map_cell0``,
``db sync`` (for each cell) and ``cell_v2 create_cell`` (cell1 with a
literal multi-host transport URL; cell2 with templated URLs, the transport
one using the indexed fields ``{hostname1}`` ...), then adds services,
compute nodes, instances, host and instance mappings and a build request in
SQL that matches Nova's schema (the columns Nova's models require).

``nova-manage`` costs seconds per call, so a test never builds one: the
session builds one base per backend (tests/nova/conftest.py) and each test
that breaks something takes :meth:`Deployment.copy`, which copies the API
database (and only the cell databases named) and points the copy's
``cell_mappings`` at the copies. SQLite copies files; PostgreSQL uses
``CREATE DATABASE ... TEMPLATE``; MariaDB copies table by table
(``CREATE TABLE ... LIKE``, which drops foreign keys: fine for tests that
break the copy on purpose). :meth:`Deployment.checksum` digests every row of
every table of every database, so a test can prove nobody wrote.
"""

from __future__ import annotations

import hashlib
import secrets
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import quote, unquote

import psycopg
import sqlalchemy
from sqlalchemy import text

from tests.support import Server, _mariadb, _pg_literal, _pools, _postgres

CELL0_UUID = "00000000-0000-0000-0000-000000000000"
API_HEAD = "cdeec0c85668"
NOVA_MANAGE_TIMEOUT = 300.0
#: When the fixture's rows were "created": old enough to be settled, never in the future.
BASE_TIME = datetime(2026, 1, 5, 12, 0, 0)


@dataclass(frozen=True)
class Database:
    """One database of a deployment: how Nova writes its URL, and how to reach it."""

    kind: str  # sqlite | mariadb | postgresql
    name: str  # the file stem (SQLite) or the database name
    nova_url: str  # as in nova.conf and cell_mappings (psycopg2, ?charset=utf8)
    user: str = ""
    password: str = ""

    @property
    def sa_url(self) -> str:
        """The URL this test process connects with (its own drivers)."""
        return self.nova_url.replace("postgresql+psycopg2://", "postgresql+psycopg://")

    @contextmanager
    def connect(self) -> Iterator[sqlalchemy.Connection]:
        """A connection in one transaction, committed at the end (for the tests' own writes)."""
        engine = sqlalchemy.create_engine(self.sa_url, poolclass=sqlalchemy.pool.NullPool)
        try:
            with engine.begin() as conn:
                yield conn
        finally:
            engine.dispose()

    def execute(self, sql: str, **params: object) -> None:
        with self.connect() as conn:
            conn.execute(text(sql), params)

    def tables(self, conn: sqlalchemy.Connection) -> list[str]:
        return sorted(sqlalchemy.inspect(conn).get_table_names())


@dataclass
class Deployment:
    """A Nova deployment: the API database, cell databases and the template defaults."""

    kind: str
    workdir: Path
    api: Database
    cells: dict[str, Database]  # cell0, cell1, cell2
    cell_uuids: dict[str, str]
    default_database: str  # [database] connection (cell1's), templates render on it
    default_transport: str  # [DEFAULT] transport_url (multi-host)
    made: list[Database] = field(default_factory=list)  # what copy() made

    @property
    def api_url(self) -> str:
        return self.api.nova_url

    def all_databases(self) -> dict[str, Database]:
        return {"api": self.api, **self.cells}

    # ------------------------------------------------------------------ copies

    def copy(self, server: Server, tmp_path: Path, cells: tuple[str, ...] = ()) -> Deployment:
        """A deployment of the test's own: a copy of the API database and of ``cells``.

        Cells not named stay the base's (shared, so only for reading): the
        copy's ``cell_mappings`` point at copies only for the cells copied.
        """
        new_api = _clone(self.api, server, tmp_path)
        new_cells = dict(self.cells)
        for name in cells:
            new_cells[name] = _clone(self.cells[name], server, tmp_path)
        with new_api.connect() as conn:
            for name in cells:
                old, new = self.cells[name], new_cells[name]
                # The whole URL (or template): a copy has its own file, or database,
                # user and password.
                for before, after in (
                    (old.nova_url, new.nova_url),
                    (_template(old), _template(new)),
                ):
                    conn.execute(
                        text(
                            "UPDATE cell_mappings SET database_connection = :new"
                            " WHERE uuid = :uuid AND database_connection = :old"
                        ),
                        {"old": before, "new": after, "uuid": self.cell_uuids[name]},
                    )
        made = [new_api, *(new_cells[n] for n in cells)]
        return replace(self, api=new_api, cells=new_cells, made=made)

    # ------------------------------------------------------------ checksums

    def checksum(self) -> dict[str, str]:
        """``database.table`` -> a digest of every row: equal before and after = nothing written."""
        sums: dict[str, str] = {}
        for label, db in self.all_databases().items():
            with db.connect() as conn:
                for table in db.tables(conn):
                    rows = conn.execute(text(f"SELECT * FROM {_quote(db.kind, table)}")).all()
                    digest = hashlib.sha256()
                    for row in sorted(repr(tuple(r)) for r in rows):
                        digest.update(row.encode())
                    sums[f"{label}.{table}"] = f"{len(rows)}:{digest.hexdigest()}"
        return sums


def _quote(kind: str, name: str) -> str:
    return f"`{name}`" if kind == "mariadb" else f'"{name}"'


# ---------------------------------------------------------------- databases


def new_database(server: Server, tmp_path: Path) -> Database:
    """A fresh database on ``server``, with its URL written the way Nova's users write it."""
    url = server.new_database()
    raw = url.render(hide_password=False)
    if server.kind == "sqlite":
        return Database("sqlite", Path(url.database or "").stem, raw)
    name = url.database or ""
    sa = url.sqlalchemy_url
    user, password = sa.username or "", sa.password or ""
    if server.kind == "mariadb":
        return Database(
            "mariadb",
            name,
            f"mysql+pymysql://{user}:{quote(str(password), safe='')}@127.0.0.1:3306/{name}"
            "?charset=utf8",
            user,
            str(password),
        )
    return Database(
        "postgresql",
        name,
        f"postgresql+psycopg2://{user}:{quote(str(password), safe='')}@127.0.0.1:5432/{name}",
        user,
        str(password),
    )


def _clone(db: Database, server: Server, tmp_path: Path) -> Database:
    if db.kind == "sqlite":
        stem = f"cgt_{secrets.token_hex(5)}"
        src = Path(unquote(db.nova_url.removeprefix("sqlite:///")))
        dst = tmp_path / f"{stem}.sqlite"
        shutil.copyfile(src, dst)
        return Database("sqlite", stem, f"sqlite:///{dst}")
    if db.kind == "postgresql":
        return _clone_postgres(db)
    return _clone_mariadb(db, server, tmp_path)


def _clone_postgres(db: Database) -> Database:
    """``CREATE DATABASE ... TEMPLATE``, owned by a role of its own, dropped by the pool.

    The base database belongs to ``postgres`` (see :func:`_settle_postgres`),
    its objects to the base's role; ``REASSIGN OWNED`` in the copy hands the
    copy's objects to the copy's role, and touches nothing outside the copy.
    """
    pool = _pools.postgres()
    name, password = f"cgt_{secrets.token_hex(5)}", f"p@ss:w/rd%,#?{secrets.token_hex(4)}"
    with pool._cond:
        pool._made.append(name)
        pool._live.add(name)
    with _postgres() as conn:
        conn.execute(f"CREATE ROLE {name} LOGIN PASSWORD {_pg_literal(password)}".encode())
        conn.execute(f"CREATE DATABASE {name} TEMPLATE {db.name} OWNER {name}".encode())
    with psycopg.connect(
        f"host=127.0.0.1 port=5432 user=postgres dbname={name} connect_timeout=3", autocommit=True
    ) as conn:
        conn.execute(f"REASSIGN OWNED BY {db.user} TO {name}".encode())
    return Database(
        "postgresql",
        name,
        f"postgresql+psycopg2://{name}:{quote(password, safe='')}@127.0.0.1:5432/{name}",
        name,
        password,
    )


def release_copies(deployment: Deployment) -> None:
    """Drop what :meth:`Deployment.copy` made (PostgreSQL's behind the test, by the pool)."""
    pg = [d.name for d in deployment.made if d.kind == "postgresql"]
    if pg:
        _pools.postgres().release(pg)


def _settle_postgres(dbs: list[Database]) -> None:
    """Give the base databases to ``postgres``, so copies never depend on the base's role."""
    with _postgres() as conn:
        for db in dbs:
            conn.execute(f"ALTER DATABASE {db.name} OWNER TO postgres".encode())


def _clone_mariadb(db: Database, server: Server, tmp_path: Path) -> Database:
    new = new_database(server, tmp_path)
    with _mariadb() as conn, conn.cursor() as cur:
        cur.execute("SET SESSION foreign_key_checks = 0")
        cur.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
            (db.name,),
        )
        for (table,) in cur.fetchall():
            cur.execute(f"CREATE TABLE `{new.name}`.`{table}` LIKE `{db.name}`.`{table}`")
            cur.execute(f"INSERT INTO `{new.name}`.`{table}` SELECT * FROM `{db.name}`.`{table}`")
    return new


# ------------------------------------------------------------------ building


def _nova_conf(path: Path, api: str, database: str, transport: str) -> Path:
    # oslo.config substitutes $name in values; our URLs have no '$'.
    assert "$" not in api + database + transport
    path.write_text(
        "[DEFAULT]\n"
        f"transport_url = {transport}\n"
        f"state_path = {path.parent}\n"
        "[api_database]\n"
        f"connection = {api}\n"
        "[database]\n"
        f"connection = {database}\n"
    )
    return path


def _run(nova_manage: Path, conf: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(nova_manage), "--config-file", str(conf), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait(*procs: subprocess.Popen[str]) -> list[str]:
    outputs = []
    for proc in procs:
        out, _ = proc.communicate(timeout=NOVA_MANAGE_TIMEOUT)
        if proc.returncode != 0:
            raise RuntimeError(f"{proc.args!r} exited {proc.returncode}:\n{out[-3000:]}")
        outputs.append(out)
    return outputs


def _template(db: Database) -> str:
    """cell2's database URL as a template on cell1's (Nova renders it on [database])."""
    if db.kind == "sqlite":
        return "{scheme}:///" + db.nova_url.removeprefix("sqlite:///")
    creds = f"{db.user}:{quote(db.password, safe='')}"
    tail = "?{query}" if db.kind == "mariadb" else ""
    return f"{{scheme}}://{creds}@{{hostname}}:{{port}}/{db.name}{tail}"


def build(nova_manage: Path, server: Server, vhost_url: str, workdir: Path) -> Deployment:
    """A Nova deployment on ``server``'s backend, built by Nova's own ``nova-manage``."""
    workdir.mkdir(parents=True, exist_ok=True)
    api = new_database(server, workdir)
    cells = {name: new_database(server, workdir) for name in ("cell0", "cell1", "cell2")}
    # The vhost's URL, on two "hosts" (both this machine's broker) for the multi-host form.
    scheme_creds, _, hostpath = vhost_url.partition("@")
    hostport, _, vhost = hostpath.partition("/")
    port = hostport.rpartition(":")[2]
    transport = f"{scheme_creds}@127.0.0.1:{port},{scheme_creds.partition('://')[2]}@localhost:{port}/{vhost}"
    conf1 = _nova_conf(
        workdir / "nova-cell1.conf", api.nova_url, cells["cell1"].nova_url, transport
    )
    conf2 = _nova_conf(
        workdir / "nova-cell2.conf", api.nova_url, cells["cell2"].nova_url, transport
    )

    _wait(_run(nova_manage, conf1, "api_db", "sync"))
    _wait(
        _run(
            nova_manage,
            conf1,
            "cell_v2",
            "map_cell0",
            "--database_connection",
            cells["cell0"].nova_url,
        )
    )
    # cell1's sync also syncs cell0 (now mapped); cell2's config names cell2.
    sync1 = _run(nova_manage, conf1, "db", "sync")
    sync2 = _run(nova_manage, conf2, "db", "sync", "--local_cell")
    create1 = _run(
        nova_manage,
        conf1,
        "cell_v2",
        "create_cell",
        "--name",
        "cell1",
        "--transport-url",
        transport,
        "--database_connection",
        cells["cell1"].nova_url,
        "--verbose",
    )
    uuids = {"cell0": CELL0_UUID}
    uuids["cell1"] = _wait(create1)[0].strip().splitlines()[-1].strip()
    mq_template = (
        f"{{scheme}}://{{username2}}:{{password2}}@{{hostname2}}:{{port2}},"
        f"{{username1}}:{{password1}}@{{hostname1}}:{{port1}}/{vhost}"
    )
    create2 = _run(
        nova_manage,
        conf1,
        "cell_v2",
        "create_cell",
        "--name",
        "cell2",
        "--transport-url",
        mq_template,
        "--database_connection",
        _template(cells["cell2"]),
        "--verbose",
    )
    uuids["cell2"] = _wait(create2)[0].strip().splitlines()[-1].strip()
    _wait(sync1, sync2)
    for value in uuids.values():
        uuid.UUID(value)  # create_cell --verbose prints the new cell's uuid last
    deployment = Deployment(
        kind=server.kind,
        workdir=workdir,
        api=api,
        cells=cells,
        cell_uuids=uuids,
        default_database=cells["cell1"].nova_url,
        default_transport=transport,
    )
    _seed(deployment)
    if server.kind == "postgresql":
        _settle_postgres([api, *cells.values()])
    return deployment


# ------------------------------------------------------------------- rows

#: cell -> compute hosts (each with a nova-compute service and a compute node).
HOSTS = {"cell1": ["compute-1a", "compute-1b"], "cell2": ["compute-2a"]}
#: cell -> (instance uuid, host, deleted?) ; cell0 holds one that failed to build.
INSTANCES = {
    "cell0": [("0c0c0c0c-0000-4000-8000-000000000001", None, False)],
    "cell1": [
        ("11111111-0000-4000-8000-000000000001", "compute-1a", False),
        ("11111111-0000-4000-8000-000000000002", "compute-1a", False),
        ("11111111-0000-4000-8000-000000000003", "compute-1b", False),
        ("11111111-0000-4000-8000-000000000004", "compute-1b", True),  # soft-deleted, queued
    ],
    "cell2": [
        ("22222222-0000-4000-8000-000000000001", "compute-2a", False),
        ("22222222-0000-4000-8000-000000000002", "compute-2a", False),
    ],
}
#: An instance still being scheduled: a build request, a request spec, cell_id NULL.
BUILDING = "bbbbbbbb-0000-4000-8000-000000000001"
PROJECT, USER = "project-a", "user-a"


def _seed(d: Deployment) -> None:
    for cell, instances in INSTANCES.items():
        with d.cells[cell].connect() as conn:
            for host in HOSTS.get(cell, []):
                _insert_service(conn, host, "nova-compute")
            if cell != "cell0":
                _insert_service(conn, f"conductor-{cell}", "nova-conductor")
            for i, (inst_uuid, host, deleted) in enumerate(instances):
                row = conn.execute(
                    text(
                        "INSERT INTO instances (created_at, uuid, project_id, user_id, host,"
                        " node, vm_state, deleted, hidden, display_name)"
                        " VALUES (:t, :u, :p, :us, :h, :h, :vm, 0, :hidden, :n)"
                    ),
                    {
                        "t": BASE_TIME + timedelta(minutes=i),
                        "u": inst_uuid,
                        "p": PROJECT,
                        "us": USER,
                        "h": host,
                        "vm": "error" if cell == "cell0" else "active",
                        "hidden": False,
                        "n": f"vm-{i}",
                    },
                )
                del row
                if deleted:
                    conn.execute(
                        text(
                            "UPDATE instances SET deleted = id, deleted_at = :t,"
                            " vm_state = 'deleted' WHERE uuid = :u"
                        ),
                        {"t": BASE_TIME + timedelta(hours=1), "u": inst_uuid},
                    )
    with d.api.connect() as conn:
        ids = dict(conn.execute(text("SELECT uuid, id FROM cell_mappings")).all())
        for cell, hosts in HOSTS.items():
            for host in hosts:
                conn.execute(
                    text(
                        "INSERT INTO host_mappings (created_at, cell_id, host) VALUES (:t, :c, :h)"
                    ),
                    {"t": BASE_TIME, "c": ids[d.cell_uuids[cell]], "h": host},
                )
        for cell, instances in INSTANCES.items():
            for inst_uuid, _host, deleted in instances:
                conn.execute(
                    text(
                        "INSERT INTO instance_mappings (created_at, instance_uuid, cell_id,"
                        " project_id, queued_for_delete, user_id)"
                        " VALUES (:t, :u, :c, :p, :q, :us)"
                    ),
                    {
                        "t": BASE_TIME,
                        "u": inst_uuid,
                        "c": ids[d.cell_uuids[cell]],
                        "p": PROJECT,
                        "q": deleted,
                        "us": USER,
                    },
                )
        add_build_request(conn, BUILDING, datetime.now().replace(microsecond=0))


def add_build_request(conn: sqlalchemy.Connection, inst_uuid: str, when: datetime) -> None:
    """An instance being scheduled, as nova-api writes it: mapping (no cell), request, spec."""
    conn.execute(
        text(
            "INSERT INTO instance_mappings (created_at, instance_uuid, cell_id, project_id,"
            " queued_for_delete, user_id) VALUES (:t, :u, NULL, :p, :q, :us)"
        ),
        {"t": when, "u": inst_uuid, "p": PROJECT, "q": False, "us": USER},
    )
    conn.execute(
        text(
            "INSERT INTO build_requests (created_at, project_id, instance_uuid, instance)"
            " VALUES (:t, :p, :u, :i)"
        ),
        {"t": when, "p": PROJECT, "u": inst_uuid, "i": "{}"},
    )
    conn.execute(
        text("INSERT INTO request_specs (created_at, instance_uuid, spec) VALUES (:t, :u, :s)"),
        {"t": when, "u": inst_uuid, "s": "{}"},
    )


def _insert_service(conn: sqlalchemy.Connection, host: str, binary: str) -> None:
    conn.execute(
        text(
            'INSERT INTO services (created_at, host, "binary", topic, report_count, disabled,'
            " deleted, version, uuid, forced_down)"
            " VALUES (:t, :h, :b, :topic, 0, :f, 0, 74, :u, :f)"
        ).bindparams()
        if conn.dialect.name != "mysql"
        else text(
            "INSERT INTO services (created_at, host, `binary`, topic, report_count, disabled,"
            " deleted, version, uuid, forced_down)"
            " VALUES (:t, :h, :b, :topic, 0, :f, 0, 74, :u, :f)"
        ),
        {
            "t": BASE_TIME,
            "h": host,
            "b": binary,
            "topic": binary.removeprefix("nova-"),
            "f": False,
            "u": str(uuid.uuid4()),
        },
    )
    if binary == "nova-compute":
        service_id = conn.execute(
            text("SELECT id FROM services WHERE host = :h AND deleted = 0"), {"h": host}
        ).scalar_one()
        conn.execute(
            text(
                "INSERT INTO compute_nodes (created_at, service_id, host, vcpus, memory_mb,"
                " local_gb, vcpus_used, memory_mb_used, local_gb_used, hypervisor_type,"
                " hypervisor_version, cpu_info, hypervisor_hostname, deleted, uuid, mapped)"
                " VALUES (:t, :s, :h, 8, 16384, 100, 0, 0, 0, 'QEMU', 8002000, '{}', :h, 0,"
                " :u, 1)"
            ),
            {"t": BASE_TIME, "s": service_id, "h": host, "u": str(uuid.uuid4())},
        )
