"""What each plugin kind must provide: one protocol per kind. A component is checked
against its kind's protocol when it is made (:func:`missing_members`, called by
``plugins.create``), so a plugin missing a member fails at profile load, not mid-way.

The HE contract encodes the trust boundary: a ``Matcher`` is built from the public
context only (encrypt, add, score, serialise), a ``Decryptor`` from the secret context
(decrypt scores, decrypt a block for erasure or re-keying). Encrypted scores cross the
boundary as bytes, so the key service never needs the matcher's objects.
"""

from __future__ import annotations

import importlib.util
import inspect
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

from frip_engine.errors import FripError, each_or_error

if TYPE_CHECKING:
    from concurrent.futures import Future

    import numpy as np

    from frip_engine.parallel import EncryptJob
    from frip_engine.pemiu import PemiuTemplate
    from frip_engine.sharing import SharedProbe

Component = TypeVar("Component", contravariant=True)


@dataclass(frozen=True)
class Requirement:
    """An importable module a component needs, and what to install to get it."""

    module: str
    install: str

    def present(self) -> bool:
        try:
            return importlib.util.find_spec(self.module) is not None
        except (ImportError, ValueError):
            return False


class Register(Protocol[Component]):
    """The callback a registration hook receives (``register_he_backends(register)``, ...).

    A plugin calls it once per component it offers: its ``name`` (what a profile's
    ``plugin = ...`` names), its ``factory`` (a class or function that builds the component
    from the profile section's other keys and returns what the kind's protocol requires), a
    one-line ``summary`` and the modules it ``requires`` (for ``frip plugins``). Further
    keywords are kept as information; ``parameters=("a", "b")`` declares the keys the
    factory takes where its signature cannot say.
    """

    def __call__(
        self,
        name: str,
        factory: Callable[..., Component],
        *,
        summary: str = "",
        requires: tuple[Requirement, ...] = (),
        **info: Any,
    ) -> None: ...


@dataclass(frozen=True)
class ModelFile:
    """A model file an extractor loads, pinned by hash, with its licence."""

    name: str
    path: str
    sha256: str
    licence: str


@dataclass
class Extraction:
    """One face found in one image."""

    embedding: np.ndarray
    faces_found: int
    box: tuple[float, float, float, float]
    detection_score: float
    notes: list[str] = field(default_factory=list)


