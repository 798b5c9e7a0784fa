"""numba kernels of :mod:`frip_plugins.he_backends._fast_scorer`: exact ``sum_j k_j * x_j mod p``.

Each residue x (< p < 2^61) is split into 32-bit halves and each |k| into 22-bit pieces,
so every product is below 2^54 and an accumulator takes 1024 terms before it could
overflow 64 bits. Positive and negative constants are summed separately (magnitudes stay
small and the same pieces serve every limb). Pieces come in groups of two (one group
covers |k| < 2^44, e.g. unit probes at scale 2^40): four accumulators per group, four
gallery rows per pass over a tile, vectorised by LLVM. Each accumulator is folded in once
per 1024 terms with a Shoup multiplication by its weight 2^(22 v + 32 h) mod p, which takes
any 64-bit input, so the only reduction mod p happens at the end.

Compiled code is cached on disk (numba ``cache=True``: ``NUMBA_CACHE_DIR`` if set, else
this package's ``__pycache__``, else numba's user-wide cache directory), so worker
processes load it instead of compiling; where no location is writable numba refuses
``cache=True`` and the kernels are compiled in memory once per process instead. An
unreadable cache entry (a truncated ``.nbi`` index or ``.nbc`` data file after a full disk
or a crash) is a cache miss: the kernel is compiled again and the entry rewritten.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import numba
import numpy as np

from frip_plugins.he_backends._pieces import FLUSH_TERMS

TILE = 1024  # coefficients per task: the four accumulators (32 KB) stay in L1
_M32 = np.uint64(0xFFFFFFFF)
_S32 = np.uint64(32)

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger(__name__)


def _tolerate_damage(jitted: Any) -> None:
    """Make numba's on-disk cache of one kernel treat an unreadable entry as a miss.

    numba unpickles the index (``.nbi``) and data (``.nbc``) files as they are, so a
    truncated file raises UnpicklingError or EOFError on every later compile, and saving
    (which reads the index first) fails the same way. Here a failed load compiles afresh,
    and a failed save rewrites an empty index and tries once more, else leaves the kernel
    uncached; compiled code is never affected, only whether it was found on disk.
    """
    cache = getattr(jitted, "_cache", None)
    if cache is None or not hasattr(cache, "load_overload"):  # numba internals moved
        return
    load, save = cache.load_overload, cache.save_overload

    def load_overload(sig: Any, target_context: Any) -> Any:
        try:
            return load(sig, target_context)
        except Exception as exc:  # any unreadable entry: UnpicklingError, EOFError, ...
            log.warning("numba cache of %s unreadable (%s); recompiling", jitted, exc)
            return None

    def save_overload(sig: Any, data: Any) -> None:
        try:
            save(sig, data)
        except Exception:
            try:
                cache.flush()  # replace the damaged index with an empty one
                save(sig, data)
            except Exception as exc:
                log.warning("numba cache of %s not written (%s)", jitted, exc)

    cache.load_overload = load_overload
    cache.save_overload = save_overload


def _cache_usable(jitted: Any) -> bool:
    """Whether numba's chosen cache directory can really be written: its zip-file locator
    (package inside a zip) does not check, and then fails on first compile."""
    locator = getattr(getattr(getattr(jitted, "_cache", None), "_impl", None), "locator", None)
    if locator is None:  # numba internals moved: trust numba's own choice
        return True
    try:
        locator.ensure_cache_path()
    except OSError:
        return False
    return True


def _jit(parallel: bool = False) -> Callable[[F], F]:
    """``njit`` with the on-disk cache where numba finds a writable location for it, else
    compiled in memory (numba refuses ``cache=True`` when no location is writable)."""

    def decorate(fn: F) -> F:
        try:
            jitted = numba.njit(cache=True, nogil=True, parallel=parallel)(fn)
            if not _cache_usable(jitted):
                raise RuntimeError("numba cache directory is not writable")
            _tolerate_damage(jitted)
        except RuntimeError:  # "cannot cache function ...: no locator available"
            jitted = numba.njit(cache=False, nogil=True, parallel=parallel)(fn)
        return jitted  # type: ignore[return-value]

    return decorate


@_jit()
def mulmod_shoup(a: Any, w: Any, wq: Any, p: Any) -> Any:
    """a * w mod p for any a < 2^64, with w < p and wq = floor(w * 2^64 / p)."""
    a_lo = a & _M32
    a_hi = a >> _S32
    b_lo = wq & _M32
    b_hi = wq >> _S32
    ll = a_lo * b_lo
    lh = a_lo * b_hi
    hl = a_hi * b_lo
    mid = (ll >> _S32) + (lh & _M32) + (hl & _M32)
    q = a_hi * b_hi + (lh >> _S32) + (hl >> _S32) + (mid >> _S32)  # high word of a * wq
    r = a * w - q * p  # in [0, 2p), computed mod 2^64
    if r >= p:
        r -= p
    return r


@_jit()
def _accumulate(
    gallery: Any,
    c: Any,
    limb: Any,
    t0: Any,
    n: Any,
    idx: Any,
    k0: Any,
    k1: Any,
    start: Any,
    stop: Any,
    acc: Any,
) -> None:
    """acc = (sum lo32(x) k0, sum hi32(x) k0, sum lo32(x) k1, sum hi32(x) k1) over rows
    idx[start:stop] of tile [t0, t0 + n); four rows per pass keep acc traffic low."""
    a0 = acc[0, :n]
    a1 = acc[1, :n]
    a2 = acc[2, :n]
    a3 = acc[3, :n]
    a0[:] = 0
    a1[:] = 0
    a2[:] = 0
    a3[:] = 0
    jj = start
    while jj + 4 <= stop:
        s0 = gallery[idx[jj], c, limb, t0 : t0 + n]
        s1 = gallery[idx[jj + 1], c, limb, t0 : t0 + n]
        s2 = gallery[idx[jj + 2], c, limb, t0 : t0 + n]
        s3 = gallery[idx[jj + 3], c, limb, t0 : t0 + n]
        p0, p1, p2, p3 = k0[jj], k0[jj + 1], k0[jj + 2], k0[jj + 3]
        q0, q1, q2, q3 = k1[jj], k1[jj + 1], k1[jj + 2], k1[jj + 3]
        for i in range(n):
            x0 = s0[i]
            x1 = s1[i]
            x2 = s2[i]
            x3 = s3[i]
            l0, h0 = x0 & _M32, x0 >> _S32
            l1, h1 = x1 & _M32, x1 >> _S32
            l2, h2 = x2 & _M32, x2 >> _S32
            l3, h3 = x3 & _M32, x3 >> _S32
            a0[i] += l0 * p0 + l1 * p1 + l2 * p2 + l3 * p3
            a1[i] += h0 * p0 + h1 * p1 + h2 * p2 + h3 * p3
            a2[i] += l0 * q0 + l1 * q1 + l2 * q2 + l3 * q3
            a3[i] += h0 * q0 + h1 * q1 + h2 * q2 + h3 * q3
        jj += 4
    while jj < stop:
        s0 = gallery[idx[jj], c, limb, t0 : t0 + n]
        p0 = k0[jj]
        q0 = k1[jj]
        for i in range(n):
            x0 = s0[i]
            l0, h0 = x0 & _M32, x0 >> _S32
            a0[i] += l0 * p0
            a1[i] += h0 * p0
            a2[i] += l0 * q0
            a3[i] += h0 * q0
        jj += 1


@_jit()
def _fold(acc: Any, n: Any, w: Any, wq: Any, p: Any, result: Any) -> None:
    """result += sum_a acc[a] * w[a] mod p (w[a] is accumulator a's weight mod p)."""
    for i in range(n):
        s = result[i]
        for a in range(4):
            s += mulmod_shoup(acc[a, i], w[a], wq[a], p)
            if s >= p:
                s -= p
        result[i] = s


@_jit()
def _signed_sum(
    gallery: Any,
    c: Any,
    limb: Any,
    t0: Any,
    n: Any,
    idx: Any,
    pieces: Any,
    w: Any,
    wq: Any,
    p: Any,
    acc: Any,
    result: Any,
) -> None:
    """result = sum over idx of |k| x mod p, |k| given as (groups, 2, d) 22-bit pieces."""
    result[:] = 0
    for start in range(0, idx.size, FLUSH_TERMS):
        stop = min(start + FLUSH_TERMS, idx.size)
        for group in range(pieces.shape[0]):
            k0 = pieces[group, 0]
            k1 = pieces[group, 1]
            _accumulate(gallery, c, limb, t0, n, idx, k0, k1, start, stop, acc)
            _fold(acc, n, w[limb, group], wq[limb, group], p, result)


@_jit()
def _tile(
    gallery: Any,
    c: Any,
    limb: Any,
    t0: Any,
    n: Any,
    pos_idx: Any,
    pos_pieces: Any,
    neg_idx: Any,
    neg_pieces: Any,
    primes: Any,
    w: Any,
    wq: Any,
    out: Any,
) -> None:
    """out[c, limb, t0:t0+n] = (sum over positive k - sum over negative |k|) mod p."""
    p = primes[limb]
    acc = np.empty((4, n), dtype=np.uint64)
    rpos = np.empty(n, dtype=np.uint64)
    rneg = np.empty(n, dtype=np.uint64)
    _signed_sum(gallery, c, limb, t0, n, pos_idx, pos_pieces, w, wq, p, acc, rpos)
    _signed_sum(gallery, c, limb, t0, n, neg_idx, neg_pieces, w, wq, p, acc, rneg)
    for i in range(n):
        a = rpos[i]
        b = rneg[i]
        out[c, limb, t0 + i] = a - b if a >= b else a + p - b


@_jit()
def combine_serial(
    gallery: Any,
    pos_idx: Any,
    pos_pieces: Any,
    neg_idx: Any,
    neg_pieces: Any,
    primes: Any,
    w: Any,
    wq: Any,
    out: Any,
) -> None:
    """One thread over every (polynomial, limb, tile)."""
    limbs = gallery.shape[2]
    degree = gallery.shape[3]
    for c in range(2):
        for limb in range(limbs):
            for t0 in range(0, degree, TILE):
                n = min(TILE, degree - t0)
                _tile(gallery, c, limb, t0, n, pos_idx, pos_pieces, neg_idx, neg_pieces,
                      primes, w, wq, out)  # fmt: skip


@_jit(parallel=True)
def combine_parallel(
    gallery: Any,
    pos_idx: Any,
    pos_pieces: Any,
    neg_idx: Any,
    neg_pieces: Any,
    primes: Any,
    w: Any,
    wq: Any,
    out: Any,
) -> None:
    """The (polynomial, limb, tile) tasks spread over numba's threads (independent outputs)."""
    limbs = gallery.shape[2]
    degree = gallery.shape[3]
    tiles = (degree + TILE - 1) // TILE
    for task in numba.prange(2 * limbs * tiles):
        c = task // (limbs * tiles)
        limb = (task // tiles) % limbs
        t0 = (task % tiles) * TILE
        n = min(TILE, degree - t0)
        _tile(gallery, c, limb, t0, n, pos_idx, pos_pieces, neg_idx, neg_pieces,
              primes, w, wq, out)  # fmt: skip


# ------------------------------------------------------------------- many probes at once
# Coefficients per task when several constant vectors share a pass: the gallery's
# d x TILE_MANY tile of one (polynomial, limb) (512 x 256 x 8 B = 1 MB at d = 512) stays
# in L2 while every vector is summed over it, so each tile comes from memory once per
# batch instead of once per probe.
TILE_MANY = 256


@_jit()
def _tile_many(
    gallery: Any,
    c: Any,
    limb: Any,
    t0: Any,
    n: Any,
    pos_idx: Any,
    pos_count: Any,
    pos_pieces: Any,
    neg_idx: Any,
    neg_count: Any,
    neg_pieces: Any,
    primes: Any,
    w: Any,
    wq: Any,
    out: Any,
) -> None:
    """out[m, c, limb, t0:t0+n] for every constant vector m, over one gallery tile."""
    p = primes[limb]
    acc = np.empty((4, n), dtype=np.uint64)
    rpos = np.empty(n, dtype=np.uint64)
    rneg = np.empty(n, dtype=np.uint64)
    for m in range(out.shape[0]):
        _signed_sum(gallery, c, limb, t0, n, pos_idx[m, : pos_count[m]], pos_pieces[m],
                    w, wq, p, acc, rpos)  # fmt: skip
        _signed_sum(gallery, c, limb, t0, n, neg_idx[m, : neg_count[m]], neg_pieces[m],
                    w, wq, p, acc, rneg)  # fmt: skip
        for i in range(n):
            a = rpos[i]
            b = rneg[i]
            out[m, c, limb, t0 + i] = a - b if a >= b else a + p - b


@_jit()
def combine_many_serial(
    gallery: Any,
    pos_idx: Any,
    pos_count: Any,
    pos_pieces: Any,
    neg_idx: Any,
    neg_count: Any,
    neg_pieces: Any,
    primes: Any,
    w: Any,
    wq: Any,
    out: Any,
) -> None:
    """One thread over every (polynomial, limb, tile), all constant vectors per tile."""
    limbs = gallery.shape[2]
    degree = gallery.shape[3]
    for c in range(2):
        for limb in range(limbs):
            for t0 in range(0, degree, TILE_MANY):
                n = min(TILE_MANY, degree - t0)
                _tile_many(gallery, c, limb, t0, n, pos_idx, pos_count, pos_pieces, neg_idx,
                           neg_count, neg_pieces, primes, w, wq, out)  # fmt: skip


@_jit(parallel=True)
def combine_many_parallel(
    gallery: Any,
    pos_idx: Any,
    pos_count: Any,
    pos_pieces: Any,
    neg_idx: Any,
    neg_count: Any,
    neg_pieces: Any,
    primes: Any,
    w: Any,
    wq: Any,
    out: Any,
) -> None:
    """The (polynomial, limb, tile) tasks of :func:`combine_many_serial` over numba's threads."""
    limbs = gallery.shape[2]
    degree = gallery.shape[3]
    tiles = (degree + TILE_MANY - 1) // TILE_MANY
    for task in numba.prange(2 * limbs * tiles):
        c = task // (limbs * tiles)
        limb = (task // tiles) % limbs
        t0 = (task % tiles) * TILE_MANY
        n = min(TILE_MANY, degree - t0)
        _tile_many(gallery, c, limb, t0, n, pos_idx, pos_count, pos_pieces, neg_idx,
                   neg_count, neg_pieces, primes, w, wq, out)  # fmt: skip


# ------------------------------------------------- many dense vectors: a float64 product
# Residues are cut into 21-bit pieces and constants into signed 23-bit pieces, so over at
# most 512 rows every partial sum of piece products is an integer below 2^53: a float64
# matrix product (BLAS, any summation order, with or without FMA) computes it exactly.
X_BITS = 21
_XMASK = np.uint64((1 << X_BITS) - 1)


@_jit()
def split_rows(gallery: Any, c: Any, limb: Any, t0: Any, n: Any, start: Any, x: Any) -> None:
    """x[r, a * n + i] = 21-bit piece a of gallery[start + r, c, limb, t0 + i], as float64."""
    for r in range(x.shape[0]):
        row = gallery[start + r, c, limb, t0 : t0 + n]
        for i in range(n):
            value = row[i]
            x[r, i] = np.float64(np.int64(value & _XMASK))
            x[r, n + i] = np.float64(np.int64((value >> np.uint64(X_BITS)) & _XMASK))
            x[r, 2 * n + i] = np.float64(np.int64(value >> np.uint64(2 * X_BITS)))


@_jit()
def fold_products(
    s: Any, kp: Any, n: Any, p: Any, w: Any, wq: Any, out: Any, c: Any, limb: Any, t0: Any
) -> None:
    """out[m, c, limb, t0 + i] += sum over pieces (a, b) of s[b * M + m, a * n + i] times
    its weight w[a, b] = 2^(21 a + 23 b) mod p, all mod p (s holds exact integers)."""
    count = out.shape[0]
    pi = np.int64(p)
    for m in range(count):
        for i in range(n):
            total = out[m, c, limb, t0 + i]
            for b in range(kp):
                for a in range(3):
                    r = np.int64(s[b * count + m, a * n + i]) % pi
                    if r < 0:
                        r += pi
                    total += mulmod_shoup(np.uint64(r), w[a, b], wq[a, b], p)
                    if total >= p:
                        total -= p
            out[m, c, limb, t0 + i] = total


# ------------------------------------------------------- constants of their own per limb
# A secret-shared probe's constants are residues of Z_p, a different vector per limb (the
# shares of one integer constant k_j are uniform per limb, so no single integer stands for
# them): each limb is summed with its own vector, the rest as above.
@_jit()
def _tile_limbs(
    gallery: Any,
    c: Any,
    limb: Any,
    t0: Any,
    n: Any,
    idx: Any,
    count: Any,
    pieces: Any,
    primes: Any,
    w: Any,
    wq: Any,
    out: Any,
) -> None:
    """out[m, c, limb, t0:t0+n] = sum of constants[m, limb, j] x_j mod p for every vector m."""
    p = primes[limb]
    acc = np.empty((4, n), dtype=np.uint64)
    r = np.empty(n, dtype=np.uint64)
    for m in range(out.shape[0]):
        _signed_sum(gallery, c, limb, t0, n, idx[m, limb, : count[m, limb]], pieces[m, limb],
                    w, wq, p, acc, r)  # fmt: skip
        out[m, c, limb, t0 : t0 + n] = r


@_jit()
def combine_limbs_serial(
    gallery: Any,
    idx: Any,
    count: Any,
    pieces: Any,
    primes: Any,
    w: Any,
    wq: Any,
    out: Any,
    tile: Any,
) -> None:
    """One thread over every (polynomial, limb, tile of ``tile`` coefficients: TILE for one
    vector, TILE_MANY for several), all constant vectors per tile."""
    limbs = gallery.shape[2]
    degree = gallery.shape[3]
    for c in range(2):
        for limb in range(limbs):
            for t0 in range(0, degree, tile):
                n = min(tile, degree - t0)
                _tile_limbs(gallery, c, limb, t0, n, idx, count, pieces, primes, w, wq, out)


@_jit(parallel=True)
def combine_limbs_parallel(
    gallery: Any,
    idx: Any,
    count: Any,
    pieces: Any,
    primes: Any,
    w: Any,
    wq: Any,
    out: Any,
    tile: Any,
) -> None:
    """The tasks of :func:`combine_limbs_serial` over numba's threads."""
    limbs = gallery.shape[2]
    degree = gallery.shape[3]
    tiles = (degree + tile - 1) // tile
    for task in numba.prange(2 * limbs * tiles):
        c = task // (limbs * tiles)
        limb = (task // tiles) % limbs
        t0 = (task % tiles) * tile
        n = min(tile, degree - t0)
        _tile_limbs(gallery, c, limb, t0, n, idx, count, pieces, primes, w, wq, out)
