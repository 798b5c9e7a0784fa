"""Where bulk enrolment's time goes: ``enrol_many`` under cProfile (issue 17).

    PYTHONPATH=.:plugins python benchmarks/profile_enrol.py 100000            # 128-d
    PYTHONPATH=.:plugins python benchmarks/profile_enrol.py 8192 --dimension 512

``registrants`` synthetic unit embeddings (128-d: sface-sized; 512-d: arcface-sized),
TenSEAL ``fast`` with the fast scorer, a key store in memory, enrolled by ``frip bench
scale``'s loop (chunks of ``--chunk``) on one core (the local executor), threads pinned.
Prints the rate and the cProfile tables (cumulative, then own time); docs/scale.md
("Bulk enrolment: where the time goes") reads the shares off them.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import tempfile
from pathlib import Path

from frip_eval import bench_scale
from rich.console import Console

from frip_engine.engine import Engine
from frip_engine.profile import Profile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("registrants", type=int)
    parser.add_argument("--dimension", type=int, choices=(128, 512), default=128)
    parser.add_argument("--chunk", type=int, default=4096)
    args = parser.parse_args()
    bench_scale.pin_threads()
    profile = dict(bench_scale.PROFILE)
    if args.dimension == 512:
        bench_scale.DIMENSION = 512
        profile["extractor"] = {"plugin": "arcface"}
    gallery = bench_scale._vectors(args.registrants, 0)
    home = Path(tempfile.mkdtemp(prefix="profile-enrol-"))
    with Engine.create(Profile.from_dict(profile), home) as engine:
        profiler = cProfile.Profile()
        profiler.enable()
        seconds = bench_scale._enrol(engine, gallery, args.chunk, Console(quiet=True))
        profiler.disable()
    print(f"{args.registrants:,} in {seconds:.1f} s: {args.registrants / seconds:,.0f}/s")
    stats = pstats.Stats(profiler)
    stats.sort_stats("cumulative").print_stats(45)
    stats.sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