@runtime_checkable
class Extractor(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def dimension(self) -> int: ...

    @property
    def threshold(self) -> float:
        """The model's own plain-cosine reference threshold; an engine takes its threshold
        from frip_engine/calibration.json per (extractor, protection, block size) instead."""
        ...

    @property
    def same_person_floor(self) -> float:
        """Cosine below which two images of one subject are two people."""
        ...

    def models(self) -> list[ModelFile]: ...

    def extract(self, image: np.ndarray) -> Extraction: ...


@runtime_checkable
class Protection(Protocol):
    """``probe_mode`` is what the HE backend must score (``plain`` or ``pe-miu``);
    ``probe_block_size`` the block size of every pe-miu template and probe, else None."""

    @property
    def name(self) -> str: ...

    @property
    def probe_mode(self) -> str: ...

    @property
    def probe_block_size(self) -> int | None: ...

    def bind(self, extractor: str, dimension: int) -> None:
        """Fit the protection to the engine's extractor (name, dimension) or raise
        ProfileError; ``build`` calls it before any template is made."""
        ...

    def output_dimension(self, dimension: int) -> int: ...

    def protect(self, embedding: np.ndarray) -> np.ndarray | PemiuTemplate:
        """The template to enrol for one embedding."""
        ...

    def protect_probe(self, embedding: np.ndarray) -> np.ndarray | PemiuTemplate:
        """The probe to encode for one embedding (what ``protect`` is to the gallery)."""
        ...


@runtime_checkable
class Clusterer(Protocol):
    """Partitions the gallery. ``routed`` clusterers fit centroids on enrolment batches;
    the engine keeps the centroids sealed and routes each probe to ``probe_clusters``
    partitions (None: all). The engine reads ``max_size``, ``fill``, ``clusters`` and calls
    ``fit`` only for a routed clusterer."""

    @property
    def name(self) -> str: ...

    @property
    def routed(self) -> bool: ...

    @property
    def probe_clusters(self) -> int | None: ...

    @property
    def max_size(self) -> int | None:
        """Most registrants per partition; None: one packed block's slots."""
        ...

    @property
    def fill(self) -> float:
        """The share of max_size the clusters founded on a batch are planned to hold."""
        ...

    @property
    def clusters(self) -> int | None:
        """Clusters founded on the first batch; None: from fill and max_size."""
        ...

    def fit(self, embeddings: np.ndarray, k: int) -> np.ndarray:
        """``k`` centroids, shape (k, dimension), for templates of shape (n, dimension)."""
        ...


@runtime_checkable
class Matcher(Protocol):
    """Public-key side: can encrypt and score, cannot decrypt.

    A probe travels as bytes: ``encode_probe`` is what an edge device does with the public
    key (plain values, an encryption, or a PE-MIU shuffled template), ``parse_probe``
    parses that upload once per identification and ``score`` uses it on each block.
    """

    @property
    def slots(self) -> int: ...

    def encrypt_rows(self, rows: np.ndarray, slots: Sequence[int]) -> Any: ...

    def add_rows(self, block: Any, rows: np.ndarray, slots: Sequence[int]) -> Any: ...

    def encode_probe(self, probe: np.ndarray | PemiuTemplate) -> bytes: ...

    def parse_probe(self, payload: bytes) -> Any: ...

    def score(self, block: Any, parsed_probe: Any) -> bytes: ...

    def dump(self, block: Any) -> bytes: ...

    def load(self, data: bytes) -> Any: ...


@runtime_checkable
class BatchMatcher(Matcher, Protocol):
    """A matcher that scores several probes per pass over a block (optional: the engine
    calls :func:`score_many`, which loops ``score`` for a matcher without it)."""

    def score_many(self, block: Any, parsed_probes: Sequence[Any]) -> list[bytes]:
        """``[score(block, p) for p in parsed_probes]``, the same bytes, in one pass."""
        ...


@runtime_checkable
class SharingMatcher(Matcher, Protocol):
    """A matcher of the ``shared`` probe mode (:mod:`frip_engine.sharing`): the edge splits
    each probe into two additive shares, each scored by a matcher process of its own; its
    ``encode_probe`` is the edge's bundle of both, which no matcher takes."""

    def encode_shares(self, probe: np.ndarray) -> SharedProbe: ...


def score_many(matcher: Matcher, block: Any, parsed_probes: Sequence[Any]) -> list[bytes]:
    """The scores of several parsed probes on one block, in order: the matcher's own
    ``score_many`` where it has one (:class:`BatchMatcher`), else one ``score`` per probe.
    Errors are the matcher's (a probe it cannot score fails the whole call)."""
    if isinstance(matcher, BatchMatcher):
        return [bytes(s) for s in matcher.score_many(block, parsed_probes)]
    return [bytes(matcher.score(block, p)) for p in parsed_probes]


def parse_isolated(matcher: Matcher, payloads: Sequence[bytes]) -> list[Any | FripError]:
    """Each probe payload as ``matcher.parse_probe`` parses it, in order, or the error of
    one the matcher refuses (that probe alone fails)."""
    return each_or_error(matcher.parse_probe, payloads)


def score_isolated(
    matcher: Matcher, block: Any, parsed_probes: Sequence[Any | FripError]
) -> list[bytes | FripError]:
    """:func:`score_many`, where a probe the matcher cannot score fails alone: a probe
    that failed to parse (its error, as :func:`parse_isolated` gives it) keeps its error,
    and after a failed batch each probe is scored on its own and gets its scores or its
    error. One entry per probe, in order."""
    answers: list[bytes | FripError] = list(parsed_probes)  # the parsed ones are replaced
    good = [i for i, p in enumerate(parsed_probes) if not isinstance(p, FripError)]
    if good:
        scored = _score_alone(matcher, block, [parsed_probes[i] for i in good])
        for i, answer in zip(good, scored, strict=True):
            answers[i] = answer
    return answers


def _score_alone(
    matcher: Matcher, block: Any, parsed_probes: Sequence[Any]
) -> list[bytes | FripError]:
    """:func:`score_isolated` for probes that all parsed."""
    try:
        return list(score_many(matcher, block, parsed_probes))
    except FripError as exc:
        if len(parsed_probes) == 1:
            return [exc]
    return each_or_error(lambda parsed: bytes(matcher.score(block, parsed)), parsed_probes)


@runtime_checkable
class Decryptor(Protocol):
    """Secret-key side: lives only inside the key service, for one operation."""

    def decrypt_scores(self, scores: bytes) -> np.ndarray:
        """Scores per slot, or (blocks, blocks, slots) block-pair products for pe-miu."""
        ...

    def decrypt_block(self, data: bytes) -> np.ndarray: ...

    def close(self) -> None: ...


@runtime_checkable
class HEBackend(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def description(self) -> str:
        """Human-readable parameter summary."""
        ...

    @property
    def encrypted(self) -> bool:
        """False only for the plaintext reference backend."""
        ...

    @property
    def probe_modes(self) -> frozenset[str]:
        """What it can score: "plain", "pe-miu"."""
        ...

    def security_check(self) -> None: ...

    def slots(self) -> int: ...

    def block_bytes(self, dimension: int) -> int:
        """At least how many bytes one full serialised block of ``dimension``-d templates
        takes (checked at profile load against the store's limit and the memory)."""
        ...

    def keygen(self) -> tuple[bytes, bytearray]: ...

    def matcher(self, public_context: bytes, pemiu_block_size: int | None = None) -> Matcher:
        """The public side. With ``pemiu_block_size`` it takes only pe-miu probes of that
        block size (a pe-miu engine's), otherwise only the backend's own probe mode."""
        ...

    def decryptor(self, public_context: bytes, secret_context: bytearray) -> Decryptor: ...


@runtime_checkable
class KeyStore(Protocol):
    """Keeps the HE secret key wrapped; hands out a copy the caller must wipe."""

    @property
    def name(self) -> str: ...

    def bind(self, engine_dir: str) -> None: ...

    def init(self, engine_id: str) -> None: ...

    def store_secret(self, engine_id: str, key_id: str, secret: bytes | bytearray) -> None: ...

    def load_secret(self, engine_id: str, key_id: str) -> bytearray: ...

    def delete_secret(self, engine_id: str, key_id: str) -> None: ...

    def rotate_kek(self, engine_id: str) -> str: ...

    def status(self, engine_id: str) -> dict[str, Any]:
        """What the store holds (``sealed_keys``: key ids, ...) and, optionally under
        ``problems``, a list of damage it found (each a sentence saying what to do)."""
        ...

    def describe(self) -> str: ...


@dataclass(frozen=True)
class BlockInfo:
    block_id: int
    partition: int
    key_version: int
    revision: int
    capacity: int
    used: int
    size_bytes: int


@dataclass(frozen=True)
class SubjectRecord:
    subject_id: str
    block_id: int
    slot: int
    enrolled_at: str
    images: int


@dataclass(frozen=True)
class NewSubject:
    subject_id: str
    slot: int
    images: int


@runtime_checkable
class GalleryStore(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def max_blob_bytes(self) -> int:
        """The largest block, in bytes, the store can hold."""
        ...

    def bind(self, engine_dir: str) -> None: ...

    def describe(self) -> str:
        """Where the gallery is kept (its resolved file or server), for ``frip engine show``."""
        ...

    def initialise(self, meta: dict[str, str]) -> None: ...

    def meta(self) -> dict[str, str]: ...

    def snapshot(self) -> AbstractContextManager[None]: ...

    def put_public_context(self, key_version: int, data: bytes) -> None: ...

    def public_context(self, key_version: int) -> bytes: ...

    def blocks(self) -> list[BlockInfo]: ...

    def read_block(self, block_id: int) -> tuple[int, bytes]: ...

    def read_routing(self) -> tuple[int, bytes] | None: ...

    def subjects(self) -> list[SubjectRecord]: ...

    def subject(self, subject_id: str) -> SubjectRecord | None: ...

    def commit_block(
        self,
        block_id: int | None,
        expected_revision: int,
        partition: int,
        key_version: int,
        capacity: int,
        data: bytes,
        added: Sequence[NewSubject] = (),
        removed: Sequence[str] = (),
        routing: tuple[int, bytes] | None = None,
        context_sha256: str | None = None,
    ) -> int:
        """Write a block and its slot-map changes in one transaction. ``context_sha256``
        (SHA-256 hex of the public context that encrypted ``data``) must match the public
        context recorded for ``key_version``, else nothing is written (StoreError)."""
        ...

    def clear_staging(self) -> None: ...

    def stage_block(self, block_id: int, revision: int, key_version: int, data: bytes) -> None: ...

    def switch_key_version(self, key_version: int, public_context: bytes) -> None: ...

    def close(self) -> None: ...


@runtime_checkable
class Adapter(Protocol):
    """Translates a vendor's template format to and from the engine's embedding."""

    @property
    def name(self) -> str: ...

    @property
    def vendor(self) -> str: ...

    def decode(self, payload: bytes) -> np.ndarray: ...

    def encode(self, embedding: np.ndarray) -> bytes: ...


@dataclass(frozen=True)
class ShardStatus:
    """One worker or shard of an executor, as ``frip cluster status`` shows it.

    ``name``: the shard's name within its executor (``worker-0``, ``shard-3``);
    ``node``: where it runs (a host name, a Ray node id; ``local`` for this process);
    ``blocks``: the ids of the gallery blocks it holds loaded now, ascending (a block
    not yet scored since the shard started is not listed: shards load lazily);
    ``bytes_held``: the serialised size in bytes of those blocks (what a reload from
    the store reads; the loaded objects take about as much memory);
    ``healthy``: whether it answers; ``why``: when it does not, why, in one sentence
    (empty when healthy). Public facts only: no key, score or subject id.
    """

    name: str
    node: str
    blocks: tuple[int, ...]
    bytes_held: int
    healthy: bool
    why: str = ""


@runtime_checkable
class Executor(Protocol):
    """Where an engine's encrypted gallery is scored and its new blocks encrypted: in the
    engine's process (``local``), in worker processes on this machine (``processes``), on
    a cluster (``ray``), or anywhere a vendor's plugin runs them.

    The factory a plugin registers is called as ``factory(setup, **params)``: ``setup``
    is a :class:`~frip_engine.parallel.WorkerSetup` (the HE backend and gallery store
    plugins with their parameters, the engine folder, the public context of one HE key
    version), ``params`` the profile's ``[executor]`` keys besides ``plugin``. An
    executor holds public material only: the public context, the gallery's encrypted
    blocks and probe payloads (encrypted or shared, as the matcher takes them); never
    the secret key, a decrypted score, an embedding or a subject id. It serves the key
    version of its setup only; the engine closes it and builds a new one after a key
    rotation. Its methods are called from one thread at a time.
    """

    @property
    def name(self) -> str:
        """The executor's registered name (``local``, ``processes``, ``ray``)."""
        ...

    def score_many(
        self, jobs: list[tuple[BlockInfo, tuple[bytes, ...]]]
    ) -> list[list[bytes | FripError]]:
        """Score probes on blocks. ``jobs``: (block, probe payloads) per block, the
        payloads as the matcher's ``encode_probe`` made them. Returns, per job in order,
        one entry per payload in order: that probe's score ciphertext on the block
        (``matcher.score``'s bytes), or the probe's own FripError (a payload the matcher
        cannot parse or score fails alone, as :func:`score_isolated` does).

        The executor loads each block itself, by ``block_id``, from the gallery store or
        its own cache, and never scores a revision other than ``BlockInfo.revision``.
        Raises (for the whole call, never a partial answer): StoreError when a block's
        revision moved in the store (retry) or a job names another key version than the
        setup's; WorkerLostError (503 ``worker_lost``, retry) when a worker or shard
        ended before answering."""
        ...

    def encrypt_steps(
        self, jobs: list[EncryptJob], key_version: int
    ) -> Future[list[tuple[str, bytes]]]:
        """Encrypt the blocks of one enrolment off the caller's thread. ``jobs``: per
        block, the open block to add to as (block id, revision), or None for a new block,
        then the rows (float64, shape (n, dimension)) and their slots; ``key_version``
        must be the setup's (else the future fails with StoreError). The future gives,
        per job in order, (SHA-256 hex of the public context that encrypted it,
        serialised block); it fails with StoreError when an open block moved, with
        another exception when the worker doing it died (the engine reports that as
        WorkerLostError). The rows are dropped once encrypted."""
        ...

    def status(self) -> list[ShardStatus]:
        """One :class:`ShardStatus` per worker or shard, in a stable order; every block
        a shard holds is listed by exactly one shard. Never raises for an unhealthy
        shard: it is listed with ``healthy=False`` and why."""
        ...

    def close(self) -> None:
        """Stop the workers or shards and drop the blocks held; closing twice is
        harmless. A closed executor is not used again (the engine builds a new one)."""
        ...


@dataclass(frozen=True)
class KeyAccess:
    """How a trusted key service reaches an engine's HE secret key, never the key itself:
    the key store plugin's name and profile parameters (``[key_store]``) and the engine
    id the key is sealed under. Given only to a :class:`DecidingExecutor`'s key-service
    processes, never to a shard."""

    key_store: str
    key_store_params: dict[str, Any]
    engine_id: str


# one probe's top-k where its blocks were scored: (score, (block id, slot)) best first, and
# the timings (seconds) of ``decryption``, ``minimum_selection`` and ``key_unwrap``
Shortlist = tuple[list[tuple[float, tuple[int, int]]], dict[str, float]]


@runtime_checkable
class DecidingExecutor(Protocol):
    """An optional capability of an :class:`Executor`: it decrypts and selects where it
    scores (e.g. one trusted key-service process per cluster node, beside that node's
    shards), so only top-k lists reach the engine, not score ciphertexts. Executors
    without it (``local``, ``processes``) return score ciphertexts to the engine's own
    key service. The engine uses it only with a key store other processes can reach (not
    ``memory``)."""

    def decide_many(
        self,
        payloads: list[bytes],
        jobs: list[tuple[BlockInfo, list[int]]],
        slots: Any,
        top_k: int,
        access: KeyAccess,
    ) -> list[Shortlist | FripError]:
        """Score and decide a batch. ``payloads``: each probe's payload (as
        ``encode_probe`` made it); ``jobs``: per block, the indices of the probes that
        want it, in the engine's block order; ``slots``: block id -> its occupied slots
        (int array (n,), slot-map order), the same object while the slot map is current;
        ``top_k``: candidates per probe. Returns per probe its :data:`Shortlist`, merged
        over every block it wants exactly as :meth:`KeyService.decide_many` orders them
        (score descending, ties in block then slot-map order), or its own FripError (a
        payload that cannot be parsed, scores out of bounds). A probe that wants no block
        gets ([], {}). Raises for the whole call as :meth:`Executor.score_many` does
        (WorkerLostError when a shard or key-service process ended: retry; never a
        shortlist missing a shard's blocks), KeyStoreError when the key is unreachable."""
        ...


def protocol_members(protocol: type) -> list[str]:
    """The public members (methods, properties, attributes) a protocol requires, its
    bases' included, sorted."""
    names: set[str] = set()
    for base in protocol.__mro__:
        if base is not object and base.__module__ != "typing":  # not Protocol, Generic
            names.update(vars(base))
            names.update(getattr(base, "__annotations__", {}))
    return sorted(name for name in names if not name.startswith("_"))


def missing_members(component: object, protocol: type) -> list[str]:
    """The members of ``protocol`` that ``component`` lacks, sorted (empty: it provides
    them all). Looked up without calling anything (no property is evaluated), except
    through a ``__getattr__`` of the component's class (a wrapper delegating to another)."""
    missing = []
    for name in protocol_members(protocol):
        try:
            inspect.getattr_static(component, name)
        except AttributeError:
            if not (hasattr(type(component), "__getattr__") and hasattr(component, name)):
                missing.append(name)
    return missing
