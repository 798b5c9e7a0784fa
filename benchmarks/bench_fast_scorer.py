"""Plain-probe scoring of one packed block: TenSEAL's loop against the fast numba scorer.

    python benchmarks/bench_fast_scorer.py                      # fast, precise, paper
    python benchmarks/bench_fast_scorer.py -p compact           # N=4096: 2048 per block
    python benchmarks/bench_fast_scorer.py -p fast --repeats 9 --threads 2

One block of 4096 registrants x 512 features (512 ciphertexts) per preset; the TenSEAL
path is ``TenSEALOps.weighted_sum`` + dump (what ``PackedLayout.score_plain`` returns),
the fast path is ``FastBlock.score_plain`` (kernel + writing the result ciphertext).
Both results are checked bit-identical before timing. Threads are pinned before numpy and
numba start (``NUMBA_NUM_THREADS`` = ``--threads``, BLAS pools 1). The per-probe cost of
100,000 registrants is extrapolated from one block (25 blocks, scored one after the
other). Prints a table and writes ``results/bench/fast_scorer.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def timed(fn: Callable[[], Any], repeats: int) -> dict[str, float]:
    """Min and median wall time in ms; min is the figure to quote on a shared machine."""
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    samples.sort()
    return {"min_ms": samples[0] * 1e3, "median_ms": samples[len(samples) // 2] * 1e3}


def bench_preset(name: str, features: int, repeats: int, threads: int) -> dict[str, Any]:
    import numpy as np
    from frip_plugins.he_backends._ckks_layouts import plain_weights
    from frip_plugins.he_backends._fast_scorer import FastBlock, TenSEALCodec, combine_residues
    from frip_plugins.he_backends._fast_scorer import encode_constants as encode
    from frip_plugins.he_backends.tenseal import TenSEALLibrary

    from frip_engine.ckks import PRESETS

    params = PRESETS[name]
    scale = 2.0**params.scale_bits
    library = TenSEALLibrary()
    public, secret = library.keygen(params, evaluation_keys=False)
    ops = library.open(params, public)
    keys = library.open(params, public, secret)
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(params.slots, features))
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    probe = rows[123] + 0.3 * rng.normal(size=features)
    probe /= np.linalg.norm(probe)

    start = time.perf_counter()
    cts = [ops.encrypt(column) for column in rows.T]
    parts = [ops.dump(ct) for ct in cts]
    encrypt_s = time.perf_counter() - start
    codec = TenSEALCodec.from_context(ops.context)
    start = time.perf_counter()
    block = FastBlock.from_parts(codec, parts)
    load_s = time.perf_counter() - start

    weights = plain_weights(probe, scale)
    reference = ops.dump(ops.weighted_sum(cts, weights))
    ours = block.score_plain(probe, threads=threads)  # also compiles or loads the kernel
    ref_res, _ = codec.read(reference, scale=scale**2)
    our_res, _ = codec.read(ours, scale=scale**2)
    ref_values = keys.decrypt(keys.load(reference))
    our_values = keys.decrypt(keys.load(ours))
    identical = bool(np.array_equal(ref_res, our_res) and np.array_equal(ref_values, our_values))
    if not identical:
        raise SystemExit(f"{name}: the fast scorer's result differs from TenSEAL's")
    constants = encode(probe, scale)

    result: dict[str, Any] = {
        "preset": name,
        "params": params.describe(),
        "limbs": codec.limbs,
        "features": features,
        "registrants_per_block": params.slots,
        "bit_identical": identical,
        "argmax": int(np.argmax(our_values[: params.slots])),
        "encrypt_block_s": encrypt_s,
        "fast_load_block_s": load_s,
        "block_residue_bytes": int(block.residues.nbytes),
        "result_bytes_tenseal": len(reference),
        "result_bytes_fast": len(ours),
        "tenseal_score": timed(lambda: ops.dump(ops.weighted_sum(cts, weights)), repeats),
        "fast_kernel": timed(
            lambda: combine_residues(block.residues, constants, codec.primes, threads), repeats
        ),
        "fast_score": timed(lambda: block.score_plain(probe, threads=threads), repeats),
        "decrypt_tenseal_result": timed(lambda: keys.decrypt(keys.load(reference)), repeats),
        "decrypt_fast_result": timed(lambda: keys.decrypt(keys.load(ours)), repeats),
    }
    result["speedup"] = result["tenseal_score"]["min_ms"] / result["fast_score"]["min_ms"]
    return result


def extrapolate(result: dict[str, Any], registrants: int) -> dict[str, Any]:
    blocks = math.ceil(registrants / result["registrants_per_block"])
    return {
        "registrants": registrants,
        "blocks": blocks,
        "tenseal_probe_s": blocks * result["tenseal_score"]["min_ms"] / 1e3,
        "fast_probe_s": blocks * result["fast_score"]["min_ms"] / 1e3,
        "fast_gallery_gb": blocks * result["block_residue_bytes"] / 1e9,
        "fast_load_s": blocks * result["fast_load_block_s"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument(
        "-p", "--preset", action="append", choices=["fast", "precise", "paper", "compact"]
    )
    parser.add_argument("--features", type=int, default=512)
    parser.add_argument("--registrants", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="kernel threads (default 1)")
    parser.add_argument("--output", type=Path, default=Path("results/bench/fast_scorer.json"))
    args = parser.parse_args(argv)
    os.environ["NUMBA_NUM_THREADS"] = str(args.threads)  # before numba is imported
    for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[variable] = "1"

    import numba
    import tenseal

    load_before = os.getloadavg()
    results = []
    for name in args.preset or ["fast", "precise", "paper"]:
        result = bench_preset(name, args.features, args.repeats, args.threads)
        result["extrapolated"] = extrapolate(result, args.registrants)
        results.append(result)
        ext = result["extrapolated"]
        print(
            f"{name:8s} {result['params']}: TenSEAL {result['tenseal_score']['min_ms']:7.1f} ms"
            f"  fast {result['fast_score']['min_ms']:6.1f} ms"
            f" (kernel {result['fast_kernel']['min_ms']:5.1f})  x{result['speedup']:4.1f}"
            f"  load {result['fast_load_block_s'] * 1e3:5.0f} ms/block"
            f"  | {ext['registrants']} registrants ({ext['blocks']} blocks):"
            f" {ext['tenseal_probe_s']:.2f} s -> {ext['fast_probe_s']:.3f} s per probe,"
            f" {ext['fast_gallery_gb']:.2f} GB residues"
        )
    report = {
        "benchmark": "fast_scorer",
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
        },
        "versions": {"numba": numba.__version__, "tenseal": tenseal.__version__},
        "threads": args.threads,
        "repeats": args.repeats,
        "results": results,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
