"""The REST API (FastAPI), versioned under ``/v1``. Routes stay thin.

Each route builds the caller's :class:`RequestContext` from its bearer token
and calls :class:`~cellgate.service.instances.InstanceService` or the mapping
functions. Errors are mapped in one place, :data:`STATUS`, to one JSON shape::

    {"error": {"status": 404, "code": "InstanceNotFound", "message": "..."}}

No response ever carries a traceback or a password: messages of our errors
are built from masked values, and anything unexpected becomes a 500 with a
generic message (logged, redacted, with the request id). Nor does one carry
where a database or broker lives: a backend error answers with its
``public_message`` (the subject and a reason, no address, no driver text) and
its full message is logged at WARNING with the request id.

This module does not use ``from __future__ import annotations``: FastAPI
reads the route signatures at runtime, including the ``Annotated`` aliases
built inside :func:`create_api`.
"""

import logging
import secrets as pysecrets
from contextlib import AbstractContextManager
from dataclasses import replace
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Route

from cellgate import deadline, keyset
from cellgate.apidb.hosts import list_hosts
from cellgate.apidb.mappings import CellMapping, UnreadableCell
from cellgate.app import App
from cellgate.celldb.queries import SORT_KEYS
from cellgate.config import ServiceSettings
from cellgate.context import RequestContext
from cellgate.errors import (
    BackendError,
    CellgateError,
    CellNotFound,
    CellUnreadable,
    ConfigError,
    DeadlineExceeded,
    DeleteUnconfirmed,
    EncryptionKeyError,
    HostNotMapped,
    InstanceMoving,
    InstanceNotFound,
    NoTransport,
    NoValidCell,
    RemoteError,
    RPCTimeout,
    SchemaMismatch,
    TransactionConflict,
    UnsupportedVersion,
)
from cellgate.keyset import SortKey
from cellgate.service.health import cell_health
from cellgate.service.hints import rest_message
from cellgate.service.instances import MAX_LIMIT, InstanceService
from cellgate.service.metrics import CONTENT_TYPE, Metrics
from cellgate.urls import redact
from cellgate.validation import control_character

log = logging.getLogger(__name__)

#: Error class -> HTTP status. First match wins, so subclasses come first.
STATUS: tuple[tuple[type[Exception], int], ...] = (
    (InstanceNotFound, 404),
    (CellNotFound, 404),
    (HostNotMapped, 404),
    (EncryptionKeyError, 503),  # the server's keys, not the request, are at fault
    (ConfigError, 400),
    (NoValidCell, 409),
    (InstanceMoving, 409),
    (UnsupportedVersion, 409),
    (NoTransport, 409),
    (RPCTimeout, 504),
    (DeadlineExceeded, 504),  # before BackendError: the request ran out of time
    (SchemaMismatch, 503),
    (BackendError, 503),
)
#: Remote exception type names (from workers) -> HTTP status.
#: A worker that cannot use its cell's database (or keys) is the cell being
#: unavailable, as when the API itself cannot reach it: 503, not 502.
REMOTE_STATUS = {
    "InvalidState": 409,
    "UnknownInstance": 404,
    "TransactionConflict": 503,
    "CellUnavailable": 503,
    "CellTimeout": 503,
    "BackendUnavailable": 503,
    "BackendTimeout": 503,
    "SchemaMismatch": 503,
    "EncryptionKeyError": 503,
}


class ApiError(Exception):
    """An answer of the REST layer itself (auth), not a domain error.

    Not a :class:`CellgateError`: the domain tree is about cells, mappings and
    backends, and knows nothing of HTTP. ``message`` is what the client reads.
    """

    status = 500

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)


class Unauthorized(ApiError):
    status = 401


class Forbidden(ApiError):
    status = 403


class InvalidRequest(ApiError):
    status = 400


SORT_HELP = (
    "Sort keys, comma-separated, each KEY[:asc|desc] with KEY one of "
    f"{', '.join(SORT_KEYS)}; ties are broken by uuid. NULLs sort first "
    "ascending and last descending; text compares by code point (case-sensitive)."
)


