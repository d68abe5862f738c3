"""RPC through ``App`` on the in-process transport and on the real RabbitMQ.

Each cell gets its own broker: a ``memory://`` name, or a RabbitMQ vhost with
its own user (created and removed by the test).
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cellgate import (
    App,
    CellUnavailable,
    NoTransport,
    Ok,
    RemoteError,
    RequestContext,
    RPCTimeout,
    Target,
    TimedOut,
    UnsupportedVersion,
    UntargetedContext,
    load_settings,
)
from cellgate.apidb.mappings import create_cell, map_cell0
from cellgate.sql.api_database import ApiDatabase
from cellgate.urls import TemplateDefaults, url_passwords
from tests.support import Broker, blackhole

#: The context that cache lookups here are made with.
CTX = RequestContext(request_id="req-test")

DEFAULTS = TemplateDefaults(database=None, transport=None)
TOPIC = "compute"


@dataclass
class Recorder:
    """An endpoint that records what reached it, and answers who it is."""

    name: str
    seen: list[tuple[str, dict[str, object]]] = field(default_factory=list)
    event: threading.Event = field(default_factory=threading.Event)

    def whoami(self, ctx: RequestContext, **kwargs: object) -> dict[str, object]:
        self.seen.append(("whoami", kwargs))
        assert ctx.cell is not None
        return {
            "server": self.name,
            "cell": ctx.cell.name,
            "project": ctx.project_id,
            "request_id": ctx.request_id,
            "roles": list(ctx.roles),
        }

    def poke(self, ctx: RequestContext, n: int) -> None:
        self.seen.append(("poke", {"n": n}))
        self.event.set()

    def fail(self, ctx: RequestContext) -> None:
        raise ValueError("disk full on rabbit://u:hunter2secret@127.0.0.1:5672/x")

    def _private(self, ctx: RequestContext) -> str:
        return "must not be callable"


@pytest.fixture(
    params=[
        "memory",
        pytest.param("rabbit", marks=pytest.mark.backends),
        pytest.param("rabbit-quorum", marks=pytest.mark.backends),
    ]
)
def rpc_mode(request: pytest.FixtureRequest) -> str:
    """The transport, and for RabbitMQ the ``[rpc] queue_type`` (classic or quorum)."""
    return str(request.param)


@pytest.fixture
def transport_url(request: pytest.FixtureRequest, rpc_mode: str) -> Iterator[Callable[[], str]]:
    """Makes a fresh, isolated transport URL per call (one broker per cell)."""
    if rpc_mode == "memory":
        counter = iter(range(1000))
        yield lambda: f"memory://b{next(counter)}-{id(request)}"
        return
    broker = Broker()
    broker.check()
    yield broker.new_vhost
    broker.drop_all()


@dataclass
class Deployment:
    app: App
    urls: dict[str, str]

    def ctx(self, cell: str, **kw: object) -> Iterator[RequestContext]:
        return self.app.target_cell(RequestContext(project_id="p1", **kw), cell)  # type: ignore[arg-type, return-value]

    def server(
        self, cell: str, endpoint: Recorder, server: str | None = None, version: str | None = None
    ) -> object:
        srv = self.app.rpc.server(
            self.app.cells.get(CTX, cell),
            Target(TOPIC, server=server, version=version),
            [endpoint],
        ).start()
        _wait_ready(srv)
        return srv


def _wait_ready(srv: object) -> None:
    listener = getattr(srv, "_listener", None)
    ready = getattr(listener, "ready", None)
    if ready is not None:
        assert ready.wait(15), "RabbitMQ consumer did not start"


@pytest.fixture
def deployment(
    tmp_path: Path, transport_url: Callable[[], str], rpc_mode: str
) -> Iterator[Deployment]:
    queue_type = "quorum" if rpc_mode == "rabbit-quorum" else "classic"
    conf = tmp_path / "c.conf"
    conf.write_text(
        f"[api_database]\nconnection = sqlite:///{tmp_path}/api.sqlite\n"
        "[DEFAULT]\nrpc_response_timeout = 10\n"
        f"[rpc]\nconnect_timeout = 2\nqueue_type = {queue_type}\n",
        encoding="utf-8",
    )
    settings = load_settings(conf)
    api = ApiDatabase(settings.api_database)
    api.upgrade()
    urls = {"a": transport_url(), "b": transport_url()}
    with api.session() as s:
        for name, url in urls.items():
            create_cell(
                s,
                name=name,
                transport_url=url,
                database_connection=f"sqlite:///{tmp_path}/{name}.db",
                defaults=DEFAULTS,
            )
        map_cell0(s, database_connection=f"sqlite:///{tmp_path}/c0.db", defaults=DEFAULTS)
    api.close()
    app = App(settings)
    servers: list[object] = []
    yield Deployment(app, urls)
    for srv in servers:
        srv.stop()  # type: ignore[attr-defined]
    app.close()


def _client(d: Deployment, cell: str, **target: object):  # type: ignore[no-untyped-def]
    with d.app.target_cell(RequestContext(project_id="p1", roles=("member",)), cell) as cctx:
        return d.app.rpc.client(cctx, Target(TOPIC, **target))  # type: ignore[arg-type]


def test_a_call_reaches_its_own_cell_only(deployment: Deployment) -> None:
    a, b = Recorder("srv-a"), Recorder("srv-b")
    sa, sb = deployment.server("a", a), deployment.server("b", b)
    try:
        for _ in range(5):
            assert _client(deployment, "a").call("whoami")["cell"] == "a"
            assert _client(deployment, "b").call("whoami")["cell"] == "b"
        assert len(a.seen) == len(b.seen) == 5
    finally:
        sa.stop(), sb.stop()  # type: ignore[attr-defined]


def test_context_travels_and_is_targeted_at_the_servers_cell(deployment: Deployment) -> None:
    srv = deployment.server("a", Recorder("srv-a"))
    try:
        client = _client(deployment, "a")
        answer = client.call("whoami", x=1)
        assert answer["project"] == "p1" and answer["roles"] == ["member"]
        assert answer["request_id"] == client.ctx.request_id
    finally:
        srv.stop()  # type: ignore[attr-defined]


def test_cast_to_one_server_and_fanout_to_every_server_of_the_cell(
    deployment: Deployment,
) -> None:
    s1, s2, other = Recorder("s1"), Recorder("s2"), Recorder("b1")
    servers = [
        deployment.server("a", s1, "s1"),
        deployment.server("a", s2, "s2"),
        deployment.server("b", other, "s1"),
    ]
    try:
        _client(deployment, "a", server="s2").cast("poke", n=1)
        assert s2.event.wait(10)
        _client(deployment, "a", fanout=True).cast("poke", n=2)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(s1.seen) < 1:
            time.sleep(0.02)
        time.sleep(0.3)  # give a wrong delivery time to show up
        assert s1.seen == [("poke", {"n": 2})]
        assert s2.seen == [("poke", {"n": 1}), ("poke", {"n": 2})]
        assert other.seen == []
    finally:
        for srv in servers:
            srv.stop()  # type: ignore[attr-defined]


def test_remote_errors_are_typed_and_redacted(deployment: Deployment) -> None:
    srv = deployment.server("a", Recorder("srv-a"))
    try:
        client = _client(deployment, "a")
        with pytest.raises(RemoteError) as info:
            client.call("fail")
        assert info.value.exc_type == "ValueError"
        assert "hunter2secret" not in str(info.value) and "disk full" in str(info.value)
        for method in ("nope", "_private"):
            with pytest.raises(RemoteError) as missing:
                client.call(method)
            assert missing.value.exc_type == "NoSuchMethod"
        with pytest.raises(RemoteError) as bad_args:
            client.call("poke", wrong=1)
        assert bad_args.value.exc_type == "TypeError"
        assert client.call("whoami")["server"] == "srv-a"  # still serving
    finally:
        srv.stop()  # type: ignore[attr-defined]


def test_versions(deployment: Deployment) -> None:
    srv = deployment.server("a", Recorder("srv-a"), version="1.3")
    try:
        assert _client(deployment, "a", version="1.2").call("whoami")["cell"] == "a"
        with pytest.raises(UnsupportedVersion, match=r"1\.4.*1\.3"):
            _client(deployment, "a", version="1.4").call("whoami")
        with pytest.raises(UnsupportedVersion):
            _client(deployment, "a", version="2.0").call("whoami")
    finally:
        srv.stop()  # type: ignore[attr-defined]


def test_malformed_messages_do_not_kill_the_server(deployment: Deployment) -> None:
    srv = deployment.server("a", Recorder("srv-a"))
    try:
        client = _client(deployment, "a")
        for junk in (b"\xff\x00", b"[]", b'{"cellgate": 1}', b'{"cellgate":1,"id":"x"}'):
            client.transport.cast(client.target, junk)
        assert client.call("whoami")["cell"] == "a"
    finally:
        srv.stop()  # type: ignore[attr-defined]


def test_no_server_means_rpc_timeout(deployment: Deployment) -> None:
    client = _client(deployment, "b").prepare(timeout=0.5)
    started = time.monotonic()
    with pytest.raises(RPCTimeout, match="within 0.5s"):
        client.call("whoami")
    assert time.monotonic() - started < 5


def test_cell0_and_untargeted_contexts(deployment: Deployment) -> None:
    with pytest.raises(NoTransport):
        _client(deployment, "cell0").call("whoami")
    with pytest.raises(UntargetedContext):
        deployment.app.rpc.client(RequestContext(), Target(TOPIC))


def test_prepare_leaves_the_original_unchanged(deployment: Deployment) -> None:
    client = _client(deployment, "a")
    other = client.prepare(timeout=3, server="s9", version="1.1")
    assert client.target == Target(TOPIC) and client.timeout == 10
    assert other.target == Target(TOPIC, server="s9", version="1.1") and other.timeout == 3


@pytest.mark.backends
def test_dead_and_silent_brokers_are_unavailable_quickly(tmp_path: Path) -> None:
    conf = tmp_path / "c.conf"
    conf.write_text(
        f"[api_database]\nconnection = sqlite:///{tmp_path}/api.sqlite\n"
        "[rpc]\nconnect_timeout = 1\n",
        encoding="utf-8",
    )
    settings = load_settings(conf)
    api = ApiDatabase(settings.api_database)
    api.upgrade()
    with blackhole() as port, api.session() as s:
        for name, url in {
            "closed": "rabbit://u:hunter2secret@127.0.0.3:1/",
            "silent": f"rabbit://u:hunter2secret@127.0.0.1:{port}/",
        }.items():
            create_cell(
                s,
                name=name,
                transport_url=url,
                database_connection=f"sqlite:///{tmp_path}/{name}.db",
                defaults=DEFAULTS,
            )
        s.commit()
        with App(settings) as app:
            for name in ("closed", "silent"):
                with app.target_cell(RequestContext(), name) as cctx:
                    started = time.monotonic()
                    with pytest.raises(CellUnavailable) as info:
                        app.rpc.client(cctx, Target(TOPIC)).call("whoami")
                    assert time.monotonic() - started < 15
                    assert "hunter2secret" not in str(info.value)
                    assert f"cell {name} transport 127.0.0." in str(info.value)
    api.close()


@pytest.mark.backends
@pytest.mark.timeout(240)
def test_calls_recover_after_the_broker_drops_every_connection(tmp_path: Path) -> None:
    broker = Broker()
    broker.check()
    url = broker.new_vhost()
    vhost = url.rsplit("/", 1)[1]
    try:
        conf = tmp_path / "c.conf"
        conf.write_text(
            f"[api_database]\nconnection = sqlite:///{tmp_path}/api.sqlite\n"
            "[DEFAULT]\nrpc_response_timeout = 5\n",
            encoding="utf-8",
        )
        settings = load_settings(conf)
        api = ApiDatabase(settings.api_database)
        api.upgrade()
        with api.session() as s:
            create_cell(
                s,
                name="r",
                transport_url=url,
                database_connection=f"sqlite:///{tmp_path}/r.db",
                defaults=DEFAULTS,
            )
        api.close()
        with App(settings) as app:
            srv = app.rpc.server(app.cells.get(CTX, "r"), Target(TOPIC), [Recorder("s")]).start()
            _wait_ready(srv)
            with app.target_cell(RequestContext(), "r") as cctx:
                client = app.rpc.client(cctx, Target(TOPIC))
                assert client.call("whoami")["cell"] == "r"
                subprocess.run(
                    [
                        "rabbitmqctl",
                        "-q",
                        "close_all_connections",
                        "--vhost",
                        vhost,
                        "test: broker restart",
                    ],
                    check=True,
                    timeout=60,
                )
                answers, deadline = 0, time.monotonic() + 60
                while answers < 3 and time.monotonic() < deadline:
                    try:
                        assert client.call("whoami")["cell"] == "r"
                        answers += 1
                    except (RPCTimeout, CellUnavailable):
                        time.sleep(0.5)  # the server is reconnecting with backoff
                assert answers == 3
                assert srv._listener.reconnects >= 1  # type: ignore[attr-defined]
            srv.stop()
        for secret in url_passwords(url):
            assert secret not in repr(app.transports)
    finally:
        broker.drop_all()


@pytest.mark.backends
def test_scatter_rpc_with_a_silent_broker_returns_the_other_cells(
    tmp_path: Path, broker: Broker
) -> None:
    conf = tmp_path / "c.conf"
    conf.write_text(
        f"[api_database]\nconnection = sqlite:///{tmp_path}/api.sqlite\n"
        "[DEFAULT]\nrpc_response_timeout = 30\n[rpc]\nconnect_timeout = 30\n",
        encoding="utf-8",
    )
    settings = load_settings(conf)
    api = ApiDatabase(settings.api_database)
    api.upgrade()
    with blackhole() as port:
        with api.session() as s:
            for name, url in {
                "live": broker.new_vhost(),
                "silent": f"rabbit://u:pw@127.0.0.1:{port}/",
            }.items():
                create_cell(
                    s,
                    name=name,
                    transport_url=url,
                    database_connection=f"sqlite:///{tmp_path}/{name}.db",
                    defaults=DEFAULTS,
                )
        api.close()
        with App(settings) as app:
            srv = app.rpc.server(
                app.cells.get(CTX, "live"), Target(TOPIC), [Recorder("s")]
            ).start()
            _wait_ready(srv)

            def ask(cctx: RequestContext) -> object:
                return app.rpc.client(cctx, Target(TOPIC)).call("whoami")["cell"]

            started = time.monotonic()
            results = app.scatter_gather(RequestContext(), None, ask, timeout=3)
            elapsed = time.monotonic() - started
            by_name = {app.cells.get(CTX, u).name: r for u, r in results.items()}
            srv.stop()
    assert by_name["live"] == Ok("live")
    assert isinstance(by_name["silent"], TimedOut)
    assert elapsed < 3 + 2  # the deadline, not the 30 s connect timeout
