"""PE-MIU protection mechanics on synthetic vectors: permutations, comparison, errors."""

from __future__ import annotations

import random
from collections import Counter
from itertools import permutations
from typing import Any

import numpy as np
import pytest

from frip_engine import pemiu, plugins
from frip_engine.errors import InputError, ProfileError
from frip_engine.keyservice import KeyService
from frip_engine.pemiu import PemiuTemplate
from frip_engine.profile import Profile, build
from tests.conftest import near, unit_vectors


def _protection(**params: object) -> object:
    return plugins.create("protection", "pe-miu", **params)


def _order(template: PemiuTemplate) -> tuple[int, ...]:
    """The permutation applied to a vector whose block k is filled with the value k."""
    blocks = template.vector.reshape(template.blocks, template.block_size)
    return tuple(round(b[0]) for b in blocks)


def _labelled(dimension: int, block_size: int) -> np.ndarray:
    return np.repeat(np.arange(dimension // block_size, dtype=float), block_size)


@pytest.mark.parametrize("block_size", [16, 32, 64, 128])
def test_default_moves_every_block(block_size: int) -> None:
    protection = _protection(block_size=block_size, extractor="arcface")
    blocks = 512 // block_size
    for vector in unit_vectors(60, 512, seed=block_size):
        template = protection.protect(vector)  # type: ignore[attr-defined]
        assert template.complexity == blocks
        assert template.block_size == block_size and template.extractor == "arcface"
        # the blocks are the same multiset, only reordered
        assert sorted(map(tuple, template.vector.reshape(blocks, -1))) == sorted(
            map(tuple, vector.reshape(blocks, -1))
        )


def test_derangements_are_uniform_and_fresh_per_template() -> None:
    vector = _labelled(64, 16)  # 4 blocks: 9 derangements
    seen = Counter(_order(pemiu.protect(vector, 16, "arcface")) for _ in range(1800))
    derangements = {p for p in permutations(range(4)) if all(p[i] != i for i in range(4))}
    assert set(seen) == derangements
    # each expected 200 times; a biased sampler (e.g. cyclic shifts only) fails this
    assert all(140 < count < 260 for count in seen.values()), seen


def test_min_complexity_zero_allows_fixed_blocks_and_is_recorded() -> None:
    vector = _labelled(64, 16)
    templates = [pemiu.protect(vector, 16, "arcface", min_complexity=0) for _ in range(400)]
    for t in templates:
        order = _order(t)
        assert t.complexity == sum(order[i] != i for i in range(4))
    values = Counter(t.complexity for t in templates)
    assert values[0] > 0 and values[2] > 0 and values[4] > 0
    assert 1 not in values  # one block cannot move alone
    halfway = [pemiu.protect(vector, 16, "arcface", min_complexity=3) for _ in range(200)]
    assert min(t.complexity for t in halfway) >= 3


def test_comparison_recovers_the_blocks() -> None:
    gallery = unit_vectors(20, 512, seed=3)
    protection = _protection(block_size=32, extractor="arcface")
    for i, vector in enumerate(gallery):
        reference = protection.protect(vector)  # type: ignore[attr-defined]
        again = protection.protect_probe(vector)  # type: ignore[attr-defined]
        assert not np.allclose(again.vector, reference.vector)  # a fresh permutation
        assert protection.compare(again, reference) == pytest.approx(1.0)  # type: ignore[attr-defined]
        mate = near(vector, 0.3, seed=i)
        plain = float(mate @ vector)
        score = protection.compare(protection.protect_probe(mate), reference)  # type: ignore[attr-defined]
        assert score == pytest.approx(plain, abs=1e-9)
        other = gallery[(i + 1) % len(gallery)]
        assert protection.compare(protection.protect_probe(other), reference) < 0.5  # type: ignore[attr-defined]


def test_permutations_come_from_the_os_csprng(monkeypatch: pytest.MonkeyPatch) -> None:
    draws: list[int] = []
    getrandbits = random.SystemRandom.getrandbits  # os.urandom underneath

    def counted(self: random.SystemRandom, k: int) -> int:
        draws.append(k)
        return getrandbits(self, k)

    monkeypatch.setattr(random.SystemRandom, "getrandbits", counted)
    pemiu.protect(unit_vectors(1)[0], 32, "arcface")
    assert len(draws) >= 15  # a shuffle of 16 blocks draws 15 times (more when rejected)


def test_assignment_is_one_to_one_and_optimal_not_greedy() -> None:
    # both probe blocks are closest to reference block 0: a per-block argmax takes it twice
    probe = PemiuTemplate(np.array([1.0, 0.0, 0.9, 0.1]), 2, "arcface", 4, 2)
    reference = PemiuTemplate(np.array([1.0, 0.0, 0.0, 1.0]), 2, "arcface", 4, 2)
    norms = np.linalg.norm(probe.vector) * np.linalg.norm(reference.vector)
    assert pemiu.compare(probe, reference) == pytest.approx((1.0 + 0.1) / norms)  # not 1.9
    # against every one-to-one assignment of 5 random blocks, in the comparator and in the
    # key service's decision under HE (which gets the block-pair products, one per slot)
    rng = np.random.default_rng(4)
    for _ in range(20):
        products = rng.standard_normal((5, 5))
        best = max(sum(products[i, p[i]] for i in range(5)) for p in permutations(range(5)))
        assert pemiu.assigned_scores(products[None])[0] == pytest.approx(best)
        ((value, _),) = KeyService._best_in_block(0, products[:, :, None] / 10, {0: "a"}, 1)
        assert value == pytest.approx(best / 10)


def test_the_profile_binds_the_protection_to_the_engines_extractor() -> None:
    def parts(**protection: Any) -> Any:
        data = {"engine": {"name": "x"}, "protection": {"plugin": "pe-miu", **protection}}
        return build(Profile.from_dict(data))  # [extractor] defaults to arcface

    bound = parts().protection
    assert bound.extractor == "arcface"
    assert bound.protect(unit_vectors(1)[0]).extractor == "arcface"
    assert parts(extractor="arcface").protection.extractor == "arcface"
    with pytest.raises(ProfileError, match=r"\[protection\].*'facenet'.*'arcface'"):
        parts(extractor="facenet")
    with pytest.raises(ProfileError, match="one block cannot move"):
        parts(block_size=512)
    with pytest.raises(ProfileError, match=r"\[protection\].*does not divide"):
        parts(block_size=48)
    with pytest.raises(ProfileError, match="no extractor"):
        _protection(block_size=32).protect(unit_vectors(1)[0])  # type: ignore[attr-defined]


def test_block_size_must_divide_the_dimension() -> None:
    with pytest.raises(InputError, match=r"block_size 48 does not divide .* 512"):
        _protection(block_size=48).output_dimension(512)  # type: ignore[attr-defined]
    with pytest.raises(InputError, match="does not divide"):
        _protection(block_size=48, extractor="arcface").protect(unit_vectors(1)[0])  # type: ignore[attr-defined]
    with pytest.raises(InputError, match="positive integer"):
        _protection(block_size=0)
    with pytest.raises(InputError, match="exceeds"):
        _protection(block_size=128, min_complexity=5).output_dimension(512)  # type: ignore[attr-defined]


def test_refuses_double_protection_and_foreign_templates() -> None:
    vector = unit_vectors(1)[0]
    p32 = _protection(block_size=32, extractor="arcface")
    once = p32.protect(vector)  # type: ignore[attr-defined]
    with pytest.raises(InputError, match="already protected"):
        p32.protect(once)  # type: ignore[attr-defined]
    with pytest.raises(InputError, match="already protected"):
        p32.protect_probe(once)  # type: ignore[attr-defined]
    other_size = _protection(block_size=64, extractor="arcface").protect(vector)  # type: ignore[attr-defined]
    with pytest.raises(InputError, match=r"block_size 64 differs .* 32"):
        p32.compare(other_size, once)  # type: ignore[attr-defined]
    other_model = _protection(block_size=32, extractor="facenet").protect(vector)  # type: ignore[attr-defined]
    with pytest.raises(InputError, match=r"extractor 'facenet'.*'arcface'"):
        p32.compare(other_model, once)  # type: ignore[attr-defined]
    with pytest.raises(InputError, match="not a PE-MIU"):
        p32.compare(vector, once)  # type: ignore[attr-defined]
