"""HE backend ``pyfhel``: CKKS through Pyfhel (Microsoft SEAL), packed or round-robin layout.

The same layouts, probe modes and contract as ``tenseal``
(:mod:`frip_plugins.he_backends._ckks_layouts`); this module maps their primitive
operations onto Pyfhel's low-level in-place calls.
Pyfhel's ``*`` and ``+`` operators align levels and scales behind the caller's back, so
they are not used: products stay at scale^2, never rescaled, exactly as with TenSEAL.

Pyfhel 3.5.0 has no wheel for Python 3.11; ``scripts/build_pyfhel_wheel.py`` (run by the
Makefile) builds one offline from the sdist. Everything is serialised uncompressed: that
build has no zstd, and CKKS residues barely compress.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from frip_engine.ckks import CKKSParams
from frip_engine.contracts import HEBackend, Register, Requirement
from frip_engine.errors import BackendError
from frip_engine.hookspecs import hookimpl
from frip_plugins.he_backends._blocks import frame, unframe
from frip_plugins.he_backends._ckks_layouts import CKKSBackend

PUBLIC_TAG = b"FRIP-PFP"
SECRET_TAG = b"FRIP-PFS"
COMPRESSION = "none"
# Encoded probe constants kept per matcher (Pyfhel encodes a scalar with a full FFT, so
# each constant is encoded once per probe, not once per block).
ENCODED_CACHE_BYTES = 96 << 20
_MISSING = object()
BUILD_SCRIPT = "scripts/build_pyfhel_wheel.py"
BUILD_FAILURE_NOTE = "frip-pyfhel-build-failed.txt"  # written by BUILD_SCRIPT


def _pyfhel() -> Any:
    import Pyfhel

    return Pyfhel


@contextmanager
def _seal_errors(what: str) -> Iterator[None]:
    """SEAL's C++ exceptions (bad header, wrong parms_id, residue >= p) as BackendError."""
    try:
        yield
    except BackendError:
        raise
    except Exception as exc:
        raise BackendError(f"{what} ({type(exc).__name__}: {exc})") from exc


