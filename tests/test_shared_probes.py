"""The ``shared`` probe mode: two additive shares of the plain probe's constants, scored by
two matcher processes, combined by the key service; bit-identical to the plain probe, each
share alone uniform, every mismatched or partial input refused."""

from __future__ import annotations

import os
import tempfile
from typing import Any

import numpy as np
import pytest
from conftest import near, unit_vectors

pytest.importorskip("tenseal")
pytest.importorskip("numba")

from frip_plugins.he_backends._ckks_layouts import _probe_payload, read_probe
from frip_plugins.he_backends._fast_scorer import (
    combine_residues_limbs,
    encode_constants,
    seal_primes,
)

from frip_engine import plugins, sharing
from frip_engine.ckks import PRESETS
from frip_engine.decision import Decision
from frip_engine.engine import Engine, EnrolItem
from frip_engine.errors import BackendError, ProfileError, ShareError
from frip_engine.profile import Profile, build

FAST_PRIME = seal_primes(8192, [60, 60])[0]  # the fast preset's one data prime
SCALE = 2.0 ** PRESETS["fast"].scale_bits


def _shared(backend: str = "tenseal") -> dict[str, Any]:
    if backend == "pyfhel":
        pytest.importorskip("Pyfhel", reason="Pyfhel is not installed (make builds it)")
    return {"plugin": backend, "preset": "fast", "scorer": "fast", "probe": "shared"}


# ------------------------------------------------------------------------ the statistics
def uniformity_pvalue(residues: np.ndarray, prime: int, bins: int = 64) -> float:
    """The smaller p-value of a chi-square test (``bins`` equal ranges of Z_p) and a
    Kolmogorov-Smirnov test of ``residues / prime`` against the uniform distribution."""
    from scipy import stats

    x = np.asarray(residues, dtype=np.float64).ravel() / float(prime)
    counts = np.bincount(np.minimum((x * bins).astype(int), bins - 1), minlength=bins)
    return min(float(stats.chisquare(counts).pvalue), float(stats.kstest(x, "uniform").pvalue))


def centred(residues: np.ndarray, prime: int) -> np.ndarray:
    """Residues lifted to (-p/2, p/2], as floats (how a matcher would read a constant)."""
    r = np.asarray(residues, dtype=np.float64)
    return np.where(r > prime / 2, r - prime, r)


def _probe_constants(count: int, seed: int = 5) -> np.ndarray:
    return np.stack([encode_constants(v, SCALE) for v in unit_vectors(count, seed=seed)])


def test_shares_add_up_to_the_constants_and_each_alone_is_uniform() -> None:
    ks = _probe_constants(200)  # 200 probes x 512 features = 102,400 residues per share
    pairs = [sharing.split(k, [FAST_PRIME]) for k in ks]
    a = np.stack([p[0][0] for p in pairs])
    b = np.stack([p[1][0] for p in pairs])
    k_mod = np.mod(ks, FAST_PRIME).astype(object)
    assert np.all((a.astype(object) + b.astype(object)) % FAST_PRIME == k_mod)
    for share in (a, b):
        assert share.dtype == np.uint64 and np.all(share < np.uint64(FAST_PRIME))
        assert uniformity_pvalue(share, FAST_PRIME) > 1e-4
        # what one matcher holds is uncorrelated with the probe's constants
        assert abs(np.corrcoef(centred(share, FAST_PRIME).ravel(), ks.ravel())[0, 1]) < 0.02
    # two splits of one probe share nothing either
    again = sharing.split(ks[0], [FAST_PRIME])[0][0]
    assert abs(np.corrcoef(centred(again, FAST_PRIME), centred(a[0], FAST_PRIME))[0, 1]) < 0.2


def _leaky_split(constants: np.ndarray, prime: int) -> tuple[np.ndarray, np.ndarray]:
    """A deliberately wrong splitter: ``a`` from a narrow range (20 bits of a 60-bit Z_p)."""
    a = np.random.default_rng(1).integers(0, 2**20, size=constants.size, dtype=np.uint64)
    k = np.mod(constants, prime).astype(np.uint64)
    return a, np.where(k >= a, k - a, k + (np.uint64(prime) - a))


