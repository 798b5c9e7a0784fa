"""The trusted side: unwraps the HE secret key for one operation and decides.

The key service is the only object that ever holds a secret context. It receives
encrypted scores as bytes, decrypts them, picks the best occupied slots, and answers
with subject ids and scores, never embeddings. The secret key is unwrapped from the
key store per operation and wiped (best effort: the bytearray is overwritten and the
library's context dropped) as soon as the operation ends.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import cached_property
from typing import TypeVar, overload

import numpy as np

from frip_engine import sharing
from frip_engine.contracts import Decryptor, HEBackend, KeyStore
from frip_engine.decision import Candidate
from frip_engine.errors import BackendError, FripError, ShareError
from frip_engine.pemiu import assigned_scores
from frip_engine.routing import RouterState

# Scores of unit vectors lie in [-1, 1]; CKKS noise adds far less than this margin.
# Anything beyond it means the ciphertext was made under another key or parameter set.
SCORE_BOUND = 1.05
T = TypeVar("T")  # how a selection names an occupied slot: a subject id, (block, slot)


def he_key_id(version: int) -> str:
    """The key store's name for an engine's HE secret key of one version."""
    return f"he-secret-v{version}"


def he_key_version(key_id: str) -> int | None:
    """The version in a key store name made by :func:`he_key_id`, or None for another key."""
    prefix, _, version = key_id.rpartition("-v")
    return int(version) if prefix == "he-secret" and version.isdigit() else None


ROUTING_KEY_ID = "routing-key"


def wipe(buffer: bytearray) -> None:
    buffer[:] = bytes(len(buffer))


class KeyService:
    def __init__(
        self,
        he_backend: HEBackend,
        key_store: KeyStore,
        engine_id: str,
        key_version: int,
        public_context: bytes,
    ) -> None:
        self._he_backend = he_backend
        self._key_store = key_store
        self._engine_id = engine_id
        self._key_version = key_version
        self._public = public_context
        self.last_unwrap_seconds = 0.0

    @classmethod
    def generate(
        cls, he_backend: HEBackend, key_store: KeyStore, engine_id: str, key_version: int
    ) -> KeyService:
        """Make a fresh HE key pair; the secret goes straight into the key store."""
        public, secret = he_backend.keygen()
        try:
            key_store.store_secret(engine_id, he_key_id(key_version), secret)
        finally:
            wipe(secret)
        return cls(he_backend, key_store, engine_id, key_version, public)

    @cached_property
    def _fingerprint(self) -> bytes:
        return sharing.fingerprint(self._public)

    @property
    def public_context(self) -> bytes:
        return self._public

    @property
    def key_version(self) -> int:
        return self._key_version

    @contextmanager
    def unlocked(self) -> Iterator[Decryptor]:
        """The secret key, for the duration of one ``with`` block only."""
        start = time.perf_counter()
        secret = self._key_store.load_secret(self._engine_id, he_key_id(self._key_version))
        try:
            decryptor = self._he_backend.decryptor(self._public, secret)
        finally:
            wipe(secret)
        self.last_unwrap_seconds = time.perf_counter() - start
        try:
            yield decryptor
        finally:
            decryptor.close()

    # ------------------------------------------------------------------ sealed routing state
    def _routing_key(self, create: bool) -> bytearray | None:
        from frip_engine.errors import KeyStoreError

        try:
            return self._key_store.load_secret(self._engine_id, ROUTING_KEY_ID)
        except KeyStoreError:
            if not create or ROUTING_KEY_ID in self._key_store.status(self._engine_id).get(
                "sealed_keys", []
            ):
                raise
        key = bytearray(os.urandom(32))
        self._key_store.store_secret(self._engine_id, ROUTING_KEY_ID, key)
        return key

    def open_router(self, sealed: bytes | None) -> RouterState | None:
        """The plaintext centroid state, for enrolment and erasure (trusted side only)."""
        if sealed is None:
            return None
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        key = self._routing_key(create=False)
        assert key is not None
        try:
            plain = AESGCM(bytes(key)).decrypt(sealed[:12], sealed[12:], self._router_aad())
        except (InvalidTag, ValueError):
            raise BackendError(
                "the sealed cluster model failed authentication: altered, or from another engine"
            ) from None
        finally:
            wipe(key)
        return RouterState.from_bytes(plain)

    def seal_router(self, state: RouterState) -> bytes:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        key = self._routing_key(create=True)
        assert key is not None
        try:
            nonce = os.urandom(12)
            return nonce + AESGCM(bytes(key)).encrypt(nonce, state.to_bytes(), self._router_aad())
        finally:
            wipe(key)

    def _router_aad(self) -> bytes:
        return f"frip-engine:{self._engine_id}:routing-state".encode()

    def route_many(
        self, sealed: bytes, probes: Sequence[np.ndarray], probe_clusters: int | None
    ) -> list[list[int]]:
        """The top ``probe_clusters`` clusters (None: all) of each probe of a batch, opening
        the sealed centroids once; they exist in the clear only inside this call."""
        state = self.open_router(sealed)
        assert state is not None
        try:
            return [state.route(probe, probe_clusters) for probe in probes]
        finally:
            state.wipe()

    def decide(
        self,
        scored: Sequence[tuple[int, bytes]],
        occupants: Mapping[int, Mapping[int, str]],
        top_k: int,
    ) -> tuple[list[Candidate], dict[str, float]]:
        """Decrypt each block's scores and return the top-k occupied slots, best first."""
        (answer,) = self.decide_many([scored], occupants, top_k)
        if isinstance(answer, FripError):
            raise answer
        return answer

    def decide_many(
        self,
        batch: Sequence[Sequence[tuple[int, bytes]]],
        occupants: Mapping[int, Mapping[int, str]],
        top_k: int,
    ) -> list[tuple[list[Candidate], dict[str, float]] | FripError]:
        """:meth:`decide` for each probe of a batch (its scored blocks: (block id, score
        ciphertext) pairs), under ONE key unwrap; a probe whose scores cannot be decided
        gets its error (BackendError: the first of its blocks, in its order, that fails),
        the others their candidates. Each probe's timings carry the batch's one unwrap,
        its own decryptions and its share of the selections; a probe that scored no block
        gets ([], {}) and the key is not unwrapped for it.

        The selection is vectorised per block over the probes that scored it (occupied
        slots from ``occupants``, or :meth:`Occupants.arrays` when it is one); every
        answer equals selecting that probe alone (:meth:`_best_in_block`)."""
        picked = self._select_many(batch, lambda block: _occupied(occupants, block), top_k)
        return [
            answer
            if isinstance(answer, FripError)
            else ([Candidate(subject, score) for score, subject in answer[0]], answer[1])
            for answer in picked
        ]

    def shortlist_many(
        self,
        batch: Sequence[Sequence[tuple[int, bytes]]],
        slots: Mapping[int, np.ndarray],
        top_k: int,
    ) -> list[tuple[list[tuple[float, tuple[int, int]]], dict[str, float]] | FripError]:
        """:meth:`decide_many` without subject ids, for a key service that decides one
        shard's blocks where they were scored (a Ray node's key-service actor): each
        probe's top-k as (score, (block id, slot)), best first, ``slots`` giving each
        block's occupied slots (int (n,), in slot-map order). The coordinator, which holds
        the slot map, turns the slots into subject ids and merges the shards' lists; the
        selection and its order are :meth:`decide_many`'s, so the merged answer is the
        same decision."""
        return self._select_many(
            batch, lambda block: (slots[block], _Slots(block, slots[block])), top_k
        )

    def _select_many(
        self,
        batch: Sequence[Sequence[tuple[int, bytes]]],
        occupied: Callable[[int], tuple[np.ndarray, Sequence[T]]],
        top_k: int,
    ) -> list[tuple[list[tuple[float, T]], dict[str, float]] | FripError]:
        """The selection of :meth:`decide_many`, naming each occupied slot as
        ``occupied(block id)`` does: (its slots, a name per slot)."""
        answers: list[tuple[list[tuple[float, T]], dict[str, float]] | FripError] = [
            ([], {}) for _ in batch
        ]
        if not any(batch):
            return answers
        timings = [{"decryption": 0.0, "minimum_selection": 0.0} for _ in batch]
        failed: dict[int, tuple[int, FripError]] = {}  # probe -> (position, its first error)
        rows: dict[int, list[tuple[int, int, np.ndarray]]] = {}  # block -> (probe, pos, scores)
        with self.unlocked() as decryptor:
            for index, scored in enumerate(batch):
                for position, (block_id, blob) in enumerate(scored):
                    start = time.perf_counter()
                    try:
                        scores = self._scores(decryptor, blob)
                    except FripError as exc:
                        failed[index] = (position, exc)
                        break
                    finally:
                        timings[index]["decryption"] += time.perf_counter() - start
                    rows.setdefault(block_id, []).append((index, position, scores))
        best: dict[int, dict[int, list[tuple[float, T]]]] = {i: {} for i in range(len(batch))}
        for block_id, block_rows in rows.items():
            start = time.perf_counter()
            slots, ids = occupied(block_id)
            matrix = np.stack([scores for _, _, scores in block_rows])
            for (index, position, _), picked in zip(
                block_rows, _best_rows(block_id, matrix, slots, ids, top_k), strict=True
            ):
                if isinstance(picked, FripError):
                    if index not in failed or position < failed[index][0]:
                        failed[index] = (position, picked)
                else:
                    best[index][position] = picked
            share = (time.perf_counter() - start) / len(block_rows)
            for index, _, _ in block_rows:
                timings[index]["minimum_selection"] += share
        for index, scored in enumerate(batch):
            if index in failed:
                answers[index] = failed[index][1]
            elif scored:
                start = time.perf_counter()
                found = [pair for position in sorted(best[index]) for pair in best[index][position]]
                found.sort(key=lambda pair: -pair[0])
                timings[index]["minimum_selection"] += time.perf_counter() - start
                timings[index]["key_unwrap"] = self.last_unwrap_seconds
                answers[index] = (found[:top_k], timings[index])
        return answers

    def _scores(self, decryptor: Decryptor, blob: bytes) -> np.ndarray:
        """One block's decrypted scores; for a shared probe (a :func:`sharing.pair`) the
        sum of the two matchers' score ciphertexts, after :func:`sharing.open_pair` has
        checked that both are there, bound to the probe's nonce and made under this key
        version (ShareError otherwise)."""
        if not sharing.is_pair(blob):
            return decryptor.decrypt_scores(blob)
        a, b = sharing.open_pair(blob, self._fingerprint)
        decrypt_sum = getattr(decryptor, "decrypt_sum", None)
        if decrypt_sum is None:
            raise ShareError("this HE backend cannot combine the scores of two shares")
        scores: np.ndarray = decrypt_sum(a, b)
        return scores

    @staticmethod
    def _best_in_block(
        block_id: int, scores: np.ndarray, occupants: Mapping[int, str], top_k: int
    ) -> list[tuple[float, str]]:
        """The top-k (score, subject) of one probe's decrypted block scores, best first;
        BackendError if an occupied slot's score is outside [-1, 1] (another key)."""
        slots, ids = block_arrays(occupants)
        (picked,) = _best_rows(block_id, scores[None], slots, ids, top_k)
        if isinstance(picked, FripError):
            raise picked
        return picked

    def rebuild_block(
        self,
        block: bytes,
        keep: Sequence[int],
        public_context: bytes | None = None,
        forget: tuple[bytes, int, int] | None = None,
    ) -> tuple[bytes, bytes | None]:
        """Decrypt a block and re-encrypt only the slots in ``keep``, all inside this service.

        Slots not kept come back as fresh encryptions of zero, so an erased template is
        gone from the ciphertexts, not merely hidden by the slot map. With another public
        context the block is re-encrypted under that key (HE key rotation). The decrypted
        templates never leave this method: it encrypts with its own public-key encryptor.
        ``forget`` = (sealed routing state, cluster, slot) also takes the erased template
        out of its cluster's centroid sum; the new sealed state is returned with the block.
        """
        encryptor = self._he_backend.matcher(public_context or self._public)
        with self.unlocked() as decryptor:
            features = decryptor.decrypt_block(block)  # (dimension, slots), feature-major
        kept = list(keep)
        rows = np.ascontiguousarray(features[:, kept].T)
        try:
            router = None
            if forget is not None:
                sealed, cluster, slot = forget
                state = self.open_router(sealed)
                assert state is not None
                state.remove(cluster, features[:, slot])
                router = self.seal_router(state)
                state.wipe()
            return bytes(encryptor.dump(encryptor.encrypt_rows(rows, kept))), router
        finally:
            features.fill(0.0)
            rows.fill(0.0)


