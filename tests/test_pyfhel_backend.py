"""The ``pyfhel`` HE backend against numpy: every preset, layout and probe transport, the
erasure path, damaged and foreign ciphertexts, the trust boundary, and one whole engine."""

from __future__ import annotations

import sys
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import near, unit_vectors
from frip_plugins.he_backends import pyfhel as pyfhel_backend
from frip_plugins.he_backends._blocks import frame, unframe
from frip_plugins.he_backends._ckks_layouts import SCORE_SET_TAG
from frip_plugins.he_backends.pyfhel import PyfhelBackend

from frip_engine import plugins
from frip_engine.engine import EnrolItem
from frip_engine.errors import BackendError, ProfileError

pytest.importorskip("Pyfhel", reason=pyfhel_backend._install_hint())

DIMENSION = 64
RR_SLOTS = 10
# CKKS error on scores of unit vectors: one limb at scale 2^29 (2^26 compact) vs 2^40.
TOLERANCE = {"fast": 1e-4, "compact": 5e-4, "precise": 1e-6, "paper": 1e-6}
CASES = [
    (preset, layout, probe)
    for layout, presets in (("packed", TOLERANCE), ("round-robin", ("precise", "paper")))
    for preset in presets
    for probe in ("plain", "encrypted")
]


@cache
def _keys(preset: str, layout: str) -> tuple[bytes, bytes]:
    """One key pair per parameter set and layout (the secret kept as immutable test bytes)."""
    public, secret = PyfhelBackend(preset=preset, layout=layout).keygen()
    return public, bytes(secret)


def _setup(preset: str, layout: str, probe: str = "plain") -> tuple[PyfhelBackend, Any, Any]:
    backend = PyfhelBackend(preset=preset, layout=layout, probe=probe, block_registrants=RR_SLOTS)
    public, secret = _keys(preset, layout)
    return backend, backend.matcher(public), backend.decryptor(public, bytearray(secret))


def _gallery(matcher: Any, n: int, seed: int = 0) -> tuple[np.ndarray, list[int], bytes]:
    """n registrants in scattered slots, the second half added to the open block."""
    rows = unit_vectors(n, DIMENSION, seed=seed)
    slots = list(np.random.default_rng(seed).choice(matcher.slots, n, replace=False))
    half = n // 2
    block = matcher.encrypt_rows(rows[:half], slots[:half])
    block = matcher.add_rows(block, rows[half:], slots[half:])
    return rows, slots, matcher.dump(block)


@pytest.mark.parametrize(("preset", "layout", "probe"), CASES)
def test_scores_equal_numpy_cosine(preset: str, layout: str, probe: str) -> None:
    _, matcher, decryptor = _setup(preset, layout, probe)
    rows, slots, data = _gallery(matcher, 8)
    block = matcher.load(data)
    for i in (0, 5):
        query = near(rows[i], 0.5, seed=100 + i)
        upload = matcher.encode_probe(query)
        scores = decryptor.decrypt_scores(matcher.score(block, matcher.parse_probe(upload)))
        assert scores.shape == (matcher.slots,)
        expected = rows @ query
        assert np.allclose(scores[slots], expected, atol=TOLERANCE[preset], rtol=0)
        assert slots[int(np.argmax(scores[slots]))] == slots[i] == int(np.argmax(scores))
        empty = np.setdiff1d(np.arange(matcher.slots), slots)
        assert np.all(np.abs(scores[empty]) < TOLERANCE[preset])