def test_the_uniformity_check_catches_a_leaky_splitter() -> None:
    ks = _probe_constants(200)
    leaky = [_leaky_split(k, FAST_PRIME) for k in ks]
    a = np.stack([p[0] for p in leaky])
    b = np.stack([p[1] for p in leaky])
    assert uniformity_pvalue(a, FAST_PRIME) < 1e-12
    assert uniformity_pvalue(b, FAST_PRIME) < 1e-12
    # and b = k - a leaks k: it correlates with the probe's constants
    assert np.corrcoef(centred(b, FAST_PRIME).ravel(), ks.ravel())[0, 1] > 0.5


def test_uniform_residues_cover_z_p_and_refuse_bad_moduli() -> None:
    small = sharing.uniform_residues(7, 7000)
    assert set(small.tolist()) == set(range(7))
    from scipy import stats

    assert stats.chisquare(np.bincount(small.astype(np.int64), minlength=7)).pvalue > 1e-4
    for bad in (1, 2**64):
        with pytest.raises(ShareError, match="share modulus"):
            sharing.uniform_residues(bad, 3)


# ------------------------------------------------------------------------------- kernel
def _seal_blob(ct: Any) -> bytes:
    handle, path = tempfile.mkstemp()
    os.close(handle)
    try:
        ct.save(path)
        with open(path, "rb") as f:
            return f.read()
    finally:
        os.unlink(path)


def _seal_gallery(preset: str, count: int, seed: int) -> tuple[Any, Any, list[Any], np.ndarray]:
    """A TenSEAL context of ``preset``, its codec, ``count`` encrypted vectors and their
    residues (count, 2, limbs, N)."""
    import tenseal as ts
    from frip_plugins.he_backends._fast_scorer import TenSEALCodec

    params = PRESETS[preset]
    ctx = ts.context(
        ts.SCHEME_TYPE.CKKS, params.poly_modulus_degree, -1, list(params.coeff_mod_bit_sizes)
    )
    ctx.global_scale = 2.0**params.scale_bits
    codec = TenSEALCodec.from_context(ctx)
    rng = np.random.default_rng(seed)
    vectors = [ts.ckks_vector(ctx, rng.standard_normal(64).tolist()) for _ in range(count)]
    return ctx, codec, vectors, np.stack([codec.read(v.serialize())[0] for v in vectors])


def _seal_sum(ctx: Any, codec: Any, vectors: list[Any], plaintext: Any) -> np.ndarray:
    """SEAL's own sum of ``plaintext(j, ct_j) * ct_j`` (multiply_plain, add_inplace), as
    residues (2, limbs, N)."""
    import tenseal.sealapi as sealapi

    evaluator = sealapi.Evaluator(ctx.seal_context().data)
    total = None
    for j, vector in enumerate(vectors):
        ct = vector.ciphertext()[0]
        term = sealapi.Ciphertext()
        evaluator.multiply_plain(ct, plaintext(j, ct), term)
        if total is None:
            total = term
        else:
            evaluator.add_inplace(total, term)
    assert total is not None
    return codec.read_seal(_seal_blob(total), scale=total.scale)[0]


