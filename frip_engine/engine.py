"""The orchestrator: one engine = one profile, one encrypted gallery, one key service.

Enrolment: image -> extractor -> normalise -> ``protection.protect`` -> the template's
partition (one for an unrouted clusterer; for a routed one the nearest centroid of the
sealed routing state, founded by ``clusterer.fit``, see :mod:`frip_engine.routing`) ->
encrypted into the partition's open block or a new one (``matcher.add_rows`` /
``encrypt_rows``) -> one gallery-store transaction (block + slot map) -> the plaintext
template is dropped.

Identification (and verification, of the subject's one block): probe -> extractor ->
normalise -> ``protection.protect_probe`` (the template) -> the key service routes it to
its nearest partitions (a routed clusterer only) -> ``matcher.encode_probe`` (the payload,
what an edge device uploads) -> ``matcher.parse_probe`` (parsed) -> ``matcher.score``
on each block, public key only, in worker processes when there are several -> the key
service decrypts the scores, picks the best occupied slots and decides. In the ``shared``
probe mode the payload is the edge's two additive shares: each is scored by worker
processes of its own (matchers A and B) and the key service adds the two results before
it decrypts (:mod:`frip_engine.sharing`).
"""

from __future__ import annotations

import inspect
import logging
import os
import shutil
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import BrokenExecutor, Future
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from functools import cache, partial
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import numpy as np

from frip_engine import hookspecs, plugins
from frip_engine.calibration import engine_threshold, lookup
from frip_engine.committer import CommitJob, CommitStep, Committer, Outcome
from frip_engine.contracts import (
    BlockInfo,
    DecidingExecutor,
    Executor,
    KeyAccess,
    NewSubject,
    ShardStatus,
    SharingMatcher,
    SubjectRecord,
)
from frip_engine.decision import Candidate, Decision, Stopwatch
from frip_engine.embeddings import mean_template, normalise
from frip_engine.errors import (
    CommitOutcomeUnknownError,
    DuplicateSubjectError,
    EngineClosedError,
    EngineExistsError,
    FripError,
    InputError,
    KeyStoreError,
    MissingFileError,
    NotFoundError,
    ProbeError,
    ProfileError,
    StoreError,
    SubjectError,
    UnknownSubjectError,
    WorkerLostError,
    each_or_error,
)
from frip_engine.images import load_image
from frip_engine.keyservice import (
    KeyService,
    Occupants,
    block_arrays,
    he_key_id,
    he_key_version,
    wipe,
)
from frip_engine.parallel import (
    InProcess,
    ParallelScorer,
    WorkerSetup,
    context_fingerprint,
    result,
)
from frip_engine.pemiu import PemiuTemplate, stored_vector
from frip_engine.private import private_dir
from frip_engine.probe import ImageSource, Probe
from frip_engine.profile import (
    Components,
    Profile,
    build,
    engine_dir,
    engines_home,
    load_profile,
    save_profile,
)
from frip_engine.routing import RouterState, plan
from frip_engine.sharing import SharedProbe, SharedScorer
from frip_engine.slots import Reservations, delta_matcher
from frip_engine.uselock import EngineUse
from frip_engine.validate import (
    brief,
    check_subject_id,
    check_threshold,
    check_top_k,
    refuse_special_file,
)
from frip_engine.writelock import write_lock

PROFILE_FILE = "profile.toml"
IN_PROCESS = "local"  # the executor that scores in this process, on this engine's blocks
# one indexed look-up of a subject costs about as much as reading this many rows of the
# whole slot map (SQLite here: ~15 us against ~2 us a row)
LOOKUPS_PER_SCAN = 8
# One enrolment step: (partition, open block or None for a new one, free slots, rows).
Step = tuple[int, BlockInfo | None, list[int], list[int]]
logger = logging.getLogger("frip_engine")
P = ParamSpec("P")
T = TypeVar("T")


@dataclass
class EnrolItem:
    """One subject to enrol from images (paths or bytes) and/or ready embeddings."""

    subject_id: str
    images: list[Path | bytes] = field(default_factory=list)
    embeddings: list[np.ndarray] = field(default_factory=list)


@dataclass
class EnrolReport:
    """What an enrolment did: subjects enrolled, ``failed`` subject -> why (text), the
    notes on their images, and ``errors``: the typed error behind each failure, for
    callers that answer by error class (``Engine.enrol``, the service)."""

    enrolled: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    notes: dict[str, list[str]] = field(default_factory=dict)
    errors: dict[str, FripError] = field(default_factory=dict, repr=False)

    def fail(self, subject: str, error: FripError, why: str | None = None) -> None:
        """Record ``subject`` as not enrolled because of ``error`` (``why``: its text)."""
        self.failed[subject] = str(error) if why is None else why
        self.errors[subject] = error

    def summary(self) -> dict[str, Any]:
        """enrolled, failed and notes, JSON-able."""
        return {"enrolled": self.enrolled, "failed": self.failed, "notes": self.notes}


@dataclass
class EnrolPlan:
    """An enrolment prepared under the write lock (``Engine.prepare_enrolment``): the
    templates, one row of ``matrix`` (float64 (n, dimension), wiped by :meth:`discard`)
    per id, with their vector counts; the allocation ``steps`` (partition, open block or
    None for a new one, slots, rows), the opened routing state and its revision for a
    routed clusterer, and the HE key version it was planned under. ``report`` already
    holds the subjects refused while planning."""

    report: EnrolReport
    ids: list[str]
    counts: list[int]
    matrix: np.ndarray = field(repr=False)
    steps: list[Step]
    router: RouterState | None
    revision: int
    key_version: int
    # whether each step's rows are encrypted alone and added to the block's latest
    # revision at commit (a delta, see Engine._commit_plan), and the releases of the
    # slots reserved for it (frip_engine.slots)
    deltas: bool = False
    releases: list[Callable[[], None]] = field(default_factory=list, repr=False)

    def discard(self) -> None:
        """Wipe the plaintext templates and the routing state; release the reserved slots."""
        self.matrix.fill(0.0)
        if self.router is not None:
            self.router.wipe()
        while self.releases:
            self.releases.pop()()


Progress = Callable[[str], None]
# A probe's embedding once protected (``protection.protect_probe``), before encoding.
Template = np.ndarray | PemiuTemplate
# What a search covers, chosen in one consistent state of the gallery: block -> slot ->
# subject, the candidate blocks, and each probe's (by index) block ids.
Searched = tuple[dict[int, dict[int, str]], list[BlockInfo], dict[int, set[int]]]
# Chooses a search's blocks: given the shared stopwatch and each probe's template.
Scope = Callable[[Stopwatch, Mapping[int, Template]], Searched]
# One probe of Engine.identify_many: a Probe, an image as identify takes it, or a mapping
# {"image": ...} or {"embedding": ...}.
BatchProbe = Probe | Path | str | bytes | np.ndarray | Mapping[str, Any]


# identify_many's probes pass through _search this many at a time: memory stays bounded
# however many probes a call has (each chunk is still scored as one batch).
BATCH_CHUNK = 64


def _not_stored(error: FripError) -> str:
    """Why a subject is not reported enrolled: "not stored: ..." unless the store lost
    its connection during the COMMIT, when it may be stored after all."""
    if isinstance(error, CommitOutcomeUnknownError):
        return f"outcome unknown (check with frip subjects): {error}"
    return f"not stored: {error}"


def _batch_item(item: object) -> Probe:
    """The Probe of one item of a batch (ProbeError for a malformed one)."""
    if isinstance(item, Mapping):
        unknown = sorted(repr(key) for key in set(item) - {"image", "embedding"})
        if unknown:
            raise ProbeError(
                f"a probe mapping takes 'image' or 'embedding', not {', '.join(unknown)}"
            )
        return Probe(image=item.get("image"), embedding=item.get("embedding"))
    return Probe.of(item)  # type: ignore[arg-type]  # Probe checks the image's type


def _batch_items(probes: object, embeddings: object) -> list[object]:
    """The items of identify_many: ``probes`` as they are, or each embedding (a row of a 2-d
    matrix, or an item of a sequence) as ``{"embedding": row}``. Raises InputError for both
    or neither, or a single probe (str, bytes, Path, mapping, array) given as ``probes``,
    or a single vector given as ``embeddings``."""
    if (probes is None) == (embeddings is None):
        raise InputError("give exactly one of probes (images) or embeddings")
    single = (str, bytes, bytearray, memoryview, Path, Mapping, np.ndarray, Probe)
    if probes is not None:
        if isinstance(probes, single) or not isinstance(probes, Iterable):
            raise InputError(
                "identify_many takes a sequence of probes; for one probe use identify "
                f"(got {type(probes).__name__})"
            )
        return list(probes)
    if isinstance(embeddings, np.ndarray):
        if embeddings.ndim == 2:
            return [{"embedding": row} for row in embeddings]
        raise InputError(
            "identify_many's embeddings are a 2-d matrix (one row per probe) or a sequence "
            f"of vectors, not an array of shape {embeddings.shape}; for one probe use identify"
        )
    if isinstance(embeddings, single) or not isinstance(embeddings, Iterable):
        raise InputError(
            "identify_many's embeddings are a 2-d matrix (one row per probe) or a sequence "
            f"of vectors, not {type(embeddings).__name__}"
        )
    return [{"embedding": vector} for vector in embeddings]