class PyfhelOps:
    """Pyfhel's CKKS operations over one loaded context (public, or with the secret)."""

    def __init__(self, he: Any, params: CKKSParams) -> None:
        self.he = he
        self.slots = params.slots
        self.scale = 2.0**params.scale_bits
        data_limbs = len(params.coeff_mod_bit_sizes) - 1
        self._cache_limit = max(
            1, ENCODED_CACHE_BYTES // (params.poly_modulus_degree * 8 * data_limbs)
        )
        self._encoded: dict[float, Any] = {}
        self._plain_probe: tuple[bytes, Any] | None = None

    def encrypt(self, values: np.ndarray) -> Any:
        with _seal_errors("Pyfhel cannot encrypt"):
            return self.he.encryptFrac(np.ascontiguousarray(values, dtype=np.float64))

    def add(self, a: Any, b: Any) -> Any:
        with _seal_errors("Pyfhel cannot add these ciphertexts"):
            return self.he.add(a, b, in_new_ctxt=True)

    def add_plain(self, ct: Any, values: np.ndarray) -> Any:
        with _seal_errors("Pyfhel cannot add this plaintext"):
            plain = self.he.encodeFrac(
                np.ascontiguousarray(values, dtype=np.float64), scale=ct.scale
            )
            return self.he.add_plain(ct, plain, in_new_ctxt=False)

    def _constant(self, value: float) -> Any:
        """The constant in every slot at the initial scale, or None when it encodes to 0
        (SEAL refuses a product with a zero plaintext: transparent ciphertext)."""
        cached = self._encoded.get(value, _MISSING)  # one lookup: another thread may clear
        if cached is not _MISSING:
            return cached
        if len(self._encoded) >= self._cache_limit:
            self._encoded.clear()
        plain = self.he.encodeFrac(np.full(self.slots, value), scale=self.scale)
        encoded = None if plain.is_zero() else plain
        self._encoded[value] = encoded
        return encoded

    def weighted_sum(self, cts: Sequence[Any], weights: Sequence[tuple[int, float]]) -> Any:
        total = None
        with _seal_errors("Pyfhel cannot score this block"):
            for j, weight in weights:
                plain = self._constant(weight)
                if plain is None:
                    continue
                term = self.he.multiply_plain(cts[j], plain, in_new_ctxt=True)
                total = term if total is None else self.he.add(total, term)
        if total is None:
            raise BackendError("the probe is zero at this scale")
        return total

    def product_sum(self, cts: Sequence[Any], probes: Sequence[Any]) -> Any:
        if len(cts) != len(probes) or not cts:
            raise BackendError(f"{len(probes)} probe ciphertexts for {len(cts)} features")
        with _seal_errors("Pyfhel cannot multiply these ciphertexts"):
            total = self.he.multiply(cts[0], probes[0], in_new_ctxt=True)
            for ct, probe in zip(cts[1:], probes[1:], strict=True):
                self.he.add(total, self.he.multiply(ct, probe, in_new_ctxt=True))
        return total

    def _encoded_probe(self, probe: np.ndarray, scale: float) -> Any:
        """A plain round-robin probe, encoded once for all registrants it meets."""
        values = np.ascontiguousarray(probe, dtype=np.float64)
        key = values.tobytes() + np.float64(scale).tobytes()
        if self._plain_probe is None or self._plain_probe[0] != key:
            self._plain_probe = (key, self.he.encodeFrac(values, scale=scale))
        return self._plain_probe[1]

    def squared_distance(self, ct: Any, probe: Any, dimension: int) -> Any:
        if self.he.is_relin_key_empty() or self.he.is_rotate_key_empty():
            raise BackendError("this public context has no relinearisation and rotation keys")
        with _seal_errors("Pyfhel cannot compute this distance"):
            difference = _pyfhel().PyCtxt(copy_ctxt=ct)
            if isinstance(probe, np.ndarray):
                self.he.sub_plain(difference, self._encoded_probe(probe, ct.scale))
            else:
                self.he.sub(difference, probe)
            width = 1 << max(0, dimension - 1).bit_length()
            self.he.square(difference)
            self.he.relinearize(difference)
            step = 1
            while step < width:  # slot 0 accumulates slots 0..width-1 (left rotations)
                self.he.add(difference, self.he.rotate(difference, step, in_new_ctxt=True))
                step *= 2
        return difference

    def dump(self, ct: Any) -> bytes:
        with _seal_errors("Pyfhel cannot serialise this ciphertext"):
            return bytes(ct.to_bytes(COMPRESSION))

    def load(self, data: bytes) -> Any:
        if not data:
            raise BackendError("ciphertext is empty")
        with _seal_errors(
            "ciphertext rejected by Pyfhel/SEAL: damaged, or from another key or parameter set"
        ):
            return _pyfhel().PyCtxt(pyfhel=self.he, bytestring=bytes(data))

    def decrypt(self, ct: Any) -> np.ndarray:
        # Pyfhel 3.5.0's get_decryptor tests the encryptor, not the decryptor: without
        # a secret key it dereferences a null pointer (segfault) instead of raising.
        if self.he.is_secret_key_empty():
            raise BackendError("Pyfhel cannot decrypt: this context holds no secret key")
        with _seal_errors("Pyfhel cannot decrypt this ciphertext"):
            return np.asarray(self.he.decryptFrac(ct), dtype=np.float64)


def _check_params(he: Any, params: CKKSParams) -> None:
    """The loaded context must be the profile's parameter set, not merely a valid one."""
    n = int(he.get_poly_modulus_degree())
    sizes = tuple(int(bits) for bits in he.qi_sizes)  # Pyfhel's record of the chain
    data_bits = int(he.total_coeff_modulus_bit_count)  # SEAL's own, special prime excluded
    expected = params.coeff_mod_bit_sizes
    if n != params.poly_modulus_degree or sizes != expected or data_bits != sum(expected[:-1]):
        raise BackendError(
            f"the HE context is N={n} q={list(sizes)}, the profile says {params.describe()}: "
            "a context from another parameter set"
        )