def parse_sort(spec: str) -> tuple[SortKey, ...]:
    """``?sort=name:desc,created_at`` -> keys; a 400 if malformed."""
    try:
        return keyset.parse(spec, SORT_KEYS)
    except keyset.BadSortSpec as exc:
        raise InvalidRequest(f"sort: {exc}") from None


def _plain_text(value: str) -> str:
    found = control_character(value)
    if found is not None:
        raise ValueError(f"contains {found}")
    return value


#: Any string a client sends in a body: no NUL, newline, ESC or other control.
Text = Annotated[str, AfterValidator(_plain_text)]


class CreateInstance(BaseModel):
    name: Text = Field(min_length=1, max_length=255)
    cell: Text | None = Field(default=None, max_length=255)


class InstanceAction(BaseModel):
    action: Literal["reboot", "stop", "start"]


class CellBreaker(BaseModel):
    """The cell's circuit breaker (``cellgate.routing.breaker``)."""

    state: Literal["closed", "half_open", "open"]
    consecutive_failures: int = Field(ge=0)
    retry_after: float | None = Field(
        ge=0, description="Seconds until one call probes the open cell; null unless open."
    )


class CellOut(BaseModel):
    """A cell mapping (URLs masked) with its health and its circuit breaker."""

    model_config = ConfigDict(extra="allow")  # the mapping's own fields, as in `cell show`

    uuid: str
    name: str | None
    health: dict[str, Any]
    breaker: CellBreaker


class CellList(BaseModel):
    cells: list[CellOut]


class CellOne(BaseModel):
    cell: CellOut


class ErrorDetail(BaseModel):
    status: int = Field(ge=400, le=599, description="The HTTP status, repeated.")
    code: str = Field(description="The error's name, e.g. InstanceNotFound or CellTimeout.")
    message: str = Field(description="What went wrong; never a password.")


class ErrorBody(BaseModel):
    """Every error answer, whatever its status: one shape."""

    error: ErrorDetail


#: Documented for every operation. A "4XX" entry also keeps FastAPI from
#: documenting its 422, which this API never sends (invalid input is a 400).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    "4XX": {"model": ErrorBody, "description": "The request cannot be served as sent."},
    "5XX": {"model": ErrorBody, "description": "A cell or the API database cannot be used."},
}


