"""What every handler does with a request: authorise it, read its JSON body, check its
fields (subjects, numbers, thresholds, the probe), and audit the change it makes."""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from frip_engine.errors import (
    EmbeddingError,
    FripError,
    InputError,
    SubjectError,
    UnknownSubjectError,
)
from frip_engine.probe import Probe, VendorTemplate, one_probe
from frip_engine.service.audit import Event
from frip_engine.service.decoding import decode_b64
from frip_engine.service.edge import Embedded, ExtractorSpec
from frip_engine.service.errors import (
    AuthError,
    ForbiddenError,
    MalformedJSONError,
    MediaTypeError,
    RequestError,
    http_error,
)
from frip_engine.service.limits import MAX_DIMENSION, SUBJECT_PATTERN, read_limited
from frip_engine.service.state import Context, Service
from frip_engine.validate import check_subject_id, check_threshold

if TYPE_CHECKING:
    from frip_engine.engine import Engine

PARSE_IN_THREAD = 64 * 1024  # bodies from this size are parsed off the event loop
PROBE_FIELDS = ("image", "embedding", "template")


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


MAX_JSON_DIGITS = 4000  # an integer longer than that is refused as malformed JSON


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

    def integer(digits: str) -> int:
        if len(digits.lstrip("-")) > MAX_JSON_DIGITS:  # CPython refuses over 4300
            raise ValueError(f"an integer has over {MAX_JSON_DIGITS} digits")
        return int(digits)

    def parse() -> Any:
        try:
            return json.loads(raw, parse_constant=refuse, parse_int=integer)
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
    enrolled nowhere: UnknownSubjectError (404), like any other absent subject (the
    schema cannot state the core's rule, so a 400 there would break the published
    contract; and an absent subject is the same answer whatever its id)."""
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
    """A JSON list of numbers as float64, (n,); the engine checks the vector itself
    (``frip_engine.embeddings.normalise``: its dimension, finite, not all zeros).

    Raises RequestError (400) for anything but a list of numbers, EmbeddingError (422) for
    a list outside 1 to MAX_DIMENSION numbers."""
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
    return vector


async def read_probe(
    service: Service, body: dict[str, Any], engine: str
) -> tuple[Probe, Embedded | None]:
    """The body's one probe: 'image' (embedded here, in an edge worker, so the probe the
    engine gets is its embedding; also returned), 'embedding' or 'template' (both checked
    and decoded by the engine). Raises ProbeError (400) unless exactly one is given, and
    the image's Base64Error, ImageError, NoFaceError, ... or RequestError."""
    kind = one_probe([name in body for name in PROBE_FIELDS], [f"'{n}'" for n in PROBE_FIELDS])
    value = body[PROBE_FIELDS[kind]]
    if kind == 0:
        found = await embed_upload(service, value, "image", engine)
        return Probe(embedding=found.vector), found
    if kind == 1:
        return Probe.of_kind(kind, decode_vector(value, "embedding")), None
    return Probe.of_kind(kind, vendor_template(service, value, engine)), None


async def embed_upload(service: Service, value: object, field: str, engine: str) -> Embedded:
    """The embedding of the face in a base64 image for ``engine``: its header checked on a
    thread, then decoded and embedded by the engine's extractor in an edge worker process
    (``service.edge``), never on the event loop or the engine's thread. Raises
    Base64Error (400), ImageError or NoFaceError (422), WorkerLostError (503, retry)."""
    data, needed = await service.decoder.checked(value, field)
    spec = ExtractorSpec.of((await service.engines().get(engine)).engine)
    async with service.decoder.ration(needed):
        return await service.edge.embed(spec, data, field)


def vendor_template(service: Service, value: object, engine: str) -> VendorTemplate:
    """A base64 'template' in the format of the engine's vendor adapter. Raises
    EmbeddingError (422) if the engine has none, Base64Error (400)."""
    name = service.vendors.adapter_of(engine)
    if name is None:
        raise EmbeddingError(f"engine '{engine}' has no vendor adapter: send 'embedding'")
    return VendorTemplate(name, decode_b64(value, "template"))


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
