"""Running the service: the HTTP server, workers, and the all-in-one deployment.

:class:`HttpServer` runs uvicorn in a thread with a bounded start and stop,
so the same code serves ``cellgate serve api``, ``all-in-one``, the demo and
the tests. Signals are handled by the caller's main thread
(:func:`wait_for_signals`): SIGTERM/SIGINT stop, SIGHUP reloads mappings.
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

import uvicorn

from cellgate.errors import BackendUnavailable, ConfigError, Hint
from cellgate.service.heap import freeze_startup_heap

log = logging.getLogger(__name__)

START_TIMEOUT = 15.0


class HttpServer:
    """uvicorn in a daemon thread; ``url`` once started, ``stop()`` to end it."""

    def __init__(self, asgi: Any, host: str, port: int) -> None:
        self._sock = _bind(host, port)
        self.host, self.port = self._sock.getsockname()[:2]
        # log_config=None: uvicorn logs through the root logger, whose handler
        # redacts (cellgate.logs); its own default handlers would print an
        # unexpected error's traceback, URLs and all, unfiltered.
        config = uvicorn.Config(
            asgi,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=5,
            log_config=None,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._serve, name="cellgate-http", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _serve(self) -> None:
        self._server.run(sockets=[self._sock])

    def start(self) -> HttpServer:
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise BackendUnavailable(
                    component=f"HTTP server {self.url}", reason="did not start"
                )
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()


def _bind(host: str, port: int) -> socket.socket:
    # IPPROTO_TCP explicitly: asyncio only sets TCP_NODELAY on accepted sockets
    # whose listener says TCP; without it every keep-alive response waits for
    # delayed ACKs (~40 ms each, measured by the benchmarks).
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot listen on {host}:{port}: {exc.strerror}",
            hint=Hint.CHOOSE_OTHER_PORT,
        ) from None
    sock.listen(128)
    return sock


def wait_for_signals(on_reload: Callable[[], None]) -> None:
    """Block the main thread until SIGTERM or SIGINT; call ``on_reload`` on SIGHUP.

    Called once start-up is over, so it first freezes the start-up heap
    (:mod:`cellgate.service.heap` says why).
    """
    frozen = freeze_startup_heap()
    log.debug("start-up heap frozen: %d objects outside garbage collection", frozen)
    stop = threading.Event()

    def _stop(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %d: shutting down", signum)
        stop.set()

    def _reload(_signum: int, _frame: FrameType | None) -> None:
        log.info("SIGHUP: reloading cell mappings")
        on_reload()

    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGHUP, _reload)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
