"""An adapter that takes any bytes: raw float32, no header, no checksum."""

from __future__ import annotations

from typing import Any

import numpy as np

from frip_engine.testing import AdapterConformance


class RawAdapter:
    name = "raw-f32"
    vendor = "Careless Inc."

    def decode(self, payload: bytes) -> np.ndarray:
        return np.frombuffer(payload, dtype="<f4").astype(np.float64)

    def encode(self, embedding: np.ndarray) -> bytes:
        return np.asarray(embedding, dtype="<f4").tobytes()


class TestRawAdapter(AdapterConformance):
    def make(self, **overrides: Any) -> Any:
        return RawAdapter()
