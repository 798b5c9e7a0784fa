"""The Starlette application behind ``frip serve``.

Every request outside /v1/health, /v1/metrics and /openapi.json carries a vendor's API
key; a key reaches only the engines its vendor owns, and a request for any other engine
is refused with the same 403 whether that engine or subject exists or not. The one
exception is /v1/linkage, which may also enrol a consenting registrant into (and erase it
from) engines whose owners granted the caller linkage, and never reads them. State-changing
requests also carry a fresh ``X-Request-Id`` and ``X-Request-Time`` (replay guard). Engine
work runs on each engine's own thread (``pool``); an enrolment is acknowledged only
after its store commit and its audit row are both on disk. Errors are JSON,
``{"error": {"code", "message", "request_id"}}``, with the status and stable code of
``frip_engine.service.errors.HTTP_ERRORS``.

This module only assembles the app: the route table (handlers in ``service.routes``, one
module per resource), the middleware and the error handlers. ``service.state`` holds
what the handlers share, ``service.requests`` what they do with a request.

Timings added to an identification's Table II breakdown (seconds, all server-side):
``network``: from the ASGI app receiving the request (headers parsed) to the handler
start, plus the time to receive the body; ``request_decoding``: JSON, base64 and field
checks; an image probe's ``feature_extraction`` is its decoding and embedding in an
edge worker process (``service.edge``), before the engine's queue; ``queue_wait``:
waiting for the engine's thread (and for a batch to fill);
``batch_size``: the probes scored together with this one (requests queued for one engine
are micro-batched, ``ServiceConfig.batch_max``); ``server_total``: receipt to
response ready. The response's own JSON encoding is in the ``Server-Timing`` header.
A client's round trip minus ``server_total`` is the wire and client-side time.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from functools import partial

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route as StarletteRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from frip_engine.errors import FripError
from frip_engine.service import portal
from frip_engine.service.audit import Event, suppressed
from frip_engine.service.errors import http_error
from frip_engine.service.pool import EnginePool
from frip_engine.service.portal.web import error_page, in_portal
from frip_engine.service.replay import ID_PATTERN
from frip_engine.service.routes import audit, engines, linkage, matching, meta, subjects
from frip_engine.service.state import Handler, Route, Service, ServiceConfig
from frip_engine.service.vendors import Caller, claimed_key_id

__all__ = ["ROUTES", "ServiceConfig", "create_app"]
logger = logging.getLogger("frip_engine.service")
access_logger = logging.getLogger("frip_engine.service.access")
MAX_MESSAGE = 1000  # characters of an error message: what a caller sent is never echoed whole


# ---------------------------------------------------------------------------- errors
def error_response(
    code: str,
    message: str,
    status: int,
    request: Request,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """The one JSON error shape; the message is cut to MAX_MESSAGE characters. Under
    the portal, its HTML error page instead."""
    if in_portal(request.url.path):
        return error_page(request, status, message, headers)
    request_id = request.headers.get("x-request-id")
    if request_id is not None and not ID_PATTERN.fullmatch(request_id):
        request_id = None  # echo a well-formed id only
    if len(message) > MAX_MESSAGE:
        message = message[: MAX_MESSAGE - 3] + "..."
    body = {"error": {"code": code, "message": message, "request_id": request_id}}
    return JSONResponse(body, status, headers)


def route_of(scope: Scope) -> str:
    """The operation a request was routed to (a name, never its path: paths hold ids)."""
    return getattr(scope.get("endpoint"), "__name__", "unmatched")


def refusal(request: Request, code: str) -> Event:
    """The audit row of a refused (401/403) attempt: who as far as known, which route and
    engine, why. Nothing of the body, and only well-formed ids from an unknown caller."""
    from frip_engine.profile import NAME_PATTERN

    caller: Caller | None = getattr(request.state, "caller", None)
    engine = request.path_params.get("engine")
    request_id = request.headers.get("x-request-id")
    return Event(
        actor=caller.vendor if caller else "unauthenticated",
        action="refused",
        engine=engine if engine and NAME_PATTERN.fullmatch(engine) else None,
        outcome={"code": code, "route": route_of(request.scope), "method": request.method},
        key_id=caller.key_id if caller else claimed_key_id(request.headers.get("authorization")),
        request_id=request_id if request_id and ID_PATTERN.fullmatch(request_id) else None,
    )


def audit_refusal(service: Service, request: Request, code: str) -> None:
    """Audit a refused attempt within the budget of its source (its key, or its address
    when unauthenticated); beyond it, count it and note the count on the next row."""
    caller: Caller | None = getattr(request.state, "caller", None)
    address = request.client.host if request.client else "?"
    row = refusal(request, code)
    count = service.refusals.admit(f"key:{caller.key_id}" if caller else address, row)
    if count is not None:
        service.audit.append(suppressed(row, count) if count else row)


def release_request_id(service: Service, request: Request) -> None:
    """An id is spent only by a request that succeeded: free it after any error."""
    reserved = getattr(request.state, "reserved", None)
    if reserved is not None:
        service.replay.release(*reserved)
        request.state.reserved = None


async def frip_error(service: Service, request: Request, exc: Exception) -> Response:
    assert isinstance(exc, FripError)
    status, code = http_error(exc)
    service.metrics.error(code)
    if status in (401, 403):
        await run_in_threadpool(audit_refusal, service, request, code)
    await run_in_threadpool(release_request_id, service, request)
    message = str(exc)
    retry = getattr(exc, "retry_after", None)
    if status == 503:  # a passing state (an outage, a migration, a restarted worker)
        logger.warning("%s %s -> %s: %s", request.method, route_of(request.scope), code, exc)
        message = f"temporarily unavailable ({code}); the server log has the detail"
    elif status >= 500:  # the detail (paths, internals) stays in the server's log
        logger.error("%s %s -> %s: %s", request.method, route_of(request.scope), code, exc)
        message = f"the service failed ({code}); the server log has the detail"
    if status >= 500 and retry is not None:  # nothing was done: the same request may be sent again
        message += f"; nothing was done, retry in {max(1, round(retry))} s"
    response = error_response(code, message, status, request)
    if retry is not None:
        response.headers["Retry-After"] = str(max(1, round(retry)))
    return response


def http_exception(service: Service, request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    codes = {404: "route_not_found", 405: "method_not_allowed"}
    code = codes.get(exc.status_code, "http_error")
    service.metrics.error(code)
    return error_response(code, str(exc.detail), exc.status_code, request, exc.headers)


async def client_gone(service: Service, request: Request, exc: Exception) -> Response:
    """The client left before sending its whole body: nothing was processed, nothing is
    answered (no one is listening), and its request id stays free for a retry."""
    service.metrics.error("client_disconnected")
    await run_in_threadpool(release_request_id, service, request)
    logger.info(
        "%s %s: the client disconnected mid-request", request.method, route_of(request.scope)
    )
    return error_response("client_disconnected", "the client disconnected", 499, request)


async def unexpected(service: Service, request: Request, exc: Exception) -> Response:
    service.metrics.error("internal_error")
    await run_in_threadpool(release_request_id, service, request)
    logger.error("unexpected error in %s %s", request.method, route_of(request.scope), exc_info=exc)
    return error_response("internal_error", "unexpected server error", 500, request)


class Receipt:
    """Pure ASGI middleware: stamps when a request arrived, counts it when answered, and
    writes the access line (client, method, route name, status, time; never the path,
    which may name a subject)."""

    def __init__(self, app: ASGIApp, service: Service) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        scope.setdefault("state", {})["received"] = start
        status = [500]

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route, seconds = route_of(scope), time.perf_counter() - start
            self.service.metrics.observe(route, scope["method"], status[0], seconds)
            if self.service.config.access_log:
                client = scope.get("client") or ("?", 0)
                access_logger.info(
                    '%s "%s %s" %d %.1f ms',
                    client[0],
                    scope["method"],
                    route,
                    status[0],
                    seconds * 1000,
                )


# ---------------------------------------------------------------------------- the app
ROUTES: list[Route] = [
    ("/v1/health", meta.health, "GET"),
    ("/v1/metrics", meta.metrics, "GET"),
    ("/openapi.json", meta.openapi, "GET"),
    ("/v1/engines", engines.engines_list, "GET"),
    ("/v1/engines/{engine}", engines.engine_show, "GET"),
    ("/v1/engines/{engine}/subjects", subjects.enrol, "POST"),
    ("/v1/engines/{engine}/subjects/{subject_id}", subjects.subject_show, "GET"),
    ("/v1/engines/{engine}/subjects/{subject_id}", subjects.remove, "DELETE"),
    ("/v1/engines/{engine}/identify", matching.identify, "POST"),
    ("/v1/engines/{engine}/verify", matching.verify, "POST"),
    ("/v1/linkage", linkage.linkage_create, "POST"),
    ("/v1/linkage/{subject_id}", linkage.linkage_show, "GET"),
    ("/v1/linkage/{subject_id}", linkage.linkage_revoke, "DELETE"),
    ("/v1/audit", audit.audit_query, "GET"),
]


Endpoint = Callable[[Request], Awaitable[Response]]


def _bind(handler: Handler, service: Service) -> Endpoint:
    async def endpoint(request: Request) -> Response:
        return await handler(service, request)

    endpoint.__name__ = handler.__name__
    return endpoint


def _routes(service: Service) -> list[StarletteRoute]:
    """One route per path, so a wrong method's 405 lists every method the path allows; a
    path with several methods dispatches to each one's endpoint (named for metrics)."""
    by_path: dict[str, dict[str, Endpoint]] = {}
    for path, handler, method in service.routes:
        by_path.setdefault(path, {})[method] = _bind(handler, service)
    routes = []
    for path, endpoints in by_path.items():
        if len(endpoints) == 1:
            routes.append(StarletteRoute(path, *endpoints.values(), methods=list(endpoints)))
            continue

        async def dispatch(
            request: Request, endpoints: dict[str, Endpoint] = endpoints
        ) -> Response:
            endpoint = endpoints["GET" if request.method == "HEAD" else request.method]
            request.scope["endpoint"] = endpoint  # the operation, for metrics and the audit
            return await endpoint(request)

        routes.append(StarletteRoute(path, dispatch, methods=list(endpoints)))
    return routes


def create_app(config: ServiceConfig) -> Starlette:
    """The ASGI app: routes, JSON errors, and a lifespan that opens and closes engines."""
    from starlette.middleware import Middleware

    config.check()
    service = Service(config, ROUTES)
    registration = portal.Portal(service)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        batching = (config.batch_max, config.batch_wait_ms / 1000)
        service.pool = EnginePool(config.home, service.on_open, *batching)
        try:
            await registration.recover()  # registrations a crash interrupted
            yield
        finally:
            service.close()

    routes = [*_routes(service), *portal.mount(registration)]  # + the registration portal
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=[Middleware(Receipt, service=service)],
        exception_handlers={
            FripError: partial(frip_error, service),
            HTTPException: partial(http_exception, service),
            ClientDisconnect: partial(client_gone, service),
            Exception: partial(unexpected, service),
        },
    )
    app.state.service = service
    return app
