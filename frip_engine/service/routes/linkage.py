"""Opt-in linkage: enrol one consenting registrant's image into several vendors' engines
(each with its own extractor), show that consent, and revoke it (erase everywhere).

A key may link into engines whose owners granted it linkage, and never reads them."""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from frip_engine import plugins
from frip_engine.errors import (
    DuplicateSubjectError,
    FripError,
    NotFoundError,
    StoreError,
    UnknownSubjectError,
)
from frip_engine.service.errors import ForbiddenError, LinkageError, RequestError, http_error
from frip_engine.service.pool import EngineSlot
from frip_engine.service.requests import (
    allow_only,
    audited,
    authorise,
    event,
    existing_subject,
    read_json,
    shown,
    subject_field,
)
from frip_engine.service.state import Context, Service

if TYPE_CHECKING:
    from frip_engine.engine import Engine


async def linkage_create(service: Service, request: Request) -> Response:
    from frip_engine.engine import list_engines

    ctx = await authorise(service, request)
    body = await read_json(service, request, ctx)
    allow_only(body, {"subject_id", "image", "engines"})
    subject = subject_field(body)
    linkable = ctx.caller.engines | ctx.caller.linkable
    names = body.get("engines", sorted(linkable & set(list_engines(service.config.home))))
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise RequestError("'engines' must be a non-empty list of engine names")
    if len(set(names)) != len(names):
        raise RequestError("'engines' lists an engine twice")
    for name in names:
        if name not in linkable:
            raise ForbiddenError(f"this API key has no linkage rights to engine {shown(name)}")
    pixels = await service.decoder.decode(body.get("image"), "image")
    if service.consents.get(ctx.caller.vendor, subject) is not None:
        raise DuplicateSubjectError(f"subject '{subject}' already has a linkage")
    return JSONResponse(await enrol_linked(service, ctx, subject, pixels, names), 201)


async def enrol_linked(
    service: Service,
    ctx: Context,
    subject: str,
    pixels: np.ndarray,
    names: list[str],
    extend: bool = False,
) -> dict[str, Any]:
    """:func:`link` into the engines ``names`` (each opened, with its vendor's adapter),
    run off the event loop; the caller has checked its linkage rights to them."""
    slots = {name: await service.engines().get(name) for name in names}
    adapters = {
        name: plugins.create("adapter", adapter)
        for name in names
        if (adapter := service.vendors.adapter_of(name)) is not None
    }
    return await run_in_threadpool(link, service, ctx, subject, pixels, slots, adapters, extend)


def link(
    service: Service,
    ctx: Context,
    subject: str,
    pixels: np.ndarray,
    slots: dict[str, EngineSlot],
    adapters: dict[str, Any],
    extend: bool = False,
) -> dict[str, Any]:
    """Record the consent (or, ``extend``, add engines to it), enrol everywhere, settle and
    audit each engine (worker thread). The result's ``codes`` map each failed engine to
    the stable code of why (``HTTP_ERRORS``); LinkageError carries them when enrolled
    nowhere (a new consent is then dropped, an extended one kept as it was)."""
    from frip_engine.linkage import enrol_everywhere

    vendor = ctx.caller.vendor
    present = {
        name: slot.call(partial(slot.engine.gallery_store.subject, subject)) is not None
        for name, slot in slots.items()
    }
    ids = {name: slot.engine.profile.engine_id for name, slot in slots.items()}
    why_taken = {n: taken(slots[n], pixels) for n, p in present.items() if p}
    refused = {n: (ids[n], why) for n, (why, _) in why_taken.items()}
    codes = {n: code for n, (_, code) in why_taken.items()}
    pending = {n: ids[n] for n, p in present.items() if not p}
    service.consents.open(vendor, subject, ctx.request_id, pending, refused, extend)
    intents = {
        n: service.audit.intend(event(ctx, "linkage_enrol", n, subject), engine_id)
        for n, engine_id in pending.items()
    }
    failed = {name: why for name, (_, why) in refused.items()}
    enrolled: dict[str, str] = {}
    if pending:
        result = enrol_everywhere(
            [slots[n].engine for n in pending],
            subject,
            pixels,
            adapters=adapters,
            call=lambda engine, work: slots[engine.name].call(work),
        )
        enrolled, failed = result.enrolled, {**failed, **result.failed}
        codes |= {n: http_error(cause)[1] for n, cause in result.causes.items()}
    for name in slots:
        state = "enrolled" if name in enrolled else "failed"
        detail = enrolled.get(name) or failed.get(name, "")
        if name in pending:
            service.consents.settle(vendor, subject, name, state, detail)
        outcome = {"state": state, "extractor": enrolled[name]} if state == "enrolled" else {}
        outcome = outcome or {"state": state, "reason": detail}
        done = event(ctx, "linkage_enrol", name, subject, **outcome)
        if name in intents:
            service.audit.settle(intents[name], done)
        else:
            service.audit.append(done)
    if not enrolled:
        if not extend:
            service.consents.delete(vendor, subject)
        message = f"'{subject}' was enrolled nowhere: {json.dumps(failed)}"
        raise LinkageError(message, codes)
    return {"subject_id": subject, "enrolled": enrolled, "failed": failed, "codes": codes}


