"""Fast plain-probe scoring of a packed TenSEAL block on the ciphertexts' raw residues.

A plain-probe score is ``sum_j k_j * ct_j`` with SEAL's integer encoding of each constant,
``k_j = round_half_away_from_zero(q_j * scale)``. In NTT form that is, per residue limb, a
matrix-vector product over Z_p, which TenSEAL runs as 512 separate multiply-and-add calls
under the GIL. This module computes the same sum in one fused numba pass over the block's
residues, kept decompressed in an aligned array, and writes the result back as a TenSEAL
CKKSVector: the result is bit-identical to TenSEAL's own sum, and TenSEAL still owns the
keys, encryption, decryption and the format.

- :class:`SealCodec` reads and writes bare SEAL ciphertext blobs (Pyfhel's format),
  :class:`TenSEALCodec` serialised CKKSVectors (protobuf around one such blob); both
  validate everything a foreign or damaged blob could get wrong.
- :func:`combine_residues` is the exact kernel.
- :class:`FastBlock` holds one block's residues so a probe only runs the kernel and
  writes one ciphertext.

Threads default to 1 because the engine already runs one worker process per core; the
kernel releases the GIL (``nogil``) so a caller may also run blocks on Python threads.
The kernels live in :mod:`frip_plugins.he_backends._fast_kernels` (numba is imported on
first use only) and are cached on disk, see there.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from frip_engine.errors import BackendError
from frip_plugins.he_backends._pieces import ACCUMULATORS, PIECE_BITS, PIECE_MASK, PIECES

SEAL_MAGIC = 0xA15E
SEAL_HEADER = struct.Struct("<HBBBBHQ")  # magic, header size, major, minor, compr, reserved, size
SEAL_VERSION_MAJOR = 4
COMPR_NONE = 0
COMPR_ZSTD = 2
CIPHERTEXT_META = struct.Struct("<4QBQQQdQ")  # parms_id, ntt, size, N, limbs, scale, correction
COUNT = struct.Struct("<Q")
F64 = struct.Struct("<d")

MAX_CONSTANT = 2.0**62  # |q * scale| beyond this does not fit the int64 constants
# Constant vectors summed in one pass over a block (results: 32 x one ciphertext, 4 MB at
# N = 8192 and one limb); a pe-miu probe's 256 block pairs take 8 passes.
PASS_VECTORS = 32


# ---------------------------------------------------------------------------- codec
@dataclass(frozen=True)
class VectorInfo:
    """What a serialised CKKSVector says about itself besides its residues."""

    size: int  # encrypted vector length (TenSEAL's field 1)
    init_scale: float  # the scale TenSEAL encodes constants at (field 3)
    scale: float  # the SEAL ciphertext's scale
    version: tuple[int, int]  # SEAL serialisation version, written back unchanged


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = 0
    for shift in range(0, 70, 7):
        if pos >= len(data):
            raise BackendError("CKKSVector is truncated (varint)")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
    raise BackendError("CKKSVector has an overlong varint")


def _put_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _parse_vector(data: bytes) -> tuple[list[int], list[bytes], float | None]:
    """TenSEAL's CKKSVectorProto: sizes (1), SEAL blobs (2), init scale (3); nothing else."""
    sizes: list[int] = []
    blobs: list[bytes] = []
    scale: float | None = None
    pos = 0
    view = memoryview(data)
    while pos < len(data):
        key, pos = _varint(data, pos)
        field, wire = key >> 3, key & 7
        if field == 1 and wire == 0:
            value, pos = _varint(data, pos)
            sizes.append(value)
        elif field in (1, 2) and wire == 2:
            length, pos = _varint(data, pos)
            if pos + length > len(data):
                raise BackendError("CKKSVector is truncated")
            if field == 1:
                end, inner = pos + length, pos
                while inner < end:
                    value, inner = _varint(data, inner)
                    sizes.append(value)
                if inner != end:
                    raise BackendError("CKKSVector sizes are malformed")
            else:
                blobs.append(bytes(view[pos : pos + length]))
            pos += length
        elif field == 3 and wire == 1:
            if pos + 8 > len(data):
                raise BackendError("CKKSVector is truncated (scale)")
            (scale,) = F64.unpack_from(data, pos)
            pos += 8
        else:
            raise BackendError(
                f"not a TenSEAL CKKSVector (field {field}, wire type {wire}): foreign data"
            )
    return sizes, blobs, scale


def _zstd() -> Any:
    try:
        import zstandard
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise BackendError(
            "reading TenSEAL ciphertexts needs the zstandard package (pip install zstandard)"
        ) from exc
    return zstandard


