"""The fast packed scorer against TenSEAL and Pyfhel themselves: bit-identical results,
strict parsing."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("tenseal")
pytest.importorskip("numba")
pytest.importorskip("zstandard")

import tenseal as ts
import tenseal.sealapi as sealapi
from frip_plugins.he_backends._ckks_layouts import plain_weights
from frip_plugins.he_backends._fast_scorer import (
    FastBlock,
    SealCodec,
    _put_varint,
    combine_residues,
    encode_constants,
    seal_primes,
)
from frip_plugins.he_backends._pieces import FLUSH_TERMS
from frip_plugins.he_backends.tenseal import TenSEALLibrary

from frip_engine.ckks import PRESETS, CKKSParams
from frip_engine.errors import BackendError

PLUGINS = Path(__file__).resolve().parents[1] / "plugins"
FEATURES = 67  # not a multiple of 4: the kernel's four-row passes leave a remainder
SLOTS = 4096  # the fast preset's


@dataclass
class Gallery:
    params: CKKSParams
    ops: Any  # public context: encrypts and scores
    secret: Any  # secret context: decrypts
    codec: SealCodec
    cts: list[Any]
    parts: list[bytes]
    rows: np.ndarray

    @property
    def scale(self) -> float:
        return 2.0**self.params.scale_bits


def make_gallery(
    params: CKKSParams, features: int = FEATURES, seed: int = 0, library: Any = None
) -> Gallery:
    """A packed block built the way the engine builds one (the library's keygen/open)."""
    library = library or TenSEALLibrary()
    public, secret = library.keygen(params, evaluation_keys=False)
    ops = library.open(params, public)
    rng = np.random.default_rng(seed)
    rows = rng.normal(size=(params.slots, features))
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    cts = [ops.encrypt(column) for column in rows.T]
    return Gallery(
        params,
        ops,
        library.open(params, public, secret),
        library.fast_codec(ops),
        cts,
        [ops.dump(ct) for ct in cts],
        rows,
    )


@pytest.fixture(scope="module", params=["fast", "precise", "paper", "compact"])
def gallery(request: pytest.FixtureRequest) -> Gallery:
    return make_gallery(PRESETS[request.param])


@pytest.fixture(scope="module")
def fast_gallery() -> Gallery:
    return make_gallery(PRESETS["fast"], features=16, seed=1)


def hard_probe(g: Gallery) -> np.ndarray:
    """A unit-ish probe with negatives, exact zeros, values that encode to 0 and exact
    rounding ties (q * scale = m + 0.5, where Python's round would go to even)."""
    rng = np.random.default_rng(7)
    probe = rng.normal(size=FEATURES)
    probe /= np.linalg.norm(probe)
    half = 0.5 / g.scale
    ties = [half, -half, 3 * half, -3 * half, 5 * half, -5 * half, 2001 * half, -2001 * half]
    probe[: len(ties)] = ties  # k = 1, -1, 2, -2, 3, -3, 1001, -1001
    probe[10] = 0.0
    probe[11] = np.nextafter(half, 0.0)  # rounds to 0: skipped by both
    probe[12] = -np.nextafter(half, 0.0)
    return probe


def library_sum(g: Gallery, probe: np.ndarray) -> bytes:
    return g.ops.dump(g.ops.weighted_sum(g.cts, plain_weights(probe, g.scale)))


def assert_same_ciphertext(g: Gallery, expected: bytes, got: bytes) -> None:
    """Same residues, same metadata, same decryption, to the bit."""
    ref, ref_info = g.codec.read(expected, scale=g.scale**2)
    ours, our_info = g.codec.read(got, scale=g.scale**2)
    assert ref_info == our_info
    np.testing.assert_array_equal(ours, ref)
    ref_values = g.secret.decrypt(g.secret.load(expected))
    our_values = g.secret.decrypt(g.secret.load(got))
    np.testing.assert_array_equal(our_values, ref_values)


# ------------------------------------------------------------------ against TenSEAL
def test_score_plain_is_bit_identical_to_tenseal(gallery: Gallery) -> None:
    probe = hard_probe(gallery)
    block = FastBlock.from_parts(gallery.codec, gallery.parts)
    rewritten = gallery.ops.load(block.part(3))  # uncompressed, loaded by TenSEAL itself
    np.testing.assert_array_equal(
        gallery.codec.read(gallery.ops.dump(rewritten))[0], gallery.codec.read(gallery.parts[3])[0]
    )
    got = block.score_plain(probe)
    assert_same_ciphertext(gallery, library_sum(gallery, probe), got)
    scores = gallery.secret.decrypt(gallery.secret.load(got))[: gallery.params.slots]
    np.testing.assert_allclose(scores, gallery.rows @ probe, atol=1e-3)


@pytest.fixture(scope="module", params=["fast", "paper"])
def pyfhel_gallery(request: pytest.FixtureRequest) -> Gallery:
    pytest.importorskip("Pyfhel", reason="Pyfhel is not installed (make builds it)")
    from frip_plugins.he_backends.pyfhel import PyfhelLibrary

    return make_gallery(PRESETS[request.param], library=PyfhelLibrary())


def test_score_plain_is_bit_identical_to_pyfhel(pyfhel_gallery: Gallery) -> None:
    """Pyfhel writes bare SEAL blobs and encodes constants through a full FFT: the same
    integers, so the same ciphertext, rounding ties included."""
    g = pyfhel_gallery
    probe = hard_probe(g)
    block = FastBlock.from_parts(g.codec, g.parts)
    got = block.score_plain(probe)
    assert_same_ciphertext(g, library_sum(g, probe), got)
    assert got == library_sum(g, probe)  # uncompressed on both sides: the same bytes
    assert block.part(5) == g.parts[5]  # a block rewrites its ciphertexts exactly
    scores = g.secret.decrypt(g.secret.load(got))[: g.params.slots]
    np.testing.assert_allclose(scores, g.rows @ probe, atol=1e-3)


@pytest.mark.parametrize(
    ("degree", "bits"),
    [(8192, [60, 60]), (8192, [60, 40, 40, 60]), (4096, [54, 55]), (16384, [60, 50, 50, 60])],
)
def test_seal_primes_are_seals_own_choice(degree: int, bits: list[int]) -> None:
    """Pyfhel does not expose a loaded context's primes: we derive them as SEAL does."""
    expected = [m.value() for m in sealapi.CoeffModulus.Create(degree, bits)]
    assert seal_primes(degree, bits) == expected
    with pytest.raises(BackendError, match="not enough"):
        seal_primes(1 << 15, [20] * 40)


def test_only_negative_and_only_positive_constants(fast_gallery: Gallery) -> None:
    block = FastBlock.from_parts(fast_gallery.codec, fast_gallery.parts)
    base = np.linspace(0.05, 0.4, 16)
    for probe in (base, -base):
        assert_same_ciphertext(
            fast_gallery, library_sum(fast_gallery, probe), block.score_plain(probe)
        )


def test_weighted_sum_matches_tenseal_with_subset_and_repeats(fast_gallery: Gallery) -> None:
    """The PE-MIU path scores feature subsets; a repeated feature adds, as in TenSEAL."""
    g = fast_gallery
    weights = [(3, 0.25), (7, -0.75), (3, -0.1), (15, 2.5 / g.scale)]
    block = FastBlock.from_parts(g.codec, g.parts)
    expected = g.ops.dump(g.ops.weighted_sum(g.cts, weights))
    assert_same_ciphertext(g, expected, block.weighted_sum(weights))


def test_parallel_kernel_matches_serial(fast_gallery: Gallery) -> None:
    block = FastBlock.from_parts(fast_gallery.codec, fast_gallery.parts)
    constants = encode_constants(np.linspace(-1, 1, 16), fast_gallery.scale)
    serial = combine_residues(block.residues, constants, fast_gallery.codec.primes, threads=1)
    parallel = combine_residues(block.residues, constants, fast_gallery.codec.primes, threads=2)
    np.testing.assert_array_equal(parallel, serial)


def test_a_probe_that_is_zero_at_the_scale_is_refused(fast_gallery: Gallery) -> None:
    block = FastBlock.from_parts(fast_gallery.codec, fast_gallery.parts)
    tiny = np.full(16, np.nextafter(0.5 / fast_gallery.scale, 0.0))
    tiny[::2] = 0.0
    with pytest.raises(BackendError, match="zero"):
        block.score_plain(tiny)
    with pytest.raises(BackendError, match="zero"):
        block.weighted_sum([])
    with pytest.raises(BackendError, match="features"):
        block.score_plain(np.ones(15))
    with pytest.raises(BackendError, match="outside"):
        block.weighted_sum([(16, 1.0)])
    with pytest.raises(BackendError, match="finite"):
        block.score_plain(np.full(16, np.nan))


def test_codec_primes_are_the_data_primes_of_the_chain(gallery: Gallery) -> None:
    p = gallery.params
    created = sealapi.CoeffModulus.Create(p.poly_modulus_degree, list(p.coeff_mod_bit_sizes))
    assert [int(x) for x in gallery.codec.primes] == [m.value() for m in created[:-1]]
    assert gallery.codec.limbs == len(p.coeff_mod_bit_sizes) - 1
    assert gallery.codec.scale == gallery.scale


# ------------------------------------------------------------------------- encoding
def test_constants_round_half_away_from_zero() -> None:
    values = [0.5, -0.5, 1.5, -1.5, 2.5, -2.5, 0.49999999999999994, -0.49999999999999994, 7.0]
    np.testing.assert_array_equal(encode_constants(values, 1.0), [1, -1, 2, -2, 3, -3, 0, 0, 7])
    assert round(2.5) == 2  # Python's (and numpy's) round would be wrong here
    np.testing.assert_array_equal(encode_constants([3 / 2**30], 2.0**29), [2])
    with pytest.raises(BackendError, match="too large"):
        encode_constants([2.0**33], 2.0**29)


# --------------------------------------------------------------------------- kernel
def test_kernel_is_exact_for_any_int64_constants_and_many_terms() -> None:
    """Big-integer reference: constants up to 2^62 (two piece groups), more terms than an
    accumulator takes before a flush, residues at p - 1, several limbs, odd N."""
    primes = [m.value() for m in sealapi.CoeffModulus.Create(8192, [60, 40, 50, 60])]
    d, degree = FLUSH_TERMS + 37, 19
    rng = np.random.default_rng(3)
    residues = np.empty((d, 2, len(primes), degree), dtype=np.uint64)
    for limb, p in enumerate(primes):
        residues[:, :, limb] = rng.integers(0, p, size=(d, 2, degree), dtype=np.uint64)
        residues[: d // 2, 0, limb, 0] = p - 1  # the largest residues in one column
    constants = rng.integers(-(2**62) + 1, 2**62, size=d, dtype=np.int64)
    constants[: d // 2] = 2**62 - 1
    constants[5] = 0
    constants[6] = -(2**62) + 1
    got = combine_residues(residues, constants, primes)
    big = residues.astype(object)
    for limb, p in enumerate(primes):
        expected = (constants.astype(object)[:, None, None] * big[:, :, limb]).sum(axis=0) % p
        np.testing.assert_array_equal(got[:, limb].astype(object), expected)
    np.testing.assert_array_equal(combine_residues(residues, constants, primes, threads=2), got)


def test_kernel_refuses_bad_inputs() -> None:
    residues = np.zeros((3, 2, 1, 8), dtype=np.uint64)
    good = np.array([1, 2, 3], dtype=np.int64)
    with pytest.raises(BackendError, match="int64"):
        combine_residues(residues, good.astype(np.float64), [97])
    with pytest.raises(BackendError, match="primes"):
        combine_residues(residues, good, [97, 101])
    with pytest.raises(BackendError, match="contiguous"):
        combine_residues(np.zeros((3, 2, 1, 16), dtype=np.uint64)[..., ::2], good, [97])
    with pytest.raises(BackendError, match="threads"):
        combine_residues(residues, good, [97], threads=0)


# ---------------------------------------------------------------------------- codec
SEAL_AT = {  # offsets inside an uncompressed SEAL ciphertext blob
    "magic": 0,
    "header_size": 2,
    "major": 3,
    "compr": 5,
    "reserved": 6,
    "blob_size": 8,
    "parms_id": 16,
    "ntt": 48,
    "poly_count": 49,
    "degree": 57,
    "limbs": 65,
    "scale": 73,
    "correction": 81,
    "array_magic": 89,
    "array_compr": 94,
    "count": 105,
    "data": 113,
}


def uncompressed(g: Gallery) -> tuple[bytearray, int]:
    """A fresh ciphertext rewritten with an uncompressed SEAL blob, and the blob's offset."""
    residues, info = g.codec.read(g.parts[0])
    data = bytearray(g.codec.write(residues, info.size, info.scale, info.version))
    return data, data.index(b"\x5e\xa1\x10\x04")


def vector(blob: bytes, size: int = SLOTS, scale: float = 2.0**29, extra: bytes = b"") -> bytes:
    sizes = _put_varint(size)
    return (
        b"\x0a"
        + _put_varint(len(sizes))
        + sizes
        + b"\x12"
        + _put_varint(len(blob))
        + blob
        + b"\x19"
        + struct.pack("<d", scale)
        + extra
    )


def test_uncompressed_rewrite_loads_in_tenseal_and_round_trips(fast_gallery: Gallery) -> None:
    g = fast_gallery
    data, _ = uncompressed(g)
    np.testing.assert_array_equal(g.codec.read(bytes(data))[0], g.codec.read(g.parts[0])[0])
    loaded = ts.ckks_vector_from(g.ops.context, bytes(data))
    np.testing.assert_array_equal(
        g.secret.decrypt(g.secret.load(g.ops.dump(loaded))),
        g.secret.decrypt(g.secret.load(g.parts[0])),
    )


TAMPER = [
    ("magic", b"\x00", "not a SEAL blob"),
    ("header_size", b"\x11", "not a SEAL blob"),
    ("major", b"\x03", "version"),
    ("compr", b"\x01", "compression mode 1"),
    ("compr", b"\x09", "compression mode 9"),
    ("reserved", b"\x01", "not a SEAL blob"),
    ("blob_size", struct.pack("<Q", 12), "truncated"),
    ("parms_id", b"\xff\xff", "another parameter set"),
    ("ntt", b"\x00", "NTT form"),
    ("poly_count", struct.pack("<Q", 3), "3 polynomials"),
    ("degree", struct.pack("<Q", 4096), "another parameter set"),
    ("limbs", struct.pack("<Q", 2), "another parameter set"),
    ("scale", struct.pack("<d", 2.0**30), "scale"),
    ("scale", struct.pack("<d", float("nan")), "scale"),
    ("correction", struct.pack("<Q", 2), "correction factor"),
    ("array_magic", b"\x00", "data array header"),
    ("array_compr", b"\x02", "data array header"),
    ("count", struct.pack("<Q", 7), "data array header"),
]


@pytest.mark.parametrize(("field", "value", "message"), TAMPER, ids=[t[0] for t in TAMPER])
def test_tampered_blob_is_refused(
    fast_gallery: Gallery, field: str, value: bytes, message: str
) -> None:
    data, at = uncompressed(fast_gallery)
    start = at + SEAL_AT[field]
    data[start : start + len(value)] = value
    with pytest.raises(BackendError, match=message):
        fast_gallery.codec.read(bytes(data))


def test_residue_at_or_above_its_prime_is_refused(fast_gallery: Gallery) -> None:
    g = fast_gallery
    p = int(g.codec.primes[0])
    data, at = uncompressed(g)
    start = at + SEAL_AT["data"] + 8 * 100
    data[start : start + 8] = struct.pack("<Q", p)
    with pytest.raises(BackendError, match=">= its prime"):
        g.codec.read(bytes(data))
    residues, info = g.codec.read(g.parts[0])
    residues[1, 0, 5] = p + 1
    with pytest.raises(BackendError, match=">= its prime"):
        g.codec.write(residues, info.size, info.scale, info.version)
    block = np.stack([residues, residues])
    with pytest.raises(BackendError, match=">= its prime"):
        FastBlock(g.codec, block, info.size, info.version)


def test_truncated_and_malformed_vectors_are_refused(fast_gallery: Gallery) -> None:
    g = fast_gallery
    original = g.parts[0]
    blob_at = original.index(b"\x5e\xa1\x10\x04")
    blob_size = struct.unpack_from("<Q", original, blob_at + 8)[0]
    blob = original[blob_at : blob_at + blob_size]
    bad = {
        "empty": b"",
        "cut in the header": original[:5],
        "cut in the blob": original[: len(original) // 2],
        "cut before the scale": original[:-3],
        "unknown field": original + b"\x20\x01",
        "two chunks": vector(blob, extra=b"\x12" + _put_varint(len(blob)) + blob),
        "size 0": vector(blob, size=0),
        "other init scale": vector(blob, scale=2.0**30),
        "zstd magic": vector(blob[:16] + b"\x00" + blob[17:]),
        "zstd stream cut": vector(
            blob[:8] + struct.pack("<Q", blob_size - 100) + blob[16 : blob_size - 100]
        ),
        "data after the zstd frame": vector(
            blob[:8] + struct.pack("<Q", blob_size + 2) + blob[16:] + b"\x00\x00"
        ),
        "overlong varint": b"\x0a" + b"\xff" * 11,
    }
    assert g.codec.read(vector(blob))[1].size == SLOTS  # the rebuilt vector itself is fine
    for name, data in bad.items():
        with pytest.raises(BackendError):
            g.codec.read(data)
            pytest.fail(f"{name} was accepted")


def test_ciphertexts_of_other_parameter_sets_are_refused(fast_gallery: Gallery) -> None:
    g = fast_gallery
    precise = TenSEALLibrary()
    params = PRESETS["precise"]
    other = precise.open(params, precise.keygen(params, evaluation_keys=False)[0])
    with pytest.raises(BackendError, match="another parameter set"):
        g.codec.read(other.dump(other.encrypt(np.ones(8))))
    # Same ring, same limb count and scale, different primes: only parms_id tells.
    same_shape = CKKSParams(8192, (50, 60), 29)
    lib = TenSEALLibrary()
    ops = lib.open(same_shape, lib.keygen(same_shape, evaluation_keys=False)[0])
    with pytest.raises(BackendError, match="parms_id"):
        g.codec.read(ops.dump(ops.encrypt(np.ones(8))))
    bfv = ts.context(ts.SCHEME_TYPE.BFV, 4096, plain_modulus=1032193)
    with pytest.raises(BackendError):
        g.codec.read(ts.bfv_vector(bfv, [1, 2, 3]).serialize())
    with pytest.raises(BackendError):
        FastBlock.from_parts(g.codec, [g.parts[0], other.dump(other.encrypt(np.ones(8)))])


def test_block_refuses_ciphertexts_of_different_lengths(fast_gallery: Gallery) -> None:
    short = fast_gallery.ops.dump(fast_gallery.ops.encrypt(np.ones(10)))
    with pytest.raises(BackendError, match="differs"):
        FastBlock.from_parts(fast_gallery.codec, [fast_gallery.parts[0], short])
    with pytest.raises(BackendError, match="at least one"):
        FastBlock.from_parts(fast_gallery.codec, [])


# ---------------------------------------------------------------------------- cache
KERNEL_RUN = """
import numpy as np
from frip_plugins.he_backends import _fast_kernels as fast_kernels
from frip_plugins.he_backends._fast_scorer import combine_residues
out = combine_residues(np.ones((5, 2, 1, 8), np.uint64), np.arange(-2, 3, dtype=np.int64), [97])
assert out[0, 0, 0] == 0, out
print(type(fast_kernels.combine_serial._cache).__name__,
      sum(fast_kernels.combine_serial._cache_hits.values()))
"""


def run_kernel(env: dict[str, str]) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", KERNEL_RUN],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_compiled_kernels_are_cached_on_disk(tmp_path: Path) -> None:
    env = {"NUMBA_CACHE_DIR": str(tmp_path)}
    assert run_kernel(env) == ["FunctionCache", "0"]
    assert list(tmp_path.rglob("_fast_kernels.combine_serial-*.nbi"))
    assert run_kernel(env) == ["FunctionCache", "1"]  # a second process loads, not compiles


def test_kernels_compile_in_memory_where_no_cache_is_writable(tmp_path: Path) -> None:
    """A package inside a zip, no writable home: numba's zip locator would fail on first
    compile; the kernels fall back to an in-memory compile instead."""
    archive = tmp_path / "ro.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for name in (
            "__init__.py",
            "he_backends/__init__.py",
            "he_backends/_fast_scorer.py",
            "he_backends/_fast_kernels.py",
            "he_backends/_pieces.py",
        ):
            zf.write(PLUGINS / "frip_plugins" / name, f"frip_plugins/{name}")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    env = {
        "PYTHONPATH": str(archive),
        "HOME": str(blocker / "home"),
        "XDG_CACHE_HOME": str(blocker / "cache"),
        "NUMBA_CACHE_DIR": "",
    }
    assert run_kernel(env) == ["NullCache", "0"]
