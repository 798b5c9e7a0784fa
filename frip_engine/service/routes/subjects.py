"""Subjects: enrol one (from images, embeddings or a vendor template, with attributes),
show one, remove one; each change bracketed in the audit log."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Container
from concurrent.futures import Future
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from frip_engine.errors import DuplicateSubjectError, FripError, UnknownSubjectError
from frip_engine.service.attributes import check_attributes
from frip_engine.service.edge import Embedded
from frip_engine.service.errors import RequestError, http_error
from frip_engine.service.pool import Later
from frip_engine.service.requests import (
    allow_only,
    audited,
    authorise,
    decode_vector,
    embed_upload,
    event,
    existing_subject,
    read_json,
    subject_field,
    vendor_template,
)
from frip_engine.service.state import Context, Service

if TYPE_CHECKING:
    from frip_engine.engine import Engine


@dataclass
class Enrolment:
    """One enrolment request, checked and decoded, waiting for the engine's thread."""

    ctx: Context
    subject: str
    given: list[np.ndarray]  # its embeddings, then the vendor template's vector if sent
    embeddings: int  # how many of ``given`` are embeddings
    images: list[Embedded]  # its images, embedded in edge workers
    attributes: dict[str, Any] | None


async def enrol(service: Service, request: Request) -> Response:
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
        given.append(vendor_template(service, body["template"], name).decode())
    attributes = check_attributes(body["attributes"]) if "attributes" in body else None
    embedded = await asyncio.gather(
        *(embed_upload(service, x, f"images[{i}]", name) for i, x in enumerate(images))
    )
    ctx.decoding += time.perf_counter() - start
    slot = await service.engines().get(name)
    asked = Enrolment(ctx, subject, given, len(vectors), list(embedded), attributes)
    group = (service.config.enrol_group_max, service.config.enrol_group_wait_ms / 1000)
    notes, _ = await slot.batch(("enrol",), asked, partial(enrol_group, service), group)
    return JSONResponse({"engine": name, "subject_id": subject, "notes": notes}, 201)


# Enrolment groups of one engine in flight at once where they are deltas (packed CKKS:
# slots reserved, rows added to a block's latest revision, in any order): the next group
# is planned and encrypted while one waits for its worker or commits.
DELTA_GROUPS_AT_ONCE = 2


def enrol_group(
    service: Service, engine: Engine, asked: list[Enrolment]
) -> list[list[str] | Exception] | Later[list[str]]:
    """On the engine's thread: the enrolments queued together. Each is checked alone
    first (a refusal is its own error; a subject enrolled, or in a group in flight, is
    409); every one left gets its audit intent and the group is planned
    (``Engine.prepare_enrolment``) and handed to a worker process to encrypt; the
    engine's thread is free meanwhile. The encrypted blocks are committed (one store
    transaction per block: the usual group, which fills one block, is all committed or
    all absent): a delta group's by the engine's committer thread
    (``Engine.commit_enrolment_later``), while the engine's thread keeps answering from
    the committed blocks, then adopted on it (``Engine.adopt_enrolment``); any other
    group's on the engine's thread. Then each enrolment is settled by its own outcome
    and acknowledged. Delta groups overlap (DELTA_GROUPS_AT_ONCE), others run one at a time.
    Returns (Later) each one's notes on its images, or its error."""
    from frip_engine.engine import EnrolItem

    answers: list[list[str] | Exception] = []
    ready: dict[str, tuple[int, Enrolment, list[np.ndarray]]] = {}  # by subject
    held: list[np.ndarray] = []  # every vector checked, zeroed once planned
    enrolling = service.enrolling.setdefault(engine.name, set())
    try:
        for index, enrolment in enumerate(asked):
            own: list[np.ndarray] = []
            try:
                taken = ready.keys() | enrolling
                answers.append(prepare(service, engine, enrolment, own, taken))
                ready[enrolment.subject] = (index, enrolment, own)
            except Exception as exc:  # this request's own refusal
                answers.append(exc)
            finally:
                held += own
        if not ready:
            return answers
        group = [enrolment for _, enrolment, _ in ready.values()]
        intents = {e.subject: intend(service, engine, e) for e in group}
        try:
            items = [EnrolItem(s, embeddings=list(own)) for s, (_, _, own) in ready.items()]
            prepared = engine.prepare_enrolment(items)
            try:
                encrypted = engine.encrypt_enrolment(prepared)
                committing = engine.commit_enrolment_later(prepared, encrypted)
            except BaseException:
                prepared.discard()
                raise
        except BaseException as exc:
            settle_group(service, engine, group, intents, {}, exc)
            raise
    finally:
        for vector in held:
            vector.fill(0.0)
    enrolling.update(ready)

    def finish(done: Future[Any]) -> list[list[str] | Exception]:
        try:
            try:
                if committing is None:
                    failed = engine.commit_enrolment(prepared, done).errors
                else:
                    failed = engine.adopt_enrolment(prepared, done).errors
            except BaseException as exc:
                settle_group(service, engine, group, intents, {}, exc)
                raise
            settle_group(service, engine, group, intents, failed, None)
        finally:
            enrolling.difference_update(ready)
        for subject, error in failed.items():
            if subject in ready:
                answers[ready[subject][0]] = error
        return answers

    pending = encrypted if committing is None else committing
    return Later(pending, finish, DELTA_GROUPS_AT_ONCE if prepared.deltas else 1)


