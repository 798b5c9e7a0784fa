"""HE backend ``tenseal``: CKKS through TenSEAL, packed or round-robin layout.

The layouts and probe modes live in :mod:`frip_plugins.he_backends._ckks_layouts`; this module only
maps their primitive operations onto TenSEAL. Scores are accumulated at scale^2 with
auto-rescale off (rescaling costs 3.3x and buys nothing for one multiplication).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from frip_engine.ckks import CKKSParams
from frip_engine.contracts import HEBackend, Register, Requirement
from frip_engine.errors import BackendError
from frip_engine.hookspecs import hookimpl
from frip_plugins.he_backends._ckks_layouts import CKKSBackend


def _ts() -> Any:
    import tenseal

    return tenseal


class TenSEALOps:
    """TenSEAL's CKKSVector operations over one context."""

    def __init__(self, context: Any, params: CKKSParams) -> None:
        self.context = context
        self.slots = params.slots

    def encrypt(self, values: np.ndarray) -> Any:
        return _ts().ckks_vector(self.context, np.asarray(values, dtype=np.float64).tolist())

    def add(self, a: Any, b: Any) -> Any:
        return a + b

    def add_plain(self, ct: Any, values: np.ndarray) -> Any:
        # CKKSVector.add_plain encodes at the ciphertext's level (parms_id) and scale
        return ct + np.asarray(values, dtype=np.float64).tolist()

    def weighted_sum(self, cts: Sequence[Any], weights: Sequence[tuple[int, float]]) -> Any:
        (first, weight), rest = weights[0], weights[1:]
        total = cts[first] * weight
        for j, weight in rest:
            total += cts[j] * weight
        return total

    def product_sum(self, cts: Sequence[Any], probes: Sequence[Any]) -> Any:
        total = cts[0] * probes[0]
        for ct, probe in zip(cts[1:], probes[1:], strict=True):
            total += ct * probe
        return total

    def squared_distance(self, ct: Any, probe: Any, dimension: int) -> Any:
        if isinstance(probe, np.ndarray):
            probe = probe.tolist()
        difference = ct - probe
        difference.square_()
        return difference.sum()

    def dump(self, ct: Any) -> bytes:
        return bytes(ct.serialize())

    def load(self, data: bytes) -> Any:
        try:
            return _ts().ckks_vector_from(self.context, bytes(data))
        except Exception as exc:
            raise BackendError(
                f"ciphertext rejected by TenSEAL ({exc}): damaged, or from another parameter set"
            ) from exc

    def decrypt(self, ct: Any) -> np.ndarray:
        try:
            return np.asarray(ct.decrypt(), dtype=np.float64)
        except Exception as exc:
            raise BackendError(f"TenSEAL cannot decrypt this ciphertext: {exc}") from exc


class TenSEALLibrary:
    name = "TenSEAL"

    def keygen(self, params: CKKSParams, evaluation_keys: bool) -> tuple[bytes, bytearray]:
        ts = _ts()
        try:
            ctx = ts.context(
                ts.SCHEME_TYPE.CKKS,
                params.poly_modulus_degree,
                coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes),
            )
        except ValueError as exc:
            raise BackendError(f"TenSEAL refused {params.describe()}: {exc}") from exc
        if evaluation_keys:
            ctx.generate_galois_keys()
        # TenSEAL ignores this flag when set on a loaded context, so it travels in the
        # serialised one: without relinearisation keys, products stay size-3 ciphertexts.
        ctx.auto_relin = evaluation_keys
        public = ctx.serialize(
            save_public_key=True,
            save_secret_key=False,
            save_galois_keys=evaluation_keys,
            save_relin_keys=evaluation_keys,
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

    def open(
        self, params: CKKSParams, public: bytes, secret: bytearray | None = None
    ) -> TenSEALOps:
        try:
            ctx = _ts().context_from(bytes(public if secret is None else secret))
        except Exception as exc:
            raise BackendError(f"cannot load TenSEAL context: {exc}") from exc
        if secret is None and ctx.has_secret_key():
            raise BackendError("a matcher must be built from the public context only")
        if secret is not None and not ctx.has_secret_key():
            raise BackendError("the unwrapped key holds no secret key")
        ctx.auto_rescale = False
        ctx.global_scale = 2.0**params.scale_bits
        return TenSEALOps(ctx, params)

    def fast_codec(self, ops: TenSEALOps) -> Any:
        """Reads and writes this context's ciphertexts as raw residues (fast scorer)."""
        from frip_plugins.he_backends._fast_scorer import TenSEALCodec

        return TenSEALCodec.from_context(ops.context)


class TenSEALBackend(CKKSBackend):
    name = "tenseal"
    library = TenSEALLibrary()
    packed_tag = b"FRIP-TS1"
    round_robin_tag = b"FRIP-TR1"


@hookimpl
def register_he_backends(register: Register[HEBackend]) -> None:
    register(
        "tenseal",
        TenSEALBackend,
        summary="CKKS via TenSEAL; layouts packed (default) and round-robin (the paper's "
        "baseline); probes plain, encrypted or pe-miu; presets paper, precise, fast",
        requires=(Requirement("tenseal", "tenseal"),),
    )
