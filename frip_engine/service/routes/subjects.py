"""Subjects: enrol one (from images, embeddings or a vendor template, with attributes),
show one, remove one; each change bracketed in the audit log."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Container
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from frip_engine.errors import DuplicateSubjectError, FripError, UnknownSubjectError
from frip_engine.service.attributes import check_attributes
from frip_engine.service.errors import RequestError, http_error
from frip_engine.service.requests import (
    allow_only,
    audited,
    authorise,
    decode_vector,
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
    pictures: list[Any]  # decoded images
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
    pictures = [await service.decoder.decode(x, f"images[{i}]") for i, x in enumerate(images)]
    ctx.decoding += time.perf_counter() - start
    slot = await service.engines().get(name)
    asked = Enrolment(ctx, subject, given, len(vectors), pictures, attributes)
    notes, _ = await slot.batch(("enrol",), asked, partial(enrol_group, service))
    return JSONResponse({"engine": name, "subject_id": subject, "notes": notes}, 201)


def enrol_group(
    service: Service, engine: Engine, asked: list[Enrolment]
) -> list[list[str] | Exception]:
    """On the engine's thread: the enrolments queued together, committed in one store
    transaction (``Engine.enrol_many``). Each is checked alone first (a refusal is its own
    error); then every one left gets its audit intent, all are committed or none, and each
    is settled by its own outcome. Returns each one's notes on its images, or its error."""
    answers: list[list[str] | Exception] = []
    ready: dict[str, tuple[int, Enrolment, list[np.ndarray]]] = {}  # by subject
    try:
        for index, enrolment in enumerate(asked):
            held: list[np.ndarray] = []
            try:
                answers.append(prepare(service, engine, enrolment, held, ready))
                ready[enrolment.subject] = (index, enrolment, held)
            except Exception as exc:  # this request's own refusal
                for vector in held:
                    vector.fill(0.0)
                answers.append(exc)
        failed = commit_group(service, engine, [(e, held) for _, e, held in ready.values()])
    finally:
        for _, _, held in ready.values():
            for vector in held:
                vector.fill(0.0)
    for subject, error in failed.items():
        answers[ready[subject][0]] = error
    return answers


def prepare(
    service: Service,
    engine: Engine,
    enrolment: Enrolment,
    held: list[np.ndarray],
    taken: Container[str],
) -> list[str]:
    """Check one enrolment and fill ``held`` with its vectors (the caller zeroes them);
    stage its attributes. Returns its notes on its images; raises its refusal (among
    them DuplicateSubjectError if its subject is enrolled or ``taken`` in its batch)."""
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
    for i, picture in enumerate(enrolment.pictures):
        vector, found = engine.embed_image(picture)  # a typed error names the image
        held.append(vector)
        labels.append(f"images[{i}]")
        notes += [f"images[{i}]: {note}" for note in found]
    # the engine's own template checks, run first here so that a refusal names the
    # request's fields (images[i], embeddings[i]) rather than the engine's inputs:
    # cancelling embeddings are 422 bad_embedding, two people 422 not_one_person
    mean_template(held, labels, engine.parts.extractor.same_person_floor)
    if enrolment.attributes is not None:
        service.attributes.stage(engine, subject, enrolment.attributes)
    return notes


def commit_group(
    service: Service, engine: Engine, ready: list[tuple[Enrolment, list[np.ndarray]]]
) -> dict[str, FripError]:
    """Commit the checked enrolments in one store transaction, each bracketed by its own
    audit intent and outcome; then commit the attributes of those enrolled (a crash
    before that: reconcile commits them at next open). Returns the subjects the store
    refused, with their errors; a fault of the commit itself is raised (none enrolled)."""
    from frip_engine.engine import EnrolItem

    failed: dict[str, FripError] = {}
    try:
        with contextlib.ExitStack() as stack:
            outcomes = {
                enrolment.subject: stack.enter_context(
                    audited(
                        service,
                        enrolment.ctx,
                        "enrol",
                        engine,
                        enrolment.subject,
                        images=len(enrolment.pictures),
                        embeddings=len(enrolment.given),
                    )
                )
                for enrolment, _ in ready
            }
            if ready:
                items = [EnrolItem(e.subject, embeddings=list(held)) for e, held in ready]
                failed = engine.enrol_many(items).errors
            for subject, outcome in outcomes.items():
                if subject in failed:  # settled as audited() settles a failure
                    outcome.clear()
                    outcome.update(state="failed", reason=http_error(failed[subject])[1])
                else:
                    outcome["state"] = "enrolled"
    except BaseException:
        for enrolment, _ in ready:
            service.attributes.drop(engine, enrolment.subject)
        raise
    for enrolment, _ in ready:
        if enrolment.attributes is None:
            continue
        if enrolment.subject in failed:
            service.attributes.drop(engine, enrolment.subject)
        else:
            service.attributes.commit(engine, enrolment.subject)
    return failed


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
