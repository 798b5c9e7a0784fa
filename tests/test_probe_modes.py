"""Layouts and probe modes of the CKKS backends against the plaintext reference."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from conftest import near, unit_vectors
from frip_plugins.he_backends._ckks_layouts import read_probe

from frip_engine import pemiu, plugins
from frip_engine.engine import PROFILE_FILE, Engine, EnrolItem
from frip_engine.errors import BackendError, InputError, ProfileError
from frip_engine.pemiu import PemiuTemplate
from frip_engine.profile import Profile, build


def _enrolled(make_engine: Any, name: str, n: int, **sections: Any) -> tuple[Engine, np.ndarray]:
    gallery = unit_vectors(n, seed=11)
    gallery[1::7] = np.array([near(v, 0.3, 70 + i) for i, v in enumerate(gallery[0::7])])
    engine = make_engine(name, **sections)
    report = engine.enrol_many(
        [EnrolItem(f"s{i:03d}", embeddings=[v]) for i, v in enumerate(gallery)]
    )
    assert not report.failed
    return engine, gallery


def _probes(gallery: np.ndarray, count: int) -> list[np.ndarray]:
    mated = [near(gallery[i], 0.8, 300 + i) for i in range(0, len(gallery), len(gallery) // count)]
    return mated + list(unit_vectors(3, seed=404))


def _check_against_numpy(engine: Engine, gallery: np.ndarray, probes: list[np.ndarray]) -> None:
    for probe in probes:
        decision = engine.identify(embedding=probe, top_k=3)
        expected = np.argsort(-(gallery @ probe), kind="stable")[:3]
        assert [c.subject_id for c in decision.candidates] == [f"s{i:03d}" for i in expected]
        assert np.allclose(
            [c.score for c in decision.candidates], (gallery @ probe)[expected], atol=2e-4
        )
        assert decision.matched == bool((gallery @ probe)[expected[0]] >= engine.threshold)


def test_encrypted_probe_scores_equal_plaintext_and_report_the_upload(make_engine: Any) -> None:
    he = {"plugin": "tenseal", "preset": "compact", "probe": "encrypted"}
    engine, gallery = _enrolled(make_engine, "enc-probe", 40, he=he)
    _check_against_numpy(engine, gallery, _probes(gallery, 4))
    decision = engine.identify(embedding=gallery[5])
    ciphertext = 2 * 4096 * 8  # two polynomials of 4096 coefficients, one 54-bit limb
    assert decision.probe_bytes > 512 * ciphertext * 0.7  # 512 probe ciphertexts, zstd'd
    plain = make_engine("plain-probe", he={"plugin": "tenseal", "preset": "compact"})
    plain.enrol_many([EnrolItem("a", embeddings=[gallery[0]])])
    assert plain.identify(embedding=gallery[0]).probe_bytes < 5000


def test_round_robin_layout_is_the_papers_euclidean_baseline(make_engine: Any) -> None:
    he = {"plugin": "tenseal", "preset": "precise", "layout": "round-robin"}
    engine, gallery = _enrolled(make_engine, "rr", 20, he=he | {"block_registrants": 8})
    assert len(engine.gallery_store.blocks()) == 3  # 20 registrants in blocks of 8
    _check_against_numpy(engine, gallery, _probes(gallery, 3))
    encrypted_probe = make_engine("rr-enc", he=he | {"probe": "encrypted"})
    encrypted_probe.enrol_many(
        [EnrolItem(f"s{i:03d}", embeddings=[v]) for i, v in enumerate(gallery)]
    )
    _check_against_numpy(encrypted_probe, gallery, _probes(gallery, 2))
    engine.remove("s004")  # erasure re-encrypts the block without the slot
    after = engine.identify(embedding=gallery[4], top_k=2)
    assert "s004" not in [c.subject_id for c in after.candidates]


def test_pemiu_probe_mode_scores_equal_plaintext_pemiu(make_engine: Any) -> None:
    protection = {"plugin": "pe-miu", "block_size": 32}
    engine, gallery = _enrolled(make_engine, "pemiu", 12, protection=protection)
    block = engine.gallery_store.blocks()[0]
    _, data = engine.gallery_store.read_block(block.block_id)
    with engine.key_service.unlocked() as decryptor:
        stored = decryptor.decrypt_block(data)[:, :12].T  # the shuffled references
    for i in (0, 3, 7):
        probe = engine.parts.protection.protect_probe(near(gallery[i], 0.5, 900 + i))
        payload = engine.matcher.encode_probe(probe)
        scored = engine.matcher.score(
            engine._load_block(block), engine.matcher.parse_probe(payload)
        )
        occupants = engine._occupants()
        candidates, _ = engine.key_service.decide([(block.block_id, scored)], occupants, 12)
        he_scores = {c.subject_id: c.score for c in candidates}
        plain = pemiu.compare_many(np.repeat(probe.vector[None], 12, 0), stored, 32)
        for j in range(12):
            assert he_scores[occupants[block.block_id][j]] == pytest.approx(plain[j], abs=1e-4)
        # the matcher saw only the freshly shuffled probe, never the unshuffled one
        assert not np.allclose(probe.vector, near(gallery[i], 0.5, 900 + i))
    decision = engine.identify(embedding=near(gallery[3], 0.5, 5))
    assert decision.subject_id == "s003"


def test_the_matcher_receives_only_the_freshly_shuffled_probe(
    make_engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine, gallery = _enrolled(make_engine, "spy", 12, protection={"plugin": "pe-miu"})
    uploads: list[bytes] = []
    prepare = engine.matcher.parse_probe

    def spy(payload: bytes) -> Any:
        uploads.append(payload)
        return prepare(payload)

    monkeypatch.setattr(engine.matcher, "parse_probe", spy)
    raw = near(gallery[3], 0.5, 5)
    assert engine.identify(embedding=raw).subject_id == "s003"
    (upload,) = uploads
    mode, parts = read_probe(upload)
    assert mode == "pe-miu"
    sent = np.frombuffer(parts[1], dtype="<f8").reshape(16, 32)  # default block size 32
    blocks = raw.reshape(16, 32)
    origin = [int(np.argmin(np.linalg.norm(blocks - row, axis=1))) for row in sent]
    # the probe's own blocks, each once (a permutation), none left in its place (a derangement)
    assert np.allclose(sent, blocks[origin], atol=1e-12)
    assert sorted(origin) == list(range(16))
    assert all(origin[k] != k for k in range(16))
    # an unshuffled upload (what a faulty edge sends) is refused before any scoring
    with pytest.raises(BackendError, match="takes pe-miu probes, the upload is a plain probe"):
        prepare(engine.matcher.encode_probe(raw))


def test_a_pemiu_matcher_takes_only_its_engines_block_size(make_engine: Any) -> None:
    engine, gallery = _enrolled(make_engine, "sizes", 6, protection={"plugin": "pe-miu"})
    for size in (128, 1):  # another engine's block size; a 512 x 512 pair computation
        foreign = pemiu.protect(gallery[0], size, "arcface", min_complexity=0)
        with pytest.raises(BackendError, match=f"block size {size}, this engine's templates 32"):
            engine.matcher.parse_probe(engine.matcher.encode_probe(foreign))
    cut = PemiuTemplate(gallery[0][:500], 32, "arcface", 500, 0)  # 500 is not 32 x blocks
    with pytest.raises(InputError, match="does not divide"):
        engine.matcher.parse_probe(engine.matcher.encode_probe(cut))
    plain = make_engine("plain-engine", he={"plugin": "tenseal", "preset": "compact"})
    template = pemiu.protect(gallery[0], 32, "arcface")
    with pytest.raises(BackendError, match="takes plain probes, the upload is a pe-miu probe"):
        plain.matcher.parse_probe(plain.matcher.encode_probe(template))
    for he in ({"layout": "round-robin", "preset": "paper"}, {"probe": "encrypted"}):
        backend = build(Profile.from_dict({"engine": {"name": "b"}, "he": he})).he_backend
        with pytest.raises(BackendError, match="no pe-miu probe mode"):
            backend.matcher(engine.key_service.public_context, 32)


def test_pemiu_engine_refuses_a_protected_probe_and_scores_in_workers(make_engine: Any) -> None:
    engine, gallery = _enrolled(
        make_engine,
        "workers",
        12,
        engine={"name": "workers", "workers": 2},
        protection={"plugin": "pe-miu"},
    )
    template = pemiu.protect(gallery[2], 32, "arcface")
    with pytest.raises(InputError, match="already protected"):
        engine.identify(embedding=template)
    report = engine.enrol_many([EnrolItem("twice", embeddings=[template])])
    assert "already protected" in report.failed["twice"]
    assert engine.identify(embedding=near(gallery[2], 0.5, 8)).subject_id == "s002"


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("block_size = 32", "block_size = 64", "pemiu_block_size '32' but the profile says '64'"),
        (
            'plugin = "pe-miu"\nblock_size = 32',
            'plugin = "none"',
            "protection 'pe-miu' but the profile says 'none'",
        ),
        ('plugin = "arcface"', 'plugin = "facenet"', "extractor 'arcface' but the profile says"),
    ],
)
def test_a_profile_edited_after_enrolment_is_refused_on_open(
    make_engine: Any, home: Any, old: str, new: str, message: str
) -> None:
    protection = {"plugin": "pe-miu", "block_size": 32}
    engine, gallery = _enrolled(make_engine, "edited", 6, protection=protection)
    engine.close()
    path = engine.directory / PROFILE_FILE
    original = path.read_text()
    assert old in original
    path.write_text(original.replace(old, new))
    with pytest.raises(ProfileError, match=message):
        Engine.open("edited", home)
    path.write_text(original)
    with Engine.open("edited", home) as again:
        assert again.identify(embedding=near(gallery[4], 0.5, 3)).subject_id == "s004"


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        (
            {
                "protection": {"plugin": "pe-miu"},
                "he": {"layout": "round-robin", "preset": "paper"},
            },
            "probe mode 'pe-miu'",
        ),
        ({"protection": {"plugin": "pe-miu"}, "he": {"probe": "encrypted"}}, "probe mode 'pe-miu'"),
        (
            {"protection": {"plugin": "pe-miu"}, "clusterer": {"plugin": "kmeans"}},
            "use clusterer 'single'",
        ),
        ({"he": {"layout": "round-robin", "preset": "fast"}}, "cannot hold round-robin squared"),
        ({"he": {"layout": "diagonal"}}, "layout must be one of"),
        ({"he": {"probe": "secret"}}, "probe must be one of"),
        ({"he": {"layout": "round-robin", "preset": "paper", "block_registrants": 0}}, "1 to 4096"),
    ],
)
def test_incompatible_layouts_and_probe_modes_are_refused(
    sections: dict[str, Any], message: str
) -> None:
    data: dict[str, Any] = {"engine": {"name": "p"}}
    for section, value in sections.items():
        data[section] = value if section != "he" else {"plugin": "tenseal"} | value
    with pytest.raises(ProfileError, match=message):
        build(Profile.from_dict(data))


def test_bad_probe_uploads_are_refused(make_engine: Any) -> None:
    engine = make_engine(
        "uploads", he={"plugin": "tenseal", "preset": "compact", "probe": "encrypted"}
    )
    plain = make_engine("plain-uploads", he={"plugin": "tenseal", "preset": "compact"})
    probe = unit_vectors(1, seed=3)[0]
    with pytest.raises(BackendError, match="takes encrypted probes"):
        engine.matcher.parse_probe(plain.matcher.encode_probe(probe))
    payload = plain.matcher.encode_probe(probe)
    with pytest.raises(BackendError, match="truncated"):
        plain.matcher.parse_probe(payload[:-3])
    with pytest.raises(BackendError, match="not a FRIP-PRB"):
        plain.matcher.parse_probe(b"garbage" + payload)
    poisoned = plain.matcher.encode_probe(np.full(512, np.nan))
    with pytest.raises(BackendError, match="not finite"):
        plain.matcher.parse_probe(poisoned)
    foreign = make_engine(
        "foreign", he={"plugin": "tenseal", "preset": "fast", "probe": "encrypted"}
    )
    with pytest.raises(BackendError, match="another parameter set"):
        engine.matcher.parse_probe(foreign.matcher.encode_probe(probe))


@pytest.mark.parametrize("backend", ["tenseal", "pyfhel"])
def test_fast_scorer_is_bit_identical_to_the_library_inside_an_engine(
    make_engine: Any, backend: str
) -> None:
    if backend == "pyfhel":
        pytest.importorskip("Pyfhel", reason="Pyfhel is not installed (make builds it)")
    he = {"plugin": backend, "preset": "fast", "scorer": "fast"}
    engine, gallery = _enrolled(make_engine, "fast", 30, he=he)
    _check_against_numpy(engine, gallery, _probes(gallery, 3))
    info = engine.gallery_store.blocks()[0]
    _, data = engine.gallery_store.read_block(info.block_id)
    public = engine.key_service.public_context
    library = plugins.create("he_backend", backend, preset="fast")
    probe = near(gallery[4], 0.5, 12)
    template = pemiu.protect(probe, 64, "arcface")
    with engine.key_service.unlocked() as decryptor:
        for vector, block_size in ((probe, None), (template, 64)):
            results = []
            for side in (engine.parts.he_backend, library):
                matcher = side.matcher(public, block_size)
                prepared = matcher.parse_probe(matcher.encode_probe(vector))
                results.append(
                    decryptor.decrypt_scores(matcher.score(matcher.load(data), prepared))
                )
            assert np.array_equal(results[0], results[1])
    engine.enrol_many([EnrolItem("late", embeddings=[gallery[0] * -1.0])])  # add to a fast block
    assert engine.identify(embedding=gallery[0] * -1.0).subject_id == "late"
    engine.remove("s002")
    assert "s002" not in [
        c.subject_id for c in engine.identify(embedding=gallery[2], top_k=3).candidates
    ]


@pytest.mark.parametrize(
    ("he", "message"),
    [
        (
            {"plugin": "tenseal", "scorer": "fast", "layout": "round-robin", "preset": "paper"},
            "packed layout",
        ),
        ({"plugin": "tenseal", "scorer": "turbo"}, "scorer must be one of"),
        ({"plugin": "tenseal", "scorer": "fast", "scorer_threads": 0}, "at least 1"),
    ],
)
def test_fast_scorer_options_are_checked(he: dict[str, Any], message: str) -> None:
    with pytest.raises(ProfileError, match=message):
        build(Profile.from_dict({"engine": {"name": "p"}, "he": he}))