def test_pemiu_block_pairs_equal_numpy() -> None:
    _, matcher, decryptor = _setup("fast", "packed")
    rows, slots, data = _gallery(matcher, 4)
    query = unit_vectors(1, DIMENSION, seed=9)[0]
    pairs = decryptor.decrypt_scores(
        matcher.score(matcher.load(data), ("pe-miu", (query, DIMENSION // 4)))
    )
    blocks = rows.reshape(4, 4, DIMENSION // 4)
    expected = np.einsum("it,rkt->ikr", query.reshape(4, DIMENSION // 4), blocks)
    assert np.allclose(pairs[:, :, slots], expected, atol=1e-4)


@pytest.mark.parametrize(("preset", "layout"), [("fast", "packed"), ("paper", "round-robin")])
def test_erasure_decrypts_the_block_and_reencrypts_it(preset: str, layout: str) -> None:
    _, matcher, decryptor = _setup(preset, layout)
    rows, slots, data = _gallery(matcher, 6)
    plain = decryptor.decrypt_block(data)
    assert plain.shape == (DIMENSION, matcher.slots)
    assert np.allclose(plain[:, slots], rows.T, atol=TOLERANCE[preset])
    keep = slots[1:]  # erase the first registrant: re-encrypt the others only
    again = matcher.dump(matcher.encrypt_rows(plain[:, keep].T, keep))
    scores = decryptor.decrypt_scores(
        matcher.score(matcher.load(again), matcher.parse_probe(matcher.encode_probe(rows[0])))
    )
    assert abs(scores[slots[0]]) < TOLERANCE[preset]
    assert np.allclose(scores[keep], rows[1:] @ rows[0], atol=TOLERANCE[preset])


def _reframe(data: bytes, tag: bytes, index: int, change: Any) -> bytes:
    parts = unframe(tag, data)
    parts[index] = change(parts[index])
    return frame(tag, parts)


DAMAGE = {
    "truncated": lambda ct: ct[:-9],
    "bad header": lambda ct: b"\x00" + ct[1:],
    "residue >= prime": lambda ct: ct[:-8] + b"\xff" * 8,
    "one byte": lambda ct: ct[:1],
}


@pytest.mark.parametrize("layout", ["packed", "round-robin"])
@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_ciphertexts_are_refused(layout: str, damage: str) -> None:
    backend, matcher, decryptor = _setup("precise", layout)
    _, slots, data = _gallery(matcher, 3)
    index = 1 if layout == "packed" else 1 + slots[0]  # a ciphertext, not the dimension
    broken = _reframe(data, backend.block_tag, index, DAMAGE[damage])
    with pytest.raises(BackendError, match="rejected by Pyfhel/SEAL"):
        matcher.load(broken)
    with pytest.raises(BackendError, match="rejected by Pyfhel/SEAL"):
        decryptor.decrypt_block(broken)
    query = matcher.parse_probe(matcher.encode_probe(np.eye(DIMENSION)[0]))
    scores = matcher.score(matcher.load(data), query)
    # packed scores are one ciphertext, round-robin scores a framed set of them
    with pytest.raises(BackendError, match=r"rejected by Pyfhel/SEAL|block is truncated"):
        decryptor.decrypt_scores(scores[:-100])
    if layout == "packed":
        with pytest.raises(BackendError, match="rejected by Pyfhel/SEAL"):
            decryptor.decrypt_scores(DAMAGE[damage](scores))


def test_foreign_blocks_are_refused_or_out_of_range() -> None:
    _, matcher, decryptor = _setup("fast", "packed")
    rows, slots, _ = _gallery(matcher, 4)
    other = PyfhelBackend(preset="fast")
    other_public, _ = other.keygen()
    foreign = other.matcher(other_public)
    foreign_block = foreign.dump(foreign.encrypt_rows(rows, slots))
    probe = matcher.parse_probe(matcher.encode_probe(rows[0]))
    # same parameter set, another key: SEAL loads it, the scores are noise far out of range
    scores = decryptor.decrypt_scores(matcher.score(matcher.load(foreign_block), probe))
    assert np.max(np.abs(scores)) > 1.05
    # another parameter set: SEAL refuses the ciphertexts (parms_id) and the context
    _, precise, _ = _setup("precise", "packed")
    precise_block = precise.dump(precise.encrypt_rows(rows, slots))
    with pytest.raises(BackendError, match="another key or parameter set"):
        matcher.load(precise_block)
    with pytest.raises(BackendError, match="another parameter set"):
        PyfhelBackend(preset="fast").matcher(_keys("precise", "packed")[0])


def test_matcher_holds_only_public_material_and_cannot_decrypt() -> None:
    backend, matcher, decryptor = _setup("paper", "round-robin")
    public, secret = _keys("paper", "round-robin")
    secret_key = unframe(pyfhel_backend.SECRET_TAG, secret)[1]
    assert secret_key[-64:] not in public and secret_key[100:164] not in public
    with pytest.raises(BackendError, match="public context only"):
        backend.matcher(secret)
    assert matcher.ops.he.is_secret_key_empty() and not matcher.ops.he.is_rotate_key_empty()
    rows, slots, data = _gallery(matcher, 2)
    scores = matcher.score(matcher.load(data), matcher.parse_probe(matcher.encode_probe(rows[0])))
    one = matcher.ops.load(unframe(SCORE_SET_TAG, scores)[1 + slots[0]])
    with pytest.raises(BackendError, match="cannot decrypt"):
        matcher.ops.decrypt(one)
    assert decryptor.decrypt_scores(scores).max() == pytest.approx(1.0, abs=1e-6)
    decryptor.close()
    with pytest.raises(BackendError, match="closed"):
        decryptor.decrypt_scores(scores)
    with pytest.raises(BackendError, match="not a Pyfhel secret key"):
        backend.decryptor(public, bytearray(public))
    with pytest.raises(BackendError, match="another parameter set"):
        backend.decryptor(public, bytearray(_keys("precise", "round-robin")[1]))


def test_fast_preset_cannot_hold_round_robin_distances() -> None:
    with pytest.raises(ProfileError, match="round-robin"):
        PyfhelBackend(preset="fast", layout="round-robin")


def test_install_hint_carries_the_last_build_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_plugins: None
) -> None:
    monkeypatch.setattr(sys, "prefix", str(tmp_path))
    assert "build_pyfhel_wheel.py" in pyfhel_backend._install_hint()
    assert "last attempt" not in pyfhel_backend._install_hint()
    (tmp_path / pyfhel_backend.BUILD_FAILURE_NOTE).write_text("no C++ compiler\n")
    component = plugins.registry().get("he_backend", "pyfhel")
    assert [r.module for r in component.requires] == ["Pyfhel"]
    assert "last attempt: no C++ compiler" in component.requires[0].install


def test_engine_identifies_through_pyfhel(make_engine: Any) -> None:
    gallery = unit_vectors(50, seed=3)
    engine = make_engine("pf", he={"plugin": "pyfhel"})
    report = engine.enrol_many(
        [EnrolItem(f"s{i:03d}", embeddings=[v]) for i, v in enumerate(gallery)]
    )
    assert not report.failed and len(report.enrolled) == 50
    for i in (0, 17, 49):
        probe = near(gallery[i], 0.9, seed=200 + i)
        decision = engine.identify(embedding=probe, top_k=3)
        expected = np.argsort(gallery @ probe)[::-1][:3]
        assert decision.subject_id == f"s{i:03d}" and decision.matched
        assert [c.subject_id for c in decision.candidates] == [f"s{j:03d}" for j in expected]
        assert decision.score == pytest.approx(float(gallery[i] @ probe), abs=1e-4)
    stranger = engine.identify(embedding=unit_vectors(1, seed=77)[0])
    assert not stranger.matched
