"""Service metadata, no API key needed: liveness, Prometheus metrics, the OpenAPI document."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from frip_engine import __version__
from frip_engine.service.openapi import describe
from frip_engine.service.state import Service


async def health(service: Service, request: Request) -> Response:
    return JSONResponse(health_of(service))


def health_of(service: Service) -> dict[str, Any]:
    """Liveness: status, version and how many engines are open."""
    engines = len(service.pool) if service.pool is not None else 0
    return {"status": "ok", "version": __version__, "engines_open": engines}


async def metrics(service: Service, request: Request) -> Response:
    engines = len(service.pool) if service.pool is not None else 0
    return PlainTextResponse(service.metrics.render(engines))


async def openapi(service: Service, request: Request) -> Response:
    return JSONResponse(describe(service.config, service.routes))
