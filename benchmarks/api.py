"""HTTP throughput: GET /v1/instances/{uuid} vs GET /healthz on one server.

The server is the service's own: :func:`cellgate.service.http.create_api` in
uvicorn via :class:`cellgate.service.runner.HttpServer` on 127.0.0.1, port
chosen by the kernel, sharing the benchmark's ``App``. A fixed pool of client
threads, each with its own keep-alive ``httpx.Client``, sends requests back to
back for one round; rounds alternate between the two paths (ABBA), and each
round's rate is requests answered 200 per second.

The clients run in this process, so they share the interpreter (and its
GIL) with the server: both paths pay the same client cost, which pulls the
ratio towards 1. The figure compares the two paths under the same load; it is
not the server's capacity.
"""

from __future__ import annotations

import itertools
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from unittest import mock

import httpx

from benchmarks.deploy import TOKEN, Deployment
from benchmarks.routing import Plan
from benchmarks.stats import Pair, Series, ratios
from cellgate import App
from cellgate.service import runner
from cellgate.service.http import create_api
from cellgate.service.runner import HttpServer

CONCURRENCY = 4


LATENCY_CLIENTS = (8, 32)  # concurrent clients of the latency figures


@dataclass
class _Round:
    paths: Iterator[str]
    deadline: float
    ok: int = 0
    errors: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    latencies: list[float] = field(default_factory=list)


class LoadPool:
    """``clients`` client threads that run rounds on request."""

    def __init__(self, base_url: str, clients: int = CONCURRENCY) -> None:
        self._base = base_url
        self._start = threading.Barrier(clients + 1)
        self._end = threading.Barrier(clients + 1)
        self._round: _Round | None = None
        self._closing = False
        self._threads = [
            threading.Thread(target=self._work, name=f"bench-http-{i}", daemon=True)
            for i in range(clients)
        ]
        for t in self._threads:
            t.start()

    def _work(self) -> None:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        with httpx.Client(base_url=self._base, headers=headers, timeout=30) as client:
            while True:
                self._start.wait()
                current = self._round
                if self._closing or current is None:
                    return
                ok = errors = 0
                latencies: list[float] = []
                while (sent := time.perf_counter()) < current.deadline:
                    with current.lock:
                        path = next(current.paths)
                    response = client.get(path)
                    latencies.append(time.perf_counter() - sent)
                    if response.status_code == 200:
                        ok += 1
                    else:
                        errors += 1
                with current.lock:
                    current.ok += ok
                    current.errors += errors
                    current.latencies.extend(latencies)
                self._end.wait()

    def run(self, paths: Iterator[str], seconds: float) -> tuple[float, int]:
        """Requests per second answered 200 in one round, and the number of other answers."""
        self._round = _Round(paths, time.perf_counter() + seconds)
        start = time.perf_counter()
        self._start.wait()
        self._end.wait()
        elapsed = time.perf_counter() - start
        return self._round.ok / elapsed, self._round.errors

    def latencies(self, paths: Iterator[str], seconds: float) -> tuple[Series, int]:
        """Seconds each request of one round took, and the number of non-200 answers."""
        _, errors = self.run(paths, seconds)
        assert self._round is not None
        return Series(tuple(self._round.latencies)), errors

    def close(self) -> None:
        self._closing = True
        self._start.wait(timeout=5)
        for t in self._threads:
            t.join(timeout=5)


def _bind_tcp(host: str, port: int) -> socket.socket:
    """``runner._bind``, but with ``IPPROTO_TCP`` so that asyncio sets TCP_NODELAY.

    asyncio sets TCP_NODELAY on accepted connections only if the listening
    socket's ``proto`` is ``IPPROTO_TCP``; ``socket.socket(AF_INET)`` leaves it
    0. uvicorn writes a response's head and body separately, so without
    TCP_NODELAY the body waits for the client's delayed ACK (about 40 ms on
    Linux) on every keep-alive request.
    """
    sock = socket.socket(
        socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP
    )
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    return sock


def throughput(app: App, d: Deployment, plan: Plan, *, nodelay: bool = False) -> tuple[Pair, int]:
    """(show vs healthz rates, non-200 answers seen).

    ``nodelay``: what-if, with the listening socket made by :func:`_bind_tcp`.
    """
    asgi = create_api(app, app.settings.service)
    if nodelay:
        with mock.patch.object(runner, "_bind", _bind_tcp):
            server = HttpServer(asgi, "127.0.0.1", 0).start()
    else:
        server = HttpServer(asgi, "127.0.0.1", 0).start()
    pool = LoadPool(server.url)
    try:
        shows = itertools.cycle([f"/v1/instances/{u}" for u in d.instances])
        health = itertools.repeat("/healthz")
        pool.run(shows, plan.api_round_s / 2)  # warm-up: connections, caches, locator
        pool.run(health, plan.api_round_s / 2)
        show_rates: list[float] = []
        health_rates: list[float] = []
        errors = 0
        for i in range(plan.api_rounds):
            order = (True, False) if i % 2 == 0 else (False, True)
            for is_show in order:
                rate, bad = pool.run(shows if is_show else health, plan.api_round_s)
                errors += bad
                (show_rates if is_show else health_rates).append(rate)
        return (
            Pair(
                Series(tuple(show_rates)),
                Series(tuple(health_rates)),
                ratios(show_rates, health_rates),
            ),
            errors,
        )
    finally:
        pool.close()
        server.stop()


def show_latency(app: App, d: Deployment, plan: Plan, clients: int) -> tuple[Series, int]:
    """Latency of ``GET /v1/instances/{uuid}`` with ``clients`` clients sending back to back.

    One round of ``api_rounds * api_round_s / 2`` seconds after a warm-up;
    every request's time from send to answer, so p50 and p99 come from
    thousands of samples.
    """
    server = HttpServer(create_api(app, app.settings.service), "127.0.0.1", 0).start()
    pool = LoadPool(server.url, clients)
    try:
        shows = itertools.cycle([f"/v1/instances/{u}" for u in d.instances])
        pool.run(shows, plan.api_round_s / 2)  # warm-up
        return pool.latencies(shows, plan.api_rounds * plan.api_round_s / 2)
    finally:
        pool.close()
        server.stop()
