"""HE backend ``plaintext``: the same contract with no encryption, as the reference.

Every encrypted decision is checked against this backend's decision on the same
embeddings. It keeps templates in the clear, so a profile must say ``insecure = true``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from frip_engine.contracts import HEBackend, Register
from frip_engine.errors import BackendError, ProfileError
from frip_engine.hookspecs import hookimpl
from frip_engine.pemiu import PemiuTemplate
from frip_plugins.he_backends._blocks import frame, unframe

TAG = b"FRIP-PT1"
PROBE_TAG = b"FRIP-PTP"


class PlaintextMatcher:
    def __init__(self, slots: int) -> None:
        self.slots = slots

    def encrypt_rows(self, rows: np.ndarray, slots: Sequence[int]) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.float64)
        block = np.zeros((rows.shape[1], self.slots))
        block[:, list(slots)] = rows.T
        return block

    def add_rows(self, block: np.ndarray, rows: np.ndarray, slots: Sequence[int]) -> np.ndarray:
        fresh = self.encrypt_rows(rows, slots)
        if fresh.shape != block.shape:
            raise BackendError(f"block shape {block.shape} does not fit rows {fresh.shape}")
        return np.asarray(block + fresh)

    def encode_probe(self, probe: np.ndarray | PemiuTemplate) -> bytes:
        if isinstance(probe, PemiuTemplate):
            raise BackendError("the plaintext backend has no pe-miu probe mode")
        return frame(PROBE_TAG, [np.asarray(probe, dtype="<f8").tobytes()])

    def parse_probe(self, payload: bytes) -> np.ndarray:
        (raw,) = unframe(PROBE_TAG, payload)
        return np.frombuffer(raw, dtype="<f8").copy()

    def score(self, block: np.ndarray, encoded: np.ndarray) -> bytes:
        if encoded.shape[0] != block.shape[0]:
            raise BackendError(f"probe has {encoded.shape[0]} features, block {block.shape[0]}")
        return bytes(np.ascontiguousarray(encoded @ block).tobytes())

    def dump(self, block: np.ndarray) -> bytes:
        return frame(TAG, [np.asarray(block, dtype="<f8").tobytes()])

    def load(self, data: bytes) -> np.ndarray:
        (raw,) = unframe(TAG, data)
        values = np.frombuffer(raw, dtype="<f8")
        if values.size % self.slots:
            raise BackendError("plaintext block has a size that is not a multiple of the slots")
        return values.reshape(-1, self.slots).copy()


class PlaintextDecryptor:
    def __init__(self, slots: int) -> None:
        self.matcher = PlaintextMatcher(slots)

    def decrypt_scores(self, scores: bytes) -> np.ndarray:
        return np.frombuffer(scores, dtype=np.float64).copy()

    def decrypt_block(self, data: bytes) -> np.ndarray:
        return self.matcher.load(data)

    def close(self) -> None:
        pass


class PlaintextBackend:
    name = "plaintext"
    encrypted = False
    probe_modes = frozenset({"plain"})

    def __init__(self, slots: int = 4096) -> None:
        if not isinstance(slots, int) or slots < 1:
            raise ProfileError("plaintext backend: slots must be a positive integer")
        self._slots = slots
        self.description = f"plaintext reference, {slots} slots per block"

    def security_check(self) -> None:
        """Nothing to check: the profile's ``insecure = true`` is the explicit opt-in."""

    def slots(self) -> int:
        return self._slots

    def block_bytes(self, dimension: int) -> int:
        """float64 values: slots x dimension x 8 bytes."""
        return self._slots * dimension * 8

    def keygen(self) -> tuple[bytes, bytearray]:
        return b"plaintext", bytearray(b"plaintext reference: no secret")

    def matcher(
        self, public_context: bytes, pemiu_block_size: int | None = None
    ) -> PlaintextMatcher:
        if pemiu_block_size is not None:
            raise BackendError("the plaintext backend has no pe-miu probe mode")
        return PlaintextMatcher(self._slots)

    def decryptor(self, public_context: bytes, secret_context: bytearray) -> PlaintextDecryptor:
        return PlaintextDecryptor(self._slots)


@hookimpl
def register_he_backends(register: Register[HEBackend]) -> None:
    register(
        "plaintext",
        PlaintextBackend,
        summary="no encryption: the reference every encrypted decision is checked against",
    )
