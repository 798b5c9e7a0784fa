"""CPU per probe of ``Engine.identify_many`` and where it goes (issue 16's scoring bound).

    python benchmarks/profile_scoring.py 100000 --batch 32 --seconds 15
    py-spy record -r 50 --format raw -o p.txt -- \\
        python benchmarks/profile_scoring.py 100000 --batch 32 --seconds 15
    python benchmarks/profile_scoring.py --categorise p.txt

Opens engine ``bench`` of ``benchmarks/bench_service.py``'s gallery cache (``--cache``,
entry ``<registrants>-people0-workers1``; built there first if missing, as bench_service
builds it: fast preset, fast scorer, synthetic unit embeddings), in a copy, then scores
``--batch`` probes per call (B = 1: ``identify``, as the unbatched service does; B > 1:
``identify_many``) for ``--seconds`` after one warm-up call (blocks loaded, kernels
compiled). Prints CPU milliseconds of this process per probe (``time.process_time``: what
the work costs, whatever else shares the machine), probes/s and the load average.

``--categorise`` reads a py-spy raw (folded) profile of such a run and prints the share
of the samples taken inside the measured loop that fell in the batch kernel (the float64
product's split, GEMM and fold; the numba integer kernel), TenSEAL decryption, the key
unwrap, the key service's top-k, per-probe weights and ciphertext writing, and the rest.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

# (share, substrings of a sample's stack), the first match wins
CATEGORIES = (
    ("kernel: float64 product (split, GEMM, fold)", ("combine_residues_product (",)),
    ("kernel: numba integer", ("combine_residues (", "combine_residues_many (")),
    ("key unwrap (secret context load, close)", ("context_from", "CKKSDecryptor.close")),
    ("decryption (TenSEAL)", ("decrypt", "ckks_vector_from")),
    ("key service: top-k, bounds", ("keyservice.py",)),
    ("scorer: weights, constants, ciphertext write", ("_fast_scorer.py", "_ckks_layouts.py")),
    ("probe encoding", ("encode_probe",)),
)
MEASURED = "measured"  # the name of the timed loop's function: samples outside it are setup


def categorise(path: Path) -> dict[str, float]:
    """Shares (0-1) of the samples of py-spy raw profile ``path`` taken inside the measured
    loop, by :data:`CATEGORIES` (else ``other``)."""
    counts: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if f"{MEASURED} (" not in stack:
            continue
        inner = stack[stack.index(f"{MEASURED} (") :]
        name = next((n for n, keys in CATEGORIES if any(k in inner for k in keys)), "other")
        counts[name] += int(count)
    total = sum(counts.values()) or 1
    return {name: counts[name] / total for name, _ in counts.most_common()}


def _home(cache: Path, registrants: int, folder: Path) -> Path:
    """A copy of the cached gallery home (built into the cache first if missing)."""
    from frip_eval.bench_service import build_home

    cached = cache / f"{registrants}-people0-workers1"
    done = cached / "built.json"
    if not done.exists():
        shutil.rmtree(cached, ignore_errors=True)
        build_home(cached, registrants, {}, 1)
        done.write_text(json.dumps({"enrolled": []}))
    home = folder / "home"
    shutil.copytree(cached, home, ignore=shutil.ignore_patterns("built.json", "*.log"))
    return home


def measured(engine: Any, probes: list[Any], batch: int, seconds: float) -> dict[str, float]:
    """Score ``batch`` probes per call for ``seconds``: CPU ms per probe and probes/s."""
    done, cpu, wall = 0, time.process_time(), time.perf_counter()
    while done == 0 or time.perf_counter() - wall < seconds:
        chunk = [probes[(done + j) % len(probes)] for j in range(batch)]
        if batch == 1:
            engine.identify(embedding=chunk[0])
        else:
            engine.identify_many(embeddings=chunk)
        done += batch
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return {"probes": done, "cpu_ms_per_probe": cpu / done * 1e3, "probes_per_s": done / wall}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("registrants", type=int, nargs="?", default=1000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/frip-galleries"))
    parser.add_argument("--categorise", type=Path, default=None, help="a py-spy raw profile")
    args = parser.parse_args(argv)
    if args.categorise is not None:
        for name, share in categorise(args.categorise).items():
            print(f"{name:48s} {share * 100:5.1f} %")
        return 0
    from frip_eval.bench_service import ENGINE, pin_threads, synthetic_gallery

    pin_threads()
    os.environ.setdefault("FRIP_PASSPHRASE", "bench-passphrase-not-secret")
    import numpy as np
    from frip_eval.loadgen import near

    from frip_engine import open_engine

    gallery = synthetic_gallery(args.registrants)
    names = sorted(gallery)
    rng = np.random.default_rng(7)
    probes = [near(gallery[names[int(rng.integers(len(names)))]], 0.2, rng) for _ in range(256)]
    with tempfile.TemporaryDirectory(prefix="frip-profile-scoring-") as folder:
        home = _home(args.cache, args.registrants, Path(folder))
        with open_engine(ENGINE, home=home) as engine:
            engine.identify_many(embeddings=probes[: max(2, args.batch)])  # load, compile
            engine.identify(embedding=probes[0])
            result = measured(engine, probes, args.batch, args.seconds)
    print(
        f"{args.registrants:,} registrants, B = {args.batch}: {result['probes']} probes, "
        f"{result['cpu_ms_per_probe']:.2f} CPU ms/probe, {result['probes_per_s']:.1f} "
        f"probes/s, load average {os.getloadavg()[0]:.1f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
