"""numba kernels of :mod:`frip_plugins.he_backends._fast_scorer`: exact ``sum_j k_j * x_j mod p``.

Each residue x (< p < 2^61) is split into 32-bit halves and each |k| into three 22-bit
pieces (66 bits: any constant below 2^64, so a plain probe's int64 constants and a
secret-shared probe's full-width residues of Z_p alike), so every product is a 32 x
32-bit one below 2^54 and an accumulator takes 1024 terms before it could overflow 64
bits. Positive and negative constants are summed separately (magnitudes stay small).
Six accumulators (piece x half), four gallery rows per pass over a tile, one pass over
the gallery whatever the constants' width, vectorised by LLVM (the pieces are uint32, so
the products compile to 32 x 32-bit vector multiplies). Each accumulator is folded in
once per 1024 terms with a Shoup multiplication by its weight 2^(22 v + 32 h) mod p,
which takes any 64-bit input, so the only reduction mod p happens at the end.

Compiled code is cached on disk (numba ``cache=True``: ``NUMBA_CACHE_DIR`` if set, else
this package's ``__pycache__``, else numba's user-wide cache directory), so worker
processes load it instead of compiling; where no location is writable numba refuses
``cache=True`` and the kernels are compiled in memory once per process instead. An
unreadable cache entry (a truncated ``.nbi`` index or ``.nbc`` data file after a full disk
or a crash) is a cache miss: the kernel is compiled again and the entry rewritten.
"""

from __future__ import annotations

import logging
import types
from collections.abc import Callable
from typing import Any, TypeVar, cast

import numba
import numpy as np

from frip_plugins.he_backends._pieces import ACCUMULATORS, FLUSH_TERMS

TILE = 2048  # coefficients per task for one vector: long runs of each row for the prefetcher
# Coefficients per task when several constant vectors share a pass: the gallery's
# d x TILE_MANY tile of one (polynomial, limb) (512 x 256 x 8 B = 1 MB at d = 512) stays
# in L2 while every vector is summed over it, so each tile comes from memory once per
# batch instead of once per probe.
TILE_MANY = 256
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
def _piece(pieces: Any, v: Any, j: Any, stop: Any) -> Any:
    """Piece v of term j as uint64, or 0 past the last term (a four-row pass's padding)."""
    return np.uint64(pieces[v, j]) if j < stop else np.uint64(0)


@_jit()
def _fold(acc: Any, n: Any, w: Any, wq: Any, p: Any, result: Any) -> None:
    """result += sum_a acc[a] * w[a] mod p (w[a] is accumulator a's weight mod p)."""
    for i in range(n):
        s = result[i]
        for a in range(ACCUMULATORS):
            s += mulmod_shoup(acc[a, i], w[a], wq[a], p)
            if s >= p:
                s -= p
        result[i] = s


@_jit()
def _sum_terms(
    gallery: Any,
    c: Any,
    limb: Any,
    t0: Any,
    n: Any,
    idx: Any,
    pieces: Any,
    start: Any,
    stop: Any,
    w: Any,
    wq: Any,
    p: Any,
    acc: Any,
    result: Any,
) -> None:
    """result[:n] = sum over terms j in [start, stop) of |k_j| gallery[idx[j], c, limb,
    t0:t0+n] mod p, |k_j| given as ``pieces`` (3, terms) uint32.

    Accumulator acc[2 v + h] sums half h (low, high 32 bits) of each residue times piece
    v: 32 x 32-bit products, which LLVM vectorises as such. Four rows per pass keep the
    accumulators' traffic low (a last pass short of four rows repeats its last row with
    zero pieces); every FLUSH_TERMS terms the accumulators are folded into the result."""
    a0 = acc[0, :n]
    a1 = acc[1, :n]
    a2 = acc[2, :n]
    a3 = acc[3, :n]
    a4 = acc[4, :n]
    a5 = acc[5, :n]
    result[:n] = 0
    last = stop - 1
    for first in range(start, stop, FLUSH_TERMS):  # FLUSH_TERMS is a multiple of 4
        acc[:, :n] = 0
        for jj in range(first, min(first + FLUSH_TERMS, stop), 4):
            s0 = gallery[idx[jj], c, limb, t0 : t0 + n]
            s1 = gallery[idx[min(jj + 1, last)], c, limb, t0 : t0 + n]
            s2 = gallery[idx[min(jj + 2, last)], c, limb, t0 : t0 + n]
            s3 = gallery[idx[min(jj + 3, last)], c, limb, t0 : t0 + n]
            p0, p1 = _piece(pieces, 0, jj, stop), _piece(pieces, 0, jj + 1, stop)
            p2, p3 = _piece(pieces, 0, jj + 2, stop), _piece(pieces, 0, jj + 3, stop)
            q0, q1 = _piece(pieces, 1, jj, stop), _piece(pieces, 1, jj + 1, stop)
            q2, q3 = _piece(pieces, 1, jj + 2, stop), _piece(pieces, 1, jj + 3, stop)
            r0, r1 = _piece(pieces, 2, jj, stop), _piece(pieces, 2, jj + 1, stop)
            r2, r3 = _piece(pieces, 2, jj + 2, stop), _piece(pieces, 2, jj + 3, stop)
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
                a4[i] += l0 * r0 + l1 * r1 + l2 * r2 + l3 * r3
                a5[i] += h0 * r0 + h1 * r1 + h2 * r2 + h3 * r3
        _fold(acc, n, w[limb], wq[limb], p, result)


