"""A real 3-node MariaDB Galera cluster on loopback, started once per test session.

Why real: Galera's certification conflicts (a transaction that commits on one
node and is then refused on another with error 1213) and its per-node
``GET_LOCK`` are what cellgate must survive on a multi-writer cluster, and
neither exists on a single server. The cluster is built from Debian's
``mariadb-server`` and ``galera-4`` (installed by ``scripts/packages``):

- each node runs ``mariadbd`` as the ``mysql`` user (the rsync state transfer
  refuses to run as root), in a data directory of its own under one temporary
  directory, on the fixed ports of ``tests/ha/README.md``;
- node 1 bootstraps the cluster (``--wsrep-new-cluster``), nodes 2 and 3 join
  it one after the other by rsync state transfer (a few MB: the system tables);
- every wait is bounded (:data:`START_TIMEOUT`) and polls the state itself
  (``wsrep_cluster_size``, ``wsrep_local_state_comment``), never a fixed sleep;
- an HAProxy in front (port 23300) sends every connection to node 1 while it
  is up, then to node 2, then 3: the "one writer" topology docs/deployment.md
  recommends.

Every node is started in a process group of its own and killed with its whole
group (the state-transfer scripts and their rsync daemons included) at the end
of the session, after a failed start, and at interpreter exit. Outside CI a
cluster that cannot start skips its tests with the reason; under ``CI=true``
it fails them.

Use it through the ``galera`` fixture: import it into a test module
(``from tests.ha.galera import galera``) and mark the module
``pytest.mark.cluster`` and ``pytest.mark.xdist_group("galera")`` so that all
cluster tests run on one xdist worker (the ports are fixed: one cluster per run).
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import gc
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import pymysql
import pytest

from cellgate.urls import DatabaseURL
from tests.support import AWKWARD, in_ci

HOST = "127.0.0.1"
SQL_PORTS = (23306, 23307, 23308)
GCOMM_PORTS = (23406, 23407, 23408)
IST_PORTS = (23506, 23507, 23508)
SST_PORTS = (23606, 23607, 23608)
HAPROXY_PORT = 23300
#: Bound on each wait: a node's start (with its state transfer), a kill's effect.
START_TIMEOUT = 90.0
PROVIDER = Path("/usr/lib/galera/libgalera_smm.so")
MARIADBD = Path("/usr/sbin/mariadbd")
HAPROXY = Path("/usr/sbin/haproxy")
RUN_AS = "mysql"


class ClusterError(RuntimeError):
    """The cluster could not be started or did not reach the expected state in time."""


@dataclass
class Node:
    """One Galera node: its ports, data directory and running process (if any)."""

    index: int
    base: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def port(self) -> int:
        return SQL_PORTS[self.index]

    @property
    def datadir(self) -> Path:
        return self.base / "data"

    @property
    def socket(self) -> Path:
        return self.base / "mysqld.sock"

    @property
    def log(self) -> Path:
        return self.base / "error.log"

    @property
    def config(self) -> Path:
        return self.base / "my.cnf"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def root(
        self, *, timeout: float = 5.0
    ) -> pymysql.connections.Connection[pymysql.cursors.Cursor]:
        """An autocommit admin connection over the node's socket (root by unix_socket auth).

        The socket is probed first: PyMySQL leaks its socket when the connect
        itself fails (a node still starting), and the leak's ResourceWarning
        would fail whichever test the garbage collector runs in.
        """
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.settimeout(timeout)
            probe.connect(str(self.socket))
        except OSError as exc:
            raise pymysql.err.OperationalError(2002, f"{self.socket}: {exc}") from None
        finally:
            probe.close()
        return pymysql.connect(
            unix_socket=str(self.socket),
            user="root",
            connect_timeout=timeout,
            read_timeout=timeout,
            write_timeout=timeout,
            autocommit=True,
        )

    def status(self, name: str) -> str | None:
        with self.root() as conn, conn.cursor() as cur:
            cur.execute("SHOW GLOBAL STATUS LIKE %s", (name,))
            row = cur.fetchone()
        return None if row is None else str(row[1])

    def kill(self, sig: signal.Signals = signal.SIGKILL) -> None:
        """Signal the node's whole process group (SST scripts included) and reap it."""
        process = self.process
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        if sig in (signal.SIGKILL, signal.SIGTERM):
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=START_TIMEOUT)
            self.process = None