def _decompress(payload: bytes, expected: int) -> bytes:
    """A zstd frame of exactly ``expected`` bytes; a frame claiming more is refused before
    any allocation (``decompress`` trusts the declared content size)."""
    zstandard = _zstd()
    try:
        declared = zstandard.frame_content_size(payload)
        if declared not in (-1, expected):
            raise BackendError(
                f"SEAL blob decompresses to {declared} bytes, this context's to {expected}: "
                "from another parameter set"
            )
        body = zstandard.ZstdDecompressor().decompress(
            payload, max_output_size=expected, allow_extra_data=False
        )
    except zstandard.ZstdError as exc:
        raise BackendError(f"SEAL blob is not a valid zstd stream: {exc}") from exc
    if len(body) != expected:
        raise BackendError(
            f"SEAL blob decompresses to {len(body)} bytes, this context's to {expected}: "
            "truncated, or from another parameter set"
        )
    return bytes(body)


class SealCodec:
    """Reads and writes one context's fresh-level SEAL ciphertexts as uint64 residues."""

    def __init__(
        self,
        poly_modulus_degree: int,
        primes: Sequence[int],
        parms_id: Sequence[int],
        scale: float,
    ) -> None:
        if len(parms_id) != 4 or not primes:
            raise BackendError("a codec needs a 4-word parms_id and at least one prime")
        if any(not 1 < p < 2**61 for p in primes):
            raise BackendError("SEAL primes have at most 61 bits")
        if not (math.isfinite(scale) and scale > 0):
            raise BackendError(f"invalid CKKS scale {scale}")
        self.poly_modulus_degree = int(poly_modulus_degree)
        self.primes = np.array([int(p) for p in primes], dtype=np.uint64)
        self.parms_id = tuple(int(w) for w in parms_id)
        self.scale = float(scale)
        self.limbs = len(primes)
        self.count = 2 * self.limbs * self.poly_modulus_degree
        self.body_size = CIPHERTEXT_META.size + SEAL_HEADER.size + COUNT.size + 8 * self.count

    @property
    def shape(self) -> tuple[int, int, int]:
        return (2, self.limbs, self.poly_modulus_degree)

    def read(
        self, data: bytes, out: np.ndarray | None = None, scale: float | None = None
    ) -> tuple[np.ndarray, VectorInfo]:
        """Residues (2, limbs, N) of a bare SEAL blob, and what it says about itself."""
        residues, ct_scale, version = self.read_seal(bytes(data), out, scale)
        return residues, VectorInfo(self.poly_modulus_degree // 2, self.scale, ct_scale, version)

    def read_seal(
        self, blob: bytes, out: np.ndarray | None = None, scale: float | None = None
    ) -> tuple[np.ndarray, float, tuple[int, int]]:
        """Residues, scale and version of a bare SEAL ciphertext blob (TenSEAL wraps one in
        protobuf; Pyfhel's ``PyCtxt.to_bytes`` is one as it is)."""
        body, version = self._open_blob(blob)
        ct_scale = self._check_meta(body, self.scale if scale is None else scale)
        return self._residues(body, out), ct_scale, version

    def _open_blob(self, blob: bytes) -> tuple[bytes, tuple[int, int]]:
        if len(blob) < SEAL_HEADER.size:
            raise BackendError("SEAL blob is truncated (header)")
        magic, head, major, minor, compr, reserved, size = SEAL_HEADER.unpack_from(blob)
        if magic != SEAL_MAGIC or head != SEAL_HEADER.size or reserved != 0:
            raise BackendError("not a SEAL blob (bad header): foreign data")
        if major != SEAL_VERSION_MAJOR:
            raise BackendError(f"SEAL serialisation version {major}.{minor} is not supported")
        if size != len(blob):
            raise BackendError(f"SEAL blob says {size} bytes but has {len(blob)}: truncated")
        payload = blob[SEAL_HEADER.size :]
        if compr == COMPR_ZSTD:
            body = _decompress(payload, self.body_size)
        elif compr == COMPR_NONE:
            body = payload
        else:
            raise BackendError(f"SEAL compression mode {compr} is not supported")
        if len(body) != self.body_size:
            raise BackendError(
                f"SEAL ciphertext has {len(body)} bytes, this context's have {self.body_size}: "
                "truncated, or from another parameter set"
            )
        return body, (major, minor)

    def _check_meta(self, body: bytes, expected_scale: float) -> float:
        *parms_id, ntt, size, degree, limbs, scale, correction = CIPHERTEXT_META.unpack_from(body)
        if tuple(parms_id) != self.parms_id:
            raise BackendError("ciphertext is from another parameter set (parms_id differs)")
        if ntt != 1:
            raise BackendError("ciphertext is not in NTT form: not a CKKS ciphertext")
        if size != 2:
            raise BackendError(f"ciphertext has {size} polynomials, a fresh one has 2")
        if degree != self.poly_modulus_degree or limbs != self.limbs:
            raise BackendError(
                f"ciphertext is N={degree} with {limbs} limbs, the context "
                f"N={self.poly_modulus_degree} with {self.limbs}: another parameter set"
            )
        if correction != 1:
            raise BackendError(f"ciphertext correction factor is {correction}, not 1")
        if scale != expected_scale:
            raise BackendError(f"ciphertext scale is {scale}, expected {expected_scale}")
        at = CIPHERTEXT_META.size
        magic, head, major, _, compr, reserved, array_size = SEAL_HEADER.unpack_from(body, at)
        (count,) = COUNT.unpack_from(body, at + SEAL_HEADER.size)
        if (
            magic != SEAL_MAGIC
            or head != SEAL_HEADER.size
            or major != SEAL_VERSION_MAJOR
            or compr != COMPR_NONE
            or reserved != 0
            or array_size != SEAL_HEADER.size + COUNT.size + 8 * self.count
            or count != self.count
        ):
            raise BackendError("ciphertext data array header is damaged")
        return float(scale)

    def _residues(self, body: bytes, out: np.ndarray | None) -> np.ndarray:
        offset = CIPHERTEXT_META.size + SEAL_HEADER.size + COUNT.size
        raw = np.frombuffer(body, dtype="<u8", count=self.count, offset=offset)
        if out is None:
            out = np.empty(self.shape, dtype=np.uint64)
        elif out.shape != self.shape or out.dtype != np.uint64:
            raise BackendError(f"residue buffer must be uint64 {self.shape}")
        out[...] = raw.reshape(self.shape)  # the copy also aligns (SEAL's offset is odd)
        self.check_residues(out)
        return out

    def check_residues(self, residues: np.ndarray) -> None:
        """SEAL refuses any residue >= its prime: so do we, before it reaches the kernel."""
        if residues.shape[-2:] != self.shape[1:]:
            raise BackendError(f"residues must end in {self.shape[1:]}, not {residues.shape}")
        if np.any(residues >= self.primes[:, None]):
            raise BackendError("ciphertext holds a residue >= its prime: damaged")

    def write(
        self, residues: np.ndarray, size: int, scale: float, version: tuple[int, int]
    ) -> bytes:
        """A bare SEAL blob (``size`` is implied: every slot)."""
        return self.write_seal(residues, scale, version)

    def write_seal(self, residues: np.ndarray, scale: float, version: tuple[int, int]) -> bytes:
        """A bare, uncompressed SEAL ciphertext blob of this context's fresh level."""
        residues = np.asarray(residues)
        if residues.shape != self.shape or residues.dtype != np.uint64:
            raise BackendError(f"result residues must be uint64 {self.shape}")
        self.check_residues(residues)
        if not (math.isfinite(scale) and scale > 0):
            raise BackendError(f"invalid result scale {scale}")
        data = residues.astype("<u8", copy=False).tobytes()
        array_size = SEAL_HEADER.size + COUNT.size + len(data)
        blob_size = SEAL_HEADER.size + CIPHERTEXT_META.size + array_size
        major, minor = version
        return b"".join(
            (
                SEAL_HEADER.pack(
                    SEAL_MAGIC, SEAL_HEADER.size, major, minor, COMPR_NONE, 0, blob_size
                ),
                CIPHERTEXT_META.pack(
                    *self.parms_id, 1, 2, self.poly_modulus_degree, self.limbs, scale, 1
                ),
                SEAL_HEADER.pack(
                    SEAL_MAGIC, SEAL_HEADER.size, major, minor, COMPR_NONE, 0, array_size
                ),
                COUNT.pack(self.count),
                data,
            )
        )


class TenSEALCodec(SealCodec):
    """Reads and writes one context's fresh-level CKKSVectors (TenSEAL's protobuf around
    one SEAL blob) as uint64 residue arrays."""

    @classmethod
    def from_context(cls, context: Any) -> TenSEALCodec:
        """The codec of a TenSEAL context (public or secret): its first data level, where
        fresh ciphertexts live (special prime dropped), and its global scale."""
        try:
            import tenseal.sealapi  # noqa: F401  (registers seal::Modulus with pybind11)

            data = context.seal_context().data.first_context_data()
            parms = data.parms()
            primes = [m.value() for m in parms.coeff_modulus()]
            return cls(parms.poly_modulus_degree(), primes, data.parms_id(), context.global_scale)
        except BackendError:
            raise
        except Exception as exc:
            raise BackendError(f"cannot read the TenSEAL context's parameters: {exc}") from exc

    def read(
        self, data: bytes, out: np.ndarray | None = None, scale: float | None = None
    ) -> tuple[np.ndarray, VectorInfo]:
        """Residues (2, limbs, N) of a serialised CKKSVector, written into ``out`` if given.

        ``scale`` is the SEAL scale expected (default: a fresh ciphertext's, the context's
        scale); every field SEAL would check on load is checked here too."""
        sizes, blobs, init_scale = _parse_vector(bytes(data))
        if len(blobs) != 1 or len(sizes) != 1:
            raise BackendError(
                f"CKKSVector has {len(blobs)} ciphertexts and {len(sizes)} sizes, not one chunk"
            )
        if not 1 <= sizes[0] <= self.poly_modulus_degree // 2:
            raise BackendError(f"CKKSVector size {sizes[0]} does not fit one ciphertext")
        residues, ct_scale, version = self.read_seal(blobs[0], out, scale)
        if init_scale != self.scale:
            raise BackendError(
                f"CKKSVector init scale {init_scale} is not the context's {self.scale}"
            )
        return residues, VectorInfo(sizes[0], init_scale, ct_scale, version)

    def write(
        self, residues: np.ndarray, size: int, scale: float, version: tuple[int, int]
    ) -> bytes:
        """A serialised CKKSVector (uncompressed SEAL blob, which TenSEAL loads) holding
        ``residues`` at SEAL scale ``scale``; its init scale is the context's."""
        if not 1 <= size <= self.poly_modulus_degree // 2:
            raise BackendError(f"vector size {size} does not fit one ciphertext")
        blob = self.write_seal(residues, scale, version)
        sizes = _put_varint(size)
        return b"".join(
            (
                b"\x0a",
                _put_varint(len(sizes)),
                sizes,
                b"\x12",
                _put_varint(len(blob)),
                blob,
                b"\x19",
                F64.pack(self.scale),
            )
        )


class PyfhelCodec(SealCodec):
    """Pyfhel's ``PyCtxt.to_bytes``: a bare SEAL blob, which it saves uncompressed."""

    @classmethod
    def from_pyfhel(cls, he: Any) -> PyfhelCodec:
        """The codec of a Pyfhel context. A context loaded from bytes exposes neither its
        primes nor SEAL's parms_id: the primes follow from the chain's bit sizes (SEAL's
        deterministic choice, :func:`seal_primes`) and the parms_id is read from a fresh
        encryption of zeros, whose level every fresh ciphertext shares."""
        try:
            blob = bytes(he.encryptFrac(np.zeros(1)).to_bytes("none"))
            degree, scale = int(he.get_poly_modulus_degree()), float(he.scale)
            primes = seal_primes(degree, [int(bits) for bits in he.qi_sizes])
        except BackendError:
            raise
        except Exception as exc:
            raise BackendError(f"cannot read the Pyfhel context's parameters: {exc}") from exc
        if len(blob) < SEAL_HEADER.size + CIPHERTEXT_META.size:
            raise BackendError("Pyfhel wrote a truncated ciphertext")
        *parms_id, _, _, _, limbs, _, _ = CIPHERTEXT_META.unpack_from(blob, SEAL_HEADER.size)
        if not 1 <= limbs < len(primes):
            raise BackendError(f"a fresh Pyfhel ciphertext has {limbs} limbs of {len(primes)}")
        return cls(degree, primes[:limbs], parms_id, scale)


def _is_prime(n: int) -> bool:
    """Deterministic Miller-Rabin for n < 3.3e24 (these bases suffice)."""
    bases = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37)
    if n < 2 or any(n % b == 0 for b in bases):
        return n in bases
    d, r = n - 1, 0
    while d % 2 == 0:
        d, r = d // 2, r + 1
    for a in bases:
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(r - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def seal_primes(degree: int, bit_sizes: Sequence[int]) -> list[int]:
    """SEAL's ``CoeffModulus::Create(degree, bit_sizes)``: for each bit size, the primes
    = 1 mod 2*degree counted down from 2^bits, handed out smallest first in the order of
    the sizes (tests check it against SEAL's own through tenseal.sealapi)."""
    factor = 2 * degree
    wanted: dict[int, int] = {}
    for bits in bit_sizes:
        wanted[bits] = wanted.get(bits, 0) + 1
    found: dict[int, list[int]] = {}
    for bits, count in wanted.items():
        primes: list[int] = []
        value = ((1 << bits) - 1) // factor * factor + 1
        while len(primes) < count and value > 1 << (bits - 1):
            if _is_prime(value):
                primes.append(value)
            value -= factor
        if len(primes) < count:
            raise BackendError(f"not enough {bits}-bit primes for N={degree}")
        found[bits] = primes
    return [found[bits].pop() for bits in bit_sizes]


# --------------------------------------------------------------------------- kernel
@lru_cache(maxsize=1)
def _kernels() -> Any:
    """The kernel module: numba is imported (and the kernels compiled or loaded from its
    cache) only when a block is first scored."""
    from frip_plugins.he_backends import _fast_kernels

    return _fast_kernels


@lru_cache(maxsize=32)
def _shoup_tables(primes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Per limb, the weights 2^(22 v + 32 h) mod p of the six accumulators (a = 2 v + h:
    constant piece v, residue half h) and their Shoup quotients floor(w * 2^64 / p)."""
    w = np.empty((len(primes), ACCUMULATORS), dtype=np.uint64)
    wq = np.empty_like(w)
    for limb, p in enumerate(primes):
        for a in range(ACCUMULATORS):
            weight = pow(2, PIECE_BITS * (a // 2) + 32 * (a % 2), p)
            w[limb, a] = weight
            wq[limb, a] = (weight << 64) // p
    return w, wq


def encode_constants(values: np.ndarray | Sequence[float], scale: float) -> np.ndarray:
    """SEAL's integer encoding of scalars: round half away from zero of ``value * scale``
    (C's ``round``; Python's ``round`` and numpy's round half to even)."""
    x = np.asarray(values, dtype=np.float64) * float(scale)
    if not np.all(np.isfinite(x)):
        raise BackendError("probe values must be finite")
    if np.any(np.abs(x) >= MAX_CONSTANT):
        raise BackendError("probe value times scale reaches 2^62: too large to encode")
    whole = np.trunc(x)
    fraction = x - whole  # exact: a double's fractional part is representable
    k = whole + np.where(np.abs(fraction) >= 0.5, np.sign(x), 0.0)
    return k.astype(np.int64)


def _checked(
    residues: np.ndarray, primes: np.ndarray | Sequence[int], threads: int
) -> tuple[int, ...]:
    """The primes, after checking the residues (uint64 (d, 2, limbs, N), C-contiguous),
    one prime below 2^61 per limb and the thread count (BackendError)."""
    if residues.ndim != 4 or residues.shape[1] != 2 or residues.dtype != np.uint64:
        raise BackendError(f"residues must be uint64 (d, 2, limbs, N), not {residues.shape}")
    if not residues.flags.c_contiguous:
        raise BackendError("residues must be C-contiguous")
    limbs = residues.shape[2]
    prime_list = tuple(int(p) for p in primes)
    if len(prime_list) != limbs or any(not 1 < p < 2**61 for p in prime_list):
        raise BackendError(f"{limbs} primes below 2^61 expected, got {prime_list}")
    if threads < 1:
        raise BackendError("threads must be at least 1")
    return prime_list


def _int_constants(residues: np.ndarray, constants: np.ndarray, batch: bool) -> np.ndarray:
    """Integer constants as int64 (probes, d): ``constants`` must be int64 (d,), or
    (probes, d) for a ``batch`` (BackendError)."""
    d = residues.shape[0]
    ks = np.asarray(constants)
    shape, what = ((*ks.shape[:1], d), f"(probes, {d})") if batch else ((d,), f"({d},)")
    if ks.ndim != len(shape) or ks.shape != shape or ks.dtype != np.int64:
        raise BackendError(f"constants must be int64 {what}, not {ks.dtype} {ks.shape}")
    return ks.reshape(-1, d)


def _terms(magnitudes: np.ndarray, negative: np.ndarray) -> tuple[np.ndarray, ...]:
    """The kernel's view of constant vectors given as |k| (uint64 (vectors, rows, d), a
    row for every limb or one for all) and their signs (bool, same shape): per (vector,
    row) the features whose k is not 0, positive ones first (int64 (vectors, rows, d);
    the tail is never read), how many are positive and how many negative (int64
    (vectors, rows)), and their |k| in three 22-bit pieces (uint32 (vectors, rows, 3, d)),
    least significant first."""
    kind = np.where(magnitudes == 0, 2, negative.astype(np.int8))  # 0: k > 0, 1: k < 0
    idx = np.argsort(kind, axis=-1, kind="stable").astype(np.int64)
    positive = np.count_nonzero(kind == 0, axis=-1).astype(np.int64)
    negatives = np.count_nonzero(kind == 1, axis=-1).astype(np.int64)
    ordered = np.take_along_axis(magnitudes, idx, axis=-1)
    pieces = np.empty((*magnitudes.shape[:-1], PIECES, magnitudes.shape[-1]), dtype=np.uint32)
    for v in range(PIECES):
        pieces[..., v, :] = (ordered >> np.uint64(PIECE_BITS * v)) & np.uint64(PIECE_MASK)
    return idx, positive, negatives, pieces


def _combine(
    residues: np.ndarray,
    magnitudes: np.ndarray,
    negative: np.ndarray,
    primes: tuple[int, ...],
    threads: int,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """``sum_j (-1)^negative * magnitudes[m, l, j] * residues[j, :, l] mod p_l`` for each
    vector m: (vectors, 2, L, N) uint64, by the one kernel every combination runs (a
    row of ``magnitudes`` per limb, or one for every limb; any value below 2^64)."""
    _, _, limbs, degree = residues.shape
    shape = (magnitudes.shape[0], 2, limbs, degree)
    if out is None:
        out = np.empty(shape, dtype=np.uint64)
    elif out.shape != shape or out.dtype != np.uint64 or not out.flags.c_contiguous:
        raise BackendError(f"out must be C-contiguous uint64 {shape[1:]}")
    kernels = _kernels()
    tile = kernels.TILE if shape[0] == 1 else kernels.TILE_MANY
    w, wq = _shoup_tables(primes)
    work = (residues, *_terms(magnitudes, negative), np.array(primes, dtype=np.uint64), w, wq, out)
    _run(kernels.combine_serial, kernels.combine_parallel, (work, tile), threads)
    return out


def _run(serial: Any, parallel: Any, args: tuple[Any, ...], threads: int) -> None:
    """One kernel call: serial, or parallel on ``threads`` numba threads (capped by
    ``NUMBA_NUM_THREADS``)."""
    if threads == 1:
        serial(*args)
        return
    import numba

    previous = numba.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))  # type: ignore[attr-defined]
    try:
        parallel(*args)
    finally:
        numba.set_num_threads(previous)


def combine_residues(
    residues: np.ndarray,
    constants: np.ndarray,
    primes: np.ndarray | Sequence[int],
    threads: int = 1,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """``sum_j constants[j] * residues[j] mod p`` per limb: (d, 2, L, N) -> (2, L, N).

    Exact for any int64 constants (zeros are skipped). ``threads`` > 1 runs numba's
    parallel kernel with that many threads (capped by ``NUMBA_NUM_THREADS``)."""
    prime_list = _checked(residues, primes, threads)
    ks = _int_constants(residues, constants, batch=False)
    target = None if out is None else out[None]
    # |k| as uint64: the absolute value of int64's minimum wraps to 2^63, its magnitude
    result = _combine(residues, np.abs(ks).astype(np.uint64)[:, None], ks[:, None] < 0,
                      prime_list, threads, target)  # fmt: skip
    return result.reshape(result.shape[1:])


def combine_residues_many(
    residues: np.ndarray,
    constants: np.ndarray,
    primes: np.ndarray | Sequence[int],
    threads: int = 1,
) -> np.ndarray:
    """:func:`combine_residues` for several constant vectors at once, (probes, d) ->
    (probes, 2, L, N), bit-identical to combining them one by one, in one pass over the
    residues: each (polynomial, limb) tile of the gallery is read from memory once and
    summed with every vector while it sits in cache (a small modular matrix product)."""
    prime_list = _checked(residues, primes, threads)
    ks = _int_constants(residues, constants, batch=True)
    return _combine(residues, np.abs(ks).astype(np.uint64)[:, None], ks[:, None] < 0,
                    prime_list, threads)  # fmt: skip


PRODUCT_ROWS = 512  # rows (features) per float64 product
PRODUCT_TILE = 512  # coefficients per product (the pieces of 512 x 512 residues: 8 MB)
PRODUCT_MIN_VECTORS = 8


@dataclass(frozen=True)
class ProductPlan:
    """How :func:`combine_residues_product` cuts residues and constants: residues into
    ``x_pieces`` unsigned pieces of ``x_bits``, |constants| into ``k_pieces`` of ``k_bits``
    (the sign goes with each piece), with rows x (2^x_bits - 1) x (2^k_bits - 1) <= 2^53 so
    every sum of a product is exact in float64. A product costs x_pieces x k_pieces
    multiply-adds per residue, feature and vector."""

    x_bits: int
    x_pieces: int
    k_bits: int
    k_pieces: int


@lru_cache(maxsize=64)
def _product_plan(prime_bits: int, constant_bits: int, rows: int) -> ProductPlan:
    """The exact cut with the fewest piece pairs (then the fewest residue pieces, which
    the cutting of the gallery costs): e.g. 60-bit residues and unit probes at scale 2^29
    (|k| below 2^29) over 512 rows take 4 x 15 bits by 1 x 29 bits, 4 pairs where a fixed
    3 x 21 by 2 x 23 cut takes 6."""
    from frip_plugins.he_backends._fast_kernels import FLOAT_EXACT

    best: ProductPlan | None = None
    constant_bits = max(1, constant_bits)
    for x_bits in range(1, prime_bits + 1):
        k_bits = min(constant_bits, FLOAT_EXACT.bit_length())
        while k_bits > 0 and rows * ((1 << x_bits) - 1) * ((1 << k_bits) - 1) > FLOAT_EXACT:
            k_bits -= 1
        if k_bits == 0:
            break
        plan = ProductPlan(x_bits, -(-prime_bits // x_bits), k_bits, -(-constant_bits // k_bits))
        key = (plan.x_pieces * plan.k_pieces, plan.x_pieces)
        if best is None or key < (best.x_pieces * best.k_pieces, best.x_pieces):
            best = plan
    if best is None:  # pragma: no cover - rows <= 2^52 always admits 1-bit pieces
        raise BackendError(f"no exact float64 cut over {rows} rows")
    return best


@lru_cache(maxsize=32)
def _product_weights(prime: int, plan: ProductPlan) -> tuple[np.ndarray, np.ndarray, np.uint64]:
    """w[a, b] = 2^(x_bits a + k_bits b) mod p for residue piece a and constant piece b,
    their Shoup quotients, and 2^53 sum w mod p (what :func:`fold_products` takes off)."""
    from frip_plugins.he_backends._fast_kernels import FLOAT_EXACT

    w = np.empty((plan.x_pieces, plan.k_pieces), dtype=np.uint64)
    wq = np.empty_like(w)
    for a in range(plan.x_pieces):
        for b in range(plan.k_pieces):
            weight = pow(2, plan.x_bits * a + plan.k_bits * b, prime)
            w[a, b] = weight
            wq[a, b] = (weight << 64) // prime
    shift = FLOAT_EXACT * sum(int(v) for v in w.flat) % prime
    return w, wq, np.uint64(shift)


def combine_residues_product(
    residues: np.ndarray, constants: np.ndarray, primes: np.ndarray | Sequence[int]
) -> np.ndarray:
    """:func:`combine_residues_many` as float64 matrix products (BLAS, exact): for dense
    constant vectors (plain probes) the batch costs a few multiply-adds per residue and
    vector at BLAS speed. Residues and constants are cut into pieces as
    :func:`_product_plan` says; each (tile, up to 512 rows) product's integer sums stay
    within 2^53, are reduced mod p and weighted by 2^(x_bits a + k_bits b) mod p.
    Bit-identical to :func:`combine_residues` per vector (tests/test_batch.py)."""
    prime_list = _checked(residues, primes, 1)
    ks = _int_constants(residues, constants, batch=True)
    count = ks.shape[0]
    d, _, limbs, degree = residues.shape
    magnitudes = np.abs(ks).astype(np.uint64)
    bits = int(magnitudes.max()).bit_length() if magnitudes.size else 0
    plan = _product_plan(max(p.bit_length() for p in prime_list), bits, min(d, PRODUCT_ROWS))
    sign = np.sign(ks).astype(np.float64)
    pieces = np.empty((plan.k_pieces * count, d))
    mask = np.uint64((1 << plan.k_bits) - 1)
    for b in range(plan.k_pieces):
        part = (magnitudes >> np.uint64(plan.k_bits * b)) & mask
        pieces[b * count : (b + 1) * count] = part.astype(np.float64) * sign
    chunks = [
        (start, np.ascontiguousarray(pieces[:, start : start + PRODUCT_ROWS]))
        for start in range(0, d, PRODUCT_ROWS)
    ]
    kernels = _kernels()
    out = np.zeros((count, 2, limbs, degree), dtype=np.uint64)
    buffers: dict[tuple[int, int], np.ndarray] = {}
    for limb, prime in enumerate(prime_list):
        w, wq, shift = _product_weights(prime, plan)
        for c in range(2):
            for t0 in range(0, degree, PRODUCT_TILE):
                n = min(PRODUCT_TILE, degree - t0)
                for start, chunk in chunks:
                    rows = chunk.shape[1]
                    x = buffers.setdefault((rows, n), np.empty((rows, plan.x_pieces * n)))
                    kernels.split_rows(residues, c, limb, t0, n, start, plan.x_bits, x)
                    products = chunk @ x
                    kernels.fold_products(
                        products, n, np.uint64(prime), w, wq, shift, out, c, limb, t0
                    )
    return out


def combine_batch(
    residues: np.ndarray,
    constants: np.ndarray,
    primes: np.ndarray | Sequence[int],
    threads: int = 1,
) -> np.ndarray:
    """What a batch of constant vectors (probes, d) runs, the same result either way:
    at least PRODUCT_MIN_VECTORS mostly non-zero ones (plain probes) on one thread as a
    float64 product (:func:`combine_residues_product`, whose cutting of residues into
    pieces pays off from about 8 vectors), others (fewer, sparse pe-miu block pairs,
    several threads) in the numba batch kernel (:func:`combine_residues_many`)."""
    dense = np.count_nonzero(constants) * 2 > np.size(constants)
    if threads == 1 and dense and len(constants) >= PRODUCT_MIN_VECTORS:
        return combine_residues_product(residues, constants, primes)
    return combine_residues_many(residues, constants, primes, threads)


def combine_residues_limbs(
    residues: np.ndarray,
    constants: np.ndarray,
    primes: np.ndarray | Sequence[int],
    threads: int = 1,
) -> np.ndarray:
    """``sum_j constants[m, l, j] * residues[j, :, l] mod p``: (d, 2, L, N) and uint64
    (probes, L, d) -> (probes, 2, L, N), each limb with a constant vector of its own.

    The constants are residues, any value of Z_p (0 to p - 1, up to 61 bits), as a
    secret-shared probe's shares are; a value >= its limb's prime is refused
    (BackendError), as SEAL refuses one. Exact, by the kernel of :func:`combine_residues`
    and at its cost: one pass over the residues, three pieces per constant either way."""
    prime_list = _checked(residues, primes, threads)
    d, _, limbs, _ = residues.shape
    ks = np.asarray(constants)
    if ks.ndim != 3 or ks.shape[1:] != (limbs, d) or ks.dtype != np.uint64:
        raise BackendError(
            f"constants must be uint64 (probes, {limbs}, {d}), not {ks.dtype} {ks.shape}"
        )
    if np.any(ks >= np.array(prime_list, dtype=np.uint64)[None, :, None]):
        raise BackendError("a constant is >= its limb's prime: not a residue")
    return _combine(residues, ks, np.zeros(ks.shape, dtype=bool), prime_list, threads)


# ---------------------------------------------------------------------------- block
class FastBlock:
    """One packed block's residues (d, 2, L, N), decompressed once at load, so scoring a
    probe is one kernel pass plus writing one result ciphertext."""

    def __init__(
        self,
        codec: SealCodec,
        residues: np.ndarray,
        size: int,
        version: tuple[int, int],
        check: bool = True,
    ) -> None:
        if residues.ndim != 4 or residues.shape[1:] != codec.shape:
            raise BackendError(f"block residues must be (d, {codec.shape}), not {residues.shape}")
        if residues.dtype != np.uint64 or not residues.flags.c_contiguous:
            raise BackendError("block residues must be C-contiguous uint64")
        if check:
            codec.check_residues(residues)
        self.codec = codec
        self.residues = residues
        self.size = size
        self.version = version

    @classmethod
    def from_parts(cls, codec: SealCodec, parts: Sequence[bytes]) -> FastBlock:
        """A block from its serialised CKKSVectors, one per feature, all fresh and alike."""
        if not parts:
            raise BackendError("a block needs at least one ciphertext")
        residues = np.empty((len(parts), *codec.shape), dtype=np.uint64)
        _, first = codec.read(parts[0], out=residues[0])
        for j, part in enumerate(parts[1:], start=1):
            _, info = codec.read(part, out=residues[j])
            if (info.size, info.version) != (first.size, first.version):
                raise BackendError(f"ciphertext {j} differs from the block's first in size")
        return cls(codec, residues, first.size, first.version, check=False)

    @property
    def features(self) -> int:
        return int(self.residues.shape[0])

    def part(self, j: int) -> bytes:
        """Ciphertext ``j`` serialised again (uncompressed), as the library loads it."""
        return self.codec.write(self.residues[j], self.size, self.codec.scale, self.version)

    def combine(self, constants: np.ndarray, threads: int = 1) -> bytes:
        """The serialised CKKSVector of ``sum_j constants[j] * ct_j`` at scale^2."""
        if not np.any(constants):
            raise BackendError("every constant is zero at this scale: nothing to score")
        residues = combine_residues(self.residues, constants, self.codec.primes, threads)
        return self.codec.write(residues, self.size, self.codec.scale**2, self.version)

    def combine_many(self, constants: np.ndarray, threads: int = 1) -> list[bytes]:
        """:meth:`combine` for each row of ``constants`` (probes, d), in one pass over the
        block (:func:`combine_residues_many`); the same bytes as one call per row. A row
        that is all zeros fails the whole call (BackendError): score the rows alone to
        find it."""
        if constants.shape[0] == 1:  # one vector: the single kernel's larger tiles
            return [self.combine(constants[0], threads)]
        if not np.all(np.any(constants, axis=1)):
            raise BackendError("every constant is zero at this scale: nothing to score")
        scale = self.codec.scale**2
        out: list[bytes] = []
        for start in range(0, constants.shape[0], PASS_VECTORS):
            chunk = constants[start : start + PASS_VECTORS]
            residues = combine_batch(self.residues, chunk, self.codec.primes, threads)
            out.extend(self.codec.write(r, self.size, scale, self.version) for r in residues)
        return out

    def combine_limbs(self, constants: np.ndarray, threads: int = 1) -> list[bytes]:
        """The serialised CKKSVector of ``sum_j constants[m, l, j] * ct_j`` (limb l's
        residues by its own constants, any value of Z_p) for each m of uint64 (probes,
        limbs, d), at scale^2, in one pass over the block (:func:`combine_residues_limbs`)."""
        residues = combine_residues_limbs(self.residues, constants, self.codec.primes, threads)
        scale = self.codec.scale**2
        return [self.codec.write(r, self.size, scale, self.version) for r in residues]

    def _constants(self, weights: Sequence[tuple[int, float]]) -> np.ndarray:
        """The int64 constants (d,) of (feature, value) pairs, as TenSEAL encodes them."""
        constants = np.zeros(self.features, dtype=np.int64)
        if weights:
            index = np.array([j for j, _ in weights], dtype=np.int64)
            if index.min() < 0 or index.max() >= self.features:
                raise BackendError(f"weight index outside the block's {self.features} features")
            encoded = encode_constants([v for _, v in weights], self.codec.scale)
            np.add.at(constants, index, encoded)  # a repeated feature adds, as in TenSEAL
        return constants

    def weighted_sum(self, weights: Sequence[tuple[int, float]], threads: int = 1) -> bytes:
        """Same ciphertext as ``TenSEALOps.weighted_sum(block, weights)``, serialised."""
        return self.combine(self._constants(weights), threads)

    def weighted_sums(
        self, batch: Sequence[Sequence[tuple[int, float]]], threads: int = 1
    ) -> list[bytes]:
        """:meth:`weighted_sum` of each weight list, in one pass over the block."""
        return self.combine_many(np.stack([self._constants(w) for w in batch]), threads)

    def score_plain(self, probe: np.ndarray, threads: int = 1) -> bytes:
        """The block's scores for a plain probe, one serialised CKKSVector at scale^2."""
        probe = np.asarray(probe, dtype=np.float64)
        if probe.shape != (self.features,):
            raise BackendError(f"probe has {probe.size} features, the block {self.features}")
        return self.combine(encode_constants(probe, self.codec.scale), threads)
