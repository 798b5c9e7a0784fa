"""HE backend ``tenseal``: CKKS with the feature-major packed layout and plain-probe scoring.

A block holds up to N/2 registrants; ciphertext j holds feature j of every registrant in
the block. A plain probe q scores the whole block as sum_j q_j * ct_j (no rotations, no
relinearisation), accumulated at scale^2 with auto-rescale off, and one decryption gives
every registrant's cosine score.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from frip_engine.ckks import CKKSParams, params_from
from frip_engine.errors import BackendError
from frip_engine.hookspecs import hookimpl
from frip_engine.plugins import Requirement
from frip_plugins.blocks import frame, unframe

TAG = b"FRIP-TS1"


def _ts() -> Any:
    import tenseal

    return tenseal


def _context(blob: bytes, params: CKKSParams) -> Any:
    ts = _ts()
    try:
        ctx = ts.context_from(bytes(blob))
    except Exception as exc:
        raise BackendError(f"cannot load TenSEAL context: {exc}") from exc
    ctx.auto_rescale = False
    ctx.global_scale = 2.0**params.scale_bits
    return ctx


def _vector(ctx: Any, blob: bytes) -> Any:
    try:
        return _ts().ckks_vector_from(ctx, blob)
    except Exception as exc:
        raise BackendError(
            f"ciphertext rejected by TenSEAL ({exc}): damaged, or from another parameter set"
        ) from exc


class TenSEALMatcher:
    """Public context only: encrypts, adds and scores; holds no secret key."""

    def __init__(self, public_context: bytes, params: CKKSParams) -> None:
        self.context = _context(public_context, params)
        if self.context.has_secret_key():
            raise BackendError("a matcher must be built from the public context only")
        self.slots = params.slots
        self.scale = 2.0**params.scale_bits

    def encrypt_rows(self, rows: np.ndarray, slots: Sequence[int]) -> list[Any]:
        ts = _ts()
        plane = np.zeros(self.slots)
        block = []
        for column in np.asarray(rows, dtype=np.float64).T:
            plane[list(slots)] = column
            block.append(ts.ckks_vector(self.context, plane.tolist()))
        plane.fill(0.0)
        return block

    def add_rows(self, block: list[Any], rows: np.ndarray, slots: Sequence[int]) -> list[Any]:
        fresh = self.encrypt_rows(rows, slots)
        if len(fresh) != len(block):
            raise BackendError(f"block has {len(block)} features, rows have {len(fresh)}")
        return [old + new for old, new in zip(block, fresh, strict=True)]

    def encode_probe(self, probe: np.ndarray) -> list[tuple[int, float]]:
        # TenSEAL wants Python floats; a constant that encodes to 0 at the scale would make
        # it substitute a fresh encryption of another scale, so those are skipped (they add
        # nothing the scale can represent to the score).
        smallest = 0.5 / self.scale
        return [(j, float(v)) for j, v in enumerate(np.asarray(probe)) if abs(v) >= smallest]

    def score(self, block: list[Any], encoded: list[tuple[int, float]]) -> bytes:
        if len(block) < len(encoded) or (encoded and encoded[-1][0] >= len(block)):
            raise BackendError(f"probe has more features than the block's {len(block)}")
        first, weight = encoded[0]
        total = block[first] * weight
        for j, weight in encoded[1:]:
            total += block[j] * weight
        return bytes(total.serialize())

    def dump(self, block: list[Any]) -> bytes:
        return frame(TAG, [bytes(ct.serialize()) for ct in block])

    def load(self, data: bytes) -> list[Any]:
        return [_vector(self.context, part) for part in unframe(TAG, data)]


class TenSEALDecryptor:
    """Secret context for one operation inside the key service."""

    def __init__(self, secret_context: bytearray, params: CKKSParams) -> None:
        self.context: Any = _context(bytes(secret_context), params)
        if not self.context.has_secret_key():
            raise BackendError("the unwrapped key holds no secret key")
        self.slots = params.slots

    def decrypt_scores(self, scores: bytes) -> np.ndarray:
        return np.asarray(_vector(self.context, scores).decrypt(), dtype=np.float64)

    def decrypt_block(self, data: bytes) -> np.ndarray:
        parts = unframe(TAG, data)
        out = np.zeros((len(parts), self.slots))
        for j, part in enumerate(parts):
            out[j] = _vector(self.context, part).decrypt()
        return out

    def close(self) -> None:
        self.context = None  # drop the library's secret context


class TenSEALBackend:
    name = "tenseal"
    encrypted = True
    probe_modes = frozenset({"plain"})

    def __init__(self, **options: Any) -> None:
        self.params = params_from(**options)

    @property
    def description(self) -> str:
        return f"TenSEAL {self.params.describe()}, packed"

    def security_check(self) -> None:
        self.params.check()

    def slots(self) -> int:
        return self.params.slots

    def keygen(self) -> tuple[bytes, bytearray]:
        ts = _ts()
        p = self.params
        try:
            ctx = ts.context(
                ts.SCHEME_TYPE.CKKS,
                p.poly_modulus_degree,
                coeff_mod_bit_sizes=list(p.coeff_mod_bit_sizes),
            )
        except ValueError as exc:
            raise BackendError(f"TenSEAL refused {p.describe()}: {exc}") from exc
        ctx.global_scale = 2.0**p.scale_bits
        ctx.auto_rescale = False
        public = ctx.serialize(
            save_public_key=True,
            save_secret_key=False,
            save_galois_keys=False,
            save_relin_keys=False,
        )
        secret = bytearray(
            ctx.serialize(
                save_public_key=False,
                save_secret_key=True,
                save_galois_keys=False,
                save_relin_keys=False,
            )
        )
        del ctx
        return bytes(public), secret

    def matcher(self, public_context: bytes) -> TenSEALMatcher:
        return TenSEALMatcher(public_context, self.params)

    def decryptor(self, public_context: bytes, secret_context: bytearray) -> TenSEALDecryptor:
        return TenSEALDecryptor(secret_context, self.params)


@hookimpl
def register_he_backends(register: Any) -> None:
    register(
        "tenseal",
        TenSEALBackend,
        summary="CKKS via TenSEAL, feature-major packed blocks, plain-probe scoring "
        "(presets: paper, precise, fast)",
        requires=(Requirement("tenseal", "tenseal"),),
    )
