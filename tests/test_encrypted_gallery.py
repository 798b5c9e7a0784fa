"""The TenSEAL engine against the plaintext reference, the trust boundary, and erasure."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from conftest import near, unit_vectors

from frip_engine.engine import Engine, EnrolItem
from frip_engine.errors import BackendError, EmbeddingError, SubjectError
from frip_engine.keyservice import KeyService

PLAINTEXT = {"he": {"plugin": "plaintext"}}


def _pair(make_engine: Any, n: int, seed: int = 0) -> tuple[Engine, Engine, np.ndarray]:
    gallery = unit_vectors(n, seed=seed)
    # planted near-duplicates: pairs of registrants closer to each other than most probes
    gallery[1::10] = np.array([near(v, 0.3, 5000 + i) for i, v in enumerate(gallery[0::10])])
    encrypted = make_engine("enc")
    reference = make_engine("ref", **PLAINTEXT)
    reference.profile.insecure = True
    items = [EnrolItem(f"s{i:04d}", embeddings=[v]) for i, v in enumerate(gallery)]
    for engine in (encrypted, reference):
        report = engine.enrol_many(items)
        assert not report.failed and len(report.enrolled) == n
    return encrypted, reference, gallery


@pytest.fixture
def make_engine(make_engine: Any) -> Any:
    def factory(name: str, **sections: Any) -> Engine:
        if sections.get("he", {}).get("plugin") == "plaintext":
            sections["engine"] = {"name": name, "insecure": True}
        return make_engine(name, **sections)

    return factory


def test_encrypted_decisions_equal_plaintext_decisions(make_engine: Any) -> None:
    encrypted, reference, gallery = _pair(make_engine, 300)
    rng = np.random.default_rng(7)
    mated = [near(gallery[i], 0.9, 1000 + i) for i in rng.choice(300, 40, replace=False)]
    strangers = list(unit_vectors(20, seed=99))
    for probe in mated + strangers:
        a = encrypted.identify(embedding=probe, top_k=5)
        b = reference.identify(embedding=probe, top_k=5)
        assert (a.matched, a.subject_id) == (b.matched, b.subject_id)
        assert [c.subject_id for c in a.candidates] == [c.subject_id for c in b.candidates]
        assert np.allclose(
            [c.score for c in a.candidates], [c.score for c in b.candidates], atol=1e-4
        )
    assert sum(encrypted.identify(embedding=p).matched for p in mated) == len(mated)
    assert not any(encrypted.identify(embedding=p).matched for p in strangers)


def test_decision_carries_table_two_timings(make_engine: Any) -> None:
    encrypted, _, gallery = _pair(make_engine, 20)
    decision = encrypted.identify(embedding=gallery[3])
    assert decision.subject_id == "s0003" and decision.score == pytest.approx(1.0, abs=1e-3)
    for stage in ("probe_encryption", "distance_derivation", "minimum_selection", "other", "total"):
        assert stage in decision.timings
    assert (
        decision.timings["total"]
        >= sum(v for k, v in decision.timings.items() if k != "total") - 1e-6
    )
    assert decision.registrants == 20 and decision.blocks_scored == 1


def test_matcher_holds_only_public_material_and_cannot_decrypt(make_engine: Any) -> None:
    encrypted, _, gallery = _pair(make_engine, 10)
    matcher = encrypted.matcher
    context = matcher.ops.context
    assert not context.has_secret_key()
    assert not context.is_private()
    block = encrypted._load_block(encrypted.gallery_store.blocks()[0])
    scores = matcher.score(block, matcher.parse_probe(matcher.encode_probe(gallery[0])))
    import tenseal as ts

    with pytest.raises(ValueError, match="secret"):
        ts.ckks_vector_from(context, scores).decrypt()
    with pytest.raises(ValueError, match="secret"):
        block[0].decrypt()
    public = ts.context_from(encrypted.key_service.public_context)
    assert not public.has_secret_key()


def test_verify_is_one_to_one(make_engine: Any) -> None:
    encrypted, _, gallery = _pair(make_engine, 30)
    yes = encrypted.verify("s0005", embedding=near(gallery[5], 0.5, 1))
    no = encrypted.verify("s0006", embedding=near(gallery[5], 0.5, 1))
    assert yes.matched and yes.subject_id == "s0005"
    assert not no.matched and no.candidates[0].subject_id == "s0006"
    with pytest.raises(SubjectError, match="not enrolled"):
        encrypted.verify("nobody", embedding=gallery[0])


def test_removal_erases_the_template_from_the_ciphertexts(make_engine: Any) -> None:
    encrypted, _, gallery = _pair(make_engine, 12)
    record = encrypted.gallery_store.subject("s0004")
    assert record is not None
    encrypted.remove("s0004")
    assert encrypted.gallery_store.subject("s0004") is None
    _, data = encrypted.gallery_store.read_block(record.block_id)
    with encrypted.key_service.unlocked() as decryptor:
        features = decryptor.decrypt_block(data)
    assert np.max(np.abs(features[:, record.slot])) < 1e-4  # gone, not hidden
    others = [encrypted.gallery_store.subject(f"s{i:04d}") for i in range(12) if i != 4]
    for i, other in zip([i for i in range(12) if i != 4], others, strict=True):
        assert other is not None
        assert np.allclose(features[:, other.slot], gallery[i], atol=1e-4)
    decision = encrypted.identify(embedding=gallery[4])
    assert decision.subject_id is None or decision.subject_id != "s0004"
    with pytest.raises(SubjectError):
        encrypted.remove("s0004")
    # the freed slot is reused by the next enrolment
    encrypted.enrol(EnrolItem("newcomer", embeddings=[gallery[4]]))
    assert encrypted.identify(embedding=gallery[4]).subject_id == "newcomer"


@pytest.mark.parametrize(
    ("vector", "message"),
    [
        (np.ones(128), "dimension 128"),
        (np.full(512, np.nan), "NaN"),
        (np.r_[np.inf, np.ones(511)], "NaN or infinite"),
        (np.zeros(512), "all zeros"),
        (np.ones((2, 512)), "one vector"),
        ("abc", "text values"),
    ],
)
def test_bad_probe_embeddings(make_engine: Any, vector: Any, message: str) -> None:
    engine = make_engine("bad")
    with pytest.raises(EmbeddingError, match=message):
        engine.identify(embedding=vector)
    report = engine.enrol_many([EnrolItem("x", embeddings=[vector])])
    assert message.split()[0] in report.failed["x"] and not report.enrolled


def test_duplicate_and_unknown_subjects(make_engine: Any) -> None:
    engine = make_engine("dup")
    v = unit_vectors(2)
    engine.enrol(EnrolItem("alice", embeddings=[v[0]]))
    with pytest.raises(SubjectError, match="already enrolled"):
        engine.enrol(EnrolItem("alice", embeddings=[v[1]]))
    report = engine.enrol_many(
        [EnrolItem("bob", embeddings=[v[1]]), EnrolItem("bob", embeddings=[v[0]])]
    )
    assert report.enrolled == ["bob"] and "already enrolled" in report.failed["bob"]
    with pytest.raises(SubjectError, match="not enrolled"):
        engine.remove("carol")
    assert engine.stats()["subjects"] == 2


def test_empty_gallery_answers_no_match(make_engine: Any) -> None:
    decision = make_engine("empty").identify(embedding=unit_vectors(1)[0])
    assert not decision.matched and decision.candidates == []


def test_block_from_another_key_is_refused(make_engine: Any) -> None:
    first, _, gallery = _pair(make_engine, 5)
    other = make_engine("other")
    other.enrol_many([EnrolItem(f"s{i:04d}", embeddings=[v]) for i, v in enumerate(gallery)])
    foreign = other.gallery_store.read_block(other.gallery_store.blocks()[0].block_id)[1]
    info = first.gallery_store.blocks()[0]
    first.gallery_store.commit_block(info.block_id, info.revision, 0, 1, info.capacity, foreign)
    with pytest.raises(BackendError, match="another key"):
        first.identify(embedding=gallery[0])


def test_truncated_block_is_refused(make_engine: Any) -> None:
    engine, _, _ = _pair(make_engine, 3)
    data = engine.gallery_store.read_block(1)[1]
    with pytest.raises(BackendError, match="truncated"):
        engine.matcher.load(data[:-1000])
    with pytest.raises(BackendError):
        engine.matcher.load(b"FRIP-TS1" + data[8:20])


def test_key_service_wipes_its_unwrapped_copy(make_engine: Any, monkeypatch: Any) -> None:
    engine, _, gallery = _pair(make_engine, 3)
    seen: list[bytearray] = []
    original = engine.parts.key_store.load_secret

    def spy(*args: Any) -> bytearray:
        secret = original(*args)
        seen.append(secret)
        return secret

    monkeypatch.setattr(engine.parts.key_store, "load_secret", spy)
    engine.identify(embedding=gallery[0])
    assert seen and all(not any(buffer) for buffer in seen)
    assert isinstance(engine.key_service, KeyService)


def test_probe_values_below_the_scale_are_harmless(make_engine: Any) -> None:
    encrypted, reference, gallery = _pair(make_engine, 5)
    probe = gallery[2].copy()
    probe[:10] = 1e-12  # encode to 0 at scale 2^29: TenSEAL would otherwise fail
    a, b = encrypted.identify(embedding=probe), reference.identify(embedding=probe)
    assert a.subject_id == b.subject_id == "s0002"


def test_embeddings_that_cancel_out_fail_only_their_subject(make_engine: Any) -> None:
    # with the same-person check off (-1): it would refuse v and -v as two people first
    engine = make_engine("cancel", extractor={"plugin": "arcface", "same_person_floor": -1.0})
    v = unit_vectors(2)
    report = engine.enrol_many(
        [EnrolItem("odd", embeddings=[v[0], -v[0]]), EnrolItem("fine", embeddings=[v[1]])]
    )
    assert report.enrolled == ["fine"] and "cancel out" in report.failed["odd"]
    assert engine.identify(embedding=v[1]).subject_id == "fine"


def test_a_stale_engine_object_follows_a_rotated_key(make_engine: Any, home: Any) -> None:
    first = make_engine("stale")
    v = unit_vectors(3)
    first.enrol(EnrolItem("a", embeddings=[v[0]]))
    second = Engine.open("stale", home)
    second.rotate_he_keys()
    first.enrol(EnrolItem("b", embeddings=[v[1]]))  # written under v2, never the retired v1
    assert first.key_version == 2 and first.identify(embedding=v[0]).subject_id == "a"
    assert second.identify(embedding=v[1]).subject_id == "b"
    second.close()
