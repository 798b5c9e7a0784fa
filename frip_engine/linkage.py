"""FRIP function II: one registration image becomes every engine's own template.

Engines from different vendors use different extractors, so a registrant enrolled once at
the registration desk must be converted into each engine's feature format. The image is
decoded once; each distinct extractor configuration runs once; each engine protects,
encrypts and stores its template itself; and the plaintext embeddings this module held
are overwritten with zeros as soon as the engines that need them have encrypted them.
The result names engines, extractors and outcomes, never embeddings.

Where an engine belongs to a vendor with its own template format, the template crosses
into that engine through the vendor's adapter (encoded, then decoded by the adapter), as
it would on the vendor's side. ``remove_everywhere`` is the inverse: revoking consent.
Both take an optional ``call`` that runs each engine's work where that engine lives (the
linkage service runs each engine in its own thread).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from frip_engine.errors import FripError, InputError
from frip_engine.images import load_image
from frip_engine.validate import check_subject_id

if TYPE_CHECKING:
    from frip_engine.contracts import Adapter
    from frip_engine.engine import Engine

T = TypeVar("T")
Call = Callable[["Engine", Callable[[], Any]], Any]


def _direct(engine: Engine, work: Callable[[], T]) -> T:
    """Run an engine's work in the calling thread (the default outside the service)."""
    return work()


@dataclass
class LinkedEnrolment:
    """Where one registrant was enrolled, and where not and why."""

    subject_id: str
    enrolled: dict[str, str] = field(default_factory=dict)  # engine -> extractor
    failed: dict[str, str] = field(default_factory=dict)  # engine -> reason
    causes: dict[str, type[FripError]] = field(default_factory=dict)  # engine -> error class
    notes: dict[str, list[str]] = field(default_factory=dict)  # engine -> extractor notes
    extractions: int = 0  # how many times a model ran (once per distinct extractor setup)


def _extractor_key(engine: Engine) -> str:
    """Engines whose profiles configure the same extractor identically share one run."""
    section = engine.profile.sections.get("extractor", {})
    return json.dumps({"plugin": engine.profile.plugin("extractor"), **section}, sort_keys=True)


def enrol_everywhere(
    engines: Sequence[Engine],
    subject_id: str,
    image: str | Path | bytes | np.ndarray,
    adapters: Mapping[str, Adapter] | None = None,
    call: Call | None = None,
) -> LinkedEnrolment:
    """Enrol ``subject_id`` from one image into every engine, each with its own extractor.

    A failure in one engine (no face for its detector, subject already enrolled, store
    error) is reported for that engine and does not stop the others. ``adapters`` maps an
    engine name to the vendor adapter its template passes through; ``call(engine, work)``
    runs ``work`` for that engine (default: here).
    """
    from frip_engine.engine import EnrolItem

    if not engines:
        raise InputError("give at least one engine to enrol into")
    names = [e.name for e in engines]
    if len(set(names)) != len(names):
        raise InputError(
            f"engines listed twice: {sorted({n for n in names if names.count(n) > 1})}"
        )
    run = call or _direct
    through = adapters or {}
    pixels = load_image(image)
    result = LinkedEnrolment(subject_id)
    groups: dict[str, list[Engine]] = {}
    for engine in engines:
        groups.setdefault(_extractor_key(engine), []).append(engine)
    for members in groups.values():
        extractor = members[0].parts.extractor
        try:
            extraction = run(members[0], partial(extractor.extract, pixels))
        except FripError as exc:
            for engine in members:
                result.failed[engine.name] = f"{extractor.name}: {exc}"
                result.causes[engine.name] = type(exc)
            continue
        result.extractions += 1
        held = [np.asarray(extraction.embedding)]
        try:
            for engine in members:
                try:
                    vector = engine.check_embedding(held[0], f"{extractor.name} embedding")
                    held.append(vector)
                    adapter = through.get(engine.name)
                    if adapter is not None:  # the vendor's format, as its side receives it
                        vector = np.asarray(adapter.decode(adapter.encode(vector)))
                        held.append(vector)
                    item = EnrolItem(subject_id, embeddings=[vector])
                    run(engine, partial(engine.enrol, item))
                except FripError as exc:
                    result.failed[engine.name] = str(exc)
                    result.causes[engine.name] = type(exc)
                    continue
                result.enrolled[engine.name] = str(extractor.name)
                if extraction.notes:
                    result.notes[engine.name] = list(extraction.notes)
        finally:
            _wipe(held)
    return result


@dataclass
class LinkedRemoval:
    """Where a revoked registrant was erased, where it was already absent, and failures."""

    subject_id: str
    removed: list[str] = field(default_factory=list)
    absent: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # engine -> reason


def remove_everywhere(
    engines: Sequence[Engine], subject_id: str, call: Call | None = None
) -> LinkedRemoval:
    """Erase ``subject_id`` from every engine (consent revoked). An engine where it is
    already absent counts as done, so an interrupted revocation can simply be re-run.
    Raises SubjectError, touching no engine, if ``subject_id`` is not a usable id."""
    check_subject_id(subject_id)
    run = call or _direct
    result = LinkedRemoval(subject_id)
    for engine in engines:

        def erase(e: Engine = engine) -> bool:
            if e.gallery_store.subject(subject_id) is None:
                return False
            e.remove(subject_id)
            return True

        try:
            erased = run(engine, erase)
        except FripError as exc:
            result.failed[engine.name] = str(exc)
            continue
        (result.removed if erased else result.absent).append(engine.name)
    return result


def _wipe(arrays: list[np.ndarray]) -> None:
    """Overwrite the plaintext embeddings this module held (a copy left to the garbage
    collector could outlive the enrolment in memory)."""
    for array in arrays:
        if array.flags.writeable:
            array.fill(0.0)
