"""PostgreSQL servers of the tests' own: one to freeze, and a primary with a standby.

The shared server on 5432 must never be stopped or frozen, so the tests that
SIGSTOP a server, promote a standby or kill a primary start their own, from
Debian's binaries (``/usr/lib/postgresql/<version>/bin``), as the
``postgres`` user (``initdb`` refuses root), on the fixed ports of
``tests/ha/README.md``, in a temporary directory each. Every wait is bounded;
every server is stopped at the end of the session (``pg_ctl stop -m
immediate``, then SIGKILL of the postmaster if that fails), and a process we
stopped with SIGSTOP is sent SIGCONT first, so nothing is left running.

The ports are fixed, so two pytest processes (two xdist workers, or two
runs in two worktrees on this machine) must not hold them at once: the first
fixture a session uses takes an exclusive lock on :data:`LOCK_FILE` (bounded
wait) and keeps it until that session ends. The tests also carry the xdist
group ``postgres-ha`` (made to work under pytest 9 by tests/xdist_groups.py),
so within one run a single worker holds it; the lock keeps apart two runs.

Fixtures (session-scoped):

- ``solo_postgres``: one server on 25435, for the freeze tests;
- ``pg_cluster``: a primary on 25432 and a streaming standby on 25433, made
  with ``pg_basebackup -R``; the primary waits for the standby to flush every
  commit (``synchronous_standby_names = '*'``, set on the primary only, after
  the base backup), so a commit the client saw succeed is on the standby
  before it returns: the property a failover test checks. Tests that break
  the cluster call :meth:`PgCluster.rebuild` first, so each gets it whole.

:func:`ports_locked`, :func:`running_cluster` and :class:`WriteLoop` are
plain Python too: ``python -m benchmarks run --clusters`` measures
``pg_failover_recovery_s`` with them.

Outside CI a missing PostgreSQL installation skips; under ``CI=true`` it fails.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine

from cellgate.errors import BackendError
from cellgate.sql.engines import translate_errors
from cellgate.urls import DatabaseURL
from tests.support import in_ci

SOLO_PORT = 25435
PRIMARY_PORT = 25432
STANDBY_PORT = 25433
USER = "postgres"
LOCK_FILE = Path(tempfile.gettempdir()) / "cellgate-ha-postgres.lock"
# Seconds to wait for another run (another worktree's) to release the ports:
# under pytest-timeout's 120 s, so a long wait is reported as what it is.
_LOCK_WAIT = 90
_START_TIMEOUT = 60  # seconds for pg_ctl start/stop/promote to finish
_COMMAND_TIMEOUT = 120  # initdb, pg_basebackup


def _bindir() -> Path | None:
    root = Path("/usr/lib/postgresql")
    versions = sorted(
        (p for p in root.glob("*") if (p / "bin" / "initdb").is_file()),
        key=lambda p: int(p.name) if p.name.isdigit() else 0,
    )
    return versions[-1] / "bin" if versions else None


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) != 0


class PgServer:
    """One postmaster we started: its data directory, port and superuser password."""

    def __init__(self, bindir: Path, base: Path, name: str, port: int, password: str) -> None:
        self.bindir = bindir
        self.base = base
        self.datadir = base / name
        self.name = name
        self.port = port
        self.password = password
        self._stopped: set[int] = set()  # pids we sent SIGSTOP and not yet SIGCONT

    # -- running commands as the postgres user ---------------------------------
    def _run(self, *args: str, timeout: float = _COMMAND_TIMEOUT) -> str:
        cmd = ["runuser", "-u", USER, "--", str(self.bindir / args[0]), *args[1:]]
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, check=False, cwd=self.base
        )
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])} failed: {done.stderr.strip()[-2000:]}")
        return done.stdout

    def initdb(self) -> None:
        pwfile = self.base / "pwfile"
        self._run(
            "initdb",
            "-D",
            str(self.datadir),
            "-U",
            USER,
            f"--pwfile={pwfile}",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
            "--no-sync",
        )
        self.configure()

    def configure(self) -> None:
        """Settings every one of our servers has (appended to postgresql.conf)."""
        with (self.datadir / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.write(
                f"\nport = {self.port}\n"
                "listen_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.base}'\n"
                "fsync = off\n"  # no power loss here: a process kill is the fault
                "full_page_writes = off\n"
                "shared_buffers = 16MB\n"
                "max_connections = 40\n"
                "wal_level = replica\n"
                "max_wal_senders = 4\n"
                "wal_keep_size = 64MB\n"
                "hot_standby = on\n"
                f"cluster_name = '{self.name}'\n"
                "log_min_messages = warning\n"
            )

    def start(self) -> None:
        if not _port_free(self.port):
            raise RuntimeError(
                f"port {self.port} is taken: a PostgreSQL of an earlier run still up?"
            )
        self._run(
            "pg_ctl",
            "-D",
            str(self.datadir),
            "-l",
            str(self.base / f"{self.name}.log"),
            "-w",
            "-t",
            str(_START_TIMEOUT),
            "start",
            timeout=_START_TIMEOUT + 10,
        )

    def stop(self, mode: str = "fast") -> None:
        self.resume()
        if self.postmaster_pid() is None:
            return
        try:
            self._run(
                "pg_ctl",
                "-D",
                str(self.datadir),
                "-m",
                mode,
                "-w",
                "-t",
                str(_START_TIMEOUT),
                "stop",
                timeout=_START_TIMEOUT + 10,
            )
        except (RuntimeError, subprocess.TimeoutExpired):
            self.kill()

    def kill(self) -> None:
        """SIGKILL the postmaster (its children exit when they see it gone)."""
        pid = self.postmaster_pid()
        if pid is None:
            return
        for target in [pid, *self._children()]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(target, signal.SIGCONT)
                os.kill(target, signal.SIGKILL)
        _wait_gone(pid)

    def promote(self) -> None:
        self._run(
            "pg_ctl",
            "-D",
            str(self.datadir),
            "-w",
            "-t",
            str(_START_TIMEOUT),
            "promote",
            timeout=_START_TIMEOUT + 10,
        )

    # -- processes -------------------------------------------------------------
    def postmaster_pid(self) -> int | None:
        try:
            first = (self.datadir / "postmaster.pid").read_text(encoding="ascii").split("\n")[0]
        except (FileNotFoundError, PermissionError):
            return None
        pid = int(first)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        return pid

    def _children(self) -> list[int]:
        pid = self.postmaster_pid()
        if pid is None:
            return []
        out = subprocess.run(
            ["ps", "-o", "pid=", "--ppid", str(pid)],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout
        return [int(p) for p in out.split()]

    def freeze(self, *pids: int) -> None:
        """SIGSTOP ``pids`` (default: the postmaster and every child): a hung server."""
        targets = list(pids) or [p for p in [self.postmaster_pid(), *self._children()] if p]
        for pid in targets:
            os.kill(pid, signal.SIGSTOP)
            self._stopped.add(pid)

    def resume(self) -> None:
        """SIGCONT every process :meth:`freeze` stopped."""
        for pid in sorted(self._stopped):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        self._stopped.clear()

    # -- clients ---------------------------------------------------------------
    def conninfo(self, dbname: str = "postgres") -> str:
        return (
            f"host=127.0.0.1 port={self.port} user={USER} password={self.password} "
            f"dbname={dbname} connect_timeout=5"
        )

    def connect(self, dbname: str = "postgres") -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(self.conninfo(dbname), autocommit=True)

    def url(self, dbname: str = "postgres") -> DatabaseURL:
        return DatabaseURL.parse(
            f"postgresql+psycopg://{USER}:{quote(self.password, safe='')}@127.0.0.1:{self.port}/{dbname}"
        )


def _wait_gone(pid: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.05)


def _wait_until(predicate: object, what: str, timeout: float = 30) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}")


class _Base:
    """A temporary directory the postgres user owns, with a password file in it."""

    def __init__(self, prefix: str) -> None:
        bindir = _bindir()
        if bindir is None or shutil.which("runuser") is None:
            raise FileNotFoundError("no PostgreSQL binaries under /usr/lib/postgresql")
        self.bindir = bindir
        self.path = Path(tempfile.mkdtemp(prefix=prefix))
        self.password = "pg-" + secrets.token_urlsafe(12)
        entry = pwd.getpwnam(USER)
        os.chown(self.path, entry.pw_uid, entry.pw_gid)
        os.chmod(self.path, 0o700)
        pwfile = self.path / "pwfile"
        pwfile.write_text(self.password + "\n", encoding="utf-8")
        os.chown(pwfile, entry.pw_uid, entry.pw_gid)
        os.chmod(pwfile, 0o600)
        # pg_basebackup reads the replication password from this file.
        pgpass = self.path / "pgpass"
        pgpass.write_text(f"127.0.0.1:*:*:{USER}:{self.password}\n", encoding="utf-8")
        os.chown(pgpass, entry.pw_uid, entry.pw_gid)
        os.chmod(pgpass, 0o600)

    def server(self, name: str, port: int) -> PgServer:
        return PgServer(self.bindir, self.path, name, port, self.password)

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def _unavailable(exc: BaseException) -> None:
    if in_ci():
        pytest.fail(f"cannot start a PostgreSQL of the tests' own: {exc}")
    pytest.skip(f"cannot start a PostgreSQL of the tests' own: {exc}")


@contextlib.contextmanager
def ports_locked(wait: float = _LOCK_WAIT) -> Iterator[None]:
    """Hold the ports of tests/ha/README.md's PostgreSQL row; TimeoutError after ``wait`` s."""
    with LOCK_FILE.open("a") as handle:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{LOCK_FILE} held by another run for {wait:g} s") from None
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def _postgres_ports() -> Iterator[None]:
    """Hold the PostgreSQL ports for this session (see :func:`ports_locked`)."""
    try:
        lock = ports_locked()
        lock.__enter__()
    except TimeoutError as exc:
        _unavailable(exc)
        raise
    try:
        yield
    finally:
        lock.__exit__(None, None, None)