def _enrol_image(image: object) -> Path | bytes:
    """One image given to ``Engine.enrol``: a path (Path or str) that exists, or an image
    file's bytes (a bytearray or memoryview taken as its bytes). Raises InputError for
    anything else, MissingFileError for a path that does not exist."""
    if isinstance(image, bytes | bytearray | memoryview):
        return bytes(image)
    if not isinstance(image, str | Path):
        raise InputError(
            "an image is a path, str or bytes (an image file's) given one per argument, "
            f"not {type(image).__name__}: enrol('id', 'a.jpg', 'b.jpg'); for pixels or "
            "vectors give embeddings=[...]"
        )
    refuse_special_file(image, f"image {image}")
    if not Path(image).is_file():
        raise MissingFileError(f"image {image} does not exist")
    return Path(image)


def _vectors(embeddings: object) -> list[np.ndarray]:
    """The vectors of ``Engine.enrol``'s ``embeddings=``: an iterable of vectors or a 2-d
    matrix (one row each). Raises InputError for one vector (a 1-d array or a list of
    numbers) or anything else."""
    refused = InputError(
        "embeddings= is a list of vectors (or a 2-d matrix, one row each); for one "
        f"vector give embeddings=[vector], not {type(embeddings).__name__}"
    )
    if isinstance(embeddings, np.ndarray):
        if embeddings.ndim != 2:
            raise refused
        return list(embeddings)
    if isinstance(embeddings, str | bytes | Mapping) or not isinstance(embeddings, Iterable):
        raise refused
    vectors = list(embeddings)
    if any(isinstance(value, int | float | np.number) for value in vectors):
        raise refused
    return vectors


def _only(results: Sequence[Decision | FripError]) -> Decision:
    """The decision on a search's one probe, or its error raised."""
    (answer,) = results
    if isinstance(answer, FripError):
        raise answer
    return answer


