"""The portal's pages: registration, a registrant's own page (behind the withdrawal code),
and the operator console (behind an operator key).

Every enrolment and erasure goes through the linkage API's own operations
(``routes.linkage.enrol_linked`` and ``revoke``), acting as the portal's registration-desk
vendor, so the consents, the audit log and each vendor's isolation are the API's.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
import weakref
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response

from frip_engine.errors import FripError, ImageError, NotFoundError
from frip_engine.service.audit import INTENT
from frip_engine.service.errors import (
    LinkageError,
    PayloadTooLargeError,
    RateLimitError,
    http_error,
)
from frip_engine.service.limits import RateLimiter
from frip_engine.service.portal.credentials import (
    SCRYPT_AT_ONCE,
    Operators,
    Registrants,
    Sessions,
)
from frip_engine.service.portal.web import (
    MAX_FORM_BYTES,
    MAX_PHOTOS,
    PATH,
    READS_AT_ONCE,
    SESSION_COOKIE,
    check_csrf,
    client_address,
    cookie,
    has_csrf_cookie,
    photos_of,
    read_form,
    render,
    set_session,
)
from frip_engine.service.routes.linkage import enrol_linked, revoke
from frip_engine.service.routes.meta import health_of
from frip_engine.service.state import Context, Service

# What a person reads for each stable error code of an engine that did not enrol them.
REASONS = {
    "no_face": "no face was found in your photo",
    "several_faces": "your photo shows several faces; use one with only your face",
    "bad_image": "the photo could not be used (not an image, or too small for a face)",
    "subject_exists": "you are enrolled there already",
    "not_one_person": "your photos do not look like one person",
}
GENDERS = ("", "female", "male", "diverse")
# The two sign-in pages: a registrant's withdrawal code, an operator's key.
SIGN_IN = {
    "registrant": {
        "title": "My registration",
        "action": f"{PATH}/manage",
        "field": "code",
        "label": "Withdrawal code",
        "button": "Open",
        "refusal": "This code is not valid. Check it and try again.",
        "landing": f"{PATH}/me",
    },
    "operator": {
        "title": "Operator console",
        "action": f"{PATH}/console/login",
        "field": "key",
        "label": "Operator key",
        "button": "Sign in",
        "refusal": "This is not an operator key.",
        "landing": f"{PATH}/console",
    },
}
T = TypeVar("T")
logger = logging.getLogger("frip_engine.service.portal")
PLOTS = Path(__file__).resolve().parents[3] / "docs"  # a source checkout's benchmark plots
PLOT_NAME = re.compile(r"^[A-Za-z0-9_.-]+\.png$")


def reason(code: str) -> str:
    return REASONS.get(code, f"the engine could not enrol you ({code})")


class Portal:
    """The pages' shared state: the service, the desk the portal links as, its secrets,
    rate limits per client address (pages; code attempts; key attempts)."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.desk = service.config.portal_desk
        if self.desk is not None and self.desk not in service.vendors.names():
            raise NotFoundError(
                f"--portal-desk: vendor '{self.desk}' does not exist (frip vendors create "
                f"{self.desk}, then frip vendors link {self.desk} --engine ...)"
            )
        self.registrants = Registrants(service.db)
        self.operators = Operators(service.db)
        self.sessions = Sessions()
        self.posts = RateLimiter(rate=1.0, burst=30)  # any form, per address
        # codes and keys, per address, apart: wrong codes must not lock operators out
        self.attempts = {kind: RateLimiter(rate=1 / 60, burst=5) for kind in SIGN_IN}
        self.scrypt = asyncio.Semaphore(SCRYPT_AT_ONCE)  # over all clients
        self.reads = asyncio.Semaphore(READS_AT_ONCE)  # form bodies, over all clients
        self.locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    def lock(self, subject: str) -> asyncio.Lock:
        """The lock one registrant's opt-ins and withdrawals take in turn (each reads the
        consent, then changes it)."""
        found = self.locks.get(subject)
        if found is None:
            found = self.locks[subject] = asyncio.Lock()
        return found

    async def hashing(self, work: Callable[[str], T], value: str) -> T:
        """``work(value)``, which runs scrypt, in a worker thread once a slot is free."""
        async with self.scrypt:
            return await run_in_threadpool(work, value)

    # ------------------------------------------------------------------ shared
    def context(self) -> Context:
        """The portal acting as its desk vendor (key id "portal" in the audit log)."""
        assert self.desk is not None
        caller = self.service.vendors.caller(self.desk, "portal")
        now = time.perf_counter()
        return Context(caller, None, now, now)

    def offered(self) -> list[str]:
        """The engines a person may opt into: those linked to (or owned by) the desk."""
        from frip_engine.engine import list_engines

        if self.desk is None:
            return []
        caller = self.service.vendors.caller(self.desk, "portal")
        existing = set(list_engines(self.service.config.home))
        return sorted((caller.engines | caller.linkable) & existing)

    async def posted(self, request: Request, attempt: str | None = None) -> Any:
        """The form of a POST after the rate limits and the CSRF check; a Response to
        send instead when one refuses it."""
        address = client_address(request)
        try:
            self.posts.take(address)
            if attempt is not None:
                self.attempts[attempt].take(address)
        except RateLimitError as exc:
            retry = max(1, round(exc.retry_after))
            page = render(
                request,
                "message.html",
                429,
                title="Too many attempts",
                text=(f"Too many attempts from your address. Try again in {retry} seconds."),
            )
            page.headers["retry-after"] = str(retry)
            return page
        if not has_csrf_cookie(request):
            return self.expired(request)
        try:
            async with self.reads:
                form = await read_form(request, MAX_FORM_BYTES)
        except PayloadTooLargeError:
            text = f"The photos are over {MAX_FORM_BYTES >> 20} MB together: choose smaller ones."
            return render(request, "message.html", 413, title="Photos too large", text=text)
        except FripError as exc:
            status, _ = http_error(exc)
            return render(request, "message.html", status, title="Form refused", text=str(exc))
        return form if check_csrf(request, form) else self.expired(request)

    def expired(self, request: Request) -> Response:
        text = "The form expired or came from another site. Reload the page and try again."
        return render(request, "message.html", 403, title="Form refused", text=text)

    async def decode(self, photos: list[bytes], errors: dict[str, str]) -> list[np.ndarray]:
        """The photos as pixels; a message under ``errors['photo']`` for the first bad one."""
        if not 1 <= len(photos) <= MAX_PHOTOS:
            errors["photo"] = f"Choose 1 to {MAX_PHOTOS} photos of your face."
            return []
        found = []
        for number, data in enumerate(photos, 1):
            try:
                found.append(await self.service.decoder.decode_bytes(data, f"photo {number}"))
            except ImageError as exc:
                errors["photo"] = f"Photo {number} cannot be used: {plain(exc)}"
                return []
        return found

    def chosen(self, form: Any, allowed: list[str], errors: dict[str, str]) -> list[str]:
        names = [n for n in form.getlist("engine") if isinstance(n, str)]
        if not names or len(set(names)) != len(names) or not set(names) <= set(allowed):
            errors["engine"] = "Choose at least one of the services listed."
        return names

    async def enrol(
        self, subject: str, photos: list[np.ndarray], names: list[str], extend: bool
    ) -> dict[str, dict[str, str]]:
        """Enrol into ``names`` through the linkage operation, one photo after another
        for the engines the previous photo failed in. Returns engine -> {state, text}."""
        ctx = self.context()
        outcome: dict[str, dict[str, str]] = {}
        remaining = list(names)
        for pixels in photos:
            try:
                result = await enrol_linked(self.service, ctx, subject, pixels, remaining, extend)
            except LinkageError as exc:
                result = {"enrolled": {}, "codes": exc.codes}
            except FripError as exc:  # e.g. a consent another request changed meanwhile
                result = {"enrolled": {}, "codes": dict.fromkeys(remaining, http_error(exc)[1])}
            extend = extend or bool(result["enrolled"])
            for name in remaining:
                if name in result["enrolled"]:
                    outcome[name] = {"state": "enrolled", "text": "enrolled"}
                else:
                    code = result["codes"].get(name, "internal_error")
                    outcome[name] = {"state": "failed", "text": reason(code)}
            remaining = [n for n in remaining if outcome[n]["state"] != "enrolled"]
            if not remaining:
                break
        return outcome

    async def attributes(self, subject: str, values: dict[str, Any], names: list[str]) -> None:
        """Seal the optional attributes into every engine the person was enrolled in."""
        if not values:
            return
        store = self.service.attributes
        for name in names:
            slot = await self.service.engines().get(name)

            def seal(engine: Any = slot.engine) -> None:
                store.stage(engine, subject, values)
                store.commit(engine, subject)

            await run_in_threadpool(slot.call, seal)

    # ------------------------------------------------------------------ registration
    async def home(self, request: Request) -> Response:
        return render(
            request,
            "register.html",
            engines=self.offered(),
            form={},
            errors={},
            genders=GENDERS,
            desk=self.desk,
        )

    async def register(self, request: Request) -> Response:
        form = await self.posted(request)
        if isinstance(form, Response):
            return form
        offered = self.offered()
        errors: dict[str, str] = {}
        if form.get("consent") != "yes":
            errors["consent"] = "Agree to the consent text to register."
        names = self.chosen(form, offered, errors)
        values = read_attributes(form, errors)
        photos = await self.decode(await photos_of(form), errors)
        try:
            return await self.registered(request, form, offered, names, values, photos, errors)
        finally:
            wipe(photos)

    async def registered(
        self,
        request: Request,
        form: Any,
        offered: list[str],
        names: list[str],
        values: dict[str, Any],
        photos: list[np.ndarray],
        errors: dict[str, str],
    ) -> Response:
        """The registration's result page, or the form again with its errors."""
        if errors or self.desk is None:
            if self.desk is None:
                errors["engine"] = (
                    "This portal has no registration desk (frip serve --portal-desk)."
                )
            kept = {
                "engine": names,
                "age": form.get("age", ""),
                "gender": form.get("gender", ""),
                "consent": form.get("consent") == "yes",
            }
            return render(
                request,
                "register.html",
                400,
                engines=offered,
                form=kept,
                errors=errors,
                genders=GENDERS,
                desk=self.desk,
            )
        subject = "portal-" + secrets.token_hex(12)
        code = await self.hashing(self.registrants.create, subject)  # "issuing"
        try:
            outcome = await self.enrol(subject, photos, names, extend=False)
            enrolled = [n for n, o in outcome.items() if o["state"] == "enrolled"]
            if enrolled:
                await self.attributes(subject, values, enrolled)
                await run_in_threadpool(self.registrants.issued, subject)
        except Exception:
            await self.forget(subject)
            raise
        if not enrolled:
            await run_in_threadpool(self.registrants.delete, subject)
            return render(request, "result.html", 422, outcome=outcome, code=None, qr=None)
        return render(request, "result.html", 201, outcome=outcome, code=code, qr=qr_svg(code))

    async def forget(self, subject: str) -> None:
        """Erase a registration that did not complete (through the linkage revocation:
        every engine it reached, its consent, its attributes) and its code."""
        found = self.service.consents.get(str(self.desk), subject)
        if found is not None:
            await revoke(self.service, self.context(), subject, found)
        await run_in_threadpool(self.registrants.delete, subject)

    async def recover(self) -> list[str]:
        """At start: erase the desk's registrations a crash left without a shown code
        (a row still "issuing", or a portal consent with no code). Returns their ids. An
        erasure that fails is logged (its code, no id) and left for the next start."""
        if self.desk is None:
            return []
        holders = self.registrants.holders()
        orphans = [
            s
            for s in self.service.consents.subjects(self.desk)
            if s.startswith("portal-") and s not in holders
        ]
        stale = sorted({*self.registrants.issuing(), *orphans})
        try:
            if stale:
                for name in self.offered():  # opening settles what the crash left pending
                    await self.service.engines().get(name)
            for subject in stale:
                await self.forget(subject)
        except FripError as exc:  # the service still starts; the next start tries again
            logger.error("portal: interrupted registrations not erased: %s", http_error(exc)[1])
        return stale

    # ------------------------------------------------------------------ a registrant's page
    async def manage(self, request: Request) -> Response:
        return render(request, "sign_in.html", errors={}, page=SIGN_IN["registrant"])

    async def sign_in(self, request: Request) -> Response:
        return await self.open_session(request, "registrant", self.registrants.find)

    async def open_session(
        self, request: Request, kind: str, check: Callable[[str], str | None]
    ) -> Response:
        """Sign a registrant (by code) or an operator (by key) in: the secret is POSTed,
        checked in a worker thread (scrypt), and replaced by a session cookie."""
        form = await self.posted(request, attempt=kind)
        if isinstance(form, Response):
            return form
        page = SIGN_IN[kind]
        secret = form.get(page["field"])
        who = None
        if isinstance(secret, str) and len(secret) <= 128:
            who = await self.hashing(check, secret)
        if who is None:
            errors = {page["field"]: page["refusal"]}
            return render(request, "sign_in.html", 403, errors=errors, page=page)
        self.sessions.close(cookie(request, SESSION_COOKIE))  # this browser's previous one
        response = RedirectResponse(page["landing"], 303)
        set_session(request, response, self.sessions.open(kind, who))
        return response

    def registrant(self, request: Request) -> str | None:
        return self.sessions.get(cookie(request, SESSION_COOKIE), "registrant")

    def signed_out(self, request: Request) -> Response:
        text = "Your session ended. Enter your withdrawal code again."
        return render(
            request, "sign_in.html", 401, errors={"code": text}, page=SIGN_IN["registrant"]
        )

    async def me(
        self,
        request: Request,
        notice: str = "",
        status: int = 200,
        outcome: dict[str, dict[str, str]] | None = None,
        errors: dict[str, str] | None = None,
    ) -> Response:
        subject = self.registrant(request)
        if subject is None or self.desk is None:
            return self.signed_out(request)
        found = self.service.consents.get(self.desk, subject) or {"engines": {}}
        found_events = self.service.audit.query(
            frozenset(), self.desk, subject_id=subject, limit=200
        )
        events = [e for e in found_events if not e["action"].endswith(INTENT)]  # outcomes
        since = {
            e["engine"]: e["at"]
            for e in events
            if e["action"] == "linkage_enrol" and e["outcome"].get("state") == "enrolled"
        }
        held = {
            name: since.get(name, "")
            for name, row in found["engines"].items()
            if row["state"] in ("enrolled", "pending")
        }
        more = [n for n in self.offered() if n not in held]
        return render(
            request,
            "me.html",
            status,
            held=held,
            more=more,
            events=events,
            notice=notice,
            outcome=outcome or {},
            errors=errors or {},
        )

    async def registrant_post(self, request: Request) -> tuple[Any, str] | Response:
        """A signed-in registrant's POST: its form and subject id, or the refusing page."""
        form = await self.posted(request)
        if isinstance(form, Response):
            return form
        subject = self.registrant(request)
        if subject is None or self.desk is None:
            return self.signed_out(request)
        return form, subject

    async def locked_post(
        self,
        request: Request,
        handler: Callable[[Request, Any, str], Awaitable[Response]],
        gone: Callable[[Request], Response],
    ) -> Response:
        """A registrant's POST answered by ``handler`` under that registrant's lock; ``gone``
        answers when a concurrent request withdrew them meanwhile."""
        posted = await self.registrant_post(request)
        if isinstance(posted, Response):
            return posted
        form, subject = posted
        async with self.lock(subject):
            if self.registrant(request) != subject:
                return gone(request)
            return await handler(request, form, subject)

    async def opt_in(self, request: Request) -> Response:
        return await self.locked_post(request, self.opted_in, self.signed_out)

    async def opted_in(self, request: Request, form: Any, subject: str) -> Response:
        errors: dict[str, str] = {}
        held = (self.service.consents.get(str(self.desk), subject) or {"engines": {}})["engines"]
        allowed = [
            n for n in self.offered() if held.get(n, {}).get("state") not in ("enrolled", "pending")
        ]
        names = self.chosen(form, allowed, errors)
        photos = await self.decode(await photos_of(form), errors)
        try:
            if errors:
                return await self.me(request, status=400, errors=errors)
            outcome = await self.enrol(subject, photos, names, extend=True)
        finally:
            wipe(photos)
        return await self.me(request, notice="Your new opt-ins:", outcome=outcome)

    async def withdraw(self, request: Request) -> Response:
        def already(request: Request) -> Response:
            text = "You were already withdrawn from every service."
            return render(request, "message.html", title="Withdrawn", text=text)

        return await self.locked_post(request, self.withdrawn, already)

    async def withdrawn(self, request: Request, form: Any, subject: str) -> Response:
        desk = str(self.desk)
        which = form.get("engine")
        found = self.service.consents.get(desk, subject)
        if found is None or not isinstance(which, str):
            return await self.me(request, status=400, notice="Nothing to withdraw.")
        if which != "all" and which not in found["engines"]:
            return await self.me(request, status=400, notice="You are not enrolled there.")
        try:
            await revoke(
                self.service, self.context(), subject, found, None if which == "all" else {which}
            )
        except FripError as exc:
            text = f"The withdrawal is incomplete ({http_error(exc)[1]}); ask again."
            return await self.me(request, status=503, notice=text)
        if which == "all" or self.service.consents.get(desk, subject) is None:
            await run_in_threadpool(self.registrants.delete, subject)
            self.sessions.close_all("registrant", subject)
            response = render(
                request,
                "message.html",
                title="Withdrawn",
                text="You were erased from every service. Your withdrawal code no longer works.",
            )
            set_session(request, response, None)
            return response
        return await self.me(request, notice=f"You were erased from {which}.")

    async def sign_out(self, request: Request) -> Response:
        form = await self.posted(request)
        if isinstance(form, Response):
            return form
        self.sessions.close(cookie(request, SESSION_COOKIE))
        response = RedirectResponse(f"{PATH}/", 303)
        set_session(request, response, None)
        return response

    # ------------------------------------------------------------------ operator console
    def operator(self, request: Request) -> str | None:
        return self.sessions.get(cookie(request, SESSION_COOKIE), "operator")

    async def console_login(self, request: Request) -> Response:
        return render(request, "sign_in.html", errors={}, page=SIGN_IN["operator"])

    async def console_sign_in(self, request: Request) -> Response:
        return await self.open_session(request, "operator", self.operators.check)

    async def console(self, request: Request) -> Response:
        from frip_engine.engine import list_engines

        name = self.operator(request)
        if name is None:
            return RedirectResponse(f"{PATH}/console/login", 303)
        rows = []
        for engine in list_engines(self.service.config.home):
            try:
                slot = await self.service.engines().get(engine)
                stats, _ = await slot.run(lambda e: e.stats())
            except FripError as exc:
                rows.append({"engine": engine, "error": http_error(exc)[1]})
                continue
            rows.append({k: stats[k] for k in ("engine", "subjects", "blocks", "gallery_bytes")})
        events = self.service.audit.recent(50)
        return render(
            request,
            "console.html",
            operator=name,
            engines=rows,
            events=events,
            health=health_of(self.service),
            plots=plots(),
            desk=self.desk,
        )

    async def plot(self, request: Request) -> Response:
        name = request.path_params["name"]
        if self.operator(request) is None or name not in plots():
            return render(request, "message.html", 404, title="Not found", text="No such plot.")
        return FileResponse(PLOTS / name, media_type="image/png")