@pytest.fixture(scope="session")
def solo_postgres(_postgres_ports: None) -> Iterator[PgServer]:
    """A PostgreSQL server on 25435 that tests may freeze (SIGSTOP) and resume."""
    try:
        base = _Base("cellgate-pg-solo-")
    except (FileNotFoundError, KeyError) as exc:
        _unavailable(exc)
        raise
    server = base.server("solo", SOLO_PORT)
    try:
        server.initdb()
        server.start()
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        server.stop("immediate")
        base.remove()
        _unavailable(exc)
    try:
        yield server
    finally:
        server.stop("immediate")
        base.remove()


class PgCluster:
    """A primary and one synchronous streaming standby, rebuilt on demand."""

    def __init__(self, base: _Base) -> None:
        self._base = base
        self.primary = base.server("primary", PRIMARY_PORT)
        self.standby = base.server("standby", STANDBY_PORT)
        self.broken = False

    def build(self) -> None:
        primary = self._base.server("primary", PRIMARY_PORT)
        standby = self._base.server("standby", STANDBY_PORT)
        primary.initdb()
        primary.start()
        self.primary, self.standby = primary, standby
        standby.datadir.mkdir(mode=0o700)
        entry = pwd.getpwnam(USER)
        os.chown(standby.datadir, entry.pw_uid, entry.pw_gid)
        env_pgpass = f"PGPASSFILE={self._base.path / 'pgpass'}"
        subprocess.run(
            [
                "runuser",
                "-u",
                USER,
                "--",
                "env",
                env_pgpass,
                str(self._base.bindir / "pg_basebackup"),
                "-h",
                "127.0.0.1",
                "-p",
                str(PRIMARY_PORT),
                "-U",
                USER,
                "-D",
                str(standby.datadir),
                "-R",  # standby.signal + primary_conninfo
                "-X",
                "stream",
                "--no-sync",
                "-c",
                "fast",
            ],
            capture_output=True,
            text=True,
            timeout=_COMMAND_TIMEOUT,
            check=True,
            cwd=self._base.path,
        )
        with (standby.datadir / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.write(
                f"\nport = {STANDBY_PORT}\ncluster_name = 'standby'\n"
                f"primary_conninfo = 'host=127.0.0.1 port={PRIMARY_PORT} user={USER} "
                f"password={self._base.password} application_name=standby'\n"
            )
        standby.start()
        # Synchronous on the primary only: the standby must not wait for a
        # standby of its own once promoted.
        with primary.connect() as conn:
            conn.execute("ALTER SYSTEM SET synchronous_standby_names = '*'")
            conn.execute("SELECT pg_reload_conf()")

        def streaming() -> bool:
            with primary.connect() as conn:
                row = conn.execute(
                    "SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'"
                ).fetchone()
            return bool(row and row[0])

        _wait_until(streaming, "the standby to stream synchronously")
        self.broken = False

    def teardown(self) -> None:
        for server in (self.standby, self.primary):
            server.stop("immediate")
        for server in (self.standby, self.primary):
            shutil.rmtree(server.datadir, ignore_errors=True)

    def rebuild(self) -> None:
        """Whole again: after a test promoted the standby or killed the primary."""
        if self.broken:
            self.teardown()
            self.build()

    @property
    def password(self) -> str:
        """The superuser's password (on both servers)."""
        return self._base.password

    def multi_host_url(self, dbname: str = "postgres", **query: str) -> str:
        """The libpq multi-host URL of both servers, following the read-write one."""
        params = {"target_session_attrs": "read-write", **query}
        extra = "".join(f"&{k}={v}" for k, v in params.items())
        return (
            f"postgresql+psycopg://{USER}:{quote(self._base.password, safe='')}@/{dbname}"
            f"?host=127.0.0.1:{PRIMARY_PORT}&host=127.0.0.1:{STANDBY_PORT}{extra}"
        )


@contextlib.contextmanager
def running_cluster() -> Iterator[PgCluster]:
    """A built :class:`PgCluster`, torn down (and its directory removed) at the end.

    The caller holds :func:`ports_locked`. Raises what the build raised
    (``RuntimeError``, ``subprocess.SubprocessError``, ``psycopg.Error``,
    ``FileNotFoundError`` without PostgreSQL) after cleaning up.
    """
    base = _Base("cellgate-pg-cluster-")
    cluster = PgCluster(base)
    try:
        cluster.build()
        yield cluster
    finally:
        cluster.teardown()
        base.remove()


@pytest.fixture(scope="session")
def pg_cluster(_postgres_ports: None) -> Iterator[PgCluster]:
    """A PostgreSQL primary (25432) with a synchronous streaming standby (25433)."""
    cm = running_cluster()
    try:
        cluster = cm.__enter__()
    except (RuntimeError, subprocess.SubprocessError, psycopg.Error, OSError, KeyError) as exc:
        _unavailable(exc)
        raise
    try:
        yield cluster
    finally:
        cm.__exit__(None, None, None)


# -- a write loop across a failover (the test and the benchmark) ------------------------


def fail_over(cluster: PgCluster, old_primary: str) -> None:
    """Promote the standby; then the old primary is ``stopped`` (a crash) or ``frozen``."""
    cluster.broken = True
    cluster.standby.promote()
    if old_primary == "stopped":
        cluster.primary.stop("immediate")
    else:  # SIGSTOP of every process: its sockets stay open, nothing answers
        cluster.primary.freeze()


def create_writes_table(cluster: PgCluster) -> None:
    with cluster.primary.connect() as conn:
        conn.execute("DROP TABLE IF EXISTS writes")
        conn.execute("CREATE TABLE writes (n integer PRIMARY KEY, port integer NOT NULL)")


def write(engine: Engine, n: int) -> int:
    """One write transaction through cellgate's seam; the port of the server that took it."""
    with translate_errors("cluster database"), engine.begin() as conn:
        return int(
            conn.execute(
                text(
                    "INSERT INTO writes (n, port) VALUES (:n, inet_server_port()) RETURNING port"
                ),
                {"n": n},
            ).scalar_one()
        )


@dataclass
class WriteLoop:
    """Writes 1, 2, 3... one transaction each, until stopped; records what was acknowledged."""

    engine: Engine
    acked: dict[int, tuple[float, int]] = field(default_factory=dict)  # n -> (when, port)
    failed: list[tuple[float, str]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            try:
                port = write(self.engine, n)
            except BackendError as exc:
                self.failed.append((time.monotonic(), type(exc).__name__))
                time.sleep(0.05)
                continue
            self.acked[n] = (time.monotonic(), port)
            time.sleep(0.01)

    def acked_on(self, port: int, since: float = 0.0) -> list[float]:
        """When each write acknowledged on ``port`` at or after ``since`` was."""
        return sorted(w for w, p in list(self.acked.values()) if p == port and w >= since)

    def wait_for(self, count: int, port: int, since: float, cap: float) -> float | None:
        """Seconds from ``since`` to the first of ``count`` writes on ``port``; None past ``cap``."""
        deadline = since + cap
        while time.monotonic() < deadline:
            times = self.acked_on(port, since)
            if len(times) >= count:
                return times[0] - since
            time.sleep(0.05)
        return None