@pytest.mark.parametrize("preset", ["fast", "paper"])
def test_kernel_takes_any_residue_and_equals_seals_own_arithmetic(preset: str) -> None:
    import tenseal.sealapi as sealapi

    ctx, codec, vectors, gallery = _seal_gallery(preset, 6, seed=3)
    primes = [int(p) for p in codec.primes]
    rng = np.random.default_rng(3)
    # SEAL takes an integer constant exactly up to 2^53 (it encodes through a double); the
    # same integer reduced by each limb's prime is that limb's constant
    ks = [1, 2, 2**53 - 1, *rng.integers(1, 2**53, size=3).tolist()]  # SEAL refuses a 0 product
    encoder = sealapi.CKKSEncoder(ctx.seal_context().data)

    def encoded(j: int, ct: Any) -> Any:
        plain = sealapi.Plaintext()
        encoder.encode(int(ks[j]), ct.parms_id(), 1.0, plain)
        return plain

    seal = _seal_sum(ctx, codec, vectors, encoded)
    constants = np.array([[int(k) % p for k in ks] for p in primes], dtype=np.uint64)
    assert np.array_equal(combine_residues_limbs(gallery, constants[None], primes)[0], seal)
    # beyond what SEAL takes: every limb its own residues, up to p - 1, against Python's
    # integers (and one vector at a time equals the batch, serial equals parallel)
    wide = np.stack([rng.integers(0, p, size=len(vectors), dtype=np.uint64) for p in primes])
    wide[:, 0] = np.array(primes, dtype=np.uint64) - np.uint64(1)
    wide[:, 1] = 0
    batch = np.stack([wide, constants])
    got = combine_residues_limbs(gallery, batch, primes)
    assert np.array_equal(got, combine_residues_limbs(gallery, batch, primes, threads=2))
    expected = np.zeros(got.shape[1:], dtype=object)
    for j in range(len(vectors)):
        for limb in range(len(primes)):
            expected[:, limb] += gallery[j, :, limb].astype(object) * int(wide[limb, j])
    for limb, p in enumerate(primes):
        expected[:, limb] %= p
    assert np.array_equal(got[0].astype(object), expected)
    assert np.array_equal(got[1], combine_residues_limbs(gallery, batch[1:], primes)[0])


def _seal_constant_plaintext(
    ctx: Any, parms_id: list[int], residues: list[int], version: tuple[int, int]
) -> Any:
    """A SEAL plaintext in NTT form holding ``residues[l]`` at every coefficient of limb l:
    the NTT of a constant polynomial, any value of Z_p (SEAL's encoder takes integers up
    to 2^53 only), loaded by SEAL itself, which checks each value is below its prime."""
    import struct

    import tenseal.sealapi as sealapi
    from frip_plugins.he_backends._fast_scorer import COUNT, SEAL_HEADER, SEAL_MAGIC

    degree = ctx.seal_context().data.first_context_data().parms().poly_modulus_degree()
    major, minor = version  # SEAL's serialisation version, as its ciphertexts carry it
    data = np.repeat(np.array(residues, dtype="<u8"), degree).tobytes()
    values = degree * len(residues)
    array = SEAL_HEADER.size + COUNT.size + len(data)
    inner = SEAL_HEADER.pack(SEAL_MAGIC, SEAL_HEADER.size, major, minor, 0, 0, array)
    members = struct.pack("<4QQd", *parms_id, values, 1.0) + inner + COUNT.pack(values) + data
    outer = SEAL_HEADER.pack(
        SEAL_MAGIC, SEAL_HEADER.size, major, minor, 0, 0, SEAL_HEADER.size + len(members)
    )
    handle, path = tempfile.mkstemp()
    try:
        os.write(handle, outer + members)
        os.close(handle)
        plain = sealapi.Plaintext()
        plain.load(ctx.seal_context().data, path)
    finally:
        os.unlink(path)
    return plain


