"""The HE backend suite: decisions equal the plaintext reference, the matcher holds public
material only, foreign and damaged blobs are refused, weak parameters are refused."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np
import pytest

from frip_engine.contracts import Decryptor, HEBackend
from frip_engine.errors import BackendError, FripError, SecurityError
from frip_engine.keyservice import KeyService
from frip_engine.testing.adapter import unit_vectors
from frip_engine.testing.base import Conformance, refused

# the fixed gallery: registrants, their dimension, the probes' decision threshold
REGISTRANTS = 12
DIMENSION = 32
THRESHOLD = 0.6  # no probe's best score lies near it (0.50 and 0.80 are the nearest)


def _near(vector: np.ndarray, noise: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    moved = vector + noise * rng.standard_normal(vector.shape) / np.sqrt(vector.size)
    return np.asarray(moved / np.linalg.norm(moved))


class _Keyed:
    """A backend with one key pair, its matcher and a block holding the fixed gallery."""

    def __init__(self, backend: Any, gallery: np.ndarray) -> None:
        self.backend = backend
        self.public, self.secret = backend.keygen()
        self.matcher = backend.matcher(self.public)
        self.slots = list(range(len(gallery)))
        half = len(gallery) // 2  # encrypt, then add the rest: both paths the engine uses
        block = self.matcher.encrypt_rows(gallery[:half], self.slots[:half])
        block = self.matcher.add_rows(block, gallery[half:], self.slots[half:])
        self.blob = bytes(self.matcher.dump(block))

    def decide(self, blob: bytes, probe: np.ndarray) -> list[tuple[float, str]]:
        """The top 3 (score, "s<slot>") as the engine decides them (load, score, decrypt,
        check the scores' range: KeyService's own selection); raises what the engine would."""
        matcher = self.matcher
        scores = matcher.score(matcher.load(blob), matcher.parse_probe(matcher.encode_probe(probe)))
        decryptor = self.backend.decryptor(self.public, bytearray(self.secret))
        try:
            values = np.asarray(decryptor.decrypt_scores(bytes(scores)))
        finally:
            decryptor.close()
        occupants = {slot: f"s{slot}" for slot in self.slots}
        return KeyService._best_in_block(0, values, occupants, 3)


class HEBackendConformance(Conformance):
    """``params``: a fast instance; ``other_params``: another parameter set (a block made
    under one must be refused under the other); ``weak_params``: parameters under 128-bit
    security, which the factory or ``security_check`` must refuse with SecurityError (exit
    5). Both are required of an encrypting backend: left None, their checks fail, saying
    what to set. A backend with ``encrypted = False`` (the plaintext reference) is only
    checked for its decisions and damaged blocks."""

    kind: ClassVar[str] = "he_backend"
    other_params: ClassVar[dict[str, Any] | None] = None
    weak_params: ClassVar[dict[str, Any] | None] = None
    score_tolerance: ClassVar[float] = 1e-3

    @pytest.fixture(scope="class")
    @classmethod
    def gallery(cls) -> np.ndarray:
        vectors = unit_vectors(REGISTRANTS, DIMENSION, seed=11)
        vectors[1] = _near(vectors[0], 0.3, 1)  # a near-duplicate registrant
        return vectors

    @pytest.fixture(scope="class")
    @classmethod
    def keyed(cls, gallery: np.ndarray) -> Iterator[_Keyed]:
        backend = cls().make()
        assert isinstance(backend, HEBackend), "the component does not satisfy HEBackend"
        backend.security_check()
        assert backend.slots() >= REGISTRANTS, (
            f"slots() is {backend.slots()}: the suite's gallery needs {REGISTRANTS}"
        )
        yield _Keyed(backend, gallery)

    def _encrypted(self, keyed: _Keyed) -> None:
        if not keyed.backend.encrypted:
            pytest.skip(f"{keyed.backend.name} does not encrypt (encrypted = False)")

    def test_decisions_equal_the_plaintext_reference(
        self, keyed: _Keyed, gallery: np.ndarray
    ) -> None:
        probes = [_near(gallery[i], 0.6, 100 + i) for i in range(0, REGISTRANTS, 3)]
        probes += list(unit_vectors(3, DIMENSION, seed=99))  # strangers
        for probe in probes:
            reference = gallery @ probe
            order = np.argsort(-reference, kind="stable")[:3]
            decided = keyed.decide(keyed.blob, probe)
            assert decided[0][1] == f"s{order[0]}", "the best candidate differs"
            assert (decided[0][0] >= THRESHOLD) == (reference[order[0]] >= THRESHOLD), (
                f"the decision differs: best score {decided[0][0]}, plaintext "
                f"{reference[order[0]]}, threshold {THRESHOLD}"
            )
            # the runners-up may swap only where the plaintext scores are within tolerance
            assert np.allclose(
                [v for v, _ in decided], reference[order], atol=self.score_tolerance
            ), "scores differ from the plaintext ones"
            assert np.allclose(
                [v for v, _ in decided],
                [reference[int(s[1:])] for _, s in decided],
                atol=self.score_tolerance,
            ), "a candidate's score is not its plaintext score"

    def test_the_matcher_holds_public_material_only(self, keyed: _Keyed) -> None:
        self._encrypted(keyed)
        assert not isinstance(keyed.matcher, Decryptor), "the matcher can decrypt"
        secret = bytes(keyed.secret)
        assert secret != keyed.public, "keygen returned the secret as the public context"
        # past a leading parameter header, no piece of the secret is in the public material
        for start in range(min(256, len(secret) // 2), len(secret) - 32, 251):
            assert secret[start : start + 32] not in keyed.public, "secret bytes in public"
        with refused(FripError, "a decryptor made from the public context"):
            keyed.backend.decryptor(keyed.public, bytearray(keyed.public))

    def test_a_block_from_another_key_is_refused(self, keyed: _Keyed, gallery: np.ndarray) -> None:
        self._encrypted(keyed)
        other = _Keyed(self.make(), gallery)
        with refused(BackendError, "scoring a block encrypted under another key"):
            keyed.decide(other.blob, gallery[0])

    def test_a_block_from_another_parameter_set_is_refused(
        self, keyed: _Keyed, gallery: np.ndarray
    ) -> None:
        self._encrypted(keyed)
        if self.other_params is None:
            pytest.fail(
                f"{type(self).__name__}: set other_params to a second parameter set of "
                f"{keyed.backend.name} (factory keywords, e.g. {{'preset': 'compact'}}): a "
                "block made under one must be refused under the other"
            )
        other = _Keyed(self.make(**self.other_params), gallery)
        with refused(BackendError, "a block made under other_params, scored under params"):
            keyed.decide(other.blob, gallery[0])
        with refused(BackendError, "a block made under params, scored under other_params"):
            other.decide(keyed.blob, gallery[0])

    def test_damaged_blocks_are_refused(self, keyed: _Keyed, gallery: np.ndarray) -> None:
        for damaged in (keyed.blob[: len(keyed.blob) // 2], keyed.blob[:16], b""):
            with refused(BackendError, f"a block cut to {len(damaged)} bytes"):
                keyed.decide(damaged, gallery[0])

    def test_parameters_under_128_bit_security_are_refused(self) -> None:
        if self.weak_params is None:
            backend = self.make()
            if not backend.encrypted:
                pytest.skip(f"{backend.name} does not encrypt (encrypted = False)")
            pytest.fail(
                f"{type(self).__name__}: set weak_params to parameters under 128-bit "
                f"security (factory keywords, e.g. {{'poly_modulus_degree': 1024}}) that "
                f"{backend.name} must refuse with SecurityError"
            )
        try:
            self.make(**self.weak_params).security_check()
        except SecurityError:
            return
        pytest.fail(
            f"weak_params {self.weak_params} (under 128-bit security) were accepted: the "
            "factory or security_check() must raise SecurityError"
        )
