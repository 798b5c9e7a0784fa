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
``frip_engine.errors.HTTP_ERRORS``.

Timings added to an identification's Table II breakdown (seconds, all server-side):
``network``: from the ASGI app receiving the request (headers parsed) to the handler
start, plus the time to receive the body; ``request_decoding``: JSON, base64 and field
checks; ``queue_wait``: waiting for the engine's thread; ``server_total``: receipt to
response ready. The response's own JSON encoding is in the ``Server-Timing`` header.
A client's round trip minus ``server_total`` is the wire and client-side time.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from frip_engine import __version__, plugins
from frip_engine.errors import (
    AuthError,
    DuplicateSubjectError,
    EmbeddingError,
    ForbiddenError,
    FripError,
    InputError,
    LinkageError,
    MalformedJSONError,
    MediaTypeError,
    RequestError,
    StoreError,
    SubjectError,
    UnknownSubjectError,
    http_error,
)
from frip_engine.private import private_dir
from frip_engine.service.attributes import AttributeStore, check_attributes
from frip_engine.service.audit import AuditLog, Event
from frip_engine.service.consents import Consents
from frip_engine.service.db import Database
from frip_engine.service.decoding import ImageDecoder, decode_b64
from frip_engine.service.limits import (
    MAX_DIMENSION,
    MAX_EMBEDDINGS,
    MAX_IMAGES,
    MAX_PROBE_CLUSTERS,
    MAX_SEQ,
    MAX_TOP_K,
    SUBJECT_PATTERN,
    RateLimiter,
    RefusalBudget,
    read_limited,
)
from frip_engine.service.metrics import Metrics
from frip_engine.service.pool import EnginePool, EngineSlot
from frip_engine.service.replay import ID_PATTERN, ReplayGuard
from frip_engine.service.vendors import Caller, Vendors, claimed_key_id
from frip_engine.validate import check_subject_id, check_threshold

if TYPE_CHECKING:
    from frip_engine.decision import Decision
    from frip_engine.engine import Engine

logger = logging.getLogger("frip_engine.service")
access_logger = logging.getLogger("frip_engine.service.access")
MAX_MESSAGE = 1000  # characters of an error message: what a caller sent is never echoed whole
PARSE_IN_THREAD = 64 * 1024  # bodies from this size are parsed off the event loop
# What a vendor may see of an engine's stats: not its directory or key store location.
SAFE_STATS: tuple[str, ...] = ("engine", "engine_id", "subjects", "blocks", "capacity")
SAFE_STATS += ("dimension", "threshold", "key_version", "he", "plugins")


@dataclass
class ServiceConfig:
    """Where engines live and the limits every request is held to."""

    home: Path
    max_body_bytes: int = 8 * 1024 * 1024
    rate: float = 50.0  # requests per second per API key (0: unlimited)
    burst: int = 100
    replay_window: float = 300.0
    max_images: int = MAX_IMAGES  # per enrolment
    max_embeddings: int = MAX_EMBEDDINGS  # per enrolment
    max_image_pixels: int = 24_000_000
    max_decode_bytes: int = 384 * 1024 * 1024  # estimated peak memory of one image decode
    access_log: bool = True  # one line per request: route and status, never a path


@dataclass
class Context:
    """An authorised request: who sent it, its id, and when it arrived."""

    caller: Caller
    request_id: str | None
    received: float
    handler_start: float
    network: float = 0.0
    decoding: float = 0.0


class Service:
    """The state the handlers share: registries, logs, limits and open engines."""

    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        private_dir(config.home)
        self.db = Database(config.home / "service.sqlite")
        self.vendors = Vendors(self.db)
        self.replay = ReplayGuard(self.db, config.replay_window)
        self.attributes = AttributeStore(self.db)
        self.consents = Consents(self.db)
        self.audit = AuditLog(config.home)
        self.limiter = RateLimiter(config.rate, config.burst)
        self.refusals: RefusalBudget[Event] = RefusalBudget()
        self.decoder = ImageDecoder(config.max_image_pixels, config.max_decode_bytes)
        self.metrics = Metrics()
        self.pool: EnginePool | None = None

    def on_open(self, engine: Engine) -> None:
        """Settle what a crash may have left half-written for this engine."""
        self.attributes.reconcile(engine)
        self.consents.reconcile(engine)
        self.audit.reconcile(engine)

    def engines(self) -> EnginePool:
        assert self.pool is not None, "the service's lifespan has not started"
        return self.pool

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
        self.decoder.close()
        for row, count in self.refusals.drain():
            self.audit.append(suppressed(row, count))
        self.audit.close()
        self.db.close()


