"""An HE backend whose decisions drift: scores gain a little per slot, so rankings change."""

from __future__ import annotations

from typing import Any

import numpy as np
from frip_plugins.he_backends.plaintext import PlaintextBackend, PlaintextDecryptor

from frip_engine.testing import HEBackendConformance


class DriftingDecryptor(PlaintextDecryptor):
    def decrypt_scores(self, scores: bytes) -> np.ndarray:
        values = super().decrypt_scores(scores)
        return values + 0.01 * np.arange(values.size)  # later slots creep up the ranking


class DriftingBackend(PlaintextBackend):
    name = "drifting"

    def decryptor(self, public_context: bytes, secret_context: bytearray) -> Any:
        return DriftingDecryptor(self._slots)


class TestDriftingBackend(HEBackendConformance):
    def make(self, **overrides: Any) -> Any:
        return DriftingBackend()