class Occupants(dict[int, dict[int, str]]):
    """Block -> slot -> subject, as the engine reads it from its store, keeping each
    block's occupied slots as arrays (:func:`block_arrays`) once built, so a batch's
    selections do not rebuild them per probe. Hold one only while the slot map it was
    read from is current (the engine replaces it when a block's revision moves)."""

    def __init__(self, table: Mapping[int, dict[int, str]]) -> None:
        super().__init__(table)
        self._arrays: dict[int, tuple[np.ndarray, list[str]]] = {}
        self._slots: dict[int, np.ndarray] | None = None

    def arrays(self, block_id: int) -> tuple[np.ndarray, list[str]]:
        """The block's occupied slots (int64 (n,)) and their subjects, in slot-map order."""
        found = self._arrays.get(block_id)
        if found is None:
            found = self._arrays[block_id] = block_arrays(self.get(block_id, {}))
        return found

    def slot_arrays(self) -> dict[int, np.ndarray]:
        """Every block's occupied slots (int64 (n,), slot-map order), without subject ids:
        what a key service deciding elsewhere needs; the same dict on every call."""
        if self._slots is None:
            self._slots = {block_id: self.arrays(block_id)[0] for block_id in self}
        return self._slots


def block_arrays(occupants: Mapping[int, str]) -> tuple[np.ndarray, list[str]]:
    """One block's occupied slots as int64 (n,) and their subjects, in the mapping's order."""
    slots = np.fromiter(occupants.keys(), dtype=np.int64, count=len(occupants))
    return slots, list(occupants.values())


