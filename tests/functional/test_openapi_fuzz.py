"""schemathesis against the REST API's own OpenAPI schema, in process (ASGI).

The service runs as ``all-in-one`` does (SQLite files, ``memory://`` brokers,
one in-process worker per cell), with cell1 and cell2 live and a third cell,
``parked``, disabled and unreachable (127.0.0.9, port 1: refused at once), so
listings and cell health reports have a dead cell to describe. Every cell URL
carries an awkward password. The schema is loaded from the app itself
(``/openapi.json``), every operation is called with the admin token, and
every response must:

- not be a server error (no 5xx: nothing in this deployment may fail);
- match the schema: its status code is documented and its body conforms;
- contain no password or token, in any spelling the leak scanner knows,
  in its body or its headers.

Deterministic and bounded: a fixed seed, ``derandomize``, a few examples per
operation (this file runs in well under a minute).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from cellgate import App, RequestContext, load_settings
from cellgate.apidb.mappings import create_cell, map_cell0
from cellgate.migrations.runner import MigrationLine, upgrade
from cellgate.service.compute import Worker
from cellgate.service.http import create_api
from cellgate.service.runner import HttpServer
from cellgate.sql.api_database import ApiDatabase
from cellgate.sql.engines import make_engine
from cellgate.urls import DatabaseURL, TemplateDefaults
from tests.functional.test_secret_scanner import Scanner, Secret

DEFAULTS = TemplateDefaults(database=None, transport=None)
CTX = RequestContext(request_id="req-fuzz")
MAX_EXAMPLES = 12  # per operation and generation mode
SEED = 20240607

ADMIN_TOKEN = Secret("admin token", "adm-fuzz-Kq7uX5z")
DEMO_TOKEN = Secret("demo token", "demo-fuzz-Kq7vY6a")
CELL1_MQ = Secret("cell1 broker", "c1%:@/#?,ä-Kq7w", "c1")
CELL2_MQ = Secret("cell2 broker", "c2 &=+;~-Kq7x", "c2")
PARKED_DB = Secret("parked database", "pk@:/%#?,-Kq7y", "pk")
PARKED_MQ = Secret("parked broker", "pq:@/%#?,-Kq7z", "pq")
SECRETS = [ADMIN_TOKEN, DEMO_TOKEN, CELL1_MQ, CELL2_MQ, PARKED_DB, PARKED_MQ]
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN.password}"}

# One worker for the module, so its module-scoped deployment is built once (xdist).
pytestmark = pytest.mark.xdist_group("openapi_fuzz")


@dataclass(frozen=True)
class Deployment:
    asgi: Any
    #: Path parameter -> values that exist, per HTTP method: besides random
    #: values (404s), operations get these, so their 2xx answers are checked too.
    known: dict[str, dict[str, list[str]]]


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """An all-in-one deployment's ASGI app; workers and App closed at the end."""
    tmp = tmp_path_factory.mktemp("fuzz")
    conf = tmp / "fuzz.conf"
    conf.write_text(
        "[DEFAULT]\n"
        f"state_path = {tmp / 'state'}\n"
        "rpc_response_timeout = 5\n"
        f"[api_database]\nconnection = sqlite:///{tmp / 'api.sqlite'}\n"
        "[database]\nconnect_timeout = 2\n"
        "[rpc]\nconnect_timeout = 2\n"
        "[api]\n"
        f"auth_tokens = {ADMIN_TOKEN.password}:admin:admin+member, "
        f"{DEMO_TOKEN.password}:demo:member\n"
        "cell_timeout = 3\n"
        "[worker]\nheartbeat_interval = 0.5\n",
        encoding="utf-8",
    )
    settings_ = load_settings(conf)
    api = ApiDatabase(settings_.api_database)
    api.upgrade()
    with api.session() as s:
        for name, mq in (("cell1", CELL1_MQ), ("cell2", CELL2_MQ)):
            url = DatabaseURL.parse(f"sqlite:///{tmp / name}.sqlite")
            engine = make_engine(url, connect_timeout=2, query_timeout=5, create_missing=True)
            upgrade(engine, MigrationLine.CELL)
            engine.dispose()
            create_cell(
                s,
                name=name,
                transport_url=f"memory://{mq.user}:{mq.q}@{name}",
                database_connection=url.render(),
                defaults=DEFAULTS,
            )
        create_cell(
            s,
            name="parked",
            transport_url=f"rabbit://{PARKED_MQ.user}:{PARKED_MQ.q}@127.0.0.9:1/parked",
            database_connection=f"mysql+pymysql://{PARKED_DB.user}:{PARKED_DB.q}@127.0.0.9:1/pk",
            defaults=DEFAULTS,
            disabled=True,
        )
        map_cell0(s, database_connection=f"sqlite:///{tmp / 'cell0.sqlite'}", defaults=DEFAULTS)
    api.close()
    with App(settings_) as app:
        workers = [
            Worker(app, app.cells.get(CTX, name), f"{name}-host", 0.5).start()
            for name in ("cell1", "cell2")
        ]
        try:
            asgi = create_api(app, settings_.service)
            server = HttpServer(asgi, "127.0.0.1", 0).start()
            try:
                with httpx.Client(base_url=server.url, headers=ADMIN, timeout=30) as client:
                    kept, doomed = (
                        client.post("/v1/instances", json={"name": n}).json()["instance"]["uuid"]
                        for n in ("kept", "doomed")
                    )
            finally:
                server.stop()
            cells = ["cell1", "parked", "cell0"]
            yield Deployment(
                asgi,
                {
                    "instance": {"DELETE": [doomed], "GET": [kept], "POST": [kept]},
                    "cell": {"GET": cells},
                },
            )
        finally:
            for worker in workers:
                worker.stop()


