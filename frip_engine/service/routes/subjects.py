"""Subjects: enrol one (from images, embeddings or a vendor template, with attributes),
show one, remove one; each change bracketed in the audit log."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from frip_engine.errors import DuplicateSubjectError, UnknownSubjectError
from frip_engine.service.attributes import check_attributes
from frip_engine.service.errors import RequestError
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
from frip_engine.service.state import Service

if TYPE_CHECKING:
    from frip_engine.engine import Engine


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
        given.append(vendor_template(service, body["template"], name).decode())
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
            labels = [f"embeddings[{i}]" for i in range(len(vectors))]
            labels += ["template"] * (len(given) - len(vectors))
            held += [
                engine.check_embedding(v, label) for v, label in zip(given, labels, strict=True)
            ]
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
