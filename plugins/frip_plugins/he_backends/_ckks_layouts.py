"""CKKS backends built from one HE library's primitives and one gallery layout.

A backend is a library (TenSEAL or Pyfhel: keys, encryption, additions, products,
serialisation, decryption) times a layout:

- ``packed`` (feature-major): a block holds up to N/2 registrants; ciphertext j holds
  feature j of every registrant, so one linear combination scores the whole block.
- ``round-robin``: one ciphertext per registrant and one Euclidean distance per registrant,
  the source paper's method, kept as the baseline.

and a probe mode, chosen by the engine profile:

- ``plain``: the matcher gets the probe's values (never a registrant's);
- ``encrypted``: the edge encrypts the probe under the public key and the matcher scores
  it without seeing it (ciphertext products, no relinearisation in the packed layout);
- ``pe-miu``: the edge sends a freshly block-shuffled probe; the matcher computes every
  block-pair inner product and the key service solves the block assignment;
- ``shared`` (packed layout, fast scorer): the edge splits the plain probe's integer
  constants into two additive shares mod each data prime; two matchers that do not collude
  score one share each and the key service adds their results and decrypts
  (:mod:`frip_engine.sharing`; bit-identical to ``plain``).

What crosses from the edge to the matcher is a byte string (``encode_probe``), so its
size is the upload a device pays per probe.
"""

from __future__ import annotations

import secrets
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from frip_engine.ckks import CKKSParams, params_from
from frip_engine.errors import BackendError, ProfileError, ShareError
from frip_engine.pemiu import PemiuTemplate, check_block_size
from frip_engine.sharing import (
    BUNDLE_TAG,
    RESULT_TAG,
    SharedProbe,
    ShareResult,
    fingerprint,
    split,
)
from frip_plugins.he_backends._blocks import frame, unframe

LAYOUTS = ("packed", "round-robin")
PROBES = ("plain", "encrypted", "shared")
SCORERS = ("library", "fast")
PROBE_TAG = b"FRIP-PRB"
SCORE_SET_TAG = b"FRIP-SS1"  # several score ciphertexts: pe-miu pairs, round-robin


class CKKSOps(Protocol):
    """One library's CKKS operations over one loaded context (public, or with the secret)."""

    slots: int

    def encrypt(self, values: np.ndarray) -> Any: ...

    def add(self, a: Any, b: Any) -> Any: ...

    def add_plain(self, ct: Any, values: np.ndarray) -> Any:
        """``ct`` plus ``values`` (one per slot) encoded at ``ct``'s level and scale (the
        context's initial scale); ``ct`` may be consumed."""
        ...

    def weighted_sum(self, cts: Sequence[Any], weights: Sequence[tuple[int, float]]) -> Any:
        """sum of w * cts[j] for (j, w) in weights, at scale^2, never rescaled."""
        ...

    def product_sum(self, cts: Sequence[Any], probes: Sequence[Any]) -> Any:
        """sum of cts[j] * probes[j], ciphertext products without relinearisation."""
        ...

    def squared_distance(self, ct: Any, probe: Any, dimension: int) -> Any:
        """||ct - probe||^2 over slots 0..dimension-1, into slot 0; ``probe`` is a
        ciphertext or a float array."""
        ...

    def dump(self, ct: Any) -> bytes: ...

    def load(self, data: bytes) -> Any: ...

    def decrypt(self, ct: Any) -> np.ndarray: ...


class CKKSLibrary(Protocol):
    name: str

    def keygen(self, params: CKKSParams, evaluation_keys: bool) -> tuple[bytes, bytearray]:
        """A public context (with relinearisation and rotation keys when asked) and the
        secret context, as bytes; the caller wipes the secret."""
        ...

    def open(
        self, params: CKKSParams, public: bytes, secret: bytearray | None = None
    ) -> CKKSOps: ...


# ------------------------------------------------------------------------------ probes
def _probe_payload(mode: str, parts: list[bytes]) -> bytes:
    return frame(PROBE_TAG, [mode.encode(), *parts])


def _floats(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype="<f8").tobytes()


def _read_floats(raw: bytes, what: str) -> np.ndarray:
    if len(raw) % 8:
        raise BackendError(f"{what} is truncated")
    values = np.frombuffer(raw, dtype="<f8").copy()
    if not np.all(np.isfinite(values)):
        raise BackendError(f"{what} is not finite")
    return values


def read_probe(payload: bytes) -> tuple[str, list[bytes]]:
    """The probe mode and parts of an edge's upload (checked framing)."""
    parts = unframe(PROBE_TAG, payload)
    if not parts:
        raise BackendError("probe payload is empty")
    return parts[0].decode(errors="replace"), parts[1:]


