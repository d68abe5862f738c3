"""The request path: mapping lookup, "show instance" routed vs direct, target_cell.

``show_routed`` is the whole path a per-instance request takes::

    app.locator.locate(uuid)        instance -> cell (bounded LRU over the API database)
    app.cells.get(ctx, cell_uuid)   cell mapping (cache)
    app.target_cell(ctx, cell)      a targeted copy of the context
    app.db.session(cctx)            that cell's engine, one transaction
    queries.get_instance(...)       the select

``show_direct`` is what a single-database service does per request: a new
``Session`` on an engine it already has, one transaction, the same select.
Both read the same instances in the same order.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.orm import Session

from benchmarks.deploy import PROJECT, Deployment
from benchmarks.stats import Pair, Series, interleaved, sample
from cellgate import App, RequestContext
from cellgate.apidb.mappings import get_cell
from cellgate.celldb import queries
from cellgate.service.instances import InstanceService
from cellgate.service.metrics import Metrics

CTX = RequestContext(project_id=PROJECT, user_id="bench", roles=("member",))


@dataclass(frozen=True)
class Plan:
    """How many samples each kind of figure takes (``--quick`` or full)."""

    micro_samples: int
    target_s: float
    scatter_samples: int
    hung_samples: int
    cast_samples: int
    api_rounds: int
    api_round_s: float
    plot_samples: int
    sequential_samples: int


QUICK = Plan(
    micro_samples=60,
    target_s=0.002,
    scatter_samples=10,
    hung_samples=3,
    cast_samples=3,
    api_rounds=4,
    api_round_s=0.4,
    plot_samples=2,
    sequential_samples=1,
)
FULL = Plan(
    micro_samples=400,
    target_s=0.004,
    scatter_samples=60,
    hung_samples=15,
    cast_samples=10,
    api_rounds=12,
    api_round_s=1.5,
    plot_samples=8,
    sequential_samples=2,
)


def lookup(app: App, d: Deployment, plan: Plan) -> Pair:
    """``app.cells.get`` from the cache vs a fresh API database session + select."""
    ident = d.cells[0].uuid

    def cached() -> object:
        return app.cells.get(CTX, ident)

    def from_db() -> object:
        with app.api.session() as session:
            return get_cell(session, ident)

    return interleaved(cached, from_db, samples=plan.micro_samples, target_s=plan.target_s)


def show_functions(app: App, d: Deployment) -> tuple[Callable[[], object], Callable[[], object]]:
    """``(routed, direct)`` show-instance callables over the same instances."""
    cell = d.cells[0]
    engine = app.engines.get(app.db.url_for(cell))  # created once, as any service would
    routed_ids = itertools.cycle(d.instances)
    direct_ids = itertools.cycle(d.instances)
    for uuid in d.instances:  # warm-up: every instance's location is cached, as in a
        app.locator.locate(uuid)  # service that has served it once

    def routed() -> object:
        uuid = next(routed_ids)
        location = app.locator.locate(uuid)
        assert location is not None
        mapping = app.cells.get(CTX, location.cell_uuid)
        with app.target_cell(CTX, mapping) as cctx, app.db.session(cctx) as session:
            found = queries.get_instance(session, uuid, project_id=PROJECT)
        assert found is not None
        return found

    def direct() -> object:
        uuid = next(direct_ids)
        with Session(engine, expire_on_commit=False) as session, session.begin():
            found = queries.get_instance(session, uuid, project_id=PROJECT)
        assert found is not None
        return found

    return routed, direct


def show(app: App, d: Deployment, plan: Plan) -> Pair:
    routed, direct = show_functions(app, d)
    return interleaved(routed, direct, samples=plan.micro_samples, target_s=plan.target_s)


def show_service(app: App, d: Deployment, plan: Plan) -> Pair:
    """``InstanceService.show`` (what GET /v1/instances/{uuid} runs) vs direct + to_dict."""
    service = InstanceService(app, app.settings.service, Metrics(app.cells))
    engine = app.engines.get(app.db.url_for(d.cells[0]))
    ids = itertools.cycle(d.instances)
    direct_ids = itertools.cycle(d.instances)

    def via_service() -> object:
        return service.show(CTX, next(ids))

    def direct() -> object:
        uuid = next(direct_ids)
        with Session(engine, expire_on_commit=False) as session, session.begin():
            found = queries.get_instance(session, uuid, project_id=PROJECT)
        assert found is not None
        return found.to_dict()

    return interleaved(via_service, direct, samples=plan.micro_samples, target_s=plan.target_s)


def target_cell(app: App, d: Deployment, plan: Plan) -> Series:
    mapping = d.cells[0]

    def enter_leave() -> None:
        with app.target_cell(CTX, mapping):
            pass

    return sample(enter_leave, samples=plan.micro_samples, target_s=plan.target_s)
