"""The registration portal (``/portal``): people register their face once, opt into the
engines linked to the portal's registration desk, and withdraw with a code; operators
watch the engines from a console. Server-rendered pages (Jinja2), a little local
JavaScript for photo previews, everything served from here.

``mount(portal)`` is the one route ``service.app`` adds; its lifespan runs
``Portal.recover`` at start.
"""

from __future__ import annotations

from pathlib import Path

from starlette.middleware import Middleware
from starlette.responses import RedirectResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from frip_engine.service.portal.pages import Portal
from frip_engine.service.portal.web import PATH, SecurityHeaders

__all__ = ["Portal", "mount"]


def mount(portal: Portal) -> list[BaseRoute]:
    """The portal's routes under /portal, each response with the portal's security
    headers; /portal itself redirects to /portal/ (a relative Location: no Host header
    goes into it)."""
    routes = [
        Route("/", portal.home, methods=["GET"]),
        Route("/register", portal.register, methods=["POST"]),
        Route("/manage", portal.manage, methods=["GET"]),
        Route("/manage", portal.sign_in, methods=["POST"]),
        Route("/me", portal.me, methods=["GET"]),
        Route("/opt-in", portal.opt_in, methods=["POST"]),
        Route("/withdraw", portal.withdraw, methods=["POST"]),
        Route("/sign-out", portal.sign_out, methods=["POST"]),
        Route("/console", portal.console, methods=["GET"]),
        Route("/console/login", portal.console_login, methods=["GET"]),
        Route("/console/login", portal.console_sign_in, methods=["POST"]),
        Route("/console/plots/{name}", portal.plot, methods=["GET"]),
        Mount("/static", StaticFiles(directory=Path(__file__).parent / "static"), name="static"),
    ]
    bare = SecurityHeaders(RedirectResponse(f"{PATH}/", 307))
    return [
        Route(PATH, bare),
        Mount(PATH, routes=routes, middleware=[Middleware(SecurityHeaders)]),
    ]