def intend(service: Service, engine: Engine, enrolment: Enrolment) -> int:
    """The audit intent row of one enrolment about to be committed."""
    asked = {"images": len(enrolment.images), "embeddings": len(enrolment.given)}
    opened = event(enrolment.ctx, "enrol", engine.name, enrolment.subject, **asked)
    return service.audit.intend(opened, engine.profile.engine_id)


def settle_group(
    service: Service,
    engine: Engine,
    group: list[Enrolment],
    intents: dict[str, int],
    failed: dict[str, FripError],
    fault: BaseException | None,
) -> None:
    """Close each enrolment's audit intent with its outcome (enrolled; failed: its own
    error from ``failed``, or the group's ``fault``) and commit or drop its staged
    attributes (a crash before that: reconcile settles both at next open)."""
    for enrolment in group:
        subject = enrolment.subject
        error = failed.get(subject, fault)
        if error is None:
            asked = {"images": len(enrolment.images), "embeddings": len(enrolment.given)}
            outcome = {**asked, "state": "enrolled"}
        else:
            code = http_error(error)[1] if isinstance(error, FripError) else "internal_error"
            outcome = {"state": "failed", "reason": code}
        done = event(enrolment.ctx, "enrol", engine.name, subject, **outcome)
        service.audit.settle(intents[subject], done)
        if enrolment.attributes is None:
            continue
        if error is None:
            service.attributes.commit(engine, subject)
        else:
            service.attributes.drop(engine, subject)


def prepare(
    service: Service,
    engine: Engine,
    enrolment: Enrolment,
    held: list[np.ndarray],
    taken: Container[str],
) -> list[str]:
    """Check one enrolment and fill ``held`` with its vectors (the caller zeroes them);
    stage its attributes. Returns its notes on its images; raises its refusal (among
    them DuplicateSubjectError if its subject is enrolled or ``taken``: in its batch, or
    in a group in flight)."""
    from frip_engine.embeddings import mean_template

    subject = enrolment.subject
    if subject in taken or engine.gallery_store.subject(subject) is not None:
        raise DuplicateSubjectError(f"subject '{subject}' is already enrolled in '{engine.name}'")
    notes: list[str] = []
    labels = [f"embeddings[{i}]" for i in range(enrolment.embeddings)]
    labels += ["template"] * (len(enrolment.given) - enrolment.embeddings)
    held += [
        engine.check_embedding(v, label) for v, label in zip(enrolment.given, labels, strict=True)
    ]
    for i, image in enumerate(enrolment.images):
        held.append(engine.check_embedding(image.vector, f"images[{i}]"))
        image.vector.fill(0.0)
        labels.append(f"images[{i}]")
        notes += [f"images[{i}]: {note}" for note in image.notes]
    # the engine's own template checks, run first here so that a refusal names the
    # request's fields (images[i], embeddings[i]) rather than the engine's inputs:
    # cancelling embeddings are 422 bad_embedding, two people 422 not_one_person
    mean_template(held, labels, engine.parts.extractor.same_person_floor)
    if enrolment.attributes is not None:
        service.attributes.stage(engine, subject, enrolment.attributes)
    return notes


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