def error_body(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse(
        {"error": {"status": status, "code": code, "message": redact(message)}}, status_code=status
    )


def create_api(app: App, settings: ServiceSettings) -> FastAPI:
    """The ASGI application for ``app``; the caller owns and closes ``app``."""
    metrics = Metrics(app.cells, app.breakers, app.retries)
    instances = InstanceService(app, settings, metrics)
    # Every cell's RPC version cap, read in the background: start-up never
    # waits for a cell (cellgate.admin.versions).
    instances.versions.start()
    tokens = {grant.token: grant for grant in settings.tokens}
    api = FastAPI(
        title="cellgate",
        version="1",
        openapi_url="/openapi.json",
        docs_url=None,
        redoc_url=None,
        responses=ERROR_RESPONSES,
    )
    api.state.metrics = metrics

    # async: pure CPU (a token lookup), so FastAPI runs it on the event loop
    # instead of handing it to a worker thread (a hand-off per request).
    async def context(
        request: Request,
        authorization: Annotated[str | None, Header()] = None,
        x_request_id: Annotated[str | None, Header()] = None,
    ) -> RequestContext:
        scheme, _, token = (authorization or "").partition(" ")
        grant = None
        if scheme.lower() == "bearer" and token:
            # As bytes: compare_digest refuses a str with a non-ASCII character.
            sent = token.encode("utf-8", "replace")
            grant = next(
                (g for t, g in tokens.items() if pysecrets.compare_digest(t.encode(), sent)),
                None,
            )
        if grant is None:
            raise Unauthorized(
                "a valid bearer token is required; send Authorization: Bearer TOKEN"
            )
        for where, values in (("path", request.path_params), ("query", request.query_params)):
            for key, value in values.items():
                found = isinstance(value, str) and control_character(value)
                if found:
                    raise InvalidRequest(f"{where}.{key}: contains {found}")
        ctx = RequestContext(
            project_id=grant.project_id,
            roles=grant.roles,
            deadline=deadline.at(settings.request_timeout),
        )
        if x_request_id:  # keep the caller's id for log correlation, bounded
            ctx = replace(ctx, request_id=x_request_id[:64])
        request.state.request_id = ctx.request_id  # for the error handlers' log lines
        return ctx

    async def admin(ctx: Annotated[RequestContext, Depends(context)]) -> RequestContext:
        if not ctx.is_admin:
            raise Forbidden("this needs the admin role")
        return ctx

    def within(ctx: RequestContext) -> AbstractContextManager[None]:
        """The request's deadline for the work done on this (the endpoint's) thread."""
        return deadline.scope(ctx.deadline)

    Ctx = Annotated[RequestContext, Depends(context)]
    Admin = Annotated[RequestContext, Depends(admin)]

    @api.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        response = error_body(exc.status, type(exc).__name__, exc.message)
        if isinstance(exc, Unauthorized):
            response.headers["WWW-Authenticate"] = "Bearer"
        return response

    @api.exception_handler(CellgateError)
    async def _cellgate_error(request: Request, exc: CellgateError) -> JSONResponse:
        status = _status(exc)
        if isinstance(exc, RemoteError):
            status = REMOTE_STATUS.get(exc.exc_type, 502)
            if status >= 500:  # the worker's log has the details; this line ties them up
                log.warning(
                    "request %s: %s %s -> %d: worker raised %s: %s",
                    _request_id(request),
                    request.method,
                    request.url.path,
                    status,
                    exc.exc_type,
                    exc.remote_message,
                )
            remote = error_body(status, exc.exc_type, exc.remote_message)
            if exc.exc_type == "TransactionConflict":  # the worker's write: nothing written
                remote.headers["Retry-After"] = "1"
            return remote
        if isinstance(exc, BackendError | SchemaMismatch):
            # Clients learn what cannot be used, not where it lives: the full
            # message (address, driver text; password masked) is for the log.
            log.warning(
                "request %s: %s %s -> %d: %s",
                _request_id(request),
                request.method,
                request.url.path,
                status,
                redact(str(exc)),
            )
            response = error_body(status, type(exc).__name__, exc.public_message)
            if isinstance(exc, TransactionConflict):  # nothing was written: safe to resend
                response.headers["Retry-After"] = str(exc.retry_after)
            elif isinstance(exc, DeleteUnconfirmed):  # the outcome is unknown: resend
                response.headers["Retry-After"] = "1"
            return response
        # The REST API's own words: no CLI hint, no shell command (service.hints).
        return error_body(status, type(exc).__name__, rest_message(exc))

    @api.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return error_body(400, "InvalidRequest", f"{where}: {first.get('msg', 'invalid input')}")

    @api.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "NotFound", 405: "MethodNotAllowed"}
        response = error_body(
            exc.status_code, codes.get(exc.status_code, "HTTPError"), str(exc.detail)
        )
        for name, value in (exc.headers or {}).items():
            response.headers[name] = value
        if exc.status_code == 405:  # every method of the path, not just one route's
            response.headers["Allow"] = ", ".join(sorted(_allowed(api, request)))
        return response

    @api.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error(
            "request %s: unexpected error on %s %s: %s",
            _request_id(request),
            request.method,
            request.url.path,
            redact(f"{type(exc).__name__}: {exc}"),
        )
        return error_body(500, "InternalError", "unexpected error; see the API's log")

    @api.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @api.head("/healthz", include_in_schema=False)  # load balancers' health checks
    def healthz_head() -> Response:
        return Response(status_code=200)

    @api.get("/metrics", response_class=PlainTextResponse)
    def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @api.post("/v1/instances", status_code=202)
    def create_instance(body: CreateInstance, ctx: Ctx) -> dict[str, Any]:
        with within(ctx):
            return {"instance": instances.create(ctx, body.name, body.cell)}

    @api.get("/v1/instances")
    def list_instances(
        ctx: Ctx,
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 100,
        marker: Annotated[str | None, Query(max_length=36)] = None,
        sort: Annotated[str, Query(max_length=200, description=SORT_HELP)] = "created_at",
    ) -> dict[str, Any]:
        with within(ctx):
            page = instances.page(ctx, limit=limit, marker=marker, sort=parse_sort(sort))
        return {
            "instances": page.instances,
            "down_cells": page.down_cells,
            "next_marker": page.next_marker,
        }

    @api.get("/v1/instances/{instance}")
    def show_instance(instance: str, ctx: Ctx) -> dict[str, Any]:
        with within(ctx):
            return {"instance": instances.show(ctx, instance)}

    @api.delete("/v1/instances/{instance}", status_code=204)
    def delete_instance(instance: str, ctx: Ctx) -> Response:
        with within(ctx):
            instances.delete(ctx, instance)
        return Response(status_code=204)

    @api.post("/v1/instances/{instance}/action")
    def act(instance: str, body: InstanceAction, ctx: Ctx) -> dict[str, Any]:
        with within(ctx):
            return {"instance": instances.action(ctx, instance, body.action)}

    # The models document the shape; the dict is returned as built, so the
    # mapping's fields keep their order and new ones need no model change.
    @api.get("/v1/cells", response_model=None, responses={200: {"model": CellList}})
    def cells(ctx: Admin) -> dict[str, Any]:
        with within(ctx):
            found = app.cells.list(ctx, include_disabled=True)
            listed = _with_health(app, ctx, found, settings, metrics)
            listed += [_unreadable(app, bad) for bad in app.cells.unreadable(ctx)]
        listed.sort(key=lambda c: (not c["is_cell0"], c["name"] or "", c["uuid"]))
        return {"cells": listed}

    @api.get("/v1/cells/{cell}", response_model=None, responses={200: {"model": CellOne}})
    def cell(cell: str, ctx: Admin) -> dict[str, Any]:
        with within(ctx):
            found = [app.cells.get(ctx, cell)]
            return {"cell": _with_health(app, ctx, found, settings, metrics)[0]}

    @api.get("/v1/hosts")
    def hosts(ctx: Admin, cell: str | None = None) -> dict[str, Any]:
        with within(ctx), app.db.api_session() as session:
            return {"hosts": [h.to_dict() for h in list_hosts(session, cell)]}

    return api


