"""The migration lock: concurrent ``sync`` runs take turns, on every backend.

Real ``cellgate`` processes race each other on one fresh database; the test
holds the lock itself (through :func:`migration_lock`, in this process) to
make a run give up; a holder is killed, and a migration fails, to show that
the lock never outlives its run. Every output is scanned for passwords.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy
from sqlalchemy.engine import Engine

from cellgate.cli.exit_codes import ExitCode
from cellgate.errors import MigrationError, MigrationLocked
from cellgate.migrations import runner
from cellgate.migrations.lock import migration_lock, mysql_lock_name
from cellgate.migrations.runner import MigrationLine
from cellgate.sql.engines import make_engine
from cellgate.urls import DatabaseURL
from tests.functional.conftest import Deployment, make_deployment
from tests.support import Server

RACERS = 3
HANG = 90  # seconds: "did not hang", never a measurement

#: (the sync command, the line it migrates, the URL of the deployment it uses)
COMMANDS = {
    "api-db": (("api-db", "sync"), MigrationLine.API, "api_url"),
    "db": (("db", "sync"), MigrationLine.CELL, "local_url"),
}


def _engine(url: DatabaseURL) -> Engine:
    return make_engine(url, connect_timeout=5, query_timeout=30, create_missing=True)


def _tables(url: DatabaseURL) -> set[str]:
    engine = _engine(url)
    try:
        return set(sqlalchemy.inspect(engine).get_table_names())
    finally:
        engine.dispose()


@contextmanager
def held(url: DatabaseURL, line: MigrationLine) -> Iterator[None]:
    """Hold ``line``'s migration lock on ``url`` in this process."""
    engine = _engine(url)
    try:
        with (
            engine.connect() as conn,
            migration_lock(conn, line.value, timeout=10, component="the test"),
        ):
            yield
    finally:
        engine.dispose()


def lock_is_free(url: DatabaseURL, line: MigrationLine) -> bool:
    try:
        with held(url, line):  # one attempt only would be timeout=0; 10s is generous
            return True
    except MigrationLocked:
        return False


def lock_is_taken(url: DatabaseURL, line: MigrationLine) -> bool:
    engine = _engine(url)
    try:
        with engine.connect() as conn, migration_lock(conn, line.value, timeout=0, component="t"):
            return False
    except MigrationLocked:
        return True
    finally:
        engine.dispose()


#: Sessions on the current database other than this one (the racers' and the holder's).
_SESSIONS = {
    "postgresql": "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
    " AND backend_type = 'client backend' AND pid <> pg_backend_pid()",
    "mysql": "SELECT count(*) FROM information_schema.PROCESSLIST"
    " WHERE DB = DATABASE() AND ID <> CONNECTION_ID()",
}
_SESSIONS["mariadb"] = _SESSIONS["mysql"]


def at_the_lock(engine: Engine, line: MigrationLine, procs: list[subprocess.Popen[str]]) -> int:
    """How many of ``procs`` have reached ``line``'s lock (which this process holds).

    A racer tries for the lock on the connection it migrates with, as soon as
    it has opened it, so: on SQLite, the processes with the lock's sidecar
    file open; on a server, the sessions on the database besides the holder's.
    """
    if engine.dialect.name == "sqlite":
        db = Path(str(engine.url.database)).resolve()
        sidecar = str(db.with_name(f"{db.name}.{line.value}.migrate-lock"))
        return sum(_has_open(proc.pid, sidecar) for proc in procs)
    with engine.connect() as conn:
        sessions = int(conn.exec_driver_sql(_SESSIONS[engine.dialect.name]).scalar_one())
    return sessions - 1  # the holder's


def _has_open(pid: int, path: str) -> bool:
    fds = Path(f"/proc/{pid}/fd")
    try:
        return any(os.readlink(fd) == path for fd in fds.iterdir())
    except OSError:  # the process exited, or closed the fd while we looked
        return False


def wait_at_the_lock(
    url: DatabaseURL, line: MigrationLine, procs: list[subprocess.Popen[str]]
) -> None:
    """Until every racer waits at the lock (or one has exited: its outcome tells why)."""
    engine = _engine(url)
    try:
        deadline = time.monotonic() + HANG
        while at_the_lock(engine, line, procs) < len(procs):
            if any(proc.poll() is not None for proc in procs):
                return
            assert time.monotonic() < deadline, f"the racers were not at the lock within {HANG}s"
            time.sleep(0.05)
    finally:
        engine.dispose()


