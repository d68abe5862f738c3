"""The embedded all-in-one deployment: everything in one process, no servers.

SQLite files for the API database, cell0 and each cell; one ``memory://``
broker per cell; the REST API and one worker per cell sharing one ``App``.
It is the README's default and what the demo drives.
"""

from __future__ import annotations

from collections.abc import Callable

from cellgate import admin
from cellgate.apidb.mappings import CellMapping
from cellgate.app import App
from cellgate.closing import Closing
from cellgate.config import Settings
from cellgate.context import RequestContext
from cellgate.results import Failed
from cellgate.service.compute import Worker
from cellgate.service.http import create_api
from cellgate.service.runner import HttpServer

_SETUP = RequestContext(request_id="req-all-in-one")


class AllInOne(Closing):
    """Start with ``with AllInOne(settings) as d:``; ``d.url`` is the API."""

    def __init__(self, settings: Settings, on_step: Callable[[str], None] = lambda _: None):
        self.settings = settings
        self._on_step = on_step
        self.app = App(settings)
        self.workers: dict[str, Worker] = {}
        self._server: HttpServer | None = None
        try:
            admin.quickstart(self.app, on_step=on_step)
            for cell in self.app.cells.list(_SETUP, include_cell0=False):
                self.start_worker(cell)
            service = settings.service
            self._server = HttpServer(
                create_api(self.app, service), service.listen, service.port
            ).start()
        except BaseException:
            self.close()
            raise

    @property
    def url(self) -> str:
        assert self._server is not None
        return self._server.url

    def start_worker(self, cell: CellMapping) -> Worker:
        name = cell.name or cell.uuid
        worker = Worker(
            self.app, cell, f"{name}-host", self.settings.service.heartbeat_interval
        ).start()
        self.workers[name] = worker
        self._on_step(f"worker {worker.host} serving {name}")
        return worker

    def stop_worker(self, name: str) -> None:
        self.workers.pop(name).stop()

    def add_cell(self, name: str) -> CellMapping:
        """Map, migrate and serve one more SQLite cell, as an operator would."""
        url = f"sqlite:///{self.settings.state_path / (name + '.sqlite')}"
        cell = admin.create_cell(
            self.app, name=name, transport_url=f"memory://{name}", database_connection=url
        )
        (outcome,) = admin.sync_cells(self.app, cells=[cell.uuid])
        if isinstance(outcome.result, Failed):
            raise outcome.result.error
        self.app.reload(wait=30)
        self.start_worker(cell)
        return cell

    def close(self) -> None:
        if self._server is not None:
            self._server.stop()
        for worker in self.workers.values():
            worker.stop()
        self.workers.clear()
        self.app.close()
