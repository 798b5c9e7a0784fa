"""The audit log as an API key may read it: its engines' events and its own events."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from frip_engine.service.errors import ForbiddenError
from frip_engine.service.limits import MAX_SEQ
from frip_engine.service.requests import authorise, shown, whole_number
from frip_engine.service.state import Service


async def audit_query(service: Service, request: Request) -> Response:
    ctx = await authorise(service, request)
    engine = request.query_params.get("engine")
    if engine is not None and engine not in ctx.caller.engines | ctx.caller.linkable:
        raise ForbiddenError(f"this API key has no rights to engine {shown(engine)}")
    after = whole_number(request.query_params.get("after", "0"), "after", 0, MAX_SEQ)
    limit = whole_number(request.query_params.get("limit", "100"), "limit", 1, 1000)
    events = service.audit.query(ctx.caller.engines, ctx.caller.vendor, engine, after, limit)
    return JSONResponse({"events": events})