@pytest.mark.parametrize("preset", ["fast", "paper"])
def test_kernel_equals_seal_on_constants_at_the_edges_of_z_p(preset: str) -> None:
    """Constants 1, p - 1, (p - 1) / 2, p - 2 and random full-width residues, each limb its
    own: the kernel's sum equals SEAL's own multiply_plain and add on the same constants."""

    ctx, codec, vectors, gallery = _seal_gallery(preset, 7, seed=11)
    primes = [int(p) for p in codec.primes]
    rng = np.random.default_rng(11)
    version = codec.read(vectors[0].serialize())[1].version
    constants = np.stack(
        [
            [1, p - 1, (p - 1) // 2, p - 2, *rng.integers(1, p, size=3, dtype=np.uint64).tolist()]
            for p in primes
        ]
    ).astype(np.uint64)
    seal = _seal_sum(
        ctx,
        codec,
        vectors,
        lambda j, ct: _seal_constant_plaintext(
            ctx, ct.parms_id(), [int(k) for k in constants[:, j]], version
        ),
    )
    assert np.array_equal(combine_residues_limbs(gallery, constants[None], primes)[0], seal)
    assert np.array_equal(combine_residues_limbs(gallery, constants[None], primes, 2)[0], seal)


def test_kernel_equals_python_integers_at_the_edges() -> None:
    """What SEAL refuses to multiply (a zero constant: a transparent product) or has no
    room for: 0, 1, p - 1 and random full-width residues over more terms than an
    accumulator takes before a flush, residues at p - 1, three limbs up to 61 bits; and
    the plain kernel's int64 extremes. Against Python's integers."""
    from frip_plugins.he_backends._fast_scorer import combine_residues
    from frip_plugins.he_backends._pieces import FLUSH_TERMS

    primes = [2305843009213554689, 1099511480321, FAST_PRIME]  # 61, 40 and 60 bits
    d, degree = FLUSH_TERMS + 7, 9
    rng = np.random.default_rng(12)
    gallery = np.empty((d, 2, len(primes), degree), dtype=np.uint64)
    for limb, p in enumerate(primes):
        gallery[:, :, limb] = rng.integers(0, p, size=(d, 2, degree), dtype=np.uint64)
        gallery[: d // 2, :, limb, 0] = p - 1  # the largest terms, in one column
    top = np.array(primes, dtype=np.uint64)[:, None]
    constants = np.zeros((5, len(primes), d), dtype=np.uint64)
    constants[0] = top - np.uint64(1)  # every constant p - 1
    constants[1] = 1
    for limb, p in enumerate(primes):
        constants[2, limb] = rng.integers(0, p, size=d, dtype=np.uint64)
    constants[2, :, ::3] = 0
    constants[2, :, 1::5] = top - np.uint64(1)
    constants[3, :, 5] = 1  # one term; row 4 stays all zeros
    got = combine_residues_limbs(gallery, constants, primes)
    big = gallery.astype(object)
    for m in range(len(constants)):
        for limb, p in enumerate(primes):
            want = np.tensordot(constants[m, limb].astype(object), big[:, :, limb], axes=1) % p
            assert np.array_equal(got[m, :, limb].astype(object), want), (m, limb)
    assert np.array_equal(combine_residues_limbs(gallery, constants, primes, threads=2), got)
    ints = rng.integers(-(2**63), 2**63 - 1, size=d, dtype=np.int64, endpoint=True)
    ints[:4] = [-(2**63), 2**63 - 1, -1, 0]
    plain = combine_residues(gallery, ints, primes)
    for limb, p in enumerate(primes):
        want = np.tensordot(ints.astype(object), big[:, :, limb], axes=1) % p
        assert np.array_equal(plain[:, limb].astype(object), want), limb


def test_kernel_refuses_residues_at_or_above_the_prime_and_bad_shapes() -> None:
    gallery = np.zeros((4, 2, 1, 16), dtype=np.uint64)
    ok = np.zeros((1, 1, 4), dtype=np.uint64)
    assert combine_residues_limbs(gallery, ok, [FAST_PRIME]).shape == (1, 2, 1, 16)
    high = ok.copy()
    high[0, 0, 2] = FAST_PRIME
    with pytest.raises(BackendError, match="not a residue"):
        combine_residues_limbs(gallery, high, [FAST_PRIME])
    for bad in (np.zeros((1, 1, 3), dtype=np.uint64), np.zeros((1, 2, 4), dtype=np.uint64)):
        with pytest.raises(BackendError, match="constants must be uint64"):
            combine_residues_limbs(gallery, bad, [FAST_PRIME])
    with pytest.raises(BackendError, match="constants must be uint64"):
        combine_residues_limbs(gallery, ok.astype(np.int64), [FAST_PRIME])


# ------------------------------------------------------------------------------- engine
def _enrolled(make_engine: Any, name: str, gallery: np.ndarray, he: dict[str, Any]) -> Engine:
    engine = make_engine(name, he=he)
    report = engine.enrol_many(
        [EnrolItem(f"s{i:04d}", embeddings=[v]) for i, v in enumerate(gallery)]
    )
    assert not report.failed
    return engine


def _plain_reference(engine: Engine, probes: list[np.ndarray], top_k: int) -> list[Any]:
    """What the plain probe mode decides on the same gallery under the same key: a plain
    fast matcher of the same public context, scored here, decided by the key service."""
    he = engine.profile.params("he") | {"probe": "plain"}
    backend = plugins.create("he_backend", engine.profile.plugin("he"), **he)
    matcher = backend.matcher(engine.key_service.public_context)
    blocks = []
    for info in engine.gallery_store.blocks():
        _, data = engine.gallery_store.read_block(info.block_id)
        blocks.append((info.block_id, matcher.load(data)))
    batch = []
    for probe in probes:
        parsed = matcher.parse_probe(matcher.encode_probe(probe))
        batch.append([(block_id, matcher.score(block, parsed)) for block_id, block in blocks])
    return engine.key_service.decide_many(batch, engine._occupants(), top_k)


def _check_bit_identical(engine: Engine, probes: list[np.ndarray], top_k: int = 3) -> None:
    decisions = engine.identify_many(embeddings=probes, top_k=top_k)
    expected = _plain_reference(engine, probes, top_k)
    for decision, (candidates, _) in zip(decisions, expected, strict=True):
        assert isinstance(decision, Decision), decision
        assert [(c.subject_id, c.score) for c in decision.candidates] == [
            (c.subject_id, c.score) for c in candidates
        ]
        assert decision.matched == (candidates[0].score >= engine.threshold)
        assert decision.probe_bytes <= 16 * 1024  # both shares of a 512-d probe


@pytest.mark.parametrize("backend", ["tenseal", "pyfhel"])
def test_shared_probes_decide_bit_for_bit_as_plain_ones(make_engine: Any, backend: str) -> None:
    gallery = unit_vectors(40, seed=11)
    engine = _enrolled(make_engine, f"shared-{backend}", gallery, _shared(backend))
    probes = [near(gallery[i], 0.5, 70 + i) for i in range(0, 40, 5)] + list(
        unit_vectors(2, seed=99)
    )
    _check_bit_identical(engine, probes)
    single = engine.identify(embedding=probes[0], top_k=3)
    assert single.subject_id == "s0000"
    assert engine.verify("s0005", embedding=probes[1]).matched
    engine.remove("s0000")  # the matchers reload the re-encrypted block
    assert "s0000" not in [c.subject_id for c in engine.identify(embedding=probes[0]).candidates]
    # matchers A and B are processes of their own, neither of them this one
    assert engine._sharers is not None
    pids = [
        {p.pid for pool in party._pools for p in (pool._processes or {}).values()}
        for party in engine._sharers.parties
    ]
    assert all(pids) and not pids[0] & pids[1] and os.getpid() not in pids[0] | pids[1]


def test_lfw_dev_shared_probes_decide_as_plain_ones(make_engine: Any, lfw_dev_split: Any) -> None:
    split = lfw_dev_split
    engine = _enrolled(make_engine, "shared-lfw", split.gallery, _shared())
    probes = list(split.probes[:24])
    _check_bit_identical(engine, probes, top_k=5)
    found = engine.identify_many(embeddings=probes)
    truth = split.truth[:24]
    hits = [
        d.subject_id == f"s{split.ids.index(t):04d}" for d, t in zip(found, truth, strict=True) if t
    ]
    assert sum(hits) >= 0.9 * len(hits)


def test_each_matcher_gets_only_its_own_share() -> None:
    class Party:
        def __init__(self) -> None:
            self.seen: list[bytes] = []

        def score_many(self, jobs: list[Any]) -> list[list[bytes]]:
            out = []
            for _, payloads in jobs:
                self.seen.extend(payloads)
                out.append([b"r" + p[:1] for p in payloads])
            return out

        def close(self) -> None:
            pass

    scorer = sharing.SharedScorer.__new__(sharing.SharedScorer)
    from concurrent.futures import ThreadPoolExecutor

    scorer.parties = (Party(), Party())  # type: ignore[assignment]
    scorer._side = ThreadPoolExecutor(1)
    probes = tuple(
        sharing.SharedProbe(bytes([i]) * 16, b"A" + bytes([i]), b"B" + bytes([i])) for i in range(3)
    )
    rows = scorer.score_many([(None, probes), (None, probes[:1])])  # type: ignore[list-item]
    scorer.close()
    assert scorer.parties[0].seen == [p.share_a for p in probes] + [probes[0].share_a]  # type: ignore[attr-defined]
    assert scorer.parties[1].seen == [p.share_b for p in probes] + [probes[0].share_b]  # type: ignore[attr-defined]
    assert len(rows) == 2 and all(sharing.is_pair(r) for row in rows for r in row)  # type: ignore[arg-type]


# -------------------------------------------------------------------- one share, bad input
@pytest.fixture(scope="module")
def keys() -> dict[str, Any]:
    """Two key pairs of the fast preset (a key version and another), no engine."""
    backend = plugins.create("he_backend", "tenseal", preset="fast", scorer="fast", probe="shared")
    made = {}
    for name in ("current", "other"):
        public, secret = backend.keygen()
        made[name] = (public, secret)
    return {"backend": backend, **made}


def _block(matcher: Any, rows: np.ndarray) -> Any:
    return matcher.load(matcher.dump(matcher.encrypt_rows(rows, list(range(len(rows))))))


def test_one_share_reveals_nothing_and_decides_nothing(keys: dict[str, Any]) -> None:
    backend = keys["backend"]
    public, secret = keys["current"]
    matcher = backend.matcher(public)
    gallery = unit_vectors(256, seed=2)
    block = _block(matcher, gallery)
    probe = near(gallery[3], 0.3, 4)
    shared = matcher.encode_shares(probe)
    for payload in (shared.share_a, shared.share_b):
        _, parsed = matcher.parse_probe(payload)
        # read as the probe's constants, a share decodes to garbage, not to the probe
        decoded = centred(parsed.residues[0], FAST_PRIME) / SCALE
        assert np.abs(decoded).max() > 1e6
        assert abs(float(decoded @ probe) / np.linalg.norm(decoded)) < 0.25
    results = [
        matcher.score(block, matcher.parse_probe(s)) for s in (shared.share_a, shared.share_b)
    ]
    decryptor = backend.decryptor(public, bytearray(secret))
    with pytest.raises(ShareError, match="decide nothing"):
        decryptor.decrypt_scores(results[0])
    # decrypted alone (bypassing that refusal), one share's scores are uniform noise mod q,
    # at scale^2 spread over [-2, 2], unrelated to the true scores
    truth = gallery @ probe
    alone = decryptor.decrypt_scores(sharing.ShareResult.from_bytes(results[0]).scores)
    alone = alone[: len(gallery)]
    assert np.mean(np.abs(alone) > 1.05) > 0.25
    assert abs(np.corrcoef(alone, truth)[0, 1]) < 0.3
    both = decryptor.decrypt_sum(
        *sharing.open_pair(sharing.pair(shared.nonce, *results), sharing.fingerprint(public))
    )
    assert np.allclose(both[: len(gallery)], truth, atol=1e-3)


def test_bad_shares_are_refused_by_the_matcher(keys: dict[str, Any]) -> None:
    backend = keys["backend"]
    public, _ = keys["current"]
    matcher = backend.matcher(public)
    probe = unit_vectors(1, seed=7)[0]
    shared = matcher.encode_shares(probe)
    with pytest.raises(ShareError, match="never the edge's bundle"):
        matcher.parse_probe(shared.to_bytes())
    plain = plugins.create("he_backend", "tenseal", preset="fast", scorer="fast").matcher(public)
    with pytest.raises(ShareError, match="takes shared probes, the upload is a plain probe"):
        matcher.parse_probe(plain.encode_probe(probe))
    with pytest.raises(BackendError, match="takes plain probes, the upload is a share"):
        plain.parse_probe(shared.share_a)
    mode, (nonce, party, moduli, body) = read_probe(shared.share_a)
    assert mode == "share" and len(body) == 512 * 8

    def _payload(parts: tuple[bytes, ...]) -> bytes:
        return _probe_payload("share", list(parts))

    compact = seal_primes(4096, [54, 55])[:1]
    paper = seal_primes(8192, [60, 40, 40, 60])[:3]
    cases = {
        "another parameter set": _payload((nonce, party, np.array(compact, "<u8").tobytes(), body)),
        "data primes are": _payload((nonce, party, np.array(paper, "<u8").tobytes(), body * 3)),
        "do not fill": _payload((nonce, party, moduli, body[:-4])),
        ">= its prime": _payload(
            (nonce, party, moduli, np.array([FAST_PRIME] * 512, "<u8").tobytes())
        ),
        "16-byte nonce": _payload((nonce[:8], party, moduli, body)),
        "a party": _payload((nonce, b"C", moduli, body)),
    }
    for message, payload in cases.items():
        with pytest.raises(ShareError, match=message):
            matcher.parse_probe(payload)
    short = matcher.encode_shares(probe[:256] / np.linalg.norm(probe[:256]))
    block = _block(matcher, unit_vectors(4, seed=1))
    with pytest.raises(ShareError, match="256 features, the block 512"):
        matcher.score(block, matcher.parse_probe(short.share_a))


def test_the_key_service_refuses_mismatched_or_missing_shares(
    make_engine: Any, keys: dict[str, Any]
) -> None:
    gallery = unit_vectors(6, seed=3)
    engine = _enrolled(make_engine, "shared-keys", gallery, _shared())
    matcher = engine.matcher
    info = engine.gallery_store.blocks()[0]
    block = matcher.load(engine.gallery_store.read_block(info.block_id)[1])
    first, second = (matcher.encode_shares(near(gallery[i], 0.3, i)) for i in (1, 2))

    def scores(share: bytes, on: Any = matcher) -> bytes:
        return on.score(block, on.parse_probe(share))

    foreign = keys["backend"].matcher(keys["other"][0])  # another key version's context
    cases = {
        "another probe": sharing.pair(first.nonce, scores(first.share_a), scores(second.share_b)),
        "matcher B's scores are missing": sharing.pair(first.nonce, scores(first.share_a), None),
        "matcher A's scores are missing": sharing.pair(first.nonce, None, scores(first.share_b)),
        "one of matcher A and one of matcher B": sharing.pair(
            first.nonce, scores(first.share_a), scores(first.share_a)
        ),
        "another public context": sharing.pair(
            first.nonce, scores(first.share_a), scores(first.share_b, foreign)
        ),
    }
    good = sharing.pair(first.nonce, scores(first.share_a), scores(first.share_b))
    batch = [[(info.block_id, blob)] for blob in [*cases.values(), good, scores(first.share_a)]]
    answers = engine.key_service.decide_many(batch, engine._occupants(), 1)
    for message, answer in zip(cases, answers, strict=False):
        assert isinstance(answer, ShareError), message
        assert message in str(answer)
    candidates, _ = answers[len(cases)]  # type: ignore[misc]
    assert candidates[0].subject_id == "s0001"
    assert isinstance(answers[-1], ShareError)  # one share alone: refused, never decided
    assert "decide nothing" in str(answers[-1])


@pytest.mark.parametrize(
    ("he", "message"),
    [
        ({"probe": "shared"}, "packed layout and the fast scorer"),
        (
            {"probe": "shared", "scorer": "fast", "layout": "round-robin", "preset": "paper"},
            "packed",
        ),
    ],
)
def test_shared_probe_profiles_are_checked(he: dict[str, Any], message: str) -> None:
    with pytest.raises(ProfileError, match=message):
        build(Profile.from_dict({"engine": {"name": "p"}, "he": {"plugin": "tenseal"} | he}))
    with pytest.raises(ProfileError, match="probe mode 'pe-miu'"):
        build(
            Profile.from_dict(
                {"engine": {"name": "p"}, "he": _shared(), "protection": {"plugin": "pe-miu"}}
            )
        )
