"""What every portal page shares: security headers, CSRF tokens, in-memory form parsing,
per-address rate limits, and rendering.

- Content-Security-Policy: ``default-src 'none'``; scripts, styles, images and forms
  from the portal itself only (images also from ``blob:``, the photo previews); nothing
  may frame a page. No third-party script, font or stylesheet exists to allow.
- CSRF: double-submit, bound to the session. Every page sets a random ``frip_csrf``
  cookie (HttpOnly, SameSite=Strict, path /portal; over https ``__Host-frip_csrf``,
  Secure, path /) and puts HMAC(per-process key, that nonce | the session cookie) in each
  form; a POST without the cookie is refused (403) before its body is read, one whose
  field is not that token after. Signing in or out sets a new nonce and session.
- Uploads are parsed in memory: the body is read whole under a size cap, and the parser's
  spooled files may hold that whole body before they would roll over to a temporary
  file, so a photo is never written to disk.
"""

from __future__ import annotations

import base64
import hmac
import ipaddress
import secrets
from collections.abc import AsyncGenerator, Mapping
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import FormParser, MultiPartException, MultiPartParser
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from frip_engine.service.errors import MediaTypeError, RequestError
from frip_engine.service.limits import read_limited

CSRF_COOKIE = "frip_csrf"
SESSION_COOKIE = "frip_session"
CSRF_KEY = secrets.token_bytes(32)  # binds CSRF tokens to sessions; per process, as they are
PATH = "/portal"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cross-origin-opener-policy": "same-origin",
    "permissions-policy": "camera=(self), microphone=(), geolocation=()",
}
MAX_PHOTOS = 3
READS_AT_ONCE = 4  # form bodies read at once over all clients (each up to MAX_FORM_BYTES)
FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")
MAX_FORM_BYTES = 24 * 1024 * 1024  # a form with three phone-camera photos
TEMPLATES = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=select_autoescape(default=True),
)
# what a registrant reads for the audit log's actions on their registration
TEMPLATES.filters["deed"] = lambda action: {
    "linkage_enrol": "registered",
    "linkage_revoke": "withdrawn",
}.get(action, action)
# an audit time (ISO 8601, UTC) to the minute: "2026-11-30 17:05 UTC"
TEMPLATES.filters["when"] = lambda at: f"{at[:10]} {at[11:16]} UTC" if at else ""


class SecurityHeaders:
    """Pure ASGI middleware: the headers above on every portal response, and no caching
    of pages (a code or a key must not linger in a browser's cache)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k.encode(), v.encode()) for k, v in HEADERS.items()]
                if not scope["path"].startswith(f"{PATH}/static/"):
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = list(message.get("headers", [])) + headers
            await send(message)

        await self.app(scope, receive, sending)


def csrf_token(request: Request) -> str:
    """The token the client's forms carry: HMAC(CSRF_KEY, its CSRF cookie's nonce | its
    session cookie), 43 characters; a new nonce (its cookie set by :func:`render`) when it
    has none. Signing in or out changes the session, so every older page's token dies."""
    nonce = cookie(request, CSRF_COOKIE)
    if len(nonce) != 43:
        nonce = getattr(request.state, "new_csrf", None) or secrets.token_urlsafe(32)
        request.state.new_csrf = nonce
    bound = f"{nonce}|{cookie(request, SESSION_COOKIE)}".encode()
    mac = hmac.digest(CSRF_KEY, bound, "sha256")
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def has_csrf_cookie(request: Request) -> bool:
    """Whether the client holds a CSRF cookie of the right size (a POST without one is
    refused before its body is read)."""
    return len(cookie(request, CSRF_COOKIE)) == 43


def check_csrf(request: Request, form: FormData) -> bool:
    """Whether the form's ``csrf`` field is the token of the client's CSRF cookie and
    session."""
    sent = form.get("csrf")
    return (
        isinstance(sent, str)
        and has_csrf_cookie(request)
        and hmac.compare_digest(sent.encode(), csrf_token(request).encode())
    )


class InMemoryParser(MultiPartParser):
    """Starlette's multipart parser whose spooled files never roll over to disk: the
    body it parses is capped below ``spool_max_size``."""

    spool_max_size = 64 * 1024 * 1024


