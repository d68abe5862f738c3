"""The reference service while an instance moves: show answers, actions get 409.

A real move (another ``App``, as the CLI would be) runs against the REST API
served over HTTP with a worker per cell, on every database backend and on
memory:// and RabbitMQ. From inside the move, between its steps, the API
still shows the instance from its source and refuses actions and deletes
with 409 ``InstanceMoving``. After the flip, the service, whose locator
still remembers the old cell, is re-routed once: show and actions reach the
instance in its new cell, and the list has it exactly once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from cellgate import App, admin
from cellgate.service.compute import Worker
from cellgate.service.http import create_api
from cellgate.service.runner import HttpServer
from tests.functional.conftest import Deployment
from tests.functional.moving import CTX, TwoCells
from tests.support import Broker

ADMIN = {"Authorization": "Bearer admin-tok"}


@pytest.fixture(params=["memory", pytest.param("rabbit", marks=pytest.mark.backends)])
def transport(request: pytest.FixtureRequest) -> Iterator[Callable[[str], str]]:
    if request.param == "memory":
        yield lambda name: f"memory://{name}"
        return
    broker = Broker()
    broker.check()
    yield lambda _name: broker.new_vhost()
    broker.drop_all()


@pytest.fixture
def served(
    deployment: Deployment, transport: Callable[[str], str]
) -> Iterator[tuple[TwoCells, httpx.Client]]:
    with deployment.config_file.open("a", encoding="utf-8") as conf:
        conf.write("[api]\nauth_tokens = admin-tok:admin:admin+member\ncell_timeout = 10\n")
    cells = TwoCells(deployment, transport=transport).setup()
    app = App(deployment.settings())
    workers = [
        Worker(app, app.cells.get(CTX, name), f"{name}-host", 0.5).start() for name in cells.names
    ]
    server = HttpServer(create_api(app, app.settings.service), "127.0.0.1", 0).start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            yield cells, client
    finally:
        server.stop()
        for worker in workers:
            worker.stop()
        app.close()


def test_show_answers_and_actions_get_409_while_moving_then_follow_the_move(
    served: tuple[TwoCells, httpx.Client],
) -> None:
    cells, client = served
    (uuid,) = cells.seed(1)
    path = f"/v1/instances/{uuid}"
    assert client.get(path, headers=ADMIN).json()["instance"]["cell"] == "cell1"  # cached now
    seen: list[str] = []

    def during_the_move(event: dict[str, Any]) -> None:
        if event["state"] != "moving":
            return
        seen.append(event["step"])
        shown = client.get(path, headers=ADMIN)
        assert shown.status_code == 200, shown.text
        assert shown.json()["instance"]["cell"] == (
            "cell2" if event["step"] == "flipped" else "cell1"
        )
        refused = client.post(f"{path}/action", json={"action": "stop"}, headers=ADMIN)
        assert refused.status_code == 409, refused.text
        error = refused.json()["error"]
        assert error["code"] == "InstanceMoving"
        assert "being moved between cells" in error["message"]
        assert "cellgate" not in error["message"]  # no shell command for a REST client
        assert client.delete(path, headers=ADMIN).status_code == 409

    with App(cells.d.settings()) as mover:
        job = admin.move_instance(mover, uuid, to="cell2", grace=3600, on_progress=during_the_move)
    assert seen == ["recorded", "copied", "verified", "flipped"]
    assert job.state == "waiting"  # the source's rows are hidden, kept for the grace period
    # The service's locator still says cell1: show and actions are re-routed once.
    assert client.get(path, headers=ADMIN).json()["instance"]["cell"] == "cell2"
    stopped = client.post(f"{path}/action", json={"action": "stop"}, headers=ADMIN)
    assert stopped.status_code == 200, stopped.text
    assert stopped.json()["instance"]["cell"] == "cell2"
    assert stopped.json()["instance"]["status"] == "stopped"
    listed = client.get("/v1/instances", headers=ADMIN).json()["instances"]
    assert [i["uuid"] for i in listed].count(uuid) == 1
    with App(cells.d.settings()) as app:
        assert cells.assert_one_visible(app, uuid) == "cell2"
        assert cells.visibility(app, "cell1", uuid) is False  # untouched by the stop