class Engine:
    def __init__(
        self, profile: Profile, directory: Path, parts: Components, use: EngineUse
    ) -> None:
        self.profile = profile
        self._use = use  # the shared lock saying this handle has the engine open
        self.directory = directory
        self.parts = parts
        self.gallery_store = parts.gallery_store
        self._blocks: dict[int, tuple[int, Any]] = {}
        self._scorer: Executor | None = None  # scores the gallery ([executor], built lazily)
        self._sharers: SharedScorer | None = None  # the shared probe mode's two matchers
        # prepared enrolments' encryption, when the executor scores in this process
        self._encryptor: ParallelScorer | None = None
        self._committer: Committer | None = None  # delta enrolments' commits (a thread)
        self._reserved = Reservations(self.gallery_store)  # slots of enrolments in flight
        self._slot_map: tuple[tuple[tuple[int, int], ...], Occupants] | None = None
        self.key_version = 0
        self._closed = False
        self._follow_keys()

    def _check_open(self) -> None:
        """Raise EngineClosedError after :meth:`close`: a closed engine neither reopens its
        gallery nor restarts its worker processes."""
        if self._closed:
            raise EngineClosedError(
                f"engine '{self.name}' is closed: open it again (open_engine({self.name!r})) "
                "to use it"
            )

    def _follow_keys(self) -> None:
        """Use the HE key version the gallery is on. After a rotation (by this object or
        another one, in any process) every object built from the retired key goes: the key
        service, the matcher, the loaded blocks and the worker processes. Raises
        EngineClosedError after :meth:`close`."""
        self._check_open()
        version = int(self.gallery_store.meta()["key_version"])
        if version == self.key_version:
            return
        public = self.gallery_store.public_context(version)
        self._use_keys(
            KeyService(
                self.parts.he_backend, self.parts.key_store, self.profile.engine_id, version, public
            )
        )

    def _use_keys(self, service: KeyService) -> None:
        self.key_version = service.key_version
        self.key_service = service
        self.matcher = self.parts.he_backend.matcher(
            service.public_context, self.parts.pemiu_block_size
        )
        self._blocks.clear()
        self._stop_workers()

    def _stop_workers(self) -> None:
        for pool in (self._scorer, self._encryptor, self._sharers):
            if pool is not None:
                pool.close()
        self._scorer = self._encryptor = self._sharers = None

    # ----------------------------------------------------------------- lifecycle
    @classmethod
    def create(cls, profile: Profile, home: Path | None = None) -> Engine:
        """Validate the profile, make the key pair and an empty gallery, then save the profile.

        The engine is made in a private folder beside its final place, whose write lock is
        taken first, and renamed into place at once: a folder under its final name always
        has its creator's lock held until the engine is whole (or the creator died), so
        another process can wait for it (:func:`frip_engine.api.open_engine`) and nothing
        another process made is ever deleted here. Raises EngineExistsError when the
        engine exists or another process got there first."""
        directory = engine_dir(profile.name, home)
        if directory.exists():
            raise EngineExistsError(f"engine '{profile.name}' already exists at {directory}")
        for name, engine_id in engine_ids(home).items():
            if engine_id == profile.engine_id:
                raise ProfileError(
                    f"engine '{name}' already has engine id {profile.engine_id}: two engines "
                    "with one id share the key store's keys; remove the id from the profile "
                    "(a fresh one is made)"
                )
        parts = build(profile)
        default_threshold(profile, parts)  # an uncalibrated combination is refused here
        private_dir(directory.parent)
        staging = Path(tempfile.mkdtemp(prefix=f".{profile.name}.creating-", dir=directory.parent))
        with write_lock(staging, profile.name, wait=0):  # the lock moves with the folder
            try:
                os.rename(staging, directory)  # atomic; refused when the name is taken
            except OSError:
                shutil.rmtree(staging, ignore_errors=True)
                parts.gallery_store.close()
                raise EngineExistsError(
                    f"engine '{profile.name}' already exists at {directory} (another process "
                    "created it first)"
                ) from None
            use = None
            try:
                use = EngineUse(directory, profile.name)
                parts.key_store.bind(str(directory))
                parts.gallery_store.bind(str(directory))
                parts.key_store.init(profile.engine_id)
                service = KeyService.generate(
                    parts.he_backend, parts.key_store, profile.engine_id, 1
                )
                parts.gallery_store.initialise(
                    {
                        "engine_id": profile.engine_id,
                        "name": profile.name,
                        "dimension": str(parts.dimension),
                        "he": parts.he_backend.description,
                        "key_version": "1",
                        **template_record(parts),
                    }
                )
                parts.gallery_store.put_public_context(1, service.public_context)
                save_profile(profile, directory / PROFILE_FILE)  # its presence marks a whole engine
            except BaseException:
                parts.gallery_store.close()
                if use is not None:
                    use.release()
                shutil.rmtree(directory, ignore_errors=True)  # ours: we renamed it into place
                raise
        return cls(profile, directory, parts, use)

    @classmethod
    def open(cls, name: str, home: Path | None = None) -> Engine:
        directory = engine_dir(name, home)
        if not (directory / PROFILE_FILE).is_file():
            known = ", ".join(list_engines(home)) or "none"
            raise NotFoundError(f"engine '{name}' does not exist (engines: {known})")
        use = EngineUse(directory, name)  # before the profile: a migration may be switching it
        try:
            profile = load_profile(directory / PROFILE_FILE)
            parts = build(profile)
        except BaseException:
            use.release()
            raise
        try:
            return cls._checked(name, profile, directory, parts, use)
        except BaseException:
            parts.gallery_store.close()  # a refused engine leaves no connection open
            use.release()
            raise

    @classmethod
    def _checked(
        cls, name: str, profile: Profile, directory: Path, parts: Components, use: EngineUse
    ) -> Engine:
        """The engine, once its gallery is found to be the one its profile describes."""
        parts.key_store.bind(str(directory))
        parts.gallery_store.bind(str(directory))
        meta = parts.gallery_store.meta()
        if meta.get("engine_id") != profile.engine_id:
            raise ProfileError(
                f"engine '{name}': the gallery belongs to engine id {meta.get('engine_id')}, "
                f"the profile says {profile.engine_id}"
            )
        if int(meta["dimension"]) != parts.dimension:
            raise ProfileError(
                f"engine '{name}': the gallery holds {meta['dimension']}-d templates but the "
                f"profile's extractor '{parts.extractor.name}' gives {parts.dimension}-d"
            )
        for key, value in template_record(parts).items():
            if meta.get(key, value) != value:  # galleries older than a key did not record it
                raise ProfileError(
                    f"engine '{name}': the gallery was enrolled with {key} '{meta[key]}' but the "
                    f"profile says '{value}'; its templates cannot be compared with probes made "
                    "that way: restore the profile, or enrol into a new engine"
                )
        return cls(profile, directory, parts, use)

    def close(self) -> None:
        """Stop the worker processes, close the gallery store, drop the loaded blocks and
        release the engine's in-use lock (frip_engine.uselock);
        closing twice is harmless. ``with`` an engine closes it on leaving the block; every
        operation after that raises EngineClosedError."""
        self._closed = True
        if self._committer is not None:
            self._committer.close()  # its commits finish first: a submitted one is whole
            self._committer = None
        self._stop_workers()
        self.gallery_store.close()
        self._blocks.clear()
        self._use.release()

    def __enter__(self) -> Engine:
        self._check_open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def name(self) -> str:
        return self.profile.name

    @property
    def threshold(self) -> float:
        """The decision threshold: the profile's, else the calibrated one for this engine's
        extractor, protection and block size (ProfileError when neither exists)."""
        return default_threshold(self.profile, self.parts)[0]

    # ----------------------------------------------------------------- embeddings
    def embed_image(self, source: ImageSource) -> tuple[np.ndarray, list[str]]:
        """Extract and normalise the embedding of the face in one image (a file, its bytes,
        or pixels already decoded by ``load_image``)."""
        extraction = self.parts.extractor.extract(load_image(source))
        return self.check_embedding(extraction.embedding), extraction.notes

    def check_embedding(self, vector: object, what: str = "embedding") -> np.ndarray:
        if isinstance(vector, PemiuTemplate):
            raise InputError(
                f"{what} is already protected (pe-miu, block_size {vector.block_size}): give "
                "the raw embedding; the engine protects it with a fresh permutation"
            )
        return normalise(vector, self.parts.extractor.dimension, what)

    # ----------------------------------------------------------------- enrolment
    def enrol(
        self,
        subject: EnrolItem | str,
        *images: str | Path | bytes,
        embeddings: Sequence[np.ndarray] | np.ndarray = (),
    ) -> EnrolReport:
        """Enrol one subject: ``enrol("alice", "a.jpg", "b.jpg")`` (image paths or bytes,
        and/or ``embeddings=[vector, ...]`` or a 2-d matrix, one row per vector), or
        ``enrol(EnrolItem(...))``. A bytearray or memoryview is taken as its bytes; decoded
        pixels are not enrolled (save them as an image file, or give their embedding).

        The subject's images and embeddings become one template (their mean). Returns the
        report (notes on the images); raises the subject's own error when it is not
        enrolled: InputError for an image that is no path, str or bytes, or embeddings
        that are one vector instead of a list; MissingFileError for an image path that does
        not exist,
        DuplicateSubjectError, NotOnePersonError, SubjectError (no usable image), ...
        """
        if isinstance(subject, EnrolItem):
            if images or _vectors(embeddings):
                raise InputError("give images and embeddings inside the EnrolItem, not beside it")
            item = subject
        else:
            item = EnrolItem(
                subject, images=list(map(_enrol_image, images)), embeddings=_vectors(embeddings)
            )
        report = self.enrol_many([item])
        if item.subject_id in report.errors:
            raise report.errors[item.subject_id]
        return report

    def enrol_many(
        self, items: Iterable[EnrolItem], progress: Progress | None = None
    ) -> EnrolReport:
        """Enrol subjects; each is committed whole or not at all, and failures are reported.
        Raises InputError, enrolling nobody, when an item is not an EnrolItem.

        Where the HE backend adds rows as deltas (packed CKKS) and the subjects fit in
        open blocks, only planning (slots reserved) and each commit hold the write lock;
        the encryption runs outside it, so writers in several threads, processes or
        hosts encrypt at once. A new block is encrypted and committed under the lock."""
        self._check_open()
        report, templates = self._templates(items, progress)
        if not templates:
            return report
        with self._writing():
            prepared = self._plan(report, templates)
            # a new block is made by one writer at a time, under the lock, so that writers
            # pack as one would: the next sees it and fills its free slots
            if not prepared.deltas or any(info is None for _, info, _, _ in prepared.steps):
                try:
                    blocks = self._encrypted_blocks(
                        prepared.matrix, prepared.steps, prepared.deltas
                    )
                    self._commit_plan(prepared, blocks)
                finally:
                    prepared.discard()
                return report
        try:  # slots reserved: encrypt outside the lock, commit each block under it
            blocks = self._encrypted_blocks(prepared.matrix, prepared.steps, deltas=True)
            self._commit_plan(prepared, blocks, lock=True)
        finally:
            prepared.discard()
        return report

    def prepare_enrolment(self, items: Iterable[EnrolItem]) -> EnrolPlan:
        """The first of the three steps of an enrolment whose encryption runs off this
        thread (the service's group commit): check and protect each item's template and
        allocate slots under the write lock, which is released on return. Then
        :meth:`encrypt_enrolment` (worker process) and :meth:`commit_enrolment` (this
        thread again). Meanwhile the engine keeps answering from the committed blocks.
        Where the HE backend adds rows as deltas (packed CKKS) the plan's slots are
        reserved until it is committed or discarded, and its rows are added to each
        block's latest revision at commit, so other writes in between do not refuse it;
        otherwise a write to the same blocks in between makes the commit refuse them
        (retry).
        Raises InputError for an item that is no EnrolItem, KeyStoreError (nothing
        planned)."""
        self._check_open()
        report, templates = self._templates(items, None)
        with self._writing():
            return self._plan(report, templates)

    def encrypt_enrolment(self, prepared: EnrolPlan) -> Future[list[tuple[str, bytes]]]:
        """Each step's block of ``prepared``, encrypted in a worker process that holds the
        public context only (an open block is read from the store there, its rows added):
        (fingerprint of the public context used, serialised block) per step. Safe to
        wait for on any thread; a dead worker fails the future."""
        if not prepared.steps:
            nothing: Future[list[tuple[str, bytes]]] = Future()
            nothing.set_result([])
            return nothing
        encryptor = self._encrypting()
        jobs = [
            (
                None if info is None or prepared.deltas else (info.block_id, info.revision),
                prepared.matrix[rows],
                slots,
            )
            for _, info, slots, rows in prepared.steps
        ]
        return encryptor.encrypt_steps(jobs, prepared.key_version)

    def commit_enrolment(
        self, prepared: EnrolPlan, blocks: Future[list[tuple[str, bytes]]]
    ) -> EnrolReport:
        """On the engine's thread: commit the encrypted ``blocks`` of ``prepared``, each
        block with its slot-map rows in one store transaction; a block the store refuses
        (changed meanwhile where the plan is no delta, keys rotated) leaves its subjects
        absent and failed in the report, as does a failed encryption for all of them. A
        delta plan's rows are added to each block's latest revision, so writes made
        meanwhile do not refuse it. Wipes the plan and releases its slots."""
        try:
            encrypted = self._awaited(prepared, blocks)
            if encrypted is not None:
                with self._writing():
                    self._commit_plan(prepared, encrypted)
            return prepared.report
        finally:
            prepared.discard()

    def commit_enrolment_later(
        self, prepared: EnrolPlan, blocks: Future[list[tuple[str, bytes]]]
    ) -> Future[list[Outcome]] | None:
        """On the engine's thread: hand the commit of a delta plan (``prepared.deltas``)
        to the engine's committer thread (:mod:`frip_engine.committer`), which adds each
        step's encrypted rows (``blocks``) to its block's latest revision and writes it,
        while this thread keeps answering from the committed blocks. Then
        :meth:`adopt_enrolment` on this thread with the returned future. None (nothing
        handed off: use :meth:`commit_enrolment`) for a plan that is no delta or has no
        steps. A block removed or re-keyed meanwhile fails the whole group."""
        if not prepared.deltas or not prepared.steps:
            return None
        steps = [
            CommitStep(
                partition,
                info,
                [
                    NewSubject(prepared.ids[r], s, prepared.counts[r])
                    for r, s in zip(rows, slots, strict=True)
                ],
                None if info is None else self._blocks.get(info.block_id),
            )
            for partition, info, slots, rows in prepared.steps
        ]
        if self._committer is None:
            self._committer = Committer(
                self.name,
                self.directory,
                self.profile.plugin("gallery_store"),
                self.profile.params("gallery_store"),
            )
        job = CommitJob(steps, prepared.key_version, self.matcher, self.matcher.slots)
        return self._committer.submit(job, blocks)

    def adopt_enrolment(self, prepared: EnrolPlan, committed: Future[list[Outcome]]) -> EnrolReport:
        """On the engine's thread, once ``committed`` (:meth:`commit_enrolment_later`) is
        done: swap each committed sum into this process's block cache (no 67 MB read
        back; a block it does not hold stays out), report each subject enrolled or failed
        with its step's error (a failed encryption: all of them), emit ``frip_enrolled``.
        Wipes the plan and releases its slots."""
        try:
            outcomes = self._awaited(prepared, committed)
            if outcomes is None:
                return prepared.report
            for (_, _, slots, rows), outcome in zip(prepared.steps, outcomes, strict=True):
                if isinstance(outcome, FripError):
                    for r in rows:
                        prepared.report.fail(prepared.ids[r], outcome, _not_stored(outcome))
                    continue
                block_id, revision, loaded = outcome
                held = self._blocks.get(block_id)
                if held is not None and held[0] < revision and loaded is not None:
                    self._blocks[block_id] = (revision, loaded)  # as a reload would give
                for r, slot in zip(rows, slots, strict=True):
                    self._report_enrolled(prepared.report, prepared.ids[r], block_id, slot)
            return prepared.report
        finally:
            prepared.discard()

    def _awaited(self, prepared: EnrolPlan, done: Future[T]) -> T | None:
        """``done``'s result; None when it failed, every subject of ``prepared`` then
        failed with its error (a dead encryption worker: WorkerLostError). Any other
        exception is a fault of ours and propagates (the service's 500), never passed off
        as a lost worker to retry."""
        try:
            return done.result()
        except (FripError, BrokenExecutor) as exc:
            error = exc if isinstance(exc, FripError) else self._lost_encryptor(exc)
            for subject in prepared.ids:
                prepared.report.fail(subject, error, _not_stored(error))
            return None

    def _report_enrolled(self, report: EnrolReport, subject: str, block_id: int, slot: int) -> None:
        """Report ``subject`` enrolled in ``block_id`` at ``slot`` and tell the plugins."""
        report.enrolled.append(subject)
        _emit(
            hookspecs.frip_enrolled,
            engine=self.name,
            subject_id=subject,
            block_id=block_id,
            slot=slot,
        )

    def _lost_encryptor(self, exc: Exception) -> WorkerLostError:
        """The encryption worker died (``exc``): drop its pool, so that the next prepared
        enrolment starts a new one, and say so as the error of the enrolments it held."""
        if self._encryptor is not None:
            self._encryptor.close()
            self._encryptor = None
        return WorkerLostError(
            f"the worker process encrypting this enrolment ended ({type(exc).__name__}) "
            "before it was committed; nothing was stored: retry"
        )

    def _templates(
        self, items: Iterable[EnrolItem], progress: Progress | None
    ) -> tuple[EnrolReport, dict[str, tuple[np.ndarray, int]]]:
        """Each new subject's stored template and vector count; the report of those
        refused. Raises InputError, enrolling nobody, when an item is not an EnrolItem."""
        items = list(items)
        for index, item in enumerate(items):
            if not isinstance(item, EnrolItem):
                raise InputError(
                    f"enrol_many takes EnrolItem(subject_id, images=[...], embeddings=[...]) "
                    f"items; item {index} is {type(item).__name__}: nobody was enrolled"
                )
        report = EnrolReport()
        templates: dict[str, tuple[np.ndarray, int]] = {}
        bad: dict[int, SubjectError] = {}
        for index, item in enumerate(items):  # before any store query sees an id
            try:
                check_subject_id(item.subject_id)
            except SubjectError as exc:
                bad[index] = exc
        existing = set(
            self._enrolled([item.subject_id for i, item in enumerate(items) if i not in bad])
        )
        for index, item in enumerate(items):
            if progress:
                progress(item.subject_id)
            try:
                if index in bad:
                    raise bad[index]
                if item.subject_id in existing or item.subject_id in templates:
                    raise DuplicateSubjectError(f"subject '{item.subject_id}' is already enrolled")
                vectors, labels, notes = self._template_inputs(item)
                if notes:
                    report.notes[item.subject_id] = notes
                floor = self.parts.extractor.same_person_floor
                template = self.parts.protection.protect(mean_template(vectors, labels, floor))
                templates[item.subject_id] = (stored_vector(template), len(vectors))
            except FripError as exc:
                report.fail(item.subject_id, exc)
        return report, templates

    def _enrolled(self, ids: Sequence[str]) -> list[str]:
        """Those of ``ids`` the gallery holds, in order: looked up one by one (an indexed
        query each) when they are few beside the gallery, else from one read of the whole
        slot map, so a chunk of a bulk enrolment costs in proportion to the chunk."""
        held = sum(info.used for info in self.gallery_store.blocks())
        if len(ids) * LOOKUPS_PER_SCAN < held:
            return [s for s in ids if self.gallery_store.subject(s) is not None]
        found = {subject.subject_id for subject in self.gallery_store.subjects()}
        return [s for s in ids if s in found]

    def _template_inputs(self, item: EnrolItem) -> tuple[list[np.ndarray], list[str], list[str]]:
        """The subject's unit vectors, a label for each, and the notes on its images."""
        vectors = [
            self.check_embedding(e, f"embedding of {item.subject_id}") for e in item.embeddings
        ]
        labels = [f"embedding {i}" for i in range(1, len(vectors) + 1)]
        notes: list[str] = []
        errors: list[str] = []
        for number, image in enumerate(item.images, 1):
            label = f"image bytes {number}" if isinstance(image, bytes) else str(image)
            try:
                vector, image_notes = self.embed_image(image)
            except FripError as exc:
                errors.append(str(exc))
                continue
            vectors.append(vector)
            labels.append(label)
            notes.extend(f"{label}: {note}" for note in image_notes)
        notes.extend(f"skipped: {error}" for error in errors)
        if not vectors:
            raise SubjectError(
                "no usable image or embedding: " + ("; ".join(errors) or "none given")
            )
        return vectors, labels, notes

    def _plan(self, report: EnrolReport, templates: dict[str, tuple[np.ndarray, int]]) -> EnrolPlan:
        """Under the write lock: drop the subjects another writer enrolled meanwhile, choose
        each template's partition and allocate slots (open blocks first, then new ones)."""
        for subject_id in self._enrolled(list(templates)):
            del templates[subject_id]
            report.fail(
                subject_id, DuplicateSubjectError(f"subject '{subject_id}' is already enrolled")
            )
        ids = list(templates)
        if not ids:
            nothing = np.zeros((0, self.parts.dimension))
            return EnrolPlan(report, [], [], nothing, [], None, 0, self.key_version)
        matrix = np.stack([templates[s][0] for s in ids])
        router, revision, partitions = self._plan_partitions(matrix)
        by_partition: dict[int, list[int]] = defaultdict(list)
        for row, partition in enumerate(partitions.tolist()):
            by_partition[int(partition)].append(row)
        # a routed plan commits a routing revision of its own: it stays one whole write
        deltas = delta_matcher(self.matcher) is not None and router is None
        prepared = EnrolPlan(
            report, ids, [], matrix, [], router, revision, self.key_version, deltas
        )
        try:
            for partition, rows in by_partition.items():
                for info, slots, chunk in self._allocate(partition, rows):
                    prepared.steps.append((partition, info, slots, chunk))
                    if info is not None:
                        prepared.releases.append(self._reserved.hold(info.block_id, slots))
        except BaseException:
            prepared.discard()
            raise
        prepared.counts = [templates[s][1] for s in ids]
        return prepared

    def _plan_partitions(self, matrix: np.ndarray) -> tuple[RouterState | None, int, np.ndarray]:
        """Each template's partition; for routed clusterers also the opened routing state."""
        clusterer = self.parts.clusterer
        if not clusterer.routed:
            return None, 0, np.zeros(matrix.shape[0], dtype=np.int64)
        current = self.gallery_store.read_routing()
        router = self.key_service.open_router(current[1] if current else None)
        if router is not None:
            router.check(self.parts.dimension, self.parts.extractor.name)
        size = clusterer.max_size or self.matcher.slots
        router, partitions = plan(router, matrix, clusterer, size, self.parts.extractor.name)
        return router, current[0] if current else 0, partitions

    def _commit_plan(
        self, prepared: EnrolPlan, blocks: Iterable[tuple[str, bytes]], lock: bool = False
    ) -> None:
        """Commit each step of ``prepared`` with its block from ``blocks`` (in step order),
        block and slot-map rows in one store transaction per block; a block the store
        refuses leaves its subjects absent and failed in the report, the others stand.
        With ``lock`` each commit takes the write lock itself (the blocks are encrypted
        outside it); else the caller holds it.

        A delta plan's block of an open block's step holds the new rows alone (zero in
        every other slot): it is added to the block's latest revision, read under the
        lock, and that sum is committed (:meth:`_with_delta`)."""
        ids, router, revision = prepared.ids, prepared.router, prepared.revision
        for (partition, info, slots, chunk), (fingerprint, encrypted) in zip(
            prepared.steps, blocks, strict=True
        ):
            data = prepared.matrix[chunk]
            added = [
                NewSubject(ids[r], s, prepared.counts[r]) for r, s in zip(chunk, slots, strict=True)
            ]
            routing = None
            if router is not None:
                router.add(partition, data)
                routing = (revision, self.key_service.seal_router(router))
            # a delta is loaded before the lock: only what depends on the latest revision
            # (read it, add, serialise, commit) is done holding it
            delta = self.matcher.load(encrypted) if prepared.deltas and info else None
            with self._writing() if lock else nullcontext():
                expected, loaded, moved = 0 if info is None else info.revision, None, None
                if delta is not None and info is not None:
                    merged = self._with_delta(info, delta)  # a damaged block raises
                    if merged is None:
                        moved = StoreError(
                            f"block {info.block_id} was removed or re-encrypted while this "
                            "enrolment was encrypted; nothing was written, retry"
                        )
                    else:
                        expected, loaded, encrypted = merged
                try:
                    if moved is not None:
                        raise moved
                    block_id = self.gallery_store.commit_block(
                        None if info is None else info.block_id,
                        expected,
                        partition,
                        self.key_version,
                        self.matcher.slots,
                        encrypted,
                        added=added,
                        routing=routing,
                        context_sha256=fingerprint,
                    )
                except FripError as exc:  # this chunk is absent; the others stand
                    for subject in added:
                        prepared.report.fail(subject.subject_id, exc, _not_stored(exc))
                    if router is not None:
                        router.add(partition, data, sign=-1)
                    continue
                self._recache(block_id, encrypted, loaded)
            revision += routing is not None
            for subject in added:
                self._report_enrolled(prepared.report, subject.subject_id, block_id, subject.slot)

    def _encrypted_blocks(
        self, matrix: np.ndarray, steps: Sequence[Step], deltas: bool = False
    ) -> Iterator[tuple[str, bytes]]:
        """Each step's block in order, as (fingerprint of the public context that encrypted
        it, serialised block): an open block with its rows added, or a new block; with
        ``deltas`` every step's rows alone (the delta its commit adds). With several
        workers the new blocks of a bulk enrolment are encrypted in the worker
        processes, a few ahead, while this process commits the earlier ones."""
        fresh = [i for i, (_, info, _, _) in enumerate(steps) if info is None or deltas]
        scorer = self._parallel() if self._workers() > 1 and len(fresh) > 1 else None
        mine = context_fingerprint(self.key_service.public_context)
        ahead: dict[int, Future[tuple[str, bytes]]] = {}
        queue = iter(fresh if scorer else ())
        for i, (_, info, slots, chunk) in enumerate(steps):
            while scorer and len(ahead) < 2 * self._workers():
                j = next(queue, None)
                if j is None:
                    break
                ahead[j] = scorer.encrypt(matrix[steps[j][3]], steps[j][2], self.key_version)
            if i in ahead:
                yield result(ahead.pop(i))
            elif info is None or deltas:
                yield mine, self.matcher.dump(self.matcher.encrypt_rows(matrix[chunk], slots))
            else:
                block = self.matcher.add_rows(self._load_block(info), matrix[chunk], slots)
                yield mine, self.matcher.dump(block)

    def _with_delta(self, info: BlockInfo, delta: Any) -> tuple[int, Any, bytes] | None:
        """Under the write lock: block ``info.block_id`` at its latest revision with the
        rows of ``delta`` (a loaded block of those rows alone, in slots reserved for
        them) added, as (that revision, the loaded sum, the sum serialised); None when the
        block is gone or moved to another HE key meanwhile. The addition commutes, so
        deltas encrypted in parallel may land in any order; the slots were reserved, so
        the rows of two writers never meet in one slot. A block that cannot be read
        (damaged) raises its StoreError/CorruptionError."""
        latest = next((b for b in self.gallery_store.blocks() if b.block_id == info.block_id), None)
        if latest is None or latest.key_version != self.key_version:
            return None
        adder = delta_matcher(self.matcher)
        if adder is None:
            raise StoreError(f"{self.parts.he_backend.description} adds no enrolment deltas")
        merged = adder.add_delta(self._load_block(latest), delta)
        return latest.revision, merged, self.matcher.dump(merged)

    def _recache(self, block_id: int, committed: bytes, loaded: Any = None) -> None:
        """Under the write lock, right after this engine committed ``committed`` as block
        ``block_id``: a block this process holds in its cache is replaced by the committed
        bytes, loaded (or ``loaded``, the block they serialise), at the revision the store
        now records (what a reload would read, without reading 67 MB back); a block it
        does not hold stays out (no memory grows)."""
        if self._blocks.pop(block_id, None) is None:
            return
        info = next((b for b in self.gallery_store.blocks() if b.block_id == block_id), None)
        if info is not None:
            block = self.matcher.load(committed) if loaded is None else loaded
            self._blocks[block_id] = (info.revision, block)

    def _allocate(
        self, partition: int, rows: list[int]
    ) -> Iterable[tuple[BlockInfo | None, list[int], list[int]]]:
        """Yield (block or None for a new one, free slots, rows) until every row has a slot."""
        occupied: dict[int, set[int]] | None = None  # read once, if a block has room
        pending = list(rows)
        for info in self.gallery_store.blocks():
            if not pending:
                return
            if info.partition != partition or info.key_version != self.key_version:
                continue
            if info.used >= info.capacity:
                continue  # full: no need to ask for its slots or reservations
            if occupied is None:
                occupied = defaultdict(set)
                for subject in self.gallery_store.subjects():
                    occupied[subject.block_id].add(subject.slot)
            taken = occupied[info.block_id] | self._reserved.taken(info.block_id)
            free = [s for s in range(info.capacity) if s not in taken]
            if free:
                take = pending[: len(free)]
                pending = pending[len(take) :]
                yield info, free[: len(take)], take
        capacity = self.matcher.slots
        while pending:
            take, pending = pending[:capacity], pending[capacity:]
            yield None, list(range(len(take))), take

    # ----------------------------------------------------------------- matching
    def _load_block(self, info: BlockInfo) -> Any:
        return self._block_at(info.block_id, info.revision)

    def _block_at(self, block_id: int, revision: int) -> Any:
        """Block ``block_id`` at ``revision``, loaded, from this process's cache or the
        store. Raises StoreError if the store holds another revision (it moved: retry)."""
        cached = self._blocks.get(block_id)
        if cached is not None and cached[0] == revision:
            return cached[1]
        found, data = self.gallery_store.read_block(block_id)
        if found != revision:
            raise StoreError(f"block {block_id} changed during this identification; retry")
        block = self.matcher.load(data)
        self._blocks[block_id] = (found, block)
        return block

    def _occupants(self, blocks: Sequence[BlockInfo] | None = None) -> Occupants:
        """Block -> slot -> subject, with each block's slot arrays for the key service's
        selection. Every slot-map change (enrolment, erasure) and every re-keying bumps
        its block's revision, so the map (and its arrays) is re-read only when some
        block's revision moved, in this process or another; never mutate it."""
        version = tuple((b.block_id, b.revision) for b in blocks or self.gallery_store.blocks())
        if self._slot_map is None or self._slot_map[0] != version:
            table: dict[int, dict[int, str]] = defaultdict(dict)
            for subject in self.gallery_store.subjects():
                table[subject.block_id][subject.slot] = subject.subject_id
            self._slot_map = (version, Occupants(table))
        return self._slot_map[1]

    def _template(self, watch: Stopwatch, probe: Probe) -> tuple[Template, list[str]]:
        """The probe's template (its unit embedding, protected by the protection's
        ``protect_probe``) and the notes on its image."""
        with watch.stage("feature_extraction"):
            if probe.image is not None:
                vector, notes = self.embed_image(probe.image)
            else:
                vector, notes = self.check_embedding(probe.vector(), "probe embedding"), []
            return self.parts.protection.protect_probe(vector), notes

    def identify(
        self,
        probe: Probe | ImageSource | None = None,
        *,
        image: ImageSource | None = None,
        embedding: object | None = None,
        top_k: int = 1,
        threshold: float | None = None,
        probe_clusters: int | str | None = None,
    ) -> Decision:
        """1:N search: the best ``top_k`` registrants and whether the best passes the threshold.

        The probe is a :class:`~frip_engine.probe.Probe` or an image (a path, str, bytes or
        pixels) as the first argument, or ``image=`` or ``embedding=`` (exactly one; else
        ProbeError). A routed clusterer searches the ``probe_clusters`` nearest partitions
        (default: the profile's; "all": every one, identical to exhaustive search).
        """
        self._check_open()
        check_top_k(top_k)
        if threshold is not None:
            check_threshold(threshold)
        scope = partial(self._gallery_scope, self._fan_out(probe_clusters))
        given = Probe.of(probe, image, embedding)
        return _only(self._search([given], scope, top_k, threshold))

    def _fan_out(self, probe_clusters: int | str | None) -> int | None:
        if probe_clusters is None:
            return self.parts.clusterer.probe_clusters
        if probe_clusters == "all":
            return None
        if (
            isinstance(probe_clusters, bool)
            or not isinstance(probe_clusters, int)
            or probe_clusters < 1
        ):
            raise SubjectError(f"probe_clusters must be 'all' or >= 1, not {brief(probe_clusters)}")
        return probe_clusters

    def verify(
        self,
        subject_id: str,
        probe: Probe | ImageSource | None = None,
        *,
        image: ImageSource | None = None,
        embedding: object | None = None,
        threshold: float | None = None,
    ) -> Decision:
        """1:1: is the probe (given as to :meth:`identify`) the named subject? Raises
        UnknownSubjectError (not found) if it is not enrolled."""
        self._check_open()
        check_subject_id(subject_id)
        if threshold is not None:
            check_threshold(threshold)
        given = Probe.of(probe, image, embedding)
        scope = partial(self._subject_scope, subject_id)
        return _only(self._search([given], scope, 1, threshold))

    def identify_many(
        self,
        probes: Sequence[BatchProbe] | None = None,
        *,
        embeddings: Sequence[object] | np.ndarray | None = None,
        top_k: int = 1,
        threshold: float | None = None,
        probe_clusters: int | str | None = None,
    ) -> list[Decision | FripError]:
        """:meth:`identify` for a batch of probes, scored together: each block is loaded
        and passed over once for all of them (the fast scorer's batch kernel reads each
        gallery tile once for the batch), and the key service unwraps the secret key once.
        Every decision equals the one :meth:`identify` gives for that probe.

        ``probes``: images as :meth:`identify` takes them (a path, its bytes, decoded
        pixels), or mappings ``{"image": ...}`` / ``{"embedding": ...}``; or else
        ``embeddings``: raw embedding vectors (a sequence, or a 2-d matrix with one row per
        probe). Probes are scored :data:`BATCH_CHUNK` at a time. Returns one entry per
        probe, in order: its
        Decision, or the typed error (a FripError, not raised) of a probe that failed
        alone (unreadable image, no face, bad embedding, unscorable probe), so a caller
        answers each probe by its own error class. Bad arguments of the whole call
        (top_k, threshold, probe_clusters, both or neither of probes/embeddings, one probe
        or vector as the batch) raise InputError; a fault of the engine itself (store, key,
        worker) raises for all.
        """
        self._check_open()
        check_top_k(top_k)
        if threshold is not None:
            check_threshold(threshold)
        scope = partial(self._gallery_scope, self._fan_out(probe_clusters))
        items = _batch_items(probes, embeddings)
        answers: list[Decision | FripError] = []
        for start in range(0, len(items), BATCH_CHUNK):
            chunk = each_or_error(_batch_item, items[start : start + BATCH_CHUNK])
            answers.extend(self._search(chunk, scope, top_k, threshold))
        return answers

    def _search(
        self,
        probes: Sequence[Probe | FripError],
        scope: Scope,
        top_k: int,
        threshold: float | None,
    ) -> list[Decision | FripError]:
        """The one search path of :meth:`identify`, :meth:`identify_many` and
        :meth:`verify`. Each probe becomes its template; in one consistent state of the
        gallery ``scope`` picks each probe's blocks, which are loaded once; each template
        becomes its payload, every block is scored once for all the probes that want it,
        and the key service decides them all under one key unwrap.

        Returns one entry per probe, in order: its Decision, or its own error (unchanged
        for a FripError given in ``probes``). A fault of the engine itself (store, key,
        worker) or of ``scope`` (an unknown subject) raises for all.
        """
        results: list[Decision | FripError | None] = [
            probe if isinstance(probe, FripError) else None for probe in probes
        ]
        watches = [Stopwatch() for _ in probes]
        templates: dict[int, tuple[Template, list[str]]] = {}
        for i, probe in enumerate(probes):
            if isinstance(probe, Probe):
                try:
                    templates[i] = self._template(watches[i], probe)
                except FripError as exc:
                    results[i] = exc
        if not templates:
            return [r for r in results if r is not None]
        limit = self.threshold if threshold is None else threshold
        shared = Stopwatch()  # the stages done once for all probes, added to each one's own
        with self.gallery_store.snapshot():  # slot map and blocks from one consistent state
            self._follow_keys()
            occupants, blocks, wanted = scope(shared, {i: t for i, (t, _) in templates.items()})
            needed = set().union(*wanted.values())
            loaded = self._load_blocks(shared, [b for b in blocks if b.block_id in needed])
        payloads: dict[int, bytes] = {}
        for i, (template, _) in templates.items():
            try:
                with watches[i].stage("probe_encryption"):
                    payloads[i] = self.matcher.encode_probe(template)  # what an edge uploads
            except FripError as exc:
                results[i] = exc
        # each probe's own stages (extraction, encryption; then decryption and selection)
        own = {i: sum(watch.seconds.values()) for i, watch in enumerate(watches)}
        deciding = self._deciding() if loaded else None  # no block: no executor needed
        if deciding is None:  # score ciphertexts back here, decided by this key service
            with shared.stage("distance_derivation"):
                scored = self._score_batch(loaded, payloads, wanted)
            decided: dict[int, list[tuple[int, bytes]]] = {}
            for i, entry in scored.items():
                if isinstance(entry, FripError):
                    results[i] = entry
                else:
                    decided[i] = entry
            answers = dict(
                zip(
                    decided,
                    self.key_service.decide_many(list(decided.values()), occupants, top_k),
                    strict=True,
                )
            )
        else:  # decided where scored: top-k lists back here
            answers = self._decide_where_scored(
                *deciding, shared, loaded, payloads, wanted, occupants, top_k
            )
        for i, answer in answers.items():  # and the key service's stages
            if not isinstance(answer, FripError):
                own[i] += answer[1].get("decryption", 0.0) + answer[1].get("minimum_selection", 0.0)
        for i, answer in answers.items():
            if isinstance(answer, FripError):
                results[i] = answer
                continue
            candidates, timings = answer
            watches[i].add(shared.seconds)
            watches[i].add(timings)
            if len(templates) > 1:  # the other probes' own stages, done one after another
                watches[i].add({"batch_wait": sum(own.values()) - own[i]})
            infos = [info for info, _ in loaded if info.block_id in wanted[i]]
            results[i] = self._conclude(
                watches[i],
                candidates,
                limit,
                infos,
                occupants,
                len(payloads[i]),
                templates[i][1],
                batch_size=len(templates),
            )
        return [r for r in results if r is not None]

    def _gallery_scope(
        self, fan_out: int | None, watch: Stopwatch, templates: Mapping[int, Template]
    ) -> Searched:
        """What identification searches: every occupied block, and for each template (by
        probe index) under a routed clusterer only the blocks of its ``fan_out`` nearest
        partitions (None: every one)."""
        every = self.gallery_store.blocks()
        occupants = self._occupants(every)
        blocks = [b for b in every if occupants.get(b.block_id)]
        wanted = {i: {b.block_id for b in blocks} for i in templates}
        current = self.gallery_store.read_routing() if self.parts.clusterer.routed else None
        if current is not None and fan_out is not None:
            with watch.stage("routing"):
                plain = [t for t in templates.values() if isinstance(t, np.ndarray)]
                assert len(plain) == len(templates)  # build refuses routing with pe-miu
                routes = self.key_service.route_many(current[1], plain, fan_out)
            for i, routed in zip(templates, routes, strict=True):
                partitions = set(routed)
                wanted[i] = {b.block_id for b in blocks if b.partition in partitions}
        return occupants, blocks, wanted

    def _subject_scope(
        self, subject_id: str, watch: Stopwatch, templates: Mapping[int, Template]
    ) -> Searched:
        """What verification searches: the subject's block, as holding the subject alone.
        Raises UnknownSubjectError if it is not enrolled."""
        record = self.gallery_store.subject(subject_id)
        if record is None:
            raise UnknownSubjectError(
                f"subject '{subject_id}' is not enrolled in engine '{self.name}'"
            )
        block = next(b for b in self.gallery_store.blocks() if b.block_id == record.block_id)
        occupants = {record.block_id: {record.slot: subject_id}}
        return occupants, [block], {i: {block.block_id} for i in templates}

    def _deciding(self) -> tuple[DecidingExecutor, KeyAccess] | None:
        """The executor and the key access it needs when it decides where it scores
        (:class:`DecidingExecutor`: its own trusted key-service processes reach the key
        store); None when this engine's key service decides: another executor, the
        shared probe mode, or a key store that lives in this process only."""
        if isinstance(self.matcher, SharingMatcher) or getattr(
            self.parts.key_store, "process_local", False
        ):
            return None
        executor = self._executor()
        if not isinstance(executor, DecidingExecutor):
            return None
        access = KeyAccess(
            self.profile.plugin("key_store"),
            self.profile.params("key_store"),
            self.profile.engine_id,
        )
        return executor, access

    def _decide_where_scored(
        self,
        executor: DecidingExecutor,
        access: KeyAccess,
        shared: Stopwatch,
        blocks: Sequence[tuple[BlockInfo, Any]],
        payloads: dict[int, bytes],
        wanted: dict[int, set[int]],
        occupants: Mapping[int, Mapping[int, str]],
        top_k: int,
    ) -> dict[int, tuple[list[Candidate], dict[str, float]] | FripError]:
        """Each probe's candidates (or its error), decided by the executor's key services
        where its blocks were scored: their (block, slot) top-k lists become subject ids
        here, where the slot map is. The call's time beyond the slowest decision is the
        ``distance_derivation`` stage."""
        order = list(payloads)
        index = {i: n for n, i in enumerate(order)}
        jobs = [
            (info, [index[i] for i in order if info.block_id in wanted[i]]) for info, _ in blocks
        ]
        if isinstance(occupants, Occupants):
            slots = occupants.slot_arrays()
        else:
            slots = {b: block_arrays(by_slot)[0] for b, by_slot in occupants.items()}
        started = time.perf_counter()
        shortlists = executor.decide_many(
            [payloads[i] for i in order], [job for job in jobs if job[1]], slots, top_k, access
        )
        seconds = time.perf_counter() - started
        answers: dict[int, tuple[list[Candidate], dict[str, float]] | FripError] = {}
        deciding = 0.0
        for i, shortlist in zip(order, shortlists, strict=True):
            if isinstance(shortlist, FripError):
                answers[i] = shortlist
                continue
            found, timings = shortlist
            deciding = max(deciding, sum(timings.values()))
            answers[i] = (
                [Candidate(occupants[b][slot], score) for score, (b, slot) in found],
                timings,
            )
        shared.add({"distance_derivation": max(0.0, seconds - deciding)})
        return answers

    def _score_batch(
        self,
        blocks: Sequence[tuple[BlockInfo, Any]],
        payloads: dict[int, bytes],
        wanted: dict[int, set[int]],
    ) -> dict[int, list[tuple[int, bytes]] | FripError]:
        """Each probe's (block id, encrypted scores) over the blocks it wants, every block
        scored once for all its probes by the engine's executor (in this process, worker
        processes, a cluster: ``[executor]``); a probe that cannot be parsed or scored
        gets its error. The shared probe mode scores each share in worker processes of
        its own (:meth:`_shared`), whatever the executor."""
        scored: dict[int, list[tuple[int, bytes]] | FripError] = {i: [] for i in payloads}
        jobs = [(info, [i for i in payloads if info.block_id in wanted[i]]) for info, _ in blocks]
        jobs = [job for job in jobs if job[1]]
        answers: list[list[bytes | FripError]] = []
        if jobs and isinstance(self.matcher, SharingMatcher):  # matchers A and B, one share each
            answers = self._shared().score_many(
                [
                    (info, tuple(SharedProbe.from_bytes(payloads[i]) for i in who))
                    for info, who in jobs
                ]
            )
        elif jobs:
            answers = self._executor().score_many(
                [(info, tuple(payloads[i] for i in who)) for info, who in jobs]
            )
        for (info, who), per_probe in zip(jobs, answers, strict=True):
            for i, answer in zip(who, per_probe, strict=True):
                entry = scored[i]
                if isinstance(answer, FripError):
                    scored[i] = answer
                elif not isinstance(entry, FripError):
                    entry.append((info.block_id, answer))
        return scored

    def _load_blocks(
        self, watch: Stopwatch, infos: Sequence[BlockInfo]
    ) -> list[tuple[BlockInfo, Any]]:
        stale = [b.block_id for b in infos if b.key_version != self.key_version]
        if stale:
            raise StoreError(
                f"engine '{self.name}': blocks {stale} are recorded under another HE key than "
                f"the gallery's v{self.key_version}; the gallery is inconsistent, refusing to "
                "score them: restore it from a backup"
            )
        if self.profile.executor()[0] != IN_PROCESS or isinstance(self.matcher, SharingMatcher):
            return [(info, None) for info in infos]  # the executor loads its own share
        with watch.stage("gallery_load"):  # in this snapshot, for the local executor
            return [(info, self._load_block(info)) for info in infos]

    def _shared(self) -> SharedScorer:
        """The shared probe mode's matchers A and B, each in worker processes of its own
        (half the processes executor's workers each, at least one), whatever the
        executor: a share never enters the other matcher's memory, nor is it scored in
        this process, and no executor holds both shares of a probe."""
        if self._sharers is None:
            self._sharers = SharedScorer(self._worker_setup(), max(1, self._workers() // 2))
        return self._sharers

    def _executor(self) -> Executor:
        """The engine's executor (``[executor]``), built through the plugin registry on
        first use and after a key rotation. Raises PluginError (a ProfileError) when the
        plugin cannot be built, WorkerStartError when its workers cannot start."""
        if self._scorer is None:
            name, params = self.profile.executor()
            in_process = self._in_process() if name == IN_PROCESS else None
            try:
                self._scorer = plugins.create(
                    "executor", name, setup=self._worker_setup(in_process), **params
                )
            except ProfileError as exc:
                raise type(exc)(f"engine '{self.name}': [executor] {exc}") from exc
        return self._scorer

    def _in_process(self) -> InProcess:
        """This engine's matcher and block cache, lent to the local executor."""

        def held() -> dict[int, int]:
            every = self.gallery_store.blocks()
            return {b.block_id: b.size_bytes for b in every if b.block_id in self._blocks}

        def forget(block_id: int) -> None:
            self._blocks.pop(block_id, None)

        return InProcess(lambda: self.matcher, self._block_at, forget, held)

    def _workers(self) -> int:
        """How many worker processes the processes executor has (1 for another one)."""
        name, params = self.profile.executor()
        return int(params.get("workers", 2)) if name == "processes" else 1

    def _parallel(self) -> ParallelScorer:
        """The processes executor, whose workers encrypt a bulk enrolment's new blocks."""
        executor = self._executor()
        assert isinstance(executor, ParallelScorer)  # _workers() > 1: the processes executor
        return executor

    def _encrypting(self) -> Executor | ParallelScorer:
        """The executor a prepared enrolment is encrypted by, off this thread: the engine's
        own, or for the local executor (which would encrypt on this very thread) one
        worker process of its own (the processes executor with one worker)."""
        if self.profile.executor()[0] != IN_PROCESS:
            return self._executor()
        if self._encryptor is not None and self._encryptor.key_version != self.key_version:
            self._encryptor.close()
            self._encryptor = None
        if self._encryptor is None:
            made = plugins.create("executor", "processes", setup=self._worker_setup(), workers=1)
            assert isinstance(made, ParallelScorer)
            self._encryptor = made
        return self._encryptor

    def _worker_setup(self, in_process: InProcess | None = None) -> WorkerSetup:
        """What an executor needs to score and encrypt for this engine: no secret."""
        return WorkerSetup(
            self.profile.plugin("he"),
            self.profile.params("he"),
            self.profile.plugin("gallery_store"),
            self.profile.params("gallery_store"),
            str(self.directory),
            self.key_service.public_context,
            self.parts.pemiu_block_size,
            self.key_version,
            in_process=in_process,
        )

    def _conclude(
        self,
        watch: Stopwatch,
        candidates: list[Candidate],
        limit: float,
        blocks: Sequence[BlockInfo],
        occupants: dict[int, dict[int, str]],
        probe_bytes: int,
        notes: list[str],
        batch_size: int = 1,
    ) -> Decision:
        """The decision on one probe's candidates (best first), announced to listeners."""
        best = candidates[0] if candidates else None
        matched = best is not None and best.score >= limit
        decision = Decision(
            engine=self.name,
            matched=matched,
            subject_id=best.subject_id if matched and best else None,
            score=best.score if best else None,
            threshold=limit,
            candidates=candidates,
            timings=watch.finish(),
            registrants=sum(len(occupants.get(info.block_id, {})) for info in blocks),
            blocks_scored=len(blocks),
            probe_bytes=probe_bytes,
            notes=notes,
            batch_size=batch_size,
        )
        _emit(hookspecs.frip_identified, engine=self.name, decision=decision)
        return decision

    # ----------------------------------------------------------------- subjects
    def subjects(self) -> list[str]:
        """The ids of every enrolled subject, sorted."""
        return [record.subject_id for record in self.subject_records()]

    def subject_records(self) -> list[SubjectRecord]:
        """The gallery's record of each enrolled subject, sorted by id: ``subject_id``,
        ``enrolled_at`` (ISO 8601, UTC), ``images`` (how many images or embeddings made its
        template), ``block_id`` and ``slot``. Nothing biometric."""
        self._check_open()
        return sorted(self.gallery_store.subjects(), key=lambda record: record.subject_id)

    # ----------------------------------------------------------------- removal and stats
    def remove(self, subject_id: str) -> None:
        """Erase a subject from the ciphertexts (decrypt, zero, re-encrypt) and the slot map."""
        self._check_open()
        check_subject_id(subject_id)
        with self._writing():
            self._remove(subject_id)

    def _remove(self, subject_id: str) -> None:
        record = self.gallery_store.subject(subject_id)
        if record is None:
            raise UnknownSubjectError(
                f"subject '{subject_id}' is not enrolled in engine '{self.name}'"
            )
        info = next(b for b in self.gallery_store.blocks() if b.block_id == record.block_id)
        revision, data = self.gallery_store.read_block(info.block_id)
        in_block = self._occupants().get(record.block_id, {})
        keep = sorted(slot for slot, who in in_block.items() if who != subject_id)
        current = self.gallery_store.read_routing() if self.parts.clusterer.routed else None
        forget = None if current is None else (current[1], info.partition, record.slot)
        fresh, router = self.key_service.rebuild_block(data, keep, forget=forget)
        self.gallery_store.commit_block(
            info.block_id,
            revision,
            info.partition,
            self.key_version,
            info.capacity,
            fresh,
            removed=[subject_id],
            routing=None if current is None or router is None else (current[0], router),
            context_sha256=context_fingerprint(self.key_service.public_context),
        )
        self._blocks.pop(info.block_id, None)
        _emit(hookspecs.frip_removed, engine=self.name, subject_id=subject_id)

    # ----------------------------------------------------------------- key lifecycle
    def rotate_he_keys(self, progress: Progress | None = None) -> int:
        """New HE key pair; every block re-encrypted inside the key service, then one switch.

        Until the final store transaction the engine runs on its old keys: a rotation
        killed midway leaves it working, and the next rotation starts over. Raises
        KeyStoreError while another engine folder holds this engine id.
        """
        with self._writing():
            self._refuse_shared_id("rotating the HE keys")
            return self._rotate_he_keys(progress)

    def _rotate_he_keys(self, progress: Progress | None) -> int:
        engine_id, old_version = self.profile.engine_id, self.key_version
        new_version = old_version + 1
        key_store = self.parts.key_store
        self.gallery_store.clear_staging()
        self._delete_other_he_keys()  # left by a rotation interrupted or killed
        fresh = KeyService.generate(self.parts.he_backend, key_store, engine_id, new_version)
        occupants = self._occupants()
        for info in self.gallery_store.blocks():
            if progress:
                progress(f"block {info.block_id}")
            revision, data = self.gallery_store.read_block(info.block_id)
            keep = sorted(occupants.get(info.block_id, {}))
            rebuilt, _ = self.key_service.rebuild_block(data, keep, fresh.public_context)
            self.gallery_store.stage_block(info.block_id, revision, new_version, rebuilt)
        self.gallery_store.switch_key_version(new_version, fresh.public_context)
        self._use_keys(fresh)
        self._delete_other_he_keys()  # the old version
        return new_version

    def _sealed_he_versions(self) -> list[int]:
        """The versions of every HE secret key sealed for this engine, in ascending order."""
        sealed = self.parts.key_store.status(self.profile.engine_id).get("sealed_keys", [])
        return sorted(v for v in map(he_key_version, sealed) if v is not None)

    def _delete_other_he_keys(self) -> None:
        """Delete every sealed HE secret key but the one in use: retired versions (a rotation
        killed after its switch left its old key) and newer ones (a rotation interrupted
        before its switch left its new key). Only under the write lock: no rotation is in
        flight elsewhere."""
        for version in self._sealed_he_versions():
            if version != self.key_version:
                self.parts.key_store.delete_secret(self.profile.engine_id, he_key_id(version))

    def rotate_kek(self) -> str:
        """Re-wrap the HE secret key under a fresh key-encryption key. Raises KeyStoreError
        while another engine folder holds this engine id."""
        with self._writing():
            self._refuse_shared_id("rotating the key-encryption key")
            return str(self.parts.key_store.rotate_kek(self.profile.engine_id))

    def key_status(self) -> dict[str, Any]:
        """The key store's own status, the key version in use, under ``problems`` the key
        store's own findings, why the current HE secret key is missing or cannot be
        unwrapped, and another engine folder holding this engine id (empty: all is well), and
        under ``warnings`` retired HE secret keys still sealed (a rotation killed before
        deleting them; they would decrypt old copies of the gallery)."""
        self._follow_keys()
        status = dict(self.parts.key_store.status(self.profile.engine_id))
        status["key_version_in_use"] = self.key_version
        status["he"] = self.parts.he_backend.description
        problems = [self._secret_key_problem(), self._shared_id_problem()]
        status["problems"] = [
            *status.get("problems", []),  # a key store's own findings (a damaged token)
            *(problem for problem in problems if problem is not None),
        ]
        retired = [he_key_id(v) for v in self._sealed_he_versions() if v < self.key_version]
        status["warnings"] = (
            [
                f"engine '{self.name}': retired HE secret key(s) {', '.join(retired)} still "
                f"sealed in {self.parts.key_store.describe()} (a key rotation was stopped before "
                "deleting them); they decrypt any old copy of the gallery. The next "
                f"`frip keys rotate-he {self.name}` deletes them"
            ]
            if retired
            else []
        )
        return status

    def _shared_id_problem(self) -> str | None:
        """Why key rotations are unsafe here (another engine folder beside this one holds
        this engine id), or None."""
        others = duplicate_engines(self.directory.parent.parent).get(self.name, [])
        return shared_id_problem(self.name, others, self.profile.engine_id) if others else None

    def _refuse_shared_id(self, what: str) -> None:
        problem = self._shared_id_problem()
        if problem is not None:
            raise KeyStoreError(f"{problem}. {what} refused; nothing was changed")

    def _secret_key_problem(self) -> str | None:
        """Why the current HE secret key is unusable, or None: absent from the key store's
        listing, or failing to unwrap (it is unwrapped once and wiped)."""
        key_id = he_key_id(self.key_version)
        key_store, engine_id = self.parts.key_store, self.profile.engine_id
        try:
            if key_id not in key_store.status(engine_id).get("sealed_keys", []):
                return (
                    f"engine '{self.name}': its HE secret key '{key_id}' is missing from "
                    f"{key_store.describe()}; nothing in the gallery can be decrypted without it. "
                    "Restore the key store (e.g. the key file) from a backup, then check with "
                    f"`frip keys status {self.name}`"
                )
            wipe(key_store.load_secret(engine_id, key_id))
        except KeyStoreError as exc:
            return f"engine '{self.name}': its HE secret key '{key_id}' is unusable: {exc}"
        return None

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """Around every write: hold the engine's write lock (one writer at a time, in any
        thread or process, and on any host when the gallery store has an ``exclusive``
        lock of its own, so slots are allocated from the slot map as it is), follow a
        key rotation made elsewhere, and refuse to write into an engine whose current HE
        secret key is gone or cannot be unwrapped by this caller (a lost key, a damaged key
        file, a wrong passphrase or PIN): what it wrote could never be decrypted, or the
        mistake would show only at the next identify. One unwrap per write call (5-16 ms)."""
        self._check_open()
        # a store shared by hosts (postgres) also excludes the writers of other hosts
        shared = getattr(self.gallery_store, "exclusive", None)
        with write_lock(self.directory, self.name), shared() if shared else nullcontext():
            self._follow_keys()
            problem = self._secret_key_problem()
            if problem is not None:
                raise KeyStoreError(f"{problem}. Nothing was written")
            yield

    def move_keys(self, section: dict[str, Any]) -> None:
        """Put the HE secret key into a newly initialised key store and switch the profile.

        The old store's copy is deleted only after the new one has been read back and the
        profile saved, so a failure at any step leaves a working engine. Raises
        KeyStoreError while another engine folder holds this engine id.
        """
        with self._writing():
            self._refuse_shared_id("moving the keys")
            self._move_keys(section)

    def _move_keys(self, section: dict[str, Any]) -> None:
        engine_id, version = self.profile.engine_id, self.key_version
        params = {k: v for k, v in section.items() if k != "plugin"}
        target = plugins.create("key_store", str(section["plugin"]), **params)
        target.bind(str(self.directory))
        target.init(engine_id)
        old = self.parts.key_store
        key_ids = list(old.status(engine_id)["sealed_keys"])
        for key_id in key_ids:
            secret = old.load_secret(engine_id, key_id)
            try:
                target.store_secret(engine_id, key_id, secret)
                check = target.load_secret(engine_id, key_id)
                same = check == secret
                wipe(check)
            finally:
                wipe(secret)
            if not same:
                raise KeyStoreError("the new key store returned a different key; nothing switched")
        self.profile.sections["key_store"] = dict(section)
        save_profile(self.profile, self.directory / PROFILE_FILE)
        self.parts.key_store = target
        self.key_service = KeyService(
            self.parts.he_backend, target, engine_id, version, self.key_service.public_context
        )
        for key_id in key_ids:
            old.delete_secret(engine_id, key_id)

    def shards(self) -> tuple[str, list[ShardStatus]]:
        """The executor's name and its workers or shards (``frip cluster status``), the
        executor built if it was not yet. Raises what building it raises (PluginError,
        WorkerStartError), EngineClosedError after :meth:`close`."""
        self._follow_keys()
        return self.profile.executor()[0], self._executor().status()

    def executor_details(self, prune_orphans: bool = False) -> dict[str, list[dict[str, Any]]]:
        """What the executor reports beside its shards (``frip cluster status``): its
        ``details()`` rows by topic where it has one (``ray``: key-service actors, residue
        files per node), else {}. ``prune_orphans``: first remove what its
        ``prune_orphans()`` removes (``ray``: residue files of deleted engines)."""
        executor = self._executor()
        if prune_orphans and hasattr(executor, "prune_orphans"):
            executor.prune_orphans()
        details = getattr(executor, "details", None)
        return details() if details is not None else {}

    def stats(self) -> dict[str, Any]:
        self._follow_keys()
        blocks = self.gallery_store.blocks()
        subjects = sum(b.used for b in blocks)
        stored = sum(b.size_bytes for b in blocks)
        threshold: float | None
        try:
            threshold, source = default_threshold(self.profile, self.parts)
        except ProfileError as exc:  # an engine made before calibration, still manageable
            threshold, source = None, f"none: {exc}"
        calibrated = lookup(*calibration_key(self.parts))
        if self.profile.threshold is not None:
            calibrated = None  # the profile's own threshold: its owner calibrated it
        if calibrated is not None and subjects > calibrated.gallery:
            source += (
                f"; WARNING: calibrated with {calibrated.gallery} enrolled, this gallery has "
                f"{subjects}: more strangers will be accepted than FPIR "
                f"{calibrated.fpir_target:.1%}; recalibrate with frip eval calibrate"
            )
        return {
            "engine": self.name,
            "engine_id": self.profile.engine_id,
            "subjects": subjects,
            "blocks": len(blocks),
            "capacity": sum(b.capacity for b in blocks),
            "gallery_bytes": stored,
            "bytes_per_subject": stored / subjects if subjects else None,
            "dimension": self.parts.dimension,
            "threshold": threshold,
            "threshold_source": source,
            "key_version": self.key_version,
            "plugins": {
                **{s: self.profile.plugin(s) for s in self.profile.sections},
                "executor": self.profile.executor()[0],
            },
            "he": self.parts.he_backend.description,
            "key_store": self.parts.key_store.describe(),
            "gallery_store": self.parts.gallery_store.describe(),
            "directory": str(self.directory),
        }


def _emit(event: Callable[P, None], *args: P.args, **kwargs: P.kwargs) -> None:
    """Announce a committed change to every listener of ``event``, an event hook of
    :mod:`frip_engine.hookspecs` (whose signature types the arguments); a failing
    listener cannot undo the change."""
    try:
        arguments = _signature(event).bind(*args, **kwargs).arguments
        getattr(plugins.plugin_manager().hook, event.__name__)(**arguments)
    except Exception:
        logger.exception("event hook %s failed; the change it reports stands", event.__name__)


@cache
def _signature(event: Callable[..., None]) -> inspect.Signature:
    """The signature of an event hook, read once (a bulk enrolment emits one per subject)."""
    return inspect.signature(event)


def default_threshold(profile: Profile, parts: Components) -> tuple[float, str]:
    """The engine's threshold and its source (:func:`frip_engine.calibration.engine_threshold`)."""
    return engine_threshold(profile.threshold, *calibration_key(parts))


def calibration_key(parts: Components) -> tuple[str, str, int | None]:
    """What a threshold is calibrated for: extractor, protection and pe-miu block size."""
    return parts.extractor.name, parts.protection.name, parts.pemiu_block_size


def template_record(parts: Components) -> dict[str, str]:
    """What stored templates depend on besides their dimension, recorded in the gallery at
    creation: a profile later edited to another extractor, protection or pe-miu block size
    would compare templates made one way with probes made another, so it is refused."""
    record = {"extractor": parts.extractor.name, "protection": parts.protection.name}
    if parts.pemiu_block_size is not None:
        record["pemiu_block_size"] = str(parts.pemiu_block_size)
    return record


def list_engines(home: Path | None = None) -> list[str]:
    root = (home or engines_home()) / "engines"
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / PROFILE_FILE).is_file())