def taken(slot: EngineSlot, pixels: np.ndarray) -> tuple[str, str]:
    """Why linkage does not enrol into an engine already holding the subject id, and its
    code, worded as they would be for an absent id where the image fails too: the linker
    may not read that engine, so a face-less or unusable image must not tell it who is
    enrolled there."""
    extractor = slot.engine.parts.extractor
    try:
        found = slot.call(partial(extractor.extract, pixels))
    except FripError as exc:
        return f"{extractor.name}: {exc}", http_error(exc)[1]
    np.asarray(found.embedding).fill(0.0)
    return "already enrolled in this engine", "subject_exists"


async def consent(service: Service, request: Request) -> tuple[Context, str, dict[str, Any]]:
    """The authorised request, the path's subject, and the caller's linkage consent for it
    (UnknownSubjectError, 404, if it has none)."""
    ctx = await authorise(service, request)
    subject = existing_subject(request.path_params["subject_id"])
    found = service.consents.get(ctx.caller.vendor, subject)
    if found is None:
        raise UnknownSubjectError(f"no linkage for subject '{subject}'")
    return ctx, subject, found


async def linkage_show(service: Service, request: Request) -> Response:
    _, _, found = await consent(service, request)
    return JSONResponse(found)


async def linkage_revoke(service: Service, request: Request) -> Response:
    ctx, subject, found = await consent(service, request)
    return JSONResponse(await revoke(service, ctx, subject, found))


async def revoke(
    service: Service,
    ctx: Context,
    subject: str,
    found: dict[str, Any],
    only: set[str] | None = None,
) -> dict[str, Any]:
    """Erase the subject of the consent ``found`` from all its engines (the consent is
    revoked), or from the engines ``only`` (they leave the consent), off the event loop."""
    if only is None:
        service.consents.mark_revoking(ctx.caller.vendor, subject)
    slots: dict[str, EngineSlot] = {}
    gone: list[str] = []
    for name, row in found["engines"].items():
        if row["state"] == "failed" or (only is not None and name not in only):
            continue  # never enrolled there, or staying
        try:
            slots[name] = await service.engines().get(name)
        except NotFoundError:
            gone.append(name)  # the engine itself was deleted: nothing left to erase
    result = await run_in_threadpool(unlink, service, ctx, subject, slots, only is None)
    return {**result, "absent": sorted(result["absent"] + gone)}


def unlink(
    service: Service,
    ctx: Context,
    subject: str,
    slots: dict[str, EngineSlot],
    whole: bool = True,
) -> dict[str, Any]:
    """Erase the subject from every engine of ``slots``; once all succeeded, drop the
    consent (``whole``) or only those engines from it (the consent goes with its last)."""
    from frip_engine.linkage import remove_everywhere

    def call(engine: Engine, work: Callable[[], Any]) -> Any:
        def erase_and_drop() -> Any:
            if not service.consents.holds(ctx.caller.vendor, subject, engine.name):
                # its owner removed it meanwhile: that id is no longer this consent's
                detached = event(ctx, "linkage_revoke", engine.name, subject, state="detached")
                service.audit.append(detached)
                return False
            with audited(service, ctx, "linkage_revoke", engine, subject) as outcome:
                erased = work()
                outcome["state"] = "removed" if erased else "absent"
            service.attributes.drop(engine, subject)
            return erased

        return slots[engine.name].call(erase_and_drop)

    result = remove_everywhere([s.engine for s in slots.values()], subject, call=call)
    if result.failed:  # each failure is in the audit log (state "failed", with its code)
        raise StoreError(f"revocation incomplete, ask again: {json.dumps(result.failed)}")
    if whole:
        service.consents.delete(ctx.caller.vendor, subject)
    else:
        service.consents.drop(ctx.caller.vendor, subject, list(slots))
    return {"subject_id": subject, "removed": result.removed, "absent": result.absent}
