"""``cell verify`` against the real RabbitMQ: good vhost, bad password, dead ports."""

from __future__ import annotations

import json
import time

import pytest

from cellgate.cli.exit_codes import ExitCode
from cellgate.urls import url_passwords
from tests.functional.conftest import Deployment
from tests.support import Broker, blackhole

pytestmark = pytest.mark.backends


@pytest.fixture
def ready(sqlite_deployment: Deployment) -> Deployment:
    """The broker is the subject here; SQLite keeps the cell database simple."""
    sqlite_deployment.run("api-db", "sync")
    return sqlite_deployment


def _cell(d: Deployment, name: str, transport: str) -> None:
    d.secrets.extend(url_passwords(transport))
    db = d.new_cell_url().render(hide_password=False)
    d.run(
        "cell", "create", "--name", name, "--transport-url", transport, "--database-connection", db
    )
    d.run("db", "sync", "--cell", name)


def test_reachable_vhost_verifies(ready: Deployment, broker: Broker) -> None:
    _cell(ready, "r1", broker.new_vhost())
    report = ready.json("cell", "verify", "r1")[0]
    assert report["ok"] is True
    assert report["checks"][1]["component"] == "transport 127.0.0.1:5672"


def test_wrong_password_is_unavailable_and_masked(ready: Deployment, broker: Broker) -> None:
    good = broker.new_vhost()
    bad = good.replace("@127.0.0.1", "x@127.0.0.1")
    _cell(ready, "r2", bad)
    result = ready.run("cell", "verify", "r2", ok=False)
    assert result.exit_code == ExitCode.UNAVAILABLE
    assert "ACCESS_REFUSED" in result.stdout


def test_multi_host_url_reports_each_broker(ready: Deployment, broker: Broker) -> None:
    good = broker.new_vhost()
    userinfo = good.split("//", 1)[1].split("@", 1)[0]
    multi = good.replace("@127.0.0.1:5672/", f"@127.0.0.1:5672,{userinfo}@127.0.0.3:1/")
    _cell(ready, "multi", multi)
    result = ready.run("cell", "verify", "multi", "--json", ok=False)
    assert result.exit_code == ExitCode.UNAVAILABLE
    checks = {c["component"]: c["ok"] for c in json.loads(result.stdout)[0]["checks"]}
    assert checks == {
        "database": True,
        "transport 127.0.0.1:5672": True,
        "transport 127.0.0.3:1": False,
    }


def test_broker_that_never_answers_costs_at_most_the_timeout(ready: Deployment) -> None:
    with blackhole() as port:
        _cell(ready, "hole", f"rabbit://guest:guest@127.0.0.1:{port}/")
        started = time.monotonic()
        result = ready.run("cell", "verify", "hole", ok=False)
        elapsed = time.monotonic() - started
    assert result.exit_code == ExitCode.UNAVAILABLE
    assert "no answer within 2s" in result.stdout or "timed out" in result.stdout.lower()
    assert elapsed < 30  # a hang would hit pytest-timeout; this only bounds retries