def engine_ids(home: Path | None = None) -> dict[str, str]:
    """Each engine's name -> its engine id; a folder whose profile cannot be read is left
    out (opening it says why)."""
    ids = {}
    for name in list_engines(home):
        try:
            ids[name] = load_profile(engine_dir(name, home) / PROFILE_FILE).engine_id
        except FripError:
            continue
    return ids


def duplicate_engines(home: Path | None = None) -> dict[str, list[str]]:
    """Engines under ``home`` whose engine id another engine folder there holds too: each
    such engine's name -> the names of the others (sorted). Such folders (a copied engine
    folder, a backup restored beside its original) share the key store's keys named after
    the engine id (a PKCS#11 KEK), so a key rotation in one destroys the other's key."""
    by_id: dict[str, list[str]] = defaultdict(list)
    for name, engine_id in engine_ids(home).items():
        by_id[engine_id].append(name)
    return {
        name: [other for other in names if other != name]
        for names in by_id.values()
        if len(names) > 1
        for name in names
    }


def shared_id_problem(name: str, others: Sequence[str], engine_id: str) -> str:
    """What is wrong with engine folders ``name`` and ``others`` sharing ``engine_id``, and
    what to do (the text every refusal and ``frip keys status`` give)."""
    names = [f"'{n}'" for n in sorted([name, *others])]
    listed = ", ".join(names[:-1]) + f" and {names[-1]}"
    return (
        f"duplicate engine id: engine folders {listed} in FRIP_HOME hold the same engine id "
        f"{engine_id}, so they share the key store's key-encryption key and a key rotation in "
        "one would destroy the key the other is sealed under; if one is a copy or a restored "
        "backup, move the copy out of FRIP_HOME (a backup must not be opened beside its "
        "original) or give up one of them"
    )