@pytest.fixture
def api_schema(service: Deployment) -> schemathesis.BaseSchema:
    config = schemathesis.Config.from_dict(
        {"seed": SEED, "phases": {"stateful": {"enabled": False}}}
    )
    return schemathesis.openapi.from_asgi("/openapi.json", service.asgi, config=config)


def no_secret(ctx: schemathesis.CheckContext, response: schemathesis.Response, case: Any) -> None:
    """No password or token, in any spelling, in the body or the headers."""
    scanner = Scanner(list(SECRETS))
    scanner.scan("body", response.content)
    scanner.scan("headers", repr(sorted(response.headers.items())))
    scanner.assert_clean()


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    no_secret,
]


def _cases(
    operation: Any, mode: GenerationMode, known: dict[str, dict[str, list[str]]]
) -> st.SearchStrategy[schemathesis.Case[Any]]:
    """Generated cases, and as many again with each path parameter set to a known value."""
    method = operation.method.upper()
    fixed = [
        {name: value}
        for name in (p.name for p in operation.path_parameters)
        for value in known.get(name, {}).get(method, [])
    ]
    strategies = [
        operation.as_strategy(generation_mode=mode, headers=ADMIN, path_parameters=path)
        for path in [None, *fixed]
    ]
    return st.one_of(*strategies)


def test_the_api_conforms_to_its_schema(
    api_schema: schemathesis.BaseSchema, service: Deployment
) -> None:
    """Every operation, with valid and with invalid input; all failures reported at once.

    (schemathesis's own pytest loader, ``schemathesis.pytest.from_fixture``,
    needs a pytest private attribute that pytest 9 no longer has, so each
    operation runs here as a plain Hypothesis test over its strategy.)
    """
    failures: list[str] = []
    operations = []
    for result in api_schema.get_all_operations():
        assert isinstance(result, Ok), f"the schema is invalid: {result}"
        operations.append(result.ok())
    assert len(operations) >= 8, [op.label for op in operations]
    for operation in operations:
        inputs = (operation.path_parameters, operation.query, operation.headers, operation.body)
        modes = [GenerationMode.POSITIVE]
        if any(len(what) for what in inputs):  # else there is nothing to make invalid
            modes.append(GenerationMode.NEGATIVE)
        for mode in modes:

            @given(case=_cases(operation, mode, service.known))
            @settings(
                max_examples=MAX_EXAMPLES,
                derandomize=True,
                database=None,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            )
            def run(case: schemathesis.Case[Any]) -> None:
                case.call_and_validate(headers=ADMIN, checks=CHECKS)

            try:
                run()
            except Unsatisfiable:
                # Negative mode found no input the schema forbids that survives
                # serialisation (e.g. a free-form string in the path): fine.
                if mode is not GenerationMode.NEGATIVE:
                    raise
            except (Exception, schemathesis.errors.FailureGroup) as exc:  # reported below
                failures.append(f"{operation.label} ({mode.value}): {exc}")
    assert not failures, "\n\n".join(failures)


def test_the_schema_documents_what_the_api_answers(api_schema: schemathesis.BaseSchema) -> None:
    """Every route is in the schema, with the one error shape and no 422 it never sends."""
    paths: dict[str, dict[str, Any]] = api_schema.raw_schema["paths"]
    assert {"/v1/instances", "/v1/instances/{instance}", "/v1/cells", "/v1/hosts"} <= set(paths)
    for path, operations in paths.items():
        for method, operation in operations.items():
            responses = operation["responses"]
            assert "422" not in responses, f"{method} {path}: invalid input is a 400"
            assert {"4XX", "5XX"} <= set(responses), f"{method} {path}: {sorted(responses)}"
    assert "text/plain" in paths["/metrics"]["get"]["responses"]["200"]["content"]