# ---------------------------------------------------------------------------- request parts
async def authorise(service: Service, request: Request, engine: str | None = None) -> Context:
    """Key, rate, replay and engine-scope checks, in that order, before any body is read.
    Unauthenticated requests are rate-limited per client address. The database reads and
    the request id's fsync'd reservation run in a worker thread, off the event loop."""
    start = time.perf_counter()
    received = float(request.scope.get("state", {}).get("received", start))
    try:
        caller = await run_in_threadpool(
            service.vendors.authenticate, request.headers.get("authorization")
        )
    except AuthError:
        service.limiter.take(f"address:{request.client.host if request.client else '?'}")
        raise
    request.state.caller = caller  # for the audit row if the request is refused
    service.limiter.take(caller.key_id)
    request_id = request.headers.get("x-request-id")
    if request.method != "GET":
        sent = request.headers.get("x-request-time")
        await run_in_threadpool(service.replay.check, caller.key_id, request_id, sent)
        request.state.reserved = (caller.key_id, request_id)  # released unless it succeeds
    if engine is not None and engine not in caller.engines:
        raise ForbiddenError(f"this API key has no rights to engine {shown(engine)}")
    return Context(caller, request_id, received, start, network=start - received)


async def read_json(service: Service, request: Request, ctx: Context) -> dict[str, Any]:
    """The body as one JSON object (no NaN or Infinity), within the size limit."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "application/json":
        raise MediaTypeError(f"send the body as application/json, not {media or 'nothing'}")
    start = time.perf_counter()
    raw = await read_limited(
        request.stream(), request.headers.get("content-length"), service.config.max_body_bytes
    )
    parsed = time.perf_counter()
    ctx.network += parsed - start

    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    def parse() -> Any:
        try:
            return json.loads(raw, parse_constant=refuse)
        except (ValueError, UnicodeDecodeError) as exc:
            raise MalformedJSONError(f"the body is not valid JSON: {exc}") from None
        except RecursionError:
            raise MalformedJSONError("the body nests JSON too deeply") from None

    body = await run_in_threadpool(parse) if len(raw) >= PARSE_IN_THREAD else parse()
    if not isinstance(body, dict):
        raise MalformedJSONError("the body must be a JSON object")
    ctx.decoding += time.perf_counter() - parsed
    return body


def shown(value: str, limit: int = 64) -> str:
    """A caller's value quoted for a message: at most ``limit`` characters of it."""
    return repr(value if len(value) <= limit else value[:limit] + "...")


