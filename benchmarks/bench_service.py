"""Load on the linkage service over loopback HTTP: throughput, p50/p95/p99, errors.

    python benchmarks/bench_service.py                    # 16 clients for 60 s
    python benchmarks/bench_service.py --clients 8 --seconds 20 --gallery 500

A throw-away home gets two TenSEAL CKKS engines (`fast` preset, file key store): `reads`
with ``--gallery`` synthetic registrants, and an empty `writes`. ``frip serve`` runs as a
child process on 127.0.0.1; ``--writers`` clients enrol embeddings into `writes`, the others
identify and verify (4:1) probes near `reads`' templates. Each engine runs on its own
thread, so readers queue behind one another on `reads`. Prints the summary and saves it
to results/bench/service.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--writers", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--gallery", type=int, default=200, help="registrants in `reads`")
    parser.add_argument("--output", type=Path, default=Path("results/bench"))
    args = parser.parse_args(argv)

    import numpy as np
    from frip_eval.loadgen import ServerProcess, run_load

    from frip_engine.engine import Engine, EnrolItem
    from frip_engine.profile import Profile
    from frip_engine.service.db import Database
    from frip_engine.service.vendors import Vendors

    os.environ.setdefault("FRIP_PASSPHRASE", "bench-passphrase-not-secret")
    with tempfile.TemporaryDirectory(prefix="frip-bench-service-") as folder:
        home = Path(folder)
        rng = np.random.default_rng(0)
        vectors = rng.standard_normal((args.gallery, 512))
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        gallery = {f"r{i:05d}": vectors[i] for i in range(args.gallery)}
        for name in ("reads", "writes"):
            profile = Profile.from_dict({"engine": {"name": name}, "he": {"preset": "fast"}})
            with Engine.create(profile, home) as engine:
                if name == "reads":
                    items = [EnrolItem(s, embeddings=[v]) for s, v in gallery.items()]
                    engine.enrol_many(items)
        key = Vendors(Database(home / "service.sqlite")).create("bench", ["reads", "writes"])
        server = ServerProcess(home, args=("--rate", "0"))
        url = server.start()
        try:
            result = run_load(
                url, key, "reads", gallery, "writes", args.clients, args.writers, args.seconds
            )
        finally:
            server.stop()
    result["gallery"] = args.gallery
    result["machine"] = (
        f"{platform.machine()}, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}"
    )
    result["date"] = datetime.now(UTC).isoformat(timespec="seconds")
    result["command"] = "python benchmarks/bench_service.py " + " ".join(argv or sys.argv[1:])
    args.output.mkdir(parents=True, exist_ok=True)
    path = args.output / "service.json"
    path.write_text(json.dumps(result, indent=2))
    total = result["total"]
    print(
        f"{args.clients} clients ({result['writers']} enrolling), {result['seconds']:.1f} s, "
        f"gallery {args.gallery}"
    )
    print("| operation | requests | errors | req/s | p50 ms | p95 ms | p99 ms |")
    print("|---|---|---|---|---|---|---|")
    for name, row in [("all", total), *result["by_operation"].items()]:
        print(
            f"| {name} | {row['requests']} | {row['errors']} | {row['throughput_per_s']:.2f} | "
            f"{row['p50_ms']:.0f} | {row['p95_ms']:.0f} | {row['p99_ms']:.0f} |"
        )
    print("\nidentify, mean ms (Table II + service stages):")
    for stage, ms in result["identify_mean_ms"].items():
        print(f"  {stage:20s} {ms:9.1f}")
    print(f"\nsaved {path}")
    return 0 if total["errors"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