class PyfhelLibrary:
    name = "Pyfhel"

    def keygen(self, params: CKKSParams, evaluation_keys: bool) -> tuple[bytes, bytearray]:
        he = _pyfhel().Pyfhel()
        with warnings.catch_warnings():  # "qi_sizes do not support rescaling": we never rescale
            warnings.simplefilter("ignore")
            status = he.contextGen(
                scheme="CKKS",
                n=params.poly_modulus_degree,
                scale=2.0**params.scale_bits,
                qi_sizes=list(params.coeff_mod_bit_sizes),
                sec=128,
            )
        if not str(status).startswith("success"):
            raise BackendError(f"Pyfhel refused {params.describe()}: {status}")
        with _seal_errors("Pyfhel key generation failed"):
            he.keyGen()
            context = he.to_bytes_context(COMPRESSION)
            parts = [context, he.to_bytes_public_key(COMPRESSION)]
            if evaluation_keys:
                he.relinKeyGen()
                he.rotateKeyGen()
                parts += [he.to_bytes_relin_key(COMPRESSION), he.to_bytes_rotate_key(COMPRESSION)]
            secret = bytearray(frame(SECRET_TAG, [context, he.to_bytes_secret_key(COMPRESSION)]))
        del he
        return frame(PUBLIC_TAG, parts), secret

    def open(self, params: CKKSParams, public: bytes, secret: bytearray | None = None) -> PyfhelOps:
        if bytes(public[: len(SECRET_TAG)]) == SECRET_TAG:
            raise BackendError("a matcher must be built from the public context only")
        parts = unframe(PUBLIC_TAG, bytes(public))
        if len(parts) not in (2, 4):
            raise BackendError(f"a Pyfhel public context has 2 or 4 parts, not {len(parts)}")
        he = _pyfhel().Pyfhel()
        with _seal_errors("cannot load the Pyfhel public context"):
            he.from_bytes_context(parts[0])
            he.from_bytes_public_key(parts[1])
            if len(parts) == 4:
                he.from_bytes_relin_key(parts[2])
                he.from_bytes_rotate_key(parts[3])
        _check_params(he, params)
        if not he.is_secret_key_empty():
            raise BackendError("a matcher must be built from the public context only")
        if secret is not None:
            if bytes(secret[: len(SECRET_TAG)]) != SECRET_TAG:
                raise BackendError("the unwrapped key is not a Pyfhel secret key")
            secret_parts = unframe(SECRET_TAG, bytes(secret))
            if len(secret_parts) != 2 or secret_parts[0] != parts[0]:
                raise BackendError("the unwrapped secret key is for another parameter set")
            with _seal_errors("cannot load the Pyfhel secret key"):
                he.from_bytes_secret_key(secret_parts[1])
            del secret_parts
        he.scale = 2.0**params.scale_bits
        return PyfhelOps(he, params)

    def fast_codec(self, ops: PyfhelOps) -> Any:
        """Reads and writes this context's ciphertexts as raw residues (fast scorer)."""
        from frip_plugins.he_backends._fast_scorer import PyfhelCodec

        return PyfhelCodec.from_pyfhel(ops.he)


class PyfhelBackend(CKKSBackend):
    name = "pyfhel"
    library = PyfhelLibrary()
    packed_tag = b"FRIP-PF1"
    round_robin_tag = b"FRIP-PR1"


def _install_hint() -> str:
    """How to get Pyfhel here, with the reason the last build failed when it did."""
    hint = f"Pyfhel==3.5.0 (no cp311 wheel on PyPI: `python {BUILD_SCRIPT} --install` builds one"
    note = Path(sys.prefix) / BUILD_FAILURE_NOTE
    try:
        failure = note.read_text().strip()
    except OSError:
        failure = ""
    return f"{hint}; last attempt: {failure})" if failure else f"{hint})"


@hookimpl
def register_he_backends(register: Register[HEBackend]) -> None:
    register(
        "pyfhel",
        PyfhelBackend,
        summary="CKKS via Pyfhel (SEAL); same layouts, probes and presets as tenseal",
        requires=(Requirement("Pyfhel", _install_hint()),),
    )