@_jit()
def _task(task: Any, tile: Any, work: Any) -> None:
    """Task number ``task`` = (polynomial, limb, tile of ``tile`` coefficients) of a
    :func:`_combine`: out[m, c, limb, t0:t0+n] for every constant vector m, the sum over
    its positive constants minus the sum over its negative ones mod p. A vector's
    constants are its limb's own where ``idx`` has a row per limb, else one row serves
    every limb."""
    gallery, idx, positive, negative, pieces, primes, w, wq, out = work
    limbs = gallery.shape[2]
    tiles = (gallery.shape[3] + tile - 1) // tile
    c = task // (limbs * tiles)
    limb = (task // tiles) % limbs
    t0 = (task % tiles) * tile
    n = min(tile, gallery.shape[3] - t0)
    own = limb if idx.shape[1] > 1 else 0
    p = primes[limb]
    acc = np.empty((ACCUMULATORS, n), dtype=np.uint64)
    rpos = np.empty(n, dtype=np.uint64)
    rneg = np.empty(n, dtype=np.uint64)
    for m in range(out.shape[0]):
        split = positive[m, own]
        terms = split + negative[m, own]
        _sum_terms(gallery, c, limb, t0, n, idx[m, own], pieces[m, own], 0, split, w, wq, p,
                   acc, rpos)  # fmt: skip
        _sum_terms(gallery, c, limb, t0, n, idx[m, own], pieces[m, own], split, terms, w, wq,
                   p, acc, rneg)  # fmt: skip
        for i in range(n):
            a = rpos[i]
            b = rneg[i]
            out[m, c, limb, t0 + i] = a - b if a >= b else a + p - b


def _combine(work: Any, tile: Any) -> None:
    """out[m] = sum_j k[m, j] gallery[j] mod p per limb, for every constant vector m.

    ``work`` = (gallery, idx, positive, negative, pieces, primes, w, wq, out): the
    residues (d, 2, limbs, N) uint64; ``idx`` (vectors, 1 or limbs, d) int64 lists each
    vector's terms, its ``positive`` count first (k > 0), then its ``negative`` ones (k <
    0) (both (vectors, 1 or limbs) int64); ``pieces`` (vectors, 1 or limbs, 3, d) uint32
    their |k| in 22-bit pieces; ``primes`` (limbs,) uint64; ``w``/``wq`` (limbs,
    ACCUMULATORS) uint64 the accumulators' weights mod p and their Shoup quotients; out
    (vectors, 2, limbs, N) uint64. Runs every (polynomial, limb, tile) task, all vectors
    per tile; the tasks' outputs are disjoint."""
    gallery = work[0]
    tasks = 2 * gallery.shape[2] * ((gallery.shape[3] + tile - 1) // tile)
    for task in numba.prange(tasks):
        _task(task, tile, work)


def _serial_and_parallel(fn: F, name: str) -> tuple[F, F]:
    """``fn`` compiled twice: on the calling thread (``numba.prange`` runs as ``range``)
    and over numba's threads, as ``<name>_serial`` and ``<name>_parallel`` (each its own
    name, so their entries in numba's on-disk cache stay apart)."""
    compiled = []
    for kind, parallel in (("serial", False), ("parallel", True)):
        copy = types.FunctionType(fn.__code__, fn.__globals__, f"{name}_{kind}")
        copy.__qualname__ = copy.__name__
        copy.__doc__ = fn.__doc__
        compiled.append(cast(F, _jit(parallel=parallel)(copy)))
    return compiled[0], compiled[1]


combine_serial, combine_parallel = _serial_and_parallel(_combine, "combine")


# ------------------------------------------------- many dense vectors: a float64 product
# Residues are cut into ``bits``-wide pieces and constants into signed pieces so narrow
# that over one product's rows every partial sum of piece products is an integer of at
# most 2^53 in magnitude: a float64 matrix product (BLAS, any summation order, with or
# without FMA) computes it exactly. The scorer chooses the widths (``_product_plan``).
FLOAT_EXACT = 2**53  # |integer| <= 2^53: exact in float64
_OFFSET = np.int64(FLOAT_EXACT)


@_jit()
def split_rows(
    gallery: Any, c: Any, limb: Any, t0: Any, n: Any, start: Any, bits: Any, x: Any
) -> None:
    """x[r, a * n + i] = ``bits``-wide piece a of gallery[start + r, c, limb, t0 + i], as
    float64, for a < x.shape[1] // n (least significant first)."""
    mask = np.uint64((1 << bits) - 1)
    for r in range(x.shape[0]):
        row = gallery[start + r, c, limb, t0 : t0 + n]
        for a in range(x.shape[1] // n):
            shift = np.uint64(bits * a)
            for i in range(n):
                x[r, a * n + i] = np.float64(np.int64((row[i] >> shift) & mask))


@_jit()
def fold_products(
    s: Any, n: Any, p: Any, w: Any, wq: Any, shift: Any, out: Any, c: Any, limb: Any, t0: Any
) -> None:
    """out[m, c, limb, t0 + i] += sum over pieces (a, b) of s[b * M + m, a * n + i] times
    its weight w[a, b] mod p, all mod p (s holds integers of magnitude <= 2^53).

    Each product is lifted by 2^53 to a non-negative integer below 2^54, which a Shoup
    multiplication reduces as it is (no division); ``shift`` = 2^53 sum_(a, b) w[a, b] mod
    p takes the lifts off again."""
    count = out.shape[0]
    pieces, kp = w.shape
    for m in range(count):
        total = out[m, c, limb, t0 : t0 + n]
        for b in range(kp):
            for a in range(pieces):
                row = s[b * count + m, a * n : (a + 1) * n]
                wab = w[a, b]
                wqab = wq[a, b]
                for i in range(n):
                    lifted = np.uint64(np.int64(row[i]) + _OFFSET)
                    t = total[i] + mulmod_shoup(lifted, wab, wqab, p)
                    total[i] = t - p if t >= p else t
        for i in range(n):
            t = total[i]
            total[i] = t - shift if t >= shift else t + (p - shift)