def wipe(photos: list[np.ndarray]) -> None:
    """Overwrite decoded photos with zeros once used (a copy left to the garbage
    collector could outlive the request in memory)."""
    for pixels in photos:
        pixels.fill(0)


def plain(exc: FripError) -> str:
    """An error's message without the quoted field name the API puts first."""
    return re.sub(r"^'[^']*': ", "", str(exc))


def read_attributes(form: Any, errors: dict[str, str]) -> dict[str, Any]:
    """The optional age (0-130) and gender; messages under ``errors`` for bad values."""
    values: dict[str, Any] = {}
    age = form.get("age") or ""
    if age:
        # ASCII digits only: str.isdigit also passes "²" (int() fails) and other scripts'
        if not (isinstance(age, str) and re.fullmatch(r"[0-9]{1,3}", age) and int(age) <= 130):
            errors["age"] = "Give your age as a whole number from 0 to 130, or leave it empty."
        else:
            values["age"] = int(age)
    gender = form.get("gender") or ""
    if gender not in GENDERS:
        errors["gender"] = "Choose one of the options."
    elif gender:
        values["gender"] = gender
    return values


def qr_svg(code: str) -> str:
    """The withdrawal code as an inline SVG QR code (no style attribute: the CSP holds)."""
    import segno

    svg: str = segno.make(code, error="m").svg_inline(scale=5, dark="#111", light="#fff")
    return svg


def plots(count: int = 6) -> list[str]:
    """The newest benchmark plots (docs/*.png of a source checkout, not the portal's own
    screenshots), newest first."""
    if not PLOTS.is_dir():
        return []
    found = [
        p
        for p in PLOTS.glob("*.png")
        if PLOT_NAME.fullmatch(p.name) and not p.name.startswith("portal-")
    ]
    found.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    return [p.name for p in found[:count]]
