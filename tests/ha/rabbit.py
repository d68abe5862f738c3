"""A real 3-node RabbitMQ cluster on loopback, for the cluster tests (marker ``cluster``).

Three ``rabbitmq-server`` processes of the Debian package (installed by
``scripts/packages`` with the shared broker), each with its own node name
(``cg1@localhost`` ...), AMQP and distribution ports, and ports of its own
for ``rabbitmqctl`` (tests/ha/README.md),
and its own data, log and config under one temporary directory. They share
an Erlang cookie through ``HOME`` (the CLI reads it from there too), and
``/etc/rabbitmq``, the shared broker's configuration, is never read: every
file RabbitMQ would look for there is pointed into the temporary directory.
No plugin is enabled (no management listener). Distribution listens on
127.0.0.1 only.

Nodes 2 and 3 join node 1 with ``rabbitmqctl stop_app; join_cluster;
start_app``. The fixture that uses it (``tests/ha/test_rabbit_cluster.py``)
makes it once for its module; :meth:`RabbitCluster.close` kills every node's
process group and checks that no ``beam.smp`` of this cluster is left, and
so does a failed start. Every wait is bounded.

The ports are fixed, so two test runs on one machine (two checkouts, or two
pytest workers) must not start clusters at once: :func:`running_cluster`
holds an exclusive ``flock`` on ``LOCK_FILE`` from start to teardown, and
waits for it at most ``LOCK_WAIT`` seconds.

The servers run as root, through ``/usr/lib/rabbitmq/bin``, not the
``/usr/sbin`` wrappers: those switch to the ``rabbitmq`` user and drop the
environment that keeps these nodes apart from the shared broker.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

SBIN = Path("/usr/lib/rabbitmq/bin")
AMQP_PORTS = (25673, 25674, 25675)
DIST_PORTS = (25772, 25773, 25774)
CTL_PORTS = (25872, 25881)  # rabbitmqctl's own distribution ports, min and max
USER = "cellgate"
START_TIMEOUT = 120.0
LOCK_FILE = Path(tempfile.gettempdir()) / "cellgate-ha-rabbit.lock"
LOCK_WAIT = 900.0
CTL_TIMEOUT = 60.0


class ClusterError(RuntimeError):
    """The cluster could not be started or driven; the message says which node and step."""


@dataclass
class RabbitNode:
    """One node: its ports, its directory, and the process running it (if any)."""

    index: int
    base: Path
    home: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def name(self) -> str:
        return f"cg{self.index + 1}@localhost"

    @property
    def amqp_port(self) -> int:
        return AMQP_PORTS[self.index]

    @property
    def dist_port(self) -> int:
        return DIST_PORTS[self.index]

    @property
    def dir(self) -> Path:
        return self.base / f"cg{self.index + 1}"

    def env(self) -> dict[str, str]:
        d = self.dir
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update(
            HOME=str(self.home),
            RABBITMQ_NODENAME=self.name,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.amqp_port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=str(d / "mnesia"),
            RABBITMQ_LOG_BASE=str(d / "log"),
            RABBITMQ_CONFIG_FILE=str(d / "rabbitmq.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(d / "advanced.config"),
            RABBITMQ_CONF_ENV_FILE=str(d / "rabbitmq-env.conf"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(d / "enabled_plugins"),
            RABBITMQ_PID_FILE=str(d / "pid"),
            RABBITMQ_CTL_DIST_PORT_MIN=str(CTL_PORTS[0]),
            RABBITMQ_CTL_DIST_PORT_MAX=str(CTL_PORTS[1]),
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
            ERL_EPMD_ADDRESS="127.0.0.1",
        )
        return env

    def prepare(self, password: str) -> None:
        d = self.dir
        for sub in ("mnesia", "log"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        (d / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = 127.0.0.1:{self.amqp_port}\n"
            f"default_user = {USER}\ndefault_pass = {password}\n"
            "loopback_users = none\n",
            encoding="utf-8",
        )
        (d / "rabbitmq-env.conf").write_text("", encoding="utf-8")
        (d / "enabled_plugins").write_text("[].\n", encoding="utf-8")

    def start(self) -> None:
        busy = [p for p in (self.amqp_port, self.dist_port) if _port_busy(p)]
        if busy:
            raise ClusterError(f"{self.name}: port {busy[0]} on 127.0.0.1 is already in use")
        log = (self.dir / "log" / "console.log").open("ab")
        try:
            self.proc = subprocess.Popen(
                [str(SBIN / "rabbitmq-server")],
                env=self.env(),
                cwd=self.dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: killed as one
            )
        finally:
            log.close()

    def ctl(self, *args: str, timeout: float = CTL_TIMEOUT, check: bool = True) -> str:
        """``rabbitmqctl -n NODE ARGS``; raises :class:`ClusterError` with its output."""
        try:
            done = subprocess.run(
                [str(SBIN / "rabbitmqctl"), "-q", "-n", self.name, *args],
                env=self.env(),
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired as exc:
            raise ClusterError(
                f"{self.name}: rabbitmqctl {args[0]} took over {timeout:g}s"
            ) from exc
        if check and done.returncode != 0:
            text = (done.stderr or done.stdout).strip().splitlines()
            raise ClusterError(f"{self.name}: rabbitmqctl {args[0]}: {text[-1] if text else ''}")
        return done.stdout

    def await_startup(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise ClusterError(f"{self.name} exited during start-up: {self.log_tail()}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise ClusterError(f"{self.name} did not start within {timeout:g}s")
            try:
                self.ctl("await_startup", "--timeout", str(max(1, int(min(left, 30)))))
                return
            except ClusterError:
                time.sleep(0.5)  # the node's distribution is not up yet

    def log_tail(self, lines: int = 8) -> str:
        """The end of the node's console output (the directory is gone after the run)."""
        try:
            text = (self.dir / "log" / "console.log").read_text(errors="replace")
        except OSError as exc:
            return f"no console log ({exc})"
        return " | ".join(line.strip() for line in text.splitlines()[-lines:] if line.strip())

    def beam_pid(self) -> int:
        """The Erlang VM's pid (the server writes it once it is up)."""
        return int((self.dir / "pid").read_text(encoding="utf-8").strip())

    def kill(self) -> None:
        """SIGKILL the node's whole process group, and wait for it (bounded)."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=30)
        self.proc = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class RabbitCluster:
    base: Path
    password: str = field(default_factory=lambda: "p@ss/" + secrets.token_urlsafe(12))
    nodes: list[RabbitNode] = field(default_factory=list)
    startup_seconds: float = 0.0

    def __post_init__(self) -> None:
        home = self.base / "home"
        home.mkdir(parents=True, exist_ok=True)
        cookie = home / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(20), encoding="utf-8")
        cookie.chmod(0o400)
        self.nodes = [RabbitNode(i, self.base, home) for i in range(len(AMQP_PORTS))]

    def start(self) -> None:
        started = time.monotonic()
        for node in self.nodes:
            node.prepare(self.password)
            node.start()
        for node in self.nodes:
            node.await_startup()
        first = self.nodes[0]
        for node in self.nodes[1:]:
            node.ctl("stop_app")
            node.ctl("join_cluster", first.name)
            node.ctl("start_app")
        self.wait_running(len(self.nodes))
        self.startup_seconds = time.monotonic() - started

    def running_nodes(self, via: RabbitNode | None = None) -> list[str]:
        """Node names the cluster reports as running, asked of ``via`` (a live node)."""
        node = via or next(n for n in self.nodes if n.running)
        out = node.ctl("eval", "[atom_to_list(N) || N <- rabbit_nodes:all_running()].", timeout=30)
        return sorted(part.strip("\"' ") for part in out.strip().strip("[]\n").split(",") if part)

    def wait_running(self, count: int, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        seen: list[str] = []
        while time.monotonic() < deadline:
            with contextlib.suppress(ClusterError):
                seen = self.running_nodes()
                if len(seen) == count:
                    return
            time.sleep(0.5)
        raise ClusterError(f"{count} running nodes expected within {timeout:g}s, saw {seen}")

    def node(self, name: str) -> RabbitNode:
        return next(n for n in self.nodes if n.name == name)

    def url(self, vhost: str) -> str:
        """A multi-host transport URL over every node, for ``vhost``."""
        user = f"{USER}:{quote(self.password, safe='')}"
        hosts = ",".join(f"{user}@127.0.0.1:{n.amqp_port}" for n in self.nodes)
        return f"rabbit://{hosts}/{vhost}"

    def add_vhost(self, vhost: str) -> None:
        node = next(n for n in self.nodes if n.running)
        node.ctl("add_vhost", vhost)
        node.ctl("set_permissions", "-p", vhost, USER, ".*", ".*", ".*")

    def delete_vhost(self, vhost: str) -> None:
        node = next(n for n in self.nodes if n.running)
        node.ctl("delete_vhost", vhost, check=False)

    def queue_node(self, vhost: str, queue: str) -> str:
        """The node hosting ``queue``: a quorum queue's leader, a classic queue's home."""
        node = next(n for n in self.nodes if n.running)
        out = node.ctl(
            "list_queues", "--no-table-headers", "-p", vhost, "name", "type", "leader", "pid"
        )
        for line in out.splitlines():
            name, kind, leader, pid = (line.split("\t") + ["", "", "", ""])[:4]
            if name == queue:
                # rabbitmqctl prints a pid as <NODE.A.B.C>
                return leader if kind == "quorum" else pid.strip("<>").rsplit(".", 3)[0]
        raise ClusterError(f"queue {queue!r} not found in vhost {vhost!r}")

    def restart(self, node: RabbitNode) -> None:
        """Start a killed node again; it rejoins the cluster from its own data."""
        node.start()
        node.await_startup()
        self.wait_running(len(self.nodes))

    def close(self) -> list[str]:
        """Kill every node; what is still running afterwards (should be nothing).

        A node's ``beam.smp`` is a child of the ``rabbitmq-server`` script that
        leads its process group: it gets the group's SIGKILL too, but may take
        a moment longer to exit (a large heap to unmap), and a ``rabbitmqctl``
        still in flight runs a VM of its own. So anything of this cluster
        still listed is killed by pid and waited for, within a bound.
        """
        for node in self.nodes:
            node.kill()
        deadline = time.monotonic() + CLOSE_WAIT
        while (left := leftover_beams(self.base)) and time.monotonic() < deadline:
            for entry in left:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(entry.split()[1].rstrip(":")), signal.SIGKILL)
            time.sleep(0.2)
        return left


#: Seconds ``close`` waits for this cluster's processes to be gone.
CLOSE_WAIT = 15.0


def _port_busy(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def leftover_beams(base: Path) -> list[str]:
    """``beam.smp`` processes whose command line names ``base`` (this cluster's only)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "beam" in cmdline and str(base) in cmdline:
            found.append(f"pid {proc.name}: {cmdline[:120]}")
    return found


def available() -> str | None:
    """Why a cluster cannot be started here, or ``None``."""
    if not (SBIN / "rabbitmq-server").exists():
        return f"{SBIN}/rabbitmq-server is not installed (scripts/packages installs it)"
    return None


@contextlib.contextmanager
def _exclusive(path: Path, wait: float) -> Iterator[None]:
    with path.open("a") as fh:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ClusterError(f"another RabbitMQ test cluster holds {path}") from None
                time.sleep(1)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextlib.contextmanager
def running_cluster() -> Iterator[RabbitCluster]:
    """Start the cluster, yield it, and tear it down (on a failed start too)."""
    with (
        _exclusive(LOCK_FILE, LOCK_WAIT),
        tempfile.TemporaryDirectory(prefix="cgha-rabbit-") as tmp,
    ):
        cluster = RabbitCluster(Path(tmp))
        try:
            cluster.start()
            yield cluster
        finally:
            left = cluster.close()
            if left:
                raise ClusterError(f"RabbitMQ cluster processes left running: {left}")
