"""The adapter suite: a vendor template format round-trips and damage is refused."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pytest

from frip_engine.contracts import Adapter
from frip_engine.errors import InputError
from frip_engine.testing.base import Conformance


def unit_vectors(n: int, dimension: int, seed: int = 0) -> np.ndarray:
    """``n`` random unit vectors, float64 (n, dimension), reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, dimension))
    return np.asarray(vectors / np.linalg.norm(vectors, axis=1, keepdims=True))


class AdapterConformance(Conformance):
    """``decode(encode(v))`` is ``v`` up to the format's precision (cosine at least
    ``round_trip_cosine``) as a finite float vector of ``dimension``; a truncated, padded,
    bit-flipped, random or empty payload raises an InputError (the engine's exit 2, a
    4xx in the service), never another exception and never a vector.

    So a template format must carry integrity data (a checksum or a MAC): a damaged
    template that still decodes is another vector, and a damaged template must never
    enrol a wrong face or identify as someone else. The vector need not be of unit
    length: the engine normalises what ``decode`` returns."""

    kind: ClassVar[str] = "adapter"
    dimension: ClassVar[int] = 512
    round_trip_cosine: ClassVar[float] = 0.999

    @pytest.fixture
    def adapter(self) -> Any:
        made = self.make()
        assert isinstance(made, Adapter), "the component does not satisfy Adapter"
        assert made.name and made.vendor, "an adapter names itself and its vendor"
        return made

    @pytest.fixture
    def payload(self, adapter: Any) -> bytes:
        encoded = adapter.encode(unit_vectors(1, self.dimension, seed=1)[0])
        assert isinstance(encoded, bytes), f"encode returned {type(encoded).__name__}"
        return encoded

    def test_round_trip(self, adapter: Any) -> None:
        for vector in unit_vectors(5, self.dimension):
            decoded = np.asarray(adapter.decode(adapter.encode(vector)))
            assert decoded.shape == (self.dimension,), (
                f"decoded shape {decoded.shape}, expected ({self.dimension},)"
            )
            assert np.issubdtype(decoded.dtype, np.floating), f"decoded dtype {decoded.dtype}"
            assert np.all(np.isfinite(decoded)), "the decoded vector has NaN or infinite values"
            cosine = float(decoded @ vector / np.linalg.norm(decoded))
            assert cosine >= self.round_trip_cosine, f"round trip lost too much: {cosine}"

    def _refused(self, adapter: Any, damaged: bytes, what: str) -> None:
        try:
            adapter.decode(damaged)
        except InputError:
            return
        except Exception as exc:
            pytest.fail(f"{what}: raised {type(exc).__name__}, not an InputError: {exc}")
        pytest.fail(f"{what}: accepted (a damaged template must raise an InputError)")

    def test_truncated_and_padded_templates_are_refused(self, adapter: Any, payload: bytes) -> None:
        for cut in sorted({0, 1, len(payload) // 2, len(payload) - 1}):
            self._refused(adapter, payload[:cut], f"truncated to {cut} of {len(payload)} bytes")
        self._refused(adapter, payload + b"\0", "one byte appended")

    def test_corrupted_templates_are_refused(self, adapter: Any, payload: bytes) -> None:
        positions = sorted({0, 1, 4, len(payload) // 3, len(payload) // 2, len(payload) - 1})
        for position in positions:
            damaged = bytearray(payload)
            damaged[position] ^= 0x5A
            self._refused(adapter, bytes(damaged), f"byte {position} altered")
        noise = np.random.default_rng(3).bytes(len(payload))
        self._refused(adapter, noise, "random bytes")
