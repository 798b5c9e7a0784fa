"""Batched scoring (issue 16): B probes in one pass decide exactly as B single probes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import BACKENDS, PEMIU, near, needs, unit_vectors

from frip_engine.contracts import score_isolated, score_many
from frip_engine.decision import Decision
from frip_engine.engine import Engine, EnrolItem
from frip_engine.errors import (
    EmbeddingError,
    FripError,
    InputError,
    MissingFileError,
)
from frip_engine.keyservice import he_key_id


def _enrolled(
    make_engine: Any, name: str, n: int = 30, seed: int = 21, **sections: Any
) -> tuple[Engine, np.ndarray]:
    gallery = unit_vectors(n, seed=seed)
    twins = gallery[0::7][: len(gallery[1::7])]
    gallery[1::7] = np.array([near(v, 0.3, 90 + i) for i, v in enumerate(twins)])
    engine = make_engine(name, **sections)
    report = engine.enrol_many(
        [EnrolItem(f"s{i:03d}", embeddings=[v]) for i, v in enumerate(gallery)]
    )
    assert not report.failed
    return engine, gallery


def _probes(gallery: np.ndarray, count: int = 6) -> list[np.ndarray]:
    step = max(1, len(gallery) // count)
    mated = [near(gallery[i], 0.8, 500 + i) for i in range(0, len(gallery), step)][:count]
    return mated + list(unit_vectors(3, seed=808))


def _same(batch: Decision, single: Decision) -> None:
    """Decisions equal, decrypted scores bit for bit."""
    assert (batch.matched, batch.subject_id, batch.score) == (
        single.matched,
        single.subject_id,
        single.score,
    )
    assert [(c.subject_id, c.score) for c in batch.candidates] == [
        (c.subject_id, c.score) for c in single.candidates
    ]
    assert (batch.threshold, batch.registrants, batch.blocks_scored, batch.probe_bytes) == (
        single.threshold,
        single.registrants,
        single.blocks_scored,
        single.probe_bytes,
    )


def _check_batch(engine: Engine, probes: list[np.ndarray], top_k: int = 5) -> None:
    decisions = engine.identify_many(embeddings=probes, top_k=top_k)
    assert len(decisions) == len(probes)
    for probe, decision in zip(probes, decisions, strict=True):
        assert isinstance(decision, Decision), decision
        _same(decision, engine.identify(embedding=probe, top_k=top_k))


# ---------------------------------------------------------------------------- kernel
def test_kernel_for_many_probes_equals_one_probe_at_a_time() -> None:
    """Exact for any int64 constants, zeros, one sign only, two piece groups, many terms,
    several limbs, odd N; serial and parallel."""
    from frip_plugins.he_backends._fast_scorer import (
        combine_residues,
        combine_residues_many,
        combine_residues_product,
    )
    from frip_plugins.he_backends._pieces import FLUSH_TERMS

    primes = [2305843009213554689, 1099511480321, 1125899906826241]  # 61, 40, 50-bit
    d, degree = FLUSH_TERMS + 21, 301
    rng = np.random.default_rng(5)
    residues = np.empty((d, 2, len(primes), degree), dtype=np.uint64)
    for limb, p in enumerate(primes):
        residues[:, :, limb] = rng.integers(0, p, size=(d, 2, degree), dtype=np.uint64)
        residues[: d // 2, 0, limb, 0] = p - 1
    constants = rng.integers(-(2**30), 2**30, size=(6, d), dtype=np.int64)
    constants[1] = np.abs(constants[1])  # positive only
    constants[2] = -np.abs(constants[2])  # negative only
    constants[3, ::2] = 0  # sparse
    constants[4] = rng.integers(-(2**62) + 1, 2**62, size=d, dtype=np.int64)  # two groups
    constants[5, :] = 0
    constants[5, 7] = 3  # a single term
    got = combine_residues_many(residues, constants, primes)
    assert got.shape == (6, 2, len(primes), degree)
    for m in range(6):
        np.testing.assert_array_equal(got[m], combine_residues(residues, constants[m], primes))
    np.testing.assert_array_equal(
        combine_residues_many(residues, constants, primes, threads=2), got
    )
    np.testing.assert_array_equal(combine_residues_product(residues, constants, primes), got)


@pytest.mark.parametrize("bits", [1, 27, 29, 30, 40, 53, 63])
def test_product_kernel_is_exact_at_its_widest_sums(bits: int) -> None:
    """The float64 product's cut (chosen from the constants' width) keeps every sum exact
    even where all terms are as large as they can be and of one sign."""
    from frip_plugins.he_backends._fast_scorer import (
        PRODUCT_ROWS,
        _product_plan,
        combine_residues_many,
        combine_residues_product,
    )

    primes = [1152921504606830593, 2305843009213554689]  # 60 and 61 bits
    d, degree = PRODUCT_ROWS + 3, 64
    residues = np.empty((d, 2, len(primes), degree), dtype=np.uint64)
    rng = np.random.default_rng(bits)
    for limb, p in enumerate(primes):
        residues[:, :, limb] = rng.integers(0, p, size=(d, 2, degree), dtype=np.uint64)
        residues[:, :, limb, :8] = p - 1
    top = (1 << bits) - 1 if bits < 64 else 2**63 - 1
    constants = rng.integers(-top, top, size=(4, d), dtype=np.int64, endpoint=True)
    constants[0] = top
    constants[1] = -top
    plan = _product_plan(61, bits, PRODUCT_ROWS)
    assert PRODUCT_ROWS * ((1 << plan.x_bits) - 1) * ((1 << plan.k_bits) - 1) <= 2**53
    assert plan.x_bits * plan.x_pieces >= 61 and plan.k_bits * plan.k_pieces >= bits
    np.testing.assert_array_equal(
        combine_residues_product(residues, constants, primes),
        combine_residues_many(residues, constants, primes),
    )


def test_product_plan_of_unit_probes_takes_four_piece_pairs() -> None:
    """60-bit residues by constants below 2^29 (unit probes at the fast preset's scale):
    4 piece pairs per multiply-add, not 6."""
    from frip_plugins.he_backends._fast_scorer import PRODUCT_ROWS, _product_plan

    plan = _product_plan(60, 29, PRODUCT_ROWS)
    assert plan.x_pieces * plan.k_pieces == 4


def test_kernel_for_many_refuses_bad_constants() -> None:
    from frip_plugins.he_backends._fast_scorer import combine_residues_many

    from frip_engine.errors import BackendError

    residues = np.zeros((3, 2, 1, 8), dtype=np.uint64)
    with pytest.raises(BackendError, match="constants"):
        combine_residues_many(residues, np.ones((2, 4), dtype=np.int64), [97])
    with pytest.raises(BackendError, match="constants"):
        combine_residues_many(residues, np.ones((2, 3)), [97])


# ------------------------------------------------------------------- matchers, engine
@pytest.mark.parametrize("backend", list(BACKENDS))
def test_matcher_batch_scores_are_the_single_scores(make_engine: Any, backend: str) -> None:
    he = BACKENDS[backend]
    needs(he)
    engine, gallery = _enrolled(make_engine, "m", 12, he=he)
    block = engine._load_block(engine.gallery_store.blocks()[0])
    prepared = [
        engine.matcher.parse_probe(engine.matcher.encode_probe(p)) for p in _probes(gallery, 3)
    ]
    batch = score_many(engine.matcher, block, prepared)
    assert batch == [engine.matcher.score(block, p) for p in prepared]


def test_a_matcher_without_score_many_is_looped(make_engine: Any) -> None:
    engine, gallery = _enrolled(make_engine, "loop", 8, he={"plugin": "plaintext"},
                                engine={"name": "loop", "insecure": True})  # fmt: skip

    class Bare:  # a third-party matcher written before batching
        def __init__(self, inner: Any) -> None:
            self.inner, self.slots = inner, inner.slots
            self.calls = 0

        def score(self, block: Any, prepared: Any) -> bytes:
            self.calls += 1
            return bytes(self.inner.score(block, prepared))

        def __getattr__(self, name: str) -> Any:
            if name == "score_many":
                raise AttributeError(name)
            return getattr(self.inner, name)

    expected = [engine.identify(embedding=p, top_k=3) for p in _probes(gallery, 3)]
    engine.matcher = bare = Bare(engine.matcher)  # type: ignore[assignment]
    got = engine.identify_many(embeddings=_probes(gallery, 3), top_k=3)
    assert bare.calls == len(expected)
    for a, b in zip(got, expected, strict=True):
        assert isinstance(a, Decision)
        _same(a, b)


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_batch_decisions_equal_one_by_one_plain_probes(make_engine: Any, backend: str) -> None:
    he = BACKENDS[backend]
    needs(he)
    engine, gallery = _enrolled(make_engine, "plain", 30, he=he)
    _check_batch(engine, _probes(gallery))


@pytest.mark.parametrize("backend", ["tenseal-fast", "tenseal-library", "pyfhel-fast"])
def test_batch_decisions_equal_one_by_one_pemiu_probes(make_engine: Any, backend: str) -> None:
    he = BACKENDS[backend]
    needs(he)
    engine, gallery = _enrolled(make_engine, "pemiu", 12, he=he, protection=PEMIU)
    # a probe's permutation is fresh per call: pin it per probe so both paths score the
    # same shuffled template (else the block assignment's float sums differ in the last bit)
    protection = engine.parts.protection
    shuffle, pinned = protection.protect_probe, {}

    def pinned_shuffle(vector: np.ndarray) -> Any:
        return pinned.setdefault(vector.tobytes(), shuffle(vector))

    protection.protect_probe = pinned_shuffle
    _check_batch(engine, _probes(gallery, 3), top_k=3)
    assert len(pinned) == 6


def test_batch_of_the_plaintext_reference(make_engine: Any) -> None:
    engine, gallery = _enrolled(
        make_engine, "ref", 30, he={"plugin": "plaintext"}, engine={"name": "ref", "insecure": True}
    )
    _check_batch(engine, _probes(gallery))


def test_batch_timings_say_what_the_other_probes_cost(make_engine: Any) -> None:
    """A probe of a batch waits while the others are extracted and encrypted, and while the
    key service decrypts and selects theirs: its timings say so (batch_wait, batch_size)
    instead of leaving it in "other"."""
    engine, gallery = _enrolled(
        make_engine, "ref", 30, he={"plugin": "plaintext"}, engine={"name": "ref", "insecure": True}
    )
    probes = _probes(gallery, 4)
    decisions = engine.identify_many(embeddings=probes)
    stages = ("feature_extraction", "probe_encryption", "decryption", "minimum_selection")
    own = [sum(d.timings[k] for k in stages) for d in decisions]
    for i, decision in enumerate(decisions):
        assert isinstance(decision, Decision) and decision.batch_size == len(probes)
        assert decision.timings["batch_wait"] == pytest.approx(sum(own) - own[i], abs=1e-9)
        stages = sum(v for k, v in decision.timings.items() if k not in ("other", "total"))
        assert stages + decision.timings["other"] == pytest.approx(decision.timings["total"])
    single = engine.identify(embedding=probes[0])
    assert single.batch_size == 1 and "batch_wait" not in single.timings


def test_key_is_unwrapped_once_per_batch(make_engine: Any, monkeypatch: Any) -> None:
    engine, gallery = _enrolled(make_engine, "once", 12, he=BACKENDS["tenseal-fast"])
    store = engine.parts.key_store
    unwraps: list[str] = []
    original = store.load_secret

    def counting(engine_id: str, key_id: str) -> bytearray:
        unwraps.append(key_id)
        return original(engine_id, key_id)

    monkeypatch.setattr(store, "load_secret", counting)
    decisions = engine.identify_many(embeddings=_probes(gallery, 5), top_k=2)
    assert all(isinstance(d, Decision) for d in decisions) and len(decisions) == 8
    assert unwraps.count(he_key_id(engine.key_version)) == 1
    assert all(d.timings["key_unwrap"] > 0 for d in decisions if isinstance(d, Decision))


def test_a_bad_probe_fails_alone(make_engine: Any, tmp_path: Path) -> None:
    engine, gallery = _enrolled(make_engine, "bad", 12, he=BACKENDS["tenseal-fast"])
    good = _probes(gallery, 2)
    nan = good[0].copy()
    nan[3] = np.nan
    embeddings: list[Any] = [good[0], np.ones(7), good[1], nan, "text", good[2]]
    got = engine.identify_many(embeddings=embeddings, top_k=2)
    assert [type(got[i]) for i in (0, 2, 5)] == [Decision, Decision, Decision]
    for index in (1, 3, 4):
        assert isinstance(got[index], FripError) and got[index].exit_code == InputError.exit_code
    assert isinstance(got[1], EmbeddingError)
    for index, probe in ((0, good[0]), (2, good[1]), (5, good[2])):
        result = got[index]
        assert isinstance(result, Decision)
        _same(result, engine.identify(embedding=probe, top_k=2))
    # image probes: a missing file and a file that is no image fail alone too
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not an image")
    mixed = engine.identify_many([tmp_path / "missing.jpg", junk, {"embedding": good[0]}])
    assert isinstance(mixed[0], MissingFileError)
    assert isinstance(mixed[1], FripError) and mixed[1].exit_code == InputError.exit_code
    assert isinstance(mixed[2], Decision)
    _same(mixed[2], engine.identify(embedding=good[0]))


def test_a_probe_that_is_zero_at_the_scale_fails_alone(make_engine: Any) -> None:
    """The kernel refuses an all-zero probe; the others of its block are still scored."""
    engine, gallery = _enrolled(make_engine, "zero", 12, he=BACKENDS["tenseal-fast"])
    tiny = np.zeros(512)
    tiny[0] = 1.0
    normalised = engine.check_embedding(tiny)
    probes = _probes(gallery, 2)
    matcher_probe = engine.matcher.parse_probe(engine.matcher.encode_probe(normalised * 1e-12))
    block = engine._load_block(engine.gallery_store.blocks()[0])
    good = engine.matcher.parse_probe(engine.matcher.encode_probe(probes[0]))
    from frip_engine.errors import BackendError

    with pytest.raises(BackendError, match="zero"):
        score_many(engine.matcher, block, [good, matcher_probe])
    assert score_isolated(engine.matcher, block, [good, matcher_probe])[0] == engine.matcher.score(
        block, good
    )


def test_batch_arguments_are_checked_whole(make_engine: Any) -> None:
    engine, gallery = _enrolled(make_engine, "args", 5, he=BACKENDS["tenseal-fast"])
    with pytest.raises(InputError, match="top_k"):
        engine.identify_many(embeddings=[gallery[0]], top_k=0)
    with pytest.raises(InputError, match="exactly one"):
        engine.identify_many([Path("a.jpg")], embeddings=[gallery[0]])
    assert engine.identify_many(embeddings=[]) == []


def test_batch_with_workers_and_routed_clusters(make_engine: Any) -> None:
    he = BACKENDS["tenseal-fast"]
    for name, sections in (
        ("workers", {"engine": {"name": "workers", "workers": 2}}),
        ("routed", {"clusterer": {"plugin": "kmeans", "clusters": 3, "probe_clusters": 2}}),
    ):
        engine, gallery = _enrolled(make_engine, name, 40, he=he, **sections)
        _check_batch(engine, _probes(gallery))
        assert isinstance(engine.identify_many(embeddings=[np.ones(3)])[0], EmbeddingError)


# ---------------------------------------------------------------------------- real faces
def test_lfw_dev_batch_of_images_equals_one_by_one(make_engine: Any, lfw: Path) -> None:
    rows = [line.split(",")[:2] for line in (lfw / "index.csv").read_text().splitlines()[1:]]
    by_person: dict[str, list[str]] = {}
    for path, person in rows:
        by_person.setdefault(person, []).append(path)
    people = [p for p, paths in by_person.items() if len(paths) >= 2][:6]
    engine = make_engine("lfw", he=BACKENDS["tenseal-fast"])
    report = engine.enrol_many([EnrolItem(p, images=[lfw / by_person[p][0]]) for p in people])
    assert len(report.enrolled) == len(people)
    probes = [lfw / by_person[p][1] for p in people]
    decisions = engine.identify_many(probes, top_k=3)
    for probe, decision in zip(probes, decisions, strict=True):
        assert isinstance(decision, Decision)
        _same(decision, engine.identify(probe, top_k=3))
    assert sum(d.subject_id == p for d, p in zip(decisions, people, strict=True)) >= 5  # type: ignore[union-attr]


# ---------------------------------------------------------------------------------- CLI
def _frip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "frip_engine", *args], capture_output=True, text=True
    )


def test_cli_identifies_a_folder_and_a_csv_as_json_lines(
    make_engine: Any, home: Path, tmp_path: Path
) -> None:
    engine, gallery = _enrolled(
        make_engine, "cli", 12, he=BACKENDS["tenseal-fast"], key_store={"plugin": "file"}
    )
    folder = tmp_path / "probes"
    folder.mkdir()
    probes = _probes(gallery, 2)
    for i, probe in enumerate(probes[:3]):
        np.save(folder / f"p{i}.npy", probe)
    (folder / "broken.npy").write_bytes(b"not numpy")
    (folder / "notes.txt").write_text("not a probe")
    expected = [engine.identify(embedding=p, top_k=2) for p in probes[:3]]
    engine.close()
    result = _frip("identify", "cli", "--probes", str(folder), "--json", "--top-k", "2")
    assert result.stdout, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["probe"] for line in lines] == [
        str(folder / name) for name in ("broken.npy", "p0.npy", "p1.npy", "p2.npy")
    ]
    assert lines[0]["error"]["exit_code"] == InputError.exit_code
    assert lines[0]["error"]["type"] == "EmbeddingError"
    for line, decision in zip(lines[1:], expected, strict=True):
        assert line["decision"]["subject_id"] == decision.subject_id
        assert [c["score"] for c in line["decision"]["candidates"]] == [
            c.score for c in decision.candidates
        ]
    assert result.returncode == InputError.exit_code, result.stderr  # one probe failed
    assert "skipped 1 entries that are not probe files (e.g. notes.txt)" in result.stderr
    nested = tmp_path / "nested"
    (nested / "person").mkdir(parents=True)
    np.save(nested / "person" / "p0.npy", probes[0])
    for empty in (nested, nested / "person" / "nothing-here"):
        empty.mkdir(exist_ok=True)
        refused = _frip("identify", "cli", "--probes", str(empty))
        assert refused.returncode == InputError.exit_code and not refused.stdout
        assert "no probe files in this folder" in refused.stderr
        assert "subfolders are not read" in refused.stderr and "Traceback" not in refused.stderr
    header_only = tmp_path / "header.csv"
    header_only.write_text("embedding\n")
    refused = _frip("identify", "cli", "--probes", str(header_only))
    assert refused.returncode == InputError.exit_code and "has no rows" in refused.stderr
    csv = tmp_path / "probes.csv"
    csv.write_text("embedding\nprobes/p0.npy\nprobes/p1.npy\n\nprobes/missing.npy\n")
    result = _frip("identify", "cli", "--probes", str(csv), "--json")
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["decision"]["subject_id"] for line in lines[:2]] == [
        d.subject_id for d in expected[:2]
    ]
    assert lines[2]["error"]["type"] == "MissingFileError"
    assert result.returncode == MissingFileError.exit_code
    human = _frip("identify", "cli", "--probes", str(csv))
    assert "p0.npy" not in human.stdout and f"{csv}:2" in human.stdout
    both = _frip("identify", "cli", "--probes", str(csv), str(csv))
    assert both.returncode == InputError.exit_code
    assert "not both" in both.stderr


def test_cli_probes_checks_its_options_before_listing_probes(home: Path, tmp_path: Path) -> None:
    absent = str(tmp_path / "absent")
    for option, value, message in (
        ("--top-k", "0", "top_k"),
        ("--threshold", "3", "threshold"),
        ("--probe-clusters", "0", "probe-clusters"),
    ):
        done = _frip("identify", "nowhere", "--probes", absent, option, value)
        assert done.returncode == 2, done.stderr
        assert message in done.stderr and "absent" not in done.stderr


def test_a_large_batch_is_scored_in_chunks_with_the_same_decisions(
    make_engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import frip_engine.engine as engine_module

    engine, gallery = _enrolled(make_engine, "chunks", 12, he=BACKENDS["tenseal-fast"])
    probes = _probes(gallery, 4)
    searched: list[int] = []
    search = engine._search

    def counted(chunk: Any, *args: Any) -> Any:
        searched.append(len(chunk))
        return search(chunk, *args)

    monkeypatch.setattr(engine_module, "BATCH_CHUNK", 3)
    monkeypatch.setattr(engine, "_search", counted)
    got = engine.identify_many(embeddings=np.stack(probes), top_k=2)
    assert searched == [3, 3, 1]
    for answer, probe in zip(got, probes, strict=True):
        assert isinstance(answer, Decision)
        _same(answer, engine.identify(embedding=probe, top_k=2))