@dataclass
class GaleraCluster:
    """Three nodes (and HAProxy) under ``base``; see the module docstring."""

    base: Path
    nodes: list[Node] = field(default_factory=list)
    haproxy: subprocess.Popen[bytes] | None = None
    #: Seconds from the first process start to a 3-node primary cluster.
    startup_seconds: float | None = None

    def __post_init__(self) -> None:
        self.nodes = [Node(i, self.base / f"node{i + 1}") for i in range(3)]

    # -- start and stop --------------------------------------------------------
    def start(self) -> None:
        for path in (MARIADBD, PROVIDER):
            if not path.exists():
                raise ClusterError(f"{path} is missing: run scripts/packages as root")
        started = time.monotonic()
        template = self.base / "template"
        self._install(template)
        for node in self.nodes:
            node.base.mkdir()
            shutil.copytree(template, node.datadir, symlinks=True)
            self._write_config(node)
            _chown(node.base)
        self._launch(self.nodes[0], bootstrap=True)
        self._wait_synced(self.nodes[0], size=1)
        for count, node in enumerate(self.nodes[1:], start=2):
            self._launch(node)
            self._wait_synced(node, size=count)
        if HAPROXY.exists():
            self._start_haproxy()
        self.startup_seconds = time.monotonic() - started
        _collect_leaked_sockets()

    def stop(self) -> None:
        """Kill everything this cluster started; safe to call twice."""
        if self.haproxy is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.haproxy.pid, signal.SIGKILL)
            self.haproxy.wait(timeout=START_TIMEOUT)
            self.haproxy = None
        for node in self.nodes:
            node.kill()

    def restart(self, node: Node) -> None:
        """Start a node that was killed and wait until it has rejoined (IST or SST)."""
        if node.running:
            return
        # A SIGKILLed node may leave its socket behind; mariadbd refuses a stale pid file.
        for stale in (node.socket, node.base / "mysqld.pid"):
            stale.unlink(missing_ok=True)
        self._launch(node)
        self._wait_synced(node, size=sum(n.running for n in self.nodes))
        _collect_leaked_sockets()

    def _install(self, datadir: Path) -> None:
        datadir.mkdir(parents=True)
        _chown(self.base)
        done = subprocess.run(
            [
                "mariadb-install-db",
                f"--user={RUN_AS}",
                f"--datadir={datadir}",
                "--auth-root-authentication-method=socket",
                "--skip-test-db",
                "--no-defaults",
            ],
            capture_output=True,
            timeout=START_TIMEOUT,
            check=False,
        )
        if done.returncode != 0:
            raise ClusterError(f"mariadb-install-db failed: {done.stderr.decode()[-2000:]}")

    def _write_config(self, node: Node) -> None:
        i = node.index
        peers = ",".join(f"{HOST}:{p}" for p in GCOMM_PORTS)
        provider_options = ";".join(
            [
                f"gmcast.listen_addr=tcp://{HOST}:{GCOMM_PORTS[i]}",
                f"ist.recv_addr={HOST}:{IST_PORTS[i]}",
                "gcache.size=32M",
                # Loopback: declare a dead peer dead in seconds, not the WAN default.
                "evs.suspect_timeout=PT3S",
                "evs.inactive_timeout=PT6S",
                "evs.install_timeout=PT6S",
            ]
        )
        node.config.write_text(
            "[mysqld]\n"
            f"datadir={node.datadir}\n"
            f"socket={node.socket}\n"
            f"pid-file={node.base / 'mysqld.pid'}\n"
            f"log-error={node.log}\n"
            f"port={node.port}\n"
            f"bind-address={HOST}\n"
            "skip-name-resolve\n"
            "binlog_format=ROW\n"
            "default_storage_engine=InnoDB\n"
            "innodb_autoinc_lock_mode=2\n"
            "innodb_buffer_pool_size=32M\n"
            "innodb_log_file_size=16M\n"
            "innodb_flush_log_at_trx_commit=0\n"
            "performance_schema=OFF\n"
            "max_connections=200\n"
            "wsrep_on=ON\n"
            f"wsrep_provider={PROVIDER}\n"
            f"wsrep_cluster_address=gcomm://{peers}\n"
            "wsrep_cluster_name=cellgate_test\n"
            f"wsrep_node_name=node{i + 1}\n"
            f"wsrep_node_address={HOST}\n"
            f'wsrep_provider_options="{provider_options}"\n'
            "wsrep_sst_method=rsync\n"
            f"wsrep_sst_receive_address={HOST}:{SST_PORTS[i]}\n"
            "wsrep_slave_threads=2\n",
            encoding="utf-8",
        )

    def _launch(self, node: Node, *, bootstrap: bool = False) -> None:
        args = [str(MARIADBD), f"--defaults-file={node.config}", f"--user={RUN_AS}"]
        if bootstrap:
            args.append("--wsrep-new-cluster")
        node.process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: killed whole
            cwd=node.base,
        )

    def _wait_synced(self, node: Node, *, size: int) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        last = "not started"
        while time.monotonic() < deadline:
            if not node.running:
                raise ClusterError(f"node{node.index + 1} exited: {self._log_tail(node)}")
            try:
                state = node.status("wsrep_local_state_comment")
                cluster = node.status("wsrep_cluster_size")
                if state == "Synced" and cluster is not None and int(cluster) >= size:
                    return
                last = f"state {state}, cluster size {cluster}"
            except pymysql.err.MySQLError as exc:
                last = str(exc)
            time.sleep(0.2)
        raise ClusterError(
            f"node{node.index + 1} not synced within {START_TIMEOUT:g}s ({last}): "
            f"{self._log_tail(node)}"
        )

    def wait_size(self, size: int, *, via: Node) -> None:
        """Wait (bounded) until ``via`` sees a primary component of ``size`` nodes."""
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            with contextlib.suppress(pymysql.err.MySQLError):
                if via.status("wsrep_cluster_size") == str(size):
                    _collect_leaked_sockets()
                    return
            time.sleep(0.2)
        raise ClusterError(f"cluster size did not become {size} within {START_TIMEOUT:g}s")

    @staticmethod
    def _log_tail(node: Node) -> str:
        try:
            return " | ".join(node.log.read_text(errors="replace").splitlines()[-8:])
        except OSError:
            return "(no log)"

    def _start_haproxy(self) -> None:
        servers = "\n".join(
            f"    server node{i + 1} {HOST}:{port} check inter 500 fall 2 rise 2"
            + ("" if i == 0 else " backup")
            for i, port in enumerate(SQL_PORTS)
        )
        config = self.base / "haproxy.cfg"
        config.write_text(
            "global\n"
            "    maxconn 500\n"
            "defaults\n"
            "    mode tcp\n"
            "    timeout connect 2s\n"
            "    timeout client 60s\n"
            "    timeout server 60s\n"
            # A connection refused by a dead node goes to the next server.
            "    retries 3\n"
            "    option redispatch\n"
            f"listen galera\n    bind {HOST}:{HAPROXY_PORT}\n"
            # A node marked down has its sessions cut, so clients reconnect
            # (to the next backup) at once instead of waiting on a dead socket.
            "    default-server on-marked-down shutdown-sessions\n"
            f"{servers}\n",
            encoding="utf-8",
        )
        with (self.base / "haproxy.log").open("wb") as log:
            self.haproxy = subprocess.Popen(
                [str(HAPROXY), "-db", "-f", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                start_new_session=True,
            )
        _wait_port(HAPROXY_PORT, self.haproxy)

    # -- databases for tests ---------------------------------------------------
    def new_database(self) -> tuple[str, str]:
        """A fresh database with its own user (awkward password); returns (name, password).

        Made through node 1 and replicated (DDL and grants are total-order
        isolated), so every node and HAProxy serve it.
        """
        name, password = f"cgt_{secrets.token_hex(5)}", f"{AWKWARD}{secrets.token_hex(4)}"
        with self.nodes[0].root() as conn, conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
            cur.execute(f"CREATE USER '{name}'@'%%' IDENTIFIED BY %s", (password,))
            cur.execute(f"GRANT ALL ON `{name}`.* TO '{name}'@'%'")
        for node in self.nodes[1:]:  # each has applied it (a causal read waits until then)
            with node.root(timeout=30) as conn, conn.cursor() as cur:
                cur.execute("SET SESSION wsrep_sync_wait = 1")
                cur.execute("SELECT COUNT(*) FROM mysql.user WHERE user = %s", (name,))
                row = cur.fetchone()
                if row is None or row[0] != 1:
                    raise ClusterError(f"node{node.index + 1} has no user {name}")
        return name, password

    def wait_schema(self, name: str, port: int) -> None:
        """Until the node on ``port`` has applied ``name``'s API migrations (a causal read)."""
        node = next(n for n in self.nodes if n.port == port)
        with node.root(timeout=30) as conn, conn.cursor() as cur:
            cur.execute("SET SESSION wsrep_sync_wait = 1")
            cur.execute(f"SELECT COUNT(*) FROM `{name}`.alembic_version_api")

    def drop_database(self, name: str) -> None:
        node = next((n for n in self.nodes if n.running), None)
        if node is None:
            return
        with node.root() as conn, conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
            cur.execute(f"DROP USER IF EXISTS '{name}'@'%'")

    @staticmethod
    def url(name: str, password: str, port: int) -> DatabaseURL:
        """The database's URL through one node's port (or :data:`HAPROXY_PORT`)."""
        return DatabaseURL.parse(
            f"mysql+pymysql://{name}:{quote(password, safe='')}@{HOST}:{port}/{name}"
        )


def _collect_leaked_sockets() -> None:
    """Collect the sockets PyMySQL leaks when a connect fails half-way (a node starting).

    Polling a starting node fails many times; each failure may leave a socket
    for the garbage collector, whose ResourceWarning would then surface in
    whichever test happens to run next. Collected here, with that warning off.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


def _chown(path: Path) -> None:
    entry = pwd.getpwnam(RUN_AS)
    for root, dirs, files in os.walk(path):
        os.chown(root, entry.pw_uid, entry.pw_gid)
        for name in (*dirs, *files):
            os.chown(os.path.join(root, name), entry.pw_uid, entry.pw_gid, follow_symlinks=False)


def _wait_port(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ClusterError(f"haproxy exited with {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=1):
            return
        time.sleep(0.1)
    raise ClusterError(f"nothing listens on {HOST}:{port} after {START_TIMEOUT:g}s")


#: Serialises clusters across test runs on one machine (two worktrees, or the
#: integrator's run beside a developer's): the ports are fixed, so a second
#: run waits for the first one's cluster to be gone instead of failing to bind.
MACHINE_LOCK = Path(tempfile.gettempdir()) / "cellgate-galera-ports.lock"
#: Seconds a run waits for another run's cluster (its tests take about 4 minutes).
MACHINE_LOCK_WAIT = 240.0


@contextlib.contextmanager
def _ports_to_ourselves() -> Iterator[None]:
    fd = os.open(MACHINE_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        deadline = time.monotonic() + MACHINE_LOCK_WAIT
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ClusterError(
                        f"another test run's Galera cluster held the ports for "
                        f"{MACHINE_LOCK_WAIT:g}s ({MACHINE_LOCK})"
                    ) from None
                time.sleep(0.5)
        # A run of older code takes no lock: wait for its ports to be free too.
        while busy := [p for p in (*SQL_PORTS, *GCOMM_PORTS, HAPROXY_PORT) if _listening(p)]:
            if time.monotonic() > deadline:
                raise ClusterError(f"ports {busy} are in use by something else")
            time.sleep(0.5)
        yield
    finally:
        os.close(fd)  # releases the flock


def _listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.5):
        return True
    return False


@contextlib.contextmanager
def running_cluster() -> Iterator[GaleraCluster]:
    """Start a cluster in a fresh temporary directory; kill it and remove the directory after."""
    with _ports_to_ourselves(), _started() as cluster:
        yield cluster


@contextlib.contextmanager
def _started() -> Iterator[GaleraCluster]:
    base = Path(tempfile.mkdtemp(prefix="cellgate-galera-"))
    os.chmod(base, 0o755)
    cluster = GaleraCluster(base)
    atexit.register(cluster.stop)  # a crashed session must not leave nodes behind
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        atexit.unregister(cluster.stop)
        shutil.rmtree(base, ignore_errors=True)


#: The cluster of this process, once started (or why it could not start). Each
#: test module that imports :func:`galera` gets a fixture definition of its own,
#: so a plain session fixture would start one cluster per module, on the same
#: ports; they share this one instead. The first definition set up stops it.
_shared: list[GaleraCluster | str] = []


@pytest.fixture(scope="session")
def galera() -> Iterator[GaleraCluster]:
    """The session's Galera cluster (see the module docstring)."""
    if _shared:
        yield _use(_shared[0])
        return
    with contextlib.ExitStack() as stack:
        try:
            cluster = stack.enter_context(running_cluster())
        except (ClusterError, OSError, subprocess.SubprocessError, KeyError) as exc:
            _shared.append(f"the Galera cluster could not start: {exc}")
            _use(_shared[0])
            raise AssertionError("unreachable") from exc
        _shared.append(cluster)
        try:
            yield cluster
        finally:
            _shared.clear()


def _use(shared: GaleraCluster | str) -> GaleraCluster:
    if isinstance(shared, GaleraCluster):
        return shared
    if in_ci():
        pytest.fail(shared)
    pytest.skip(shared)


if __name__ == "__main__":  # python -m tests.ha.galera: start, report, stop
    with running_cluster() as c:
        sizes = [n.status("wsrep_cluster_size") for n in c.nodes]
        print(f"started in {c.startup_seconds:.1f}s; cluster sizes {sizes}")