def plain_weights(probe: np.ndarray, scale: float) -> list[tuple[int, float]]:
    """(feature, value) pairs worth multiplying: a constant that encodes to 0 at the scale
    adds nothing the scale can represent (and makes TenSEAL substitute a fresh encryption)."""
    values = np.asarray(probe, dtype=np.float64)
    keep = np.flatnonzero(np.abs(values) >= 0.5 / scale)
    return list(zip(keep.tolist(), values[keep].tolist(), strict=True))


# ----------------------------------------------------------------------------- layouts
class PackedLayout:
    """Feature-major blocks: ciphertext j holds feature j of every registrant."""

    name = "packed"

    def __init__(self, ops: CKKSOps, scale: float) -> None:
        self.ops = ops
        self.scale = scale
        self.capacity = ops.slots

    def encrypt_rows(self, rows: np.ndarray, slots: Sequence[int]) -> list[Any]:
        plane = np.zeros(self.capacity)
        block = []
        for column in np.asarray(rows, dtype=np.float64).T:
            plane[list(slots)] = column
            block.append(self.ops.encrypt(plane))
        plane.fill(0.0)
        return block

    def add_rows(self, block: Any, rows: np.ndarray, slots: Sequence[int]) -> list[Any]:
        return self.add_delta(block, self.encrypt_rows(rows, slots))

    def encrypt_zeros(self, count: int) -> list[Any]:
        """``count`` fresh public-key encryptions of the all-zero plane, each to be used
        once by :meth:`encrypt_rows_with` (list, library ciphertexts at the initial level
        and scale)."""
        zeros = np.zeros(self.capacity)
        return [self.ops.encrypt(zeros) for _ in range(count)]

    def encrypt_rows_with(
        self, rows: np.ndarray, slots: Sequence[int], zeros: list[Any]
    ) -> list[Any]:
        """The block :meth:`encrypt_rows` makes (``rows`` float64 (n, d) in ``slots``, zero
        elsewhere), its ciphertext j made as ``Z + Encode(plane_j)`` from a fresh
        encryption of zero ``Z`` popped off ``zeros`` (a plaintext encoding and an
        addition, ~7-9x cheaper than an encryption); once ``zeros`` is empty the rest are
        encrypted as usual.

        Why this is an encryption like any other: a CKKS public-key encryption of m IS an
        encryption of zero plus m's encoding (SEAL's ``Encryptor::encrypt`` for CKKS makes
        ``encrypt_zero`` at the plaintext's level and adds the plaintext; both
        ciphertexts here are at the context's first data level and initial scale), so
        ``Z + Encode(m)`` has exactly the distribution of a fresh ``Enc(m)``. The
        condition is that every Z is used once: two ciphertexts sharing a Z would
        subtract to ``Encode(m1 - m2)`` in the clear. Each Z is therefore popped, used
        once and dropped with its list; the caller hands each Z out only once
        (``frip_engine.parallel.ZeroStock``)."""
        plane = np.zeros(self.capacity)
        block = []
        for column in np.asarray(rows, dtype=np.float64).T:
            plane[list(slots)] = column
            block.append(
                self.ops.add_plain(zeros.pop(), plane) if zeros else self.ops.encrypt(plane)
            )
        plane.fill(0.0)
        return block

    def add_delta(self, block: Any, delta: Any) -> list[Any]:
        """``block + delta`` ciphertext by ciphertext: ``delta`` is a block encrypting
        new rows in slots that are empty (zero) in ``block``, so the sum holds both. The
        library refuses ciphertexts of different levels or scales (SEAL's
        ``Evaluator::add`` checks ``parms_id`` and scale): BackendError."""
        old, new = self._ciphertexts(block), self._ciphertexts(delta)
        if len(new) != len(old):
            raise BackendError(f"block has {len(old)} features, rows have {len(new)}")
        try:
            return [self.ops.add(a, b) for a, b in zip(old, new, strict=True)]
        except ValueError as exc:  # TenSEAL: SEAL's parameter or scale mismatch
            raise BackendError(f"cannot add these rows to the block: {exc}") from exc

    def dump_parts(self, block: Any) -> list[bytes]:
        return [self.ops.dump(ct) for ct in block]

    def load_parts(self, parts: list[bytes]) -> Any:
        """The block as this layout scores it: here the library's ciphertexts, one per
        feature."""
        return [self.ops.load(part) for part in parts]

    def _check_features(self, block: Any, features: int) -> None:
        if features != self._features(block):
            raise BackendError(f"probe has {features} features, the block {self._features(block)}")

    def _weighted_sum(self, block: Any, weights: list[tuple[int, float]]) -> bytes:
        if not weights:
            raise BackendError("the probe is zero at this scale")
        return self.ops.dump(self.ops.weighted_sum(block, weights))

    def _weighted_sums(self, block: Any, batch: list[list[tuple[int, float]]]) -> list[bytes]:
        """:meth:`_weighted_sum` of each weight list (a loop here; one pass in the fast
        scorer)."""
        return [self._weighted_sum(block, weights) for weights in batch]

    def _ciphertexts(self, block: Any) -> list[Any]:
        return list(block)

    def _features(self, block: Any) -> int:
        return len(block)

    def score_plain(self, block: Any, probe: np.ndarray) -> bytes:
        self._check_features(block, probe.size)
        return self._weighted_sum(block, plain_weights(probe, self.scale))

    def encrypt_probe(self, probe: np.ndarray) -> list[bytes]:
        return [self.ops.dump(self.ops.encrypt(np.full(self.capacity, v))) for v in probe]

    def score_encrypted(self, block: Any, probe: list[Any]) -> bytes:
        self._check_features(block, len(probe))
        return self.ops.dump(self.ops.product_sum(self._ciphertexts(block), probe))

    def score_pemiu(self, block: Any, probe: np.ndarray, block_size: int) -> bytes:
        """Every (probe block i, gallery block k) inner product, one ciphertext each."""
        return self.score_many(block, [("pe-miu", (probe, block_size))])[0]

    def _pemiu_weights(
        self, block: Any, probe: np.ndarray, block_size: int
    ) -> list[list[tuple[int, float]]]:
        """The weights of each (probe block i, gallery block k) inner product, i-major."""
        self._check_features(block, probe.size)
        blocks = check_block_size(block_size, probe.size)
        pairs = []
        for i in range(blocks):
            part = plain_weights(probe[i * block_size : (i + 1) * block_size], self.scale)
            for k in range(blocks):
                pairs.append([(k * block_size + t, w) for t, w in part])
        return pairs

    def score_many(self, block: Any, probes: Sequence[tuple[str, Any]]) -> list[bytes]:
        """The scores of several parsed plain or pe-miu probes (``(mode, probe)`` as
        :meth:`CKKSMatcher.parse_probe` gives them): every weighted sum of the batch in
        one :meth:`_weighted_sums` call; the same bytes as scoring them one by one."""
        jobs: list[list[tuple[int, float]]] = []
        counts: list[int | None] = []  # None: a plain probe; else pe-miu blocks per side
        for mode, probe in probes:
            if mode == "plain":
                self._check_features(block, probe.size)
                jobs.append(plain_weights(probe, self.scale))
                counts.append(None)
            else:
                vector, block_size = probe
                pairs = self._pemiu_weights(block, vector, block_size)
                jobs.extend(pairs)
                counts.append(vector.size // block_size)
        sums = iter(self._weighted_sums(block, jobs))
        scores: list[bytes] = []
        for blocks in counts:
            if blocks is None:
                scores.append(next(sums))
            else:
                products = [next(sums) for _ in range(blocks * blocks)]
                scores.append(frame(SCORE_SET_TAG, [struct.pack("<I", blocks), *products]))
        return scores

    def decrypt_scores(self, data: bytes) -> np.ndarray:
        """Scores per slot, or for PE-MIU the (blocks, blocks, slots) inner products."""
        if data.startswith(SCORE_SET_TAG):
            head, *pairs = unframe(SCORE_SET_TAG, data)
            (blocks,) = struct.unpack("<I", head)
            if len(pairs) != blocks * blocks:
                raise BackendError("PE-MIU score set is incomplete")
            values = np.stack([self._slots(self.ops.decrypt(self.ops.load(p))) for p in pairs])
            return values.reshape(blocks, blocks, self.capacity)
        return self._slots(self.ops.decrypt(self.ops.load(data)))

    def _slots(self, values: np.ndarray) -> np.ndarray:
        return np.asarray(values[: self.capacity], dtype=np.float64)

    def decrypt_block(self, parts: list[bytes]) -> np.ndarray:
        return np.stack([self._slots(self.ops.decrypt(self.ops.load(p))) for p in parts])


@dataclass
class ResidueBlock:
    """A packed block as loaded for the fast scorer: its residues, decompressed once
    (:class:`frip_plugins.he_backends._fast_scorer.FastBlock`), and the library's
    ciphertexts only if an operation other than a linear combination needs them. The
    serialised parts are not kept: they are rewritten from the residues when needed, so a
    block is held once."""

    fast: Any
    cts: list[Any] | None = None


class FastPackedLayout(PackedLayout):
    """Packed layout whose linear combinations run in a compiled kernel over the raw
    NTT-form residues (bit-identical to the library's own result, see
    tests/test_fast_scorer.py); the library still owns keys, the format and decryption."""

    def __init__(self, ops: CKKSOps, scale: float, codec: Any, threads: int) -> None:
        super().__init__(ops, scale)
        self.codec = codec
        self.threads = threads

    def load_parts(self, parts: list[bytes]) -> ResidueBlock:
        from frip_plugins.he_backends._fast_scorer import FastBlock

        return ResidueBlock(FastBlock.from_parts(self.codec, parts))

    def dump_parts(self, block: Any) -> list[bytes]:
        if not isinstance(block, ResidueBlock):
            return super().dump_parts(block)
        return [block.fast.part(j) for j in range(block.fast.features)]

    def add_delta(self, block: Any, delta: Any) -> Any:
        """:meth:`PackedLayout.add_delta` on residues when both are loaded ones: an
        addition modulo each limb's prime, in numpy (the two were checked at load to be at
        this context's fresh level, ``parms_id``, and scale, so their sum is the
        ciphertext SEAL's addition gives)."""
        if not (isinstance(block, ResidueBlock) and isinstance(delta, ResidueBlock)):
            return super().add_delta(block, delta)
        from frip_plugins.he_backends._fast_scorer import FastBlock

        old, new = block.fast, delta.fast
        if old.residues.shape != new.residues.shape or (old.size, old.version) != (
            new.size,
            new.version,
        ):
            raise BackendError("the rows' ciphertexts are not of the block's shape and level")
        total = old.residues + new.residues  # < 2^62: primes have at most 61 bits
        primes = old.codec.primes[None, None, :, None]
        np.subtract(total, primes, out=total, where=total >= primes)
        return ResidueBlock(FastBlock(old.codec, total, old.size, old.version, check=False))

    def _ciphertexts(self, block: Any) -> list[Any]:
        if not isinstance(block, ResidueBlock):
            return list(block)
        if block.cts is None:
            block.cts = super().load_parts(self.dump_parts(block))
        return block.cts

    def _features(self, block: Any) -> int:
        return int(block.fast.features) if isinstance(block, ResidueBlock) else len(block)

    def _weighted_sum(self, block: Any, weights: list[tuple[int, float]]) -> bytes:
        if not isinstance(block, ResidueBlock):
            return super()._weighted_sum(block, weights)
        if not weights:
            raise BackendError("the probe is zero at this scale")
        return bytes(block.fast.weighted_sum(weights, self.threads))

    def _weighted_sums(self, block: Any, batch: list[list[tuple[int, float]]]) -> list[bytes]:
        if not isinstance(block, ResidueBlock):
            return super()._weighted_sums(block, batch)
        if not all(batch):
            raise BackendError("the probe is zero at this scale")
        return list(block.fast.weighted_sums(batch, self.threads))

    def score_shares(self, block: ResidueBlock, shares: Sequence[np.ndarray]) -> list[bytes]:
        """The block's encrypted scores for each share (uint64 (limbs, d) residues), in
        one pass over the block."""
        for share in shares:
            self._check_features(block, share.shape[1])
        return list(block.fast.combine_limbs(np.stack(shares), self.threads))


@dataclass
class Registrants:
    """A round-robin block: one ciphertext (or None) per slot, each holding d features."""

    dimension: int
    cts: list[Any]


class RoundRobinLayout:
    """One ciphertext per registrant (features in slots 0..d-1), the paper's baseline."""

    name = "round-robin"

    def __init__(self, ops: CKKSOps, capacity: int) -> None:
        self.ops = ops
        self.capacity = capacity

    def encrypt_rows(self, rows: np.ndarray, slots: Sequence[int]) -> Registrants:
        empty = Registrants(np.asarray(rows).shape[1], [None] * self.capacity)
        return self.add_rows(empty, rows, slots)

    def add_rows(self, block: Registrants, rows: np.ndarray, slots: Sequence[int]) -> Registrants:
        rows = np.asarray(rows, dtype=np.float64)
        if rows.shape[1] != block.dimension:
            raise BackendError(f"block has {block.dimension} features, rows {rows.shape[1]}")
        cts = list(block.cts)
        for slot, row in zip(slots, rows, strict=True):
            fresh = self.ops.encrypt(row)
            cts[slot] = fresh if cts[slot] is None else self.ops.add(cts[slot], fresh)
        return Registrants(block.dimension, cts)

    def dump_parts(self, block: Registrants) -> list[bytes]:
        head = struct.pack("<I", block.dimension)
        return [head] + [b"" if ct is None else self.ops.dump(ct) for ct in block.cts]

    def load_parts(self, parts: list[bytes]) -> Registrants:
        if len(parts) != self.capacity + 1 or len(parts[0]) != 4:
            raise BackendError(f"round-robin block does not hold {self.capacity} slots")
        (dimension,) = struct.unpack("<I", parts[0])
        return Registrants(dimension, [self.ops.load(p) if p else None for p in parts[1:]])

    def _distances(self, block: Registrants, probe: Any) -> bytes:
        return frame(
            SCORE_SET_TAG,
            [b""]
            + [
                b""
                if ct is None
                else self.ops.dump(self.ops.squared_distance(ct, probe, block.dimension))
                for ct in block.cts
            ],
        )

    def score_plain(self, block: Registrants, probe: np.ndarray) -> bytes:
        if probe.size != block.dimension:
            raise BackendError(f"probe has {probe.size} features, the block {block.dimension}")
        return self._distances(block, probe)

    def encrypt_probe(self, probe: np.ndarray) -> list[bytes]:
        return [self.ops.dump(self.ops.encrypt(probe))]

    def score_encrypted(self, block: Registrants, probe: list[Any]) -> bytes:
        if len(probe) != 1:
            raise BackendError("a round-robin encrypted probe is one ciphertext")
        return self._distances(block, probe[0])

    def score_pemiu(self, block: Registrants, probe: np.ndarray, block_size: int) -> bytes:
        raise BackendError("the pe-miu probe mode needs the packed layout")

    def decrypt_scores(self, data: bytes) -> np.ndarray:
        """Unit vectors: cosine = 1 - distance^2 / 2; empty slots score 0."""
        _, *parts = unframe(SCORE_SET_TAG, data)
        if len(parts) != self.capacity:
            raise BackendError(f"round-robin scores do not cover {self.capacity} slots")
        scores = np.zeros(self.capacity)
        for slot, part in enumerate(parts):
            if part:
                scores[slot] = 1.0 - float(self.ops.decrypt(self.ops.load(part))[0]) / 2.0
        return scores

    def decrypt_block(self, parts: list[bytes]) -> np.ndarray:
        block = self.load_parts(parts)
        out = np.zeros((block.dimension, self.capacity))
        for slot, ct in enumerate(block.cts):
            if ct is not None:
                out[:, slot] = self.ops.decrypt(ct)[: block.dimension]
        return out


# ------------------------------------------------------------------ matcher, decryptor
Layout = PackedLayout | RoundRobinLayout


class CKKSMatcher:
    """Public context only: encrypts, adds and scores; holds no secret key.

    It takes one probe mode only: a pe-miu engine's matcher (``pemiu_block_size`` set)
    refuses plain uploads, which would be unshuffled probes, and pe-miu uploads of another
    block size, which would score garbage against its gallery; others refuse pe-miu uploads.
    """

    def __init__(
        self, backend: CKKSBackend, public_context: bytes, pemiu_block_size: int | None = None
    ) -> None:
        if pemiu_block_size is not None and "pe-miu" not in backend.probe_modes:
            raise BackendError(f"{backend.description} has no pe-miu probe mode")
        self.ops = backend.library.open(backend.params, public_context)
        self.layout = backend.layout_for(self.ops)
        self.tag = backend.block_tag
        self.probe_transport = backend.probe
        self.probe_mode = backend.probe if pemiu_block_size is None else "pe-miu"
        self.pemiu_block_size = pemiu_block_size
        self.slots = self.layout.capacity

    def encrypt_rows(self, rows: np.ndarray, slots: Sequence[int]) -> Any:
        return self.layout.encrypt_rows(rows, slots)

    def add_rows(self, block: Any, rows: np.ndarray, slots: Sequence[int]) -> Any:
        return self.layout.add_rows(block, rows, slots)

    @property
    def deltas(self) -> bool:
        """Whether this matcher adds an enrolment as a delta (:meth:`encrypt_zeros`,
        :meth:`encrypt_rows_with`, :meth:`add_delta`): the packed layout, where new rows
        touch every ciphertext of the block. The round-robin layout does not: an
        enrolment there encrypts only its own registrants' ciphertexts already."""
        return isinstance(self.layout, PackedLayout)

    def encrypt_zeros(self, count: int) -> list[Any]:
        """``count`` fresh encryptions of zero (:meth:`PackedLayout.encrypt_zeros`)."""
        return self._packed().encrypt_zeros(count)

    def encrypt_rows_with(self, rows: np.ndarray, slots: Sequence[int], zeros: list[Any]) -> Any:
        """:meth:`encrypt_rows` from fresh encryptions of zero popped off ``zeros``
        (:meth:`PackedLayout.encrypt_rows_with`, which says why it is secure)."""
        return self._packed().encrypt_rows_with(rows, slots, zeros)

    def add_delta(self, block: Any, delta: Any) -> Any:
        """``block`` with the rows of ``delta`` (a block of new rows only) added: the
        block an enrolment of those rows into it commits (BackendError for blocks of
        another shape, level or scale)."""
        return self._packed().add_delta(block, delta)

    def _packed(self) -> PackedLayout:
        if not isinstance(self.layout, PackedLayout):
            raise BackendError(f"the {self.layout.name} layout adds no enrolment deltas")
        return self.layout

    def dump(self, block: Any) -> bytes:
        return frame(self.tag, self.layout.dump_parts(block))

    def load(self, data: bytes) -> Any:
        return self.layout.load_parts(unframe(self.tag, data))

    def encode_probe(self, probe: np.ndarray | PemiuTemplate) -> bytes:
        """The edge's upload: the probe in the engine's probe mode (public key only)."""
        if isinstance(probe, PemiuTemplate):
            head = struct.pack("<I", probe.block_size)
            return _probe_payload("pe-miu", [head, _floats(probe.vector)])
        vector = np.asarray(probe, dtype=np.float64)
        if self.probe_transport == "encrypted":
            return _probe_payload("encrypted", self.layout.encrypt_probe(vector))
        return _probe_payload("plain", [_floats(vector)])

    def parse_probe(self, payload: bytes) -> tuple[str, Any]:
        """Parse an upload once per identification (a block scores it without re-parsing)."""
        mode, parts = read_probe(payload)
        if mode != self.probe_mode:
            raise BackendError(
                f"this engine takes {self.probe_mode} probes, the upload is a {mode} probe"
            )
        if mode == "pe-miu":
            if len(parts) != 2 or len(parts[0]) != 4:
                raise BackendError("pe-miu probe payload is malformed")
            (block_size,) = struct.unpack("<I", parts[0])
            if block_size != self.pemiu_block_size:
                raise BackendError(
                    f"the pe-miu probe has block size {block_size}, this engine's templates "
                    f"{self.pemiu_block_size}: protect the probe with the engine's block size"
                )
            vector = _read_floats(parts[1], "pe-miu probe")
            check_block_size(block_size, vector.size)
            return mode, (vector, block_size)
        if mode == "plain":
            if len(parts) != 1:
                raise BackendError("plain probe payload is malformed")
            return mode, _read_floats(parts[0], "plain probe")
        return mode, [self.ops.load(part) for part in parts]

    def score_many(self, block: Any, parsed: Sequence[tuple[str, Any]]) -> list[bytes]:
        """The scores of several parsed probes on one block, in order, each the bytes
        :meth:`score` gives: plain and pe-miu probes of the packed layout in one pass over
        the block (the fast scorer's batch kernel), others one by one."""
        batch = getattr(self.layout, "score_many", None)
        if batch is None or any(mode == "encrypted" for mode, _ in parsed):
            return [self.score(block, p) for p in parsed]
        return list(batch(block, parsed))

    def score(self, block: Any, parsed: tuple[str, Any]) -> bytes:
        mode, probe = parsed
        if mode == "plain":
            return self.layout.score_plain(block, probe)
        if mode == "encrypted":
            return self.layout.score_encrypted(block, probe)
        vector, block_size = probe
        return self.layout.score_pemiu(block, vector, block_size)


@dataclass(frozen=True)
class ParsedShare:
    """One matcher's share of a probe: its nonce, party and residues (limbs, d)."""

    nonce: bytes
    party: bytes
    residues: np.ndarray


class SharedCKKSMatcher(CKKSMatcher):
    """The ``shared`` probe mode's matcher: takes one additive share of a probe (never a
    plain probe, never both shares) and answers with its encrypted scores in an envelope
    that binds them to the probe's nonce, its party and its public context
    (:class:`frip_engine.sharing.ShareResult`). The edge's side, :meth:`encode_shares`,
    needs the public parameters only."""

    def __init__(self, backend: CKKSBackend, public_context: bytes) -> None:
        super().__init__(backend, public_context)
        self.fingerprint = fingerprint(public_context)
        layout = self.layout
        assert isinstance(layout, FastPackedLayout)  # the backend refuses anything else
        self.fast_layout = layout
        self.primes = [int(p) for p in layout.codec.primes]

    def encode_shares(self, probe: np.ndarray) -> SharedProbe:
        """The edge's two shares of a plain probe (d,): its constants k_j as the plain probe
        mode encodes them, split per limb into a_j uniform in Z_p and b_j = k_j - a_j."""
        from frip_plugins.he_backends._fast_scorer import encode_constants

        vector = np.asarray(probe, dtype=np.float64)
        if vector.ndim != 1:
            raise ShareError(f"a probe is one vector, not an array of shape {vector.shape}")
        constants = encode_constants(vector, self.fast_layout.codec.scale)
        if not np.any(constants):
            raise BackendError("the probe is zero at this scale")
        a, b = split(constants, self.primes)
        nonce = secrets.token_bytes(16)
        return SharedProbe(nonce, self._share(nonce, b"A", a), self._share(nonce, b"B", b))

    def _share(self, nonce: bytes, party: bytes, residues: np.ndarray) -> bytes:
        primes = np.array(self.primes, dtype="<u8").tobytes()
        body = np.ascontiguousarray(residues, dtype="<u8").tobytes()
        return _probe_payload("share", [nonce, party, primes, body])

    def encode_probe(self, probe: np.ndarray | PemiuTemplate) -> bytes:
        """Both shares, bundled for the edge's own use (:class:`SharedProbe`): the engine
        sends each to its own matcher; a matcher refuses the bundle."""
        if isinstance(probe, PemiuTemplate):
            raise BackendError("the shared probe mode takes plain probes, not pe-miu ones")
        return self.encode_shares(probe).to_bytes()

    def parse_probe(self, payload: bytes) -> tuple[str, ParsedShare]:
        """One share, checked: its limbs and moduli are this context's, every residue is
        below its prime. ShareError for anything else (a plain probe, both shares)."""
        if bytes(payload[: len(BUNDLE_TAG)]) == BUNDLE_TAG:
            raise ShareError("a matcher takes one share, never the edge's bundle of both")
        try:
            mode, parts = read_probe(payload)
        except BackendError as exc:
            raise ShareError(f"not a probe share: {exc}") from exc
        if mode != "share":
            raise ShareError(f"this engine takes shared probes, the upload is a {mode} probe")
        if len(parts) != 4 or len(parts[0]) != 16 or parts[1] not in (b"A", b"B"):
            raise ShareError("a probe share is a 16-byte nonce, a party, moduli and residues")
        nonce, party, moduli, body = parts
        primes = np.frombuffer(moduli, dtype="<u8") if len(moduli) % 8 == 0 else None
        if primes is None or primes.tolist() != self.primes:
            raise ShareError(
                f"the share is modulo {[] if primes is None else primes.tolist()}, this "
                f"context's data primes are {self.primes}: another parameter set"
            )
        limbs = len(self.primes)
        if len(body) == 0 or len(body) % (8 * limbs):
            raise ShareError(f"the share's residues do not fill {limbs} limbs: truncated")
        residues = np.frombuffer(body, dtype="<u8").astype(np.uint64).reshape(limbs, -1)
        if np.any(residues >= np.array(self.primes, dtype=np.uint64)[:, None]):
            raise ShareError("the share holds a residue >= its prime: not a share")
        return "share", ParsedShare(nonce, party, residues)

    def score_many(self, block: Any, parsed: Sequence[Any]) -> list[bytes]:
        """Each share's :class:`ShareResult` on the block, in one pass over it."""
        shares = [share for _, share in parsed]
        if not all(isinstance(share, ParsedShare) for share in shares):
            raise ShareError("a shared-mode matcher scores probe shares only")
        for share in shares:
            if share.residues.shape[1] != self.fast_layout._features(block):
                raise ShareError(
                    f"the share has {share.residues.shape[1]} features, the block "
                    f"{self.fast_layout._features(block)}"
                )
        sums = self.fast_layout.score_shares(block, [share.residues for share in shares])
        return [
            ShareResult(share.nonce, share.party, self.fingerprint, s).to_bytes()
            for share, s in zip(shares, sums, strict=True)
        ]

    def score(self, block: Any, parsed: Any) -> bytes:
        return self.score_many(block, [parsed])[0]


class CKKSDecryptor:
    """Secret context for one operation inside the key service."""

    def __init__(self, backend: CKKSBackend, public: bytes, secret: bytearray) -> None:
        self.layout: Layout | None = backend.layout_for(
            backend.library.open(backend.params, public, secret)
        )
        self.tag = backend.block_tag

    def _layout(self) -> Layout:
        if self.layout is None:
            raise BackendError("this decryptor was closed")
        return self.layout

    def decrypt_scores(self, scores: bytes) -> np.ndarray:
        if scores.startswith(RESULT_TAG):
            raise ShareError("one matcher's scores of one share decide nothing: refused")
        return self._layout().decrypt_scores(scores)

    def decrypt_sum(self, a: bytes, b: bytes) -> np.ndarray:
        """The scores of the sum of two score ciphertexts (the two matchers' results of a
        shared probe): the library adds them (mod q per limb) and decrypts."""
        layout = self._layout()
        if not isinstance(layout, PackedLayout):
            raise ShareError("shared probes are scored on the packed layout only")
        total = layout.ops.add(layout.ops.load(a), layout.ops.load(b))
        return layout._slots(layout.ops.decrypt(total))

    def decrypt_block(self, data: bytes) -> np.ndarray:
        return self._layout().decrypt_block(unframe(self.tag, data))

    def close(self) -> None:
        self.layout = None  # drops the library's secret context


class CKKSBackend:
    """A library x layout x probe transport; subclasses name the library and block tags."""

    name: str
    library: CKKSLibrary
    packed_tag: bytes
    round_robin_tag: bytes
    encrypted = True

    def __init__(
        self,
        preset: str = "fast",
        poly_modulus_degree: int | None = None,
        coeff_mod_bit_sizes: list[int] | None = None,
        scale_bits: int | None = None,
        layout: str = "packed",
        probe: str = "plain",
        block_registrants: int = 128,
        scorer: str = "library",
        scorer_threads: int = 1,
    ) -> None:
        self.params = params_from(preset, poly_modulus_degree, coeff_mod_bit_sizes, scale_bits)
        if layout not in LAYOUTS:
            raise ProfileError(f"{self.name}: layout must be one of {LAYOUTS}, not {layout!r}")
        if probe not in PROBES:
            raise ProfileError(f"{self.name}: probe must be one of {PROBES}, not {probe!r}")
        if isinstance(block_registrants, bool) or not isinstance(block_registrants, int):
            raise ProfileError(f"{self.name}: block_registrants must be an integer")
        if not 1 <= block_registrants <= 4096:
            raise ProfileError(f"{self.name}: block_registrants must be 1 to 4096")
        data_bits = sum(self.params.coeff_mod_bit_sizes[:-1])
        if layout == "round-robin" and 2 * self.params.scale_bits + 4 > data_bits:
            raise ProfileError(
                f"{self.name}: {self.params.describe()} cannot hold round-robin squared "
                f"distances (up to 4 at scale 2^{2 * self.params.scale_bits}, "
                f"{data_bits}-bit data modulus): use preset 'paper' or 'precise'"
            )
        if scorer not in SCORERS:
            raise ProfileError(f"{self.name}: scorer must be one of {SCORERS}, not {scorer!r}")
        if probe == "shared" and (scorer != "fast" or layout != "packed"):
            raise ProfileError(
                f"{self.name}: the shared probe mode needs the packed layout and the fast "
                'scorer (scorer = "fast"), whose kernel takes its residue constants'
            )
        if scorer == "fast" and (layout != "packed" or not hasattr(self.library, "fast_codec")):
            raise ProfileError(
                f"{self.name}: the fast scorer works on the packed layout of a library whose "
                "ciphertext format it reads (tenseal, pyfhel)"
            )
        if isinstance(scorer_threads, bool) or not isinstance(scorer_threads, int):
            raise ProfileError(f"{self.name}: scorer_threads must be an integer")
        if scorer_threads < 1:
            raise ProfileError(f"{self.name}: scorer_threads must be at least 1")
        self.scorer = scorer
        self.scorer_threads = scorer_threads
        self.layout = layout
        self.probe = probe
        self.block_registrants = block_registrants
        self.block_tag = self.packed_tag if layout == "packed" else self.round_robin_tag
        self.probe_modes = frozenset(
            {"plain", "pe-miu"} if layout == "packed" and probe == "plain" else {"plain"}
        )

    @property
    def description(self) -> str:
        scorer = ", fast scorer" if self.scorer == "fast" else ""
        return (
            f"{self.library.name} {self.params.describe()}, {self.layout}, {self.probe} probe"
            f"{scorer}"
        )

    def security_check(self) -> None:
        self.params.check()

    def slots(self) -> int:
        return self.params.slots if self.layout == "packed" else self.block_registrants

    def block_bytes(self, dimension: int) -> int:
        """A lower bound on one serialised block: its ciphertexts (one per feature packed,
        one per registrant round-robin) x 2 polynomials x N coefficients x the data primes'
        bits (fresh ciphertexts carry every prime but the special one; residues modulo a
        prime do not compress below its bit size)."""
        count = dimension if self.layout == "packed" else self.block_registrants
        data_bits = sum(self.params.coeff_mod_bit_sizes[:-1])
        return count * 2 * self.params.poly_modulus_degree * data_bits // 8

    def layout_for(self, ops: CKKSOps) -> Layout:
        scale = 2.0**self.params.scale_bits
        if self.scorer == "fast":
            codec = self.library.fast_codec(ops)  # type: ignore[attr-defined]
            return FastPackedLayout(ops, scale, codec, self.scorer_threads)
        if self.layout == "packed":
            return PackedLayout(ops, scale)
        return RoundRobinLayout(ops, self.block_registrants)

    def keygen(self) -> tuple[bytes, bytearray]:
        return self.library.keygen(self.params, evaluation_keys=self.layout == "round-robin")

    def matcher(self, public_context: bytes, pemiu_block_size: int | None = None) -> CKKSMatcher:
        if self.probe == "shared":
            if pemiu_block_size is not None:
                raise BackendError(f"{self.description} has no pe-miu probe mode")
            return SharedCKKSMatcher(self, public_context)
        return CKKSMatcher(self, public_context, pemiu_block_size)

    def decryptor(self, public_context: bytes, secret_context: bytearray) -> CKKSDecryptor:
        return CKKSDecryptor(self, public_context, secret_context)