class _Slots(Sequence[tuple[int, int]]):
    """One block's occupied slots named as (block id, slot), without building the list."""

    def __init__(self, block_id: int, slots: np.ndarray) -> None:
        self._block_id, self._slots = block_id, slots

    def __len__(self) -> int:
        return len(self._slots)

    @overload
    def __getitem__(self, index: int) -> tuple[int, int]: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[tuple[int, int]]: ...
    def __getitem__(self, index: int | slice) -> tuple[int, int] | Sequence[tuple[int, int]]:
        if isinstance(index, slice):
            return [(self._block_id, int(slot)) for slot in self._slots[index]]
        return self._block_id, int(self._slots[index])


def _occupied(
    occupants: Mapping[int, Mapping[int, str]], block_id: int
) -> tuple[np.ndarray, list[str]]:
    if isinstance(occupants, Occupants):
        return occupants.arrays(block_id)
    return block_arrays(occupants[block_id])


def _best_rows(
    block_id: int, scores: np.ndarray, slots: np.ndarray, ids: Sequence[T], top_k: int
) -> list[list[tuple[float, T]] | FripError]:
    """For each probe's decrypted scores of one block (rows of ``scores``: (probes, slots),
    or (probes, blocks, blocks, slots) block-pair products for pe-miu), its top-k occupied
    slots as (score, subject), best first (ties in slot-map order), or its BackendError
    when an occupied slot's score is outside [-1, 1]. Row by row the same as one probe."""
    if slots.size == 0:
        return [[] for _ in scores]
    if scores.ndim == 4:  # pe-miu: block-pair inner products, assigned per registrant
        picked = np.moveaxis(scores[..., slots], 3, 1)  # (probes, n, blocks, blocks)
        values = assigned_scores(picked.reshape(-1, *picked.shape[2:])).reshape(len(scores), -1)
    else:
        values = scores[:, slots]
    bounded = np.all(np.abs(values) <= SCORE_BOUND, axis=1)
    answers: list[list[tuple[float, T]] | FripError] = []
    for row, inside in zip(values, bounded, strict=True):
        if not inside:
            answers.append(
                BackendError(
                    f"block {block_id} decrypted to scores outside [-1, 1]: its ciphertexts were "
                    "made under another key or parameter set, or are damaged; refusing to decide"
                )
            )
            continue
        # the top k without sorting the whole block
        top = np.argpartition(-row, top_k - 1)[:top_k] if top_k < row.size else np.arange(row.size)
        order = top[np.argsort(-row[top], kind="stable")]
        answers.append([(float(row[i]), ids[i]) for i in order])
    return answers
