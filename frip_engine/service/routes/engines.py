"""Engines: the ones an API key may use, and one engine's gallery statistics."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from frip_engine.service.requests import authorise
from frip_engine.service.state import Service

if TYPE_CHECKING:
    from frip_engine.engine import Engine

# What a vendor may see of an engine's stats: not its directory or key store location.
SAFE_STATS: tuple[str, ...] = ("engine", "engine_id", "subjects", "blocks", "capacity")
SAFE_STATS += ("dimension", "threshold", "key_version", "he", "plugins")


def _engine_summary(engine: Engine) -> dict[str, Any]:
    stats = engine.stats()
    return {key: stats[key] for key in SAFE_STATS}


async def engines_list(service: Service, request: Request) -> Response:
    from frip_engine.engine import list_engines

    ctx = await authorise(service, request)
    names = sorted(ctx.caller.engines & set(list_engines(service.config.home)))
    found = []
    for name in names:
        slot = await service.engines().get(name)
        summary, _ = await slot.run(_engine_summary)
        found.append(summary)
    return JSONResponse({"engines": found})


async def engine_show(service: Service, request: Request) -> Response:
    name = request.path_params["engine"]
    await authorise(service, request, name)
    slot = await service.engines().get(name)
    summary, _ = await slot.run(_engine_summary)
    summary["adapter"] = service.vendors.adapter_of(name)
    return JSONResponse(summary)