def cellgate(d: Deployment, *args: str) -> list[str]:
    return [sys.executable, "-m", "cellgate", "--config-file", str(d.config_file), *args]


def run(d: Deployment, *args: str) -> tuple[int, str, str]:
    proc = subprocess.run(cellgate(d, *args), capture_output=True, text=True, timeout=HANG)
    for text in (proc.stdout, proc.stderr):
        d.assert_no_secret(text)
        assert "Traceback" not in text, text
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture
def deployment(server: Server, tmp_path: Path) -> Deployment:
    return make_deployment(server, tmp_path)


# --------------------------------------------------------------------------
# The lock itself, in this process
# --------------------------------------------------------------------------


def test_a_second_holder_waits_then_gives_up_and_the_lock_is_per_line(server: Server) -> None:
    url = server.new_database()
    with held(url, MigrationLine.API):
        assert lock_is_taken(url, MigrationLine.API)
        engine = _engine(url)
        try:
            with (
                pytest.raises(MigrationLocked, match=r"db1: another .* \(waited 0.3s\)"),
                engine.connect() as conn,
                migration_lock(conn, "api", timeout=0.3, component="db1"),
            ):
                pass
        finally:
            engine.dispose()
        assert not lock_is_taken(url, MigrationLine.CELL)  # the other line is free
    assert lock_is_free(url, MigrationLine.API)


def test_the_lock_is_per_database(server: Server) -> None:
    # GET_LOCK names are server-wide, and PostgreSQL advisory keys must not be:
    # a sync of one cell never waits for a sync of another on the same server.
    first, second = server.new_database(), server.new_database()
    with held(first, MigrationLine.CELL):
        assert lock_is_taken(first, MigrationLine.CELL)
        assert not lock_is_taken(second, MigrationLine.CELL)


def test_mysql_lock_names_fit_in_64_characters_and_stay_distinct() -> None:
    long_a, long_b = "a" * 64, "a" * 63 + "b"
    names = {mysql_lock_name("cell", db) for db in ("cellgate", long_a, long_b)}
    assert len(names) == 3 and all(len(n) <= 64 for n in names)
    assert mysql_lock_name("api", "cellgate") == "cellgate-migrate:api:cellgate"


def test_a_migration_that_raises_releases_the_lock(server: Server) -> None:
    url = server.new_database()
    engine = _engine(url)  # kept alive: its pool must not keep the lock either
    try:
        runner.upgrade(engine, MigrationLine.API, "api_0001")
        with engine.begin() as conn:  # the table api_0002 wants to create
            conn.exec_driver_sql("CREATE TABLE instance_mapping (id INTEGER)")
        with pytest.raises(MigrationError, match="revision api_0002 of the api line failed"):
            runner.upgrade(engine, MigrationLine.API)
        assert lock_is_free(url, MigrationLine.API)
    finally:
        engine.dispose()


# --------------------------------------------------------------------------
# Real processes
# --------------------------------------------------------------------------