async def read_form(request: Request, limit: int) -> FormData:
    """The request's form (urlencoded or multipart, at most MAX_PHOTOS files), parsed in
    memory from a body of at most ``limit`` bytes. Raises PayloadTooLargeError (413),
    RequestError (400) for a malformed body."""
    assert limit < InMemoryParser.spool_max_size
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media not in FORM_TYPES:  # refused before its body is read
        raise MediaTypeError("send the page's form")
    body = await read_limited(request.stream(), request.headers.get("content-length"), limit)

    async def stream() -> AsyncGenerator[bytes, None]:
        yield body

    try:
        if media == "multipart/form-data":
            parser = InMemoryParser(request.headers, stream(), max_files=MAX_PHOTOS, max_fields=50)
            return await parser.parse()
    except MultiPartException as exc:
        raise RequestError(f"the form could not be read: {exc.message}") from None
    return await FormParser(request.headers, stream()).parse()


async def photos_of(form: FormData, field: str = "photo") -> list[bytes]:
    """The bytes of the form's chosen files (empty file inputs are skipped), closed after."""
    found = []
    for value in form.getlist(field):
        if isinstance(value, UploadFile):
            data = await value.read()
            await value.close()
            if value.filename or data:
                found.append(data)
    return found


def render(request: Request, template: str, status: int = 200, **values: Any) -> Response:
    """A page from ``templates/``, with the CSRF token its forms carry (and its cookie)."""
    token = csrf_token(request)
    html = TEMPLATES.get_template(template).render(csrf=token, base=PATH, **values)
    response = HTMLResponse(html, status)
    nonce = getattr(request.state, "new_csrf", None)
    if nonce is not None:
        set_cookie(request, response, CSRF_COOKIE, nonce)
    return response


def error_page(
    request: Request, status: int, message: str, headers: Mapping[str, str] | None = None
) -> Response:
    """The portal's page for an error the service's handlers answer (404, 405, 413, a
    500...): HTML with the portal's security headers, in place of the API's JSON."""
    texts = {404: "There is no such page.", 405: "This page does not take that request."}
    title = "Something went wrong" if status >= 500 else "Not found" if status == 404 else "Refused"
    page = render(request, "message.html", status, title=title, text=texts.get(status, message))
    page.headers.update({**(headers or {}), **HEADERS, "cache-control": "no-store"})
    return page


def in_portal(path: str) -> bool:
    return path == PATH or path.startswith(f"{PATH}/")


def cookie_name(request: Request, name: str) -> tuple[str, str]:
    """A cookie's name and path: over https ``__Host-<name>`` on path / (a browser keeps
    such a cookie only from https, for this host alone), else ``<name>`` on /portal."""
    if request.url.scheme == "https":
        return f"__Host-{name}", "/"
    return name, PATH


def cookie(request: Request, name: str) -> str:
    """The value of the portal's cookie ``name`` ("" when absent)."""
    return request.cookies.get(cookie_name(request, name)[0], "")


def set_cookie(request: Request, response: Response, name: str, value: str | None) -> None:
    """Set (or, with None, delete) one of the portal's cookies: HttpOnly, SameSite=Strict,
    Secure over https."""
    key, path = cookie_name(request, name)
    secure = request.url.scheme == "https"
    if value is None:
        response.delete_cookie(key, path=path, secure=secure, httponly=True, samesite="strict")
        return
    response.set_cookie(key, value, path=path, httponly=True, samesite="strict", secure=secure)


def set_session(request: Request, response: Response, token: str | None) -> None:
    """Set (or, with None, clear) the session cookie on a response, with a new CSRF
    nonce: the session's pages have tokens of their own."""
    set_cookie(request, response, SESSION_COOKIE, token)
    set_cookie(request, response, CSRF_COOKIE, secrets.token_urlsafe(32))


def client_address(request: Request) -> str:
    """The key of a client's rate limits: its IPv4 address, or its IPv6 /64 (one host
    commonly holds a whole /64, and could otherwise take a fresh address per attempt)."""
    host = request.client.host if request.client else "?"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return host
