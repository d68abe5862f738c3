"""Fixtures for the Nova tests: one deployment built by nova-manage per backend, copies per test.

Every test here is parametrized over the three backends through
``nova_base``, whose params carry ``xdist_group("nova-<backend>")``: all of
one backend's tests run on one worker, so its base deployment is built once
per session (``nova-manage`` costs seconds a call) while the three backends
still spread over the workers. ``nova`` gives a test a copy of its own to
break; ``nova_base`` is for tests that only read (and prove it by checksum).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.nova.deployment import Deployment, build, release_copies
from tests.nova.novaenv import nova_manage
from tests.support import Broker, Server

NOVA_BACKENDS = [
    pytest.param("sqlite", id="sqlite", marks=pytest.mark.xdist_group("nova-sqlite")),
    pytest.param(
        "mariadb",
        id="mariadb",
        marks=[pytest.mark.backends, pytest.mark.xdist_group("nova-mariadb")],
    ),
    pytest.param(
        "postgresql",
        id="postgresql",
        marks=[pytest.mark.backends, pytest.mark.xdist_group("nova-postgresql")],
    ),
]


@pytest.fixture(scope="session", params=NOVA_BACKENDS)
def nova_base(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    """The session's Nova deployment on one backend. Read it; never change it."""
    workdir = tmp_path_factory.mktemp(f"nova-{request.param}")
    server = Server(request.param, workdir)
    server.check()
    broker = Broker()
    broker.check()
    try:
        yield build(nova_manage(), server, broker.new_vhost(), workdir)
    finally:
        server.drop_all()
        broker.drop_all()


CopyFactory = Callable[..., Deployment]


@pytest.fixture
def nova_copy(nova_base: Deployment, tmp_path: Path) -> Iterator[CopyFactory]:
    """``nova_copy(cells=("cell1",))``: a deployment of the test's own to break.

    The API database is always copied; the cell databases named are too, and
    the copy's mappings point at them. Dropped after the test.
    """
    server = Server(nova_base.kind, tmp_path)
    made: list[Deployment] = []

    def copy(cells: tuple[str, ...] = ()) -> Deployment:
        deployment = nova_base.copy(server, tmp_path, cells)
        made.append(deployment)
        return deployment

    yield copy
    for deployment in made:
        release_copies(deployment)
    server.drop_all()