def _request_id(request: Request) -> str:
    """The request's id, as its context has it (the caller's ``X-Request-Id``, bounded)."""
    found = getattr(request.state, "request_id", None)
    if isinstance(found, str):
        return found
    return (request.headers.get("x-request-id") or "-")[:64]


def _allowed(api: FastAPI, request: Request) -> set[str]:
    """The methods some route takes on this request's path (for a 405's ``Allow``)."""
    allowed: set[str] = set()
    for route in api.router.routes:
        if isinstance(route, Route) and route.matches(request.scope)[0] is not Match.NONE:
            allowed |= route.methods or set()
    return allowed


def _status(exc: Exception) -> int:
    for cls, status in STATUS:
        if isinstance(exc, cls):
            return status
    return 500


def _unreadable(app: App, bad: UnreadableCell) -> dict[str, Any]:
    """A cell whose mapping does not decrypt: listed (for admins), never reachable."""
    error = CellUnreadable(cell=bad.label, reason=bad.reason)
    return {
        **bad.to_dict(),
        "health": {"reachable": False, "error": error.public_message},
        "breaker": app.breakers.status(bad.uuid).to_dict(),
    }


def _with_health(
    app: App,
    ctx: RequestContext,
    cells: list[CellMapping],
    settings: ServiceSettings,
    metrics: Metrics,
) -> list[dict[str, Any]]:
    health = cell_health(
        app, ctx, cells, timeout=settings.cell_timeout, down_after=settings.service_down_time
    )
    for c in cells:
        metrics.cell_up(c, bool(health[c.uuid]["reachable"]))
    # Read after the health check, which may itself have tripped or probed it.
    return [
        {**c.to_dict(), "health": health[c.uuid], "breaker": app.breakers.status(c.uuid).to_dict()}
        for c in cells
    ]