def allow_only(body: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        names = ", ".join(shown(name, 32) for name in unknown[:3])
        more = f" and {len(unknown) - 3} more" if len(unknown) > 3 else ""
        raise RequestError(f"unknown field(s) {names}{more}; expected some of {sorted(allowed)}")


def whole_number(value: object, field: str, low: int, high: int) -> int:
    """A JSON or query integer within [low, high], or RequestError (400)."""
    if isinstance(value, str):
        value = int(value) if re.fullmatch(r"[+-]?[0-9]{1,30}", value) else None
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # JSON's 2.0 is the integer 2 (as JSON Schema counts it)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise RequestError(f"'{field}' must be a whole number from {low} to {high}")
    return value


def subject_field(body: dict[str, Any], existing: bool = False) -> str:
    """The body's ``subject_id``: for a subject the request creates, :func:`check_subject`;
    for one it names (``existing``), :func:`existing_subject`."""
    subject = body.get("subject_id")
    if not isinstance(subject, str):
        raise RequestError("'subject_id' (text) is required")
    return existing_subject(subject) if existing else check_subject(subject)


def existing_subject(subject: str) -> str:
    """A subject id that names an enrolled subject: any id the core accepts, since the CLI
    and the Python API enrol ids outside the service's alphabet (accents, spaces, brackets)
    and their vendor must still read, verify and erase them. An id the core refuses can be
    enrolled nowhere: UnknownSubjectError (404), like any other absent subject."""
    try:
        return check_subject_id(subject)
    except SubjectError as exc:
        raise UnknownSubjectError(f"no such subject: {exc}") from None


def check_subject(subject: str) -> str:
    """A subject id the service creates: the core's rule, then the API's narrower URL-safe
    alphabet (a stable contract)."""
    check_subject_id(subject)
    if not SUBJECT_PATTERN.fullmatch(subject):
        raise SubjectError(
            f"subject id {shown(subject, 40)}: use 1-128 letters, digits and '_.@:+-', "
            "starting with a letter or digit"
        )
    return subject


def decode_vector(value: object, field: str) -> np.ndarray:
    """A JSON list of numbers as float64; infinities (JSON 1e400) are EmbeddingError (422)."""
    if not isinstance(value, list) or not all(
        isinstance(x, int | float) and not isinstance(x, bool) for x in value
    ):
        raise RequestError(f"'{field}' must be a list of numbers")
    if not 1 <= len(value) <= MAX_DIMENSION:
        raise EmbeddingError(f"'{field}' must hold 1 to {MAX_DIMENSION} numbers")
    try:
        vector = np.asarray(value, dtype=np.float64)
    except OverflowError:
        raise RequestError(f"'{field}' holds a number too large for a float") from None
    if not np.all(np.isfinite(vector)):
        raise EmbeddingError(f"'{field}' holds an infinite number")
    return vector


@dataclass
class Probe:
    """What identify and verify were given: one image, embedding or vendor template."""

    image: np.ndarray | None = None  # decoded pixels, uint8 BGR (H, W, 3)
    embedding: np.ndarray | None = None


async def read_probe(service: Service, body: dict[str, Any], engine: str) -> Probe:
    given = [k for k in ("image", "embedding", "template") if k in body]
    if len(given) != 1:
        raise RequestError("give exactly one probe: 'image', 'embedding' or 'template'")
    if given[0] == "image":
        return Probe(image=await service.decoder.decode(body["image"], "image"))
    if given[0] == "embedding":
        return Probe(embedding=decode_vector(body["embedding"], "embedding"))
    return Probe(embedding=decode_template(service, body["template"], engine))


def decode_template(service: Service, value: object, engine: str) -> np.ndarray:
    name = service.vendors.adapter_of(engine)
    if name is None:
        raise EmbeddingError(f"engine '{engine}' has no vendor adapter: send 'embedding'")
    payload = decode_b64(value, "template")
    return np.asarray(plugins.create("adapter", name).decode(payload))


def threshold_field(body: dict[str, Any]) -> float | None:
    value = body.get("threshold")
    if value is None:
        return None
    try:
        return check_threshold(value)  # the core's rule, reported as a request error
    except InputError:
        raise RequestError("'threshold' must be a number between -1 and 1") from None


def event(ctx: Context, action: str, engine: str | None, subject: str | None, **out: Any) -> Event:
    return Event(
        actor=ctx.caller.vendor,
        action=action,
        engine=engine,
        subject_id=subject,
        outcome=out,
        key_id=ctx.caller.key_id,
        request_id=ctx.request_id,
    )


@contextlib.contextmanager
def audited(
    service: Service, ctx: Context, action: str, engine: Engine, subject: str, **asked: Any
) -> Iterator[dict[str, Any]]:
    """Bracket an engine change with an intent row and its outcome row (which the body
    fills in); a crash in between leaves the intent for ``AuditLog.reconcile``."""
    opened = event(ctx, action, engine.name, subject, **asked)
    intent = service.audit.intend(opened, engine.profile.engine_id)
    outcome: dict[str, Any] = dict(asked)
    try:
        yield outcome
    except BaseException as exc:
        code = http_error(exc)[1] if isinstance(exc, FripError) else "internal_error"
        failed = event(ctx, action, engine.name, subject, state="failed", reason=code)
        service.audit.settle(intent, failed)
        raise
    service.audit.settle(intent, event(ctx, action, engine.name, subject, **outcome))


def decision_json(decision: Decision, ctx: Context, queued: float) -> dict[str, Any]:
    data = decision.to_dict()
    timings = dict(decision.timings)
    timings["request_decoding"] = ctx.decoding
    timings["network"] = ctx.network
    timings["queue_wait"] = queued
    timings["server_total"] = time.perf_counter() - ctx.received
    data["timings"] = timings
    return data


def timed_json(data: dict[str, Any], ctx: Context, status: int = 200) -> Response:
    """JSON with a Server-Timing header that adds what the body cannot hold: its encoding."""
    start = time.perf_counter()
    body = json.dumps(data, separators=(",", ":")).encode()
    done = time.perf_counter()
    header = f"encode;dur={(done - start) * 1000:.3f}, total;dur={(done - ctx.received) * 1000:.3f}"
    return Response(body, status, {"Server-Timing": header}, media_type="application/json")


# ---------------------------------------------------------------------------- handlers
Handler = Callable[[Service, Request], Awaitable[Response]]


async def health(service: Service, request: Request) -> Response:
    engines = len(service.pool) if service.pool is not None else 0
    return JSONResponse({"status": "ok", "version": __version__, "engines_open": engines})


async def metrics(service: Service, request: Request) -> Response:
    engines = len(service.pool) if service.pool is not None else 0
    return PlainTextResponse(service.metrics.render(engines))


async def openapi(service: Service, request: Request) -> Response:
    from frip_engine.service.openapi import describe

    return JSONResponse(describe(service.config))


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


async def enrol(service: Service, request: Request) -> Response:
    from frip_engine.embeddings import mean_template
    from frip_engine.engine import EnrolItem

    name = request.path_params["engine"]
    ctx = await authorise(service, request, name)
    body = await read_json(service, request, ctx)
    start = time.perf_counter()
    allow_only(body, {"subject_id", "images", "embeddings", "template", "attributes"})
    subject = subject_field(body)
    images = body.get("images", [])
    vectors = body.get("embeddings", [])
    if not isinstance(images, list) or not isinstance(vectors, list):
        raise RequestError("'images' and 'embeddings' must be lists")
    if len(images) > service.config.max_images:
        raise RequestError(f"at most {service.config.max_images} images per subject")
    if len(vectors) > service.config.max_embeddings:
        raise RequestError(f"at most {service.config.max_embeddings} embeddings per subject")
    if not images and not vectors and "template" not in body:
        raise RequestError("give 'images', 'embeddings' or 'template'")
    given = [decode_vector(v, f"embeddings[{i}]") for i, v in enumerate(vectors)]
    if "template" in body:
        given.append(decode_template(service, body["template"], name))
    attributes = check_attributes(body["attributes"]) if "attributes" in body else None
    pictures = [await service.decoder.decode(x, f"images[{i}]") for i, x in enumerate(images)]
    ctx.decoding += time.perf_counter() - start
    slot = await service.engines().get(name)

    def work(engine: Engine) -> list[str]:
        if engine.gallery_store.subject(subject) is not None:
            raise DuplicateSubjectError(f"subject '{subject}' is already enrolled in '{name}'")
        held: list[np.ndarray] = []
        notes: list[str] = []
        try:
            held += [engine.check_embedding(v, "embedding") for v in given]
            labels = [f"embeddings[{i}]" for i in range(len(vectors))]
            labels += ["template"] * (len(given) - len(vectors))
            for i, picture in enumerate(pictures):
                vector, found = engine.embed_image(picture)  # a typed error names the image
                held.append(vector)
                labels.append(f"images[{i}]")
                notes += [f"images[{i}]: {note}" for note in found]
            # the engine's own template checks, run first here so that a refusal names the
            # request's fields (images[i], embeddings[i]) rather than the engine's inputs:
            # cancelling embeddings are 422 bad_embedding, two people 422 not_one_person
            mean_template(held, labels, engine.parts.extractor.same_person_floor)
            if attributes is not None:
                service.attributes.stage(engine, subject, attributes)
            counts = {"images": len(pictures), "embeddings": len(given)}
            try:
                with audited(service, ctx, "enrol", engine, subject, **counts) as outcome:
                    report = engine.enrol_many([EnrolItem(subject, embeddings=list(held))])
                    if subject in report.errors:
                        raise report.errors[subject]
                    outcome["state"] = "enrolled"
            except BaseException:
                service.attributes.drop(engine, subject)
                raise
        finally:
            for vector in held:
                vector.fill(0.0)
        if attributes is not None:  # a crash before this: reconcile commits them at next open
            service.attributes.commit(engine, subject)
        return notes

    notes, _ = await slot.run(work)
    return JSONResponse({"engine": name, "subject_id": subject, "notes": notes}, 201)


async def subject_show(service: Service, request: Request) -> Response:
    name = request.path_params["engine"]
    await authorise(service, request, name)
    subject = existing_subject(request.path_params["subject_id"])
    slot = await service.engines().get(name)

    def work(engine: Engine) -> dict[str, Any]:
        record = engine.gallery_store.subject(subject)
        if record is None:
            raise UnknownSubjectError(f"subject '{subject}' is not enrolled in '{name}'")
        return {
            "engine": name,
            "subject_id": subject,
            "enrolled_at": record.enrolled_at,
            "images": record.images,
            "attributes": service.attributes.read(engine, subject),
        }

    found, _ = await slot.run(work)
    return JSONResponse(found)


async def remove(service: Service, request: Request) -> Response:
    name = request.path_params["engine"]
    ctx = await authorise(service, request, name)
    subject = existing_subject(request.path_params["subject_id"])
    slot = await service.engines().get(name)

    def work(engine: Engine) -> None:
        if engine.gallery_store.subject(subject) is None:
            raise UnknownSubjectError(f"subject '{subject}' is not enrolled in '{name}'")
        with audited(service, ctx, "remove", engine, subject) as outcome:
            engine.remove(subject)
            outcome["state"] = "removed"
        service.attributes.drop(engine, subject)
        service.consents.detach(engine, subject)

    await slot.run(work)
    return JSONResponse({"engine": name, "subject_id": subject, "removed": True})


async def identify(service: Service, request: Request) -> Response:
    name = request.path_params["engine"]
    ctx = await authorise(service, request, name)
    body = await read_json(service, request, ctx)
    start = time.perf_counter()
    allow_only(body, {"image", "embedding", "template", "top_k", "threshold", "probe_clusters"})
    top_k = whole_number(body.get("top_k", 1), "top_k", 1, MAX_TOP_K)
    fan_out = body.get("probe_clusters")
    if fan_out is not None and fan_out != "all":
        fan_out = whole_number(fan_out, "probe_clusters", 1, MAX_PROBE_CLUSTERS)
    threshold = threshold_field(body)
    probe = await read_probe(service, body, name)
    ctx.decoding += time.perf_counter() - start
    slot = await service.engines().get(name)

    def work(engine: Engine) -> Decision:
        decision = engine.identify(
            image=probe.image,
            embedding=probe.embedding,
            top_k=top_k,
            threshold=threshold,
            probe_clusters=fan_out,
        )
        outcome = {"matched": decision.matched, "score": decision.score, "top_k": top_k}
        service.audit.append(event(ctx, "identify", name, decision.subject_id, **outcome))
        return decision

    decision, queued = await slot.run(work)
    return timed_json(decision_json(decision, ctx, queued), ctx)


async def verify(service: Service, request: Request) -> Response:
    name = request.path_params["engine"]
    ctx = await authorise(service, request, name)
    body = await read_json(service, request, ctx)
    start = time.perf_counter()
    allow_only(body, {"subject_id", "image", "embedding", "template", "threshold"})
    subject = subject_field(body, existing=True)
    threshold = threshold_field(body)
    probe = await read_probe(service, body, name)
    ctx.decoding += time.perf_counter() - start
    slot = await service.engines().get(name)

    def work(engine: Engine) -> Decision:
        if engine.gallery_store.subject(subject) is None:
            raise UnknownSubjectError(f"subject '{subject}' is not enrolled in '{name}'")
        decision = engine.verify(
            subject, image=probe.image, embedding=probe.embedding, threshold=threshold
        )
        outcome = {"matched": decision.matched, "score": decision.score}
        service.audit.append(event(ctx, "verify", name, subject, **outcome))
        return decision

    decision, queued = await slot.run(work)
    return timed_json(decision_json(decision, ctx, queued), ctx)


# ---------------------------------------------------------------------------- linkage
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
    slots = {name: await service.engines().get(name) for name in names}
    adapters = {
        name: plugins.create("adapter", adapter)
        for name in names
        if (adapter := service.vendors.adapter_of(name)) is not None
    }
    result = await run_in_threadpool(link, service, ctx, subject, pixels, slots, adapters)
    return JSONResponse(result, 201)


def link(
    service: Service,
    ctx: Context,
    subject: str,
    pixels: np.ndarray,
    slots: dict[str, EngineSlot],
    adapters: dict[str, Any],
) -> dict[str, Any]:
    """Record the consent, enrol everywhere, settle and audit each engine (worker thread)."""
    from frip_engine.linkage import enrol_everywhere

    vendor = ctx.caller.vendor
    present = {
        name: slot.call(partial(slot.engine.gallery_store.subject, subject)) is not None
        for name, slot in slots.items()
    }
    ids = {name: slot.engine.profile.engine_id for name, slot in slots.items()}
    refused = {n: (ids[n], taken(slots[n], pixels)) for n, p in present.items() if p}
    pending = {n: ids[n] for n, p in present.items() if not p}
    service.consents.open(vendor, subject, ctx.request_id, pending, refused)
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
        service.consents.delete(vendor, subject)
        raise LinkageError(f"'{subject}' was enrolled nowhere: {json.dumps(failed)}")
    return {"subject_id": subject, "enrolled": enrolled, "failed": failed}


def taken(slot: EngineSlot, pixels: np.ndarray) -> str:
    """Why linkage does not enrol into an engine already holding the subject id, worded as
    it would be for an absent id where the image fails too: the linker may not read that
    engine, so a face-less or unusable image must not tell it who is enrolled there."""
    extractor = slot.engine.parts.extractor
    try:
        found = slot.call(partial(extractor.extract, pixels))
    except FripError as exc:
        return f"{extractor.name}: {exc}"
    np.asarray(found.embedding).fill(0.0)
    return "already enrolled in this engine"


async def linkage_show(service: Service, request: Request) -> Response:
    ctx = await authorise(service, request)
    subject = existing_subject(request.path_params["subject_id"])
    found = service.consents.get(ctx.caller.vendor, subject)
    if found is None:
        raise UnknownSubjectError(f"no linkage for subject '{subject}'")
    return JSONResponse(found)


async def linkage_revoke(service: Service, request: Request) -> Response:
    from frip_engine.errors import NotFoundError

    ctx = await authorise(service, request)
    subject = existing_subject(request.path_params["subject_id"])
    found = service.consents.get(ctx.caller.vendor, subject)
    if found is None:
        raise UnknownSubjectError(f"no linkage for subject '{subject}'")
    service.consents.mark_revoking(ctx.caller.vendor, subject)
    slots: dict[str, EngineSlot] = {}
    gone: list[str] = []
    for name, row in found["engines"].items():
        if row["state"] == "failed":
            continue  # never enrolled there
        try:
            slots[name] = await service.engines().get(name)
        except NotFoundError:
            gone.append(name)  # the engine itself was deleted: nothing left to erase
    result = await run_in_threadpool(unlink, service, ctx, subject, slots)
    return JSONResponse({**result, "absent": sorted(result["absent"] + gone)})


def unlink(
    service: Service, ctx: Context, subject: str, slots: dict[str, EngineSlot]
) -> dict[str, Any]:
    """Erase the subject from every linked engine; drop the consent once all succeeded."""
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
    service.consents.delete(ctx.caller.vendor, subject)
    return {"subject_id": subject, "removed": result.removed, "absent": result.absent}


async def audit_query(service: Service, request: Request) -> Response:
    ctx = await authorise(service, request)
    engine = request.query_params.get("engine")
    if engine is not None and engine not in ctx.caller.engines | ctx.caller.linkable:
        raise ForbiddenError(f"this API key has no rights to engine {shown(engine)}")
    after = whole_number(request.query_params.get("after", "0"), "after", 0, MAX_SEQ)
    limit = whole_number(request.query_params.get("limit", "100"), "limit", 1, 1000)
    events = service.audit.query(ctx.caller.engines, ctx.caller.vendor, engine, after, limit)
    return JSONResponse({"events": events})


# ---------------------------------------------------------------------------- errors
def error_response(
    code: str,
    message: str,
    status: int,
    request: Request,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """The one JSON error shape; the message is cut to MAX_MESSAGE characters."""
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


def suppressed(row: Event, count: int) -> Event:
    """A refused attempt's row noting how many before it went unwritten (over budget)."""
    return replace(row, outcome={**(row.outcome or {}), "suppressed": count})


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
    if status >= 500:  # the detail (paths, internals) stays in the server's log
        logger.error("%s %s -> %s: %s", request.method, route_of(request.scope), code, exc)
        message = f"the service failed ({code}); the server log has the detail"
    response = error_response(code, message, status, request)
    retry = getattr(exc, "retry_after", None)
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
ROUTES: list[tuple[str, Handler, str]] = [
    ("/v1/health", health, "GET"),
    ("/v1/metrics", metrics, "GET"),
    ("/openapi.json", openapi, "GET"),
    ("/v1/engines", engines_list, "GET"),
    ("/v1/engines/{engine}", engine_show, "GET"),
    ("/v1/engines/{engine}/subjects", enrol, "POST"),
    ("/v1/engines/{engine}/subjects/{subject_id}", subject_show, "GET"),
    ("/v1/engines/{engine}/subjects/{subject_id}", remove, "DELETE"),
    ("/v1/engines/{engine}/identify", identify, "POST"),
    ("/v1/engines/{engine}/verify", verify, "POST"),
    ("/v1/linkage", linkage_create, "POST"),
    ("/v1/linkage/{subject_id}", linkage_show, "GET"),
    ("/v1/linkage/{subject_id}", linkage_revoke, "DELETE"),
    ("/v1/audit", audit_query, "GET"),
]


Endpoint = Callable[[Request], Awaitable[Response]]


def _bind(handler: Handler, service: Service) -> Endpoint:
    async def endpoint(request: Request) -> Response:
        return await handler(service, request)

    endpoint.__name__ = handler.__name__
    return endpoint


def _routes(service: Service) -> list[Route]:
    """One route per path, so a wrong method's 405 lists every method the path allows; a
    path with several methods dispatches to each one's endpoint (named for metrics)."""
    by_path: dict[str, dict[str, Endpoint]] = {}
    for path, handler, method in ROUTES:
        by_path.setdefault(path, {})[method] = _bind(handler, service)
    routes = []
    for path, endpoints in by_path.items():
        if len(endpoints) == 1:
            routes.append(Route(path, *endpoints.values(), methods=list(endpoints)))
            continue

        async def dispatch(
            request: Request, endpoints: dict[str, Endpoint] = endpoints
        ) -> Response:
            endpoint = endpoints["GET" if request.method == "HEAD" else request.method]
            request.scope["endpoint"] = endpoint  # the operation, for metrics and the audit
            return await endpoint(request)

        routes.append(Route(path, dispatch, methods=list(endpoints)))
    return routes


def create_app(config: ServiceConfig) -> Starlette:
    """The ASGI app: routes, JSON errors, and a lifespan that opens and closes engines."""
    from starlette.middleware import Middleware

    service = Service(config)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        service.pool = EnginePool(config.home, service.on_open)
        try:
            yield
        finally:
            service.close()

    routes = _routes(service)
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