@pytest.mark.timeout(240)
@pytest.mark.parametrize("which", list(COMMANDS))
def test_concurrent_syncs_on_a_fresh_database_take_turns(
    deployment: Deployment, which: str
) -> None:
    command, line, url_attr = COMMANDS[which]
    url: DatabaseURL = getattr(deployment, url_attr)
    with held(url, line):  # so that they pile up at the lock and race for it at once
        procs = [
            subprocess.Popen(
                cellgate(deployment, *command),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(RACERS)
        ]
        wait_at_the_lock(url, line, procs)  # then let go: they race for it at once
    outcomes = [(p.wait(timeout=HANG), *p.communicate()) for p in procs]
    for code, out, err in outcomes:
        deployment.assert_no_secret(out + err)
        assert code == ExitCode.OK and "Traceback" not in err, outcomes
    # Exactly one run did the work; the others waited and found it done.
    assert sum("already at" in err for _, _, err in outcomes) == RACERS - 1, outcomes
    engine = _engine(url)
    try:
        assert runner.current(engine, line) == runner.head(line)
        runner.check(engine, line)  # the schema is exactly the models: no half-run left over
    finally:
        engine.dispose()


@pytest.mark.parametrize("which", list(COMMANDS))
def test_a_sync_that_cannot_get_the_lock_exits_6_with_one_line_and_writes_nothing(
    deployment: Deployment, which: str
) -> None:
    command, line, url_attr = COMMANDS[which]
    url: DatabaseURL = getattr(deployment, url_attr)
    with held(url, line):
        code, out, err = run(deployment, *command, "--lock-timeout", "1", "--json")
    assert code == ExitCode.SCHEMA, (out, err)
    if which == "api-db":
        # Under --json the error is also one JSON line on stdout (docs/cli.md).
        assert json.loads(out)["error"]["exit_code"] == ExitCode.SCHEMA
        [message] = [ln for ln in err.splitlines() if ln.startswith("cellgate: error: ")]
    else:  # per-cell commands report in the table and go on with the next cell
        [row] = json.loads(out)
        assert row["status"] == "failed"
        message = row["error"]
        assert "\n" not in message
    expected = "'cellgate api-db sync'" if which == "api-db" else "'cellgate db sync'"
    assert f"another {expected} holds the migration lock of the {line.value} line" in message
    assert "(waited 1s)" in message and "--lock-timeout" in message
    assert url.render() in message  # which database, password masked
    assert _tables(url) == set()  # nothing migrated, not even the version table


@pytest.mark.timeout(180)
def test_a_killed_holder_does_not_keep_the_lock(deployment: Deployment) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, MigrationLine.API.value],
        env={**os.environ, "HOLD_URL": deployment.api_url.render(hide_password=False)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "held\n", holder.communicate(timeout=HANG)
        assert lock_is_taken(deployment.api_url, MigrationLine.API)
        holder.send_signal(signal.SIGKILL)  # no finally, no unlock: the server must notice
        holder.wait(timeout=HANG)
        code, out, err = run(deployment, "api-db", "sync", "--lock-timeout", "30")
        assert code == ExitCode.OK, (out, err)
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.communicate(timeout=HANG)
    assert deployment.json("api-db", "version")["at_head"] is True


HOLDER = """
import os, sys, time
from cellgate.sql.engines import make_engine
from cellgate.migrations.lock import migration_lock
from cellgate.urls import DatabaseURL

url = DatabaseURL.parse(os.environ["HOLD_URL"])
engine = make_engine(url, connect_timeout=5, query_timeout=30, create_missing=True)
with engine.connect() as conn, migration_lock(conn, sys.argv[1], timeout=10, component="h"):
    print("held", flush=True)
    time.sleep(600)
"""


# --------------------------------------------------------------------------
# A revision that fails half-way
# --------------------------------------------------------------------------


def test_a_failed_revision_names_itself_and_how_to_repair_then_the_rerun_works(
    deployment: Deployment,
) -> None:
    url = deployment.api_url
    engine = _engine(url)
    try:
        runner.upgrade(engine, MigrationLine.API, "api_0001")
        with engine.begin() as conn:  # api_0002's last table, so it fails after its first steps
            conn.exec_driver_sql("CREATE TABLE instance_mapping (id INTEGER)")
    finally:
        engine.dispose()
    code, out, err = run(deployment, "api-db", "sync")
    assert code == ExitCode.SCHEMA and out == "", err
    # The first line says which database (issue 13.6), then the error in one line.
    *where, message = err.splitlines()
    assert all(w.startswith("API database ") for w in where), err
    assert message.startswith(f"cellgate: error: API database {url.render()}: ")
    assert "revision api_0002 of the api line failed (upgrade)" in message
    assert "left at revision api_0001" in message
    mysql = deployment.server.kind == "mariadb"
    tables = _tables(url)
    if mysql:  # DDL is not transactional: api_0002's first steps stayed
        assert "cannot roll back DDL, so part of api_0002 may be applied" in message
        assert "host_mapping" in tables
    else:
        assert "api_0002 was rolled back" in message
        assert "host_mapping" not in tables
    assert lock_is_free(url, MigrationLine.API)
    # The repair docs/reliability.md describes: undo the half-applied part, fix the cause.
    engine = _engine(url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("DROP TABLE instance_mapping")
            if mysql:
                conn.exec_driver_sql("DROP TABLE host_mapping")
                conn.exec_driver_sql("ALTER TABLE cell_mapping DROP COLUMN disabled")
        code, out, err = run(deployment, "api-db", "sync")
        assert code == ExitCode.OK, err
        runner.check(engine, MigrationLine.API)
    finally:
        engine.dispose()
