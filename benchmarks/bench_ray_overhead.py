"""Ray's overhead per identify against the processes executor, on one gallery, in one run.

One engine of ``REGISTRANTS`` synthetic 128-d unit embeddings (TenSEAL ``fast``, fast
scorer, the ``file`` key store so that Ray's key-service actors can reach the key), opened
three ways at once: ``processes`` (2 workers), ``ray`` (2 shards) deciding in the
coordinator (score ciphertexts back to it), and ``ray`` deciding on the nodes (per-node
key-service actors, top-k lists back). The identifies are interleaved probe by probe, so
the machine's load weighs on the three alike; every decision is checked against the
processes executor's. A one-node Ray cluster (2 CPUs) is started here.

    PYTHONPATH=.:plugins python benchmarks/bench_ray_overhead.py [REGISTRANTS] [PROBES]
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from frip_eval import ray_cluster
from frip_eval.bench_scale import PROFILE, _enrol, _probes, _reopen, _vectors
from frip_eval.threads import pin_threads
from rich.console import Console

from frip_engine.engine import Engine
from frip_engine.profile import Profile


def main(registrants: int, probes: int) -> None:
    pin_threads()
    os.environ.setdefault("FRIP_PASSPHRASE", "bench-passphrase-not-secret")
    console = Console()
    home = Path(tempfile.mkdtemp(prefix="frip-bench-ray-"))
    cluster = ray_cluster.start((), head_cpus=2)
    gallery = _vectors(registrants, 0)
    _, rows = _probes(gallery, probes)
    try:
        profile = {**PROFILE, "key_store": {"plugin": "file"}}
        with Engine.create(Profile.from_dict(profile), home) as engine:
            _enrol(engine, gallery, 4096, console)
        ray = {"plugin": "ray", "shards": 2, "address": cluster.address, "num_cpus": 0.25}
        processes = _reopen(home, {"plugin": "processes", "workers": 2})
        on_ray = _reopen(home, ray)
        coordinator = _reopen(home, ray)
        coordinator._deciding = lambda: None  # type: ignore[method-assign]
        engines = {
            "processes-2": processes,
            "ray-2 coordinator": coordinator,
            "ray-2 nodes": on_ray,
        }
        for engine in engines.values():
            engine.identify(embedding=rows[0])  # warm-up: blocks loaded
        times: dict[str, list[float]] = {label: [] for label in engines}
        equal = {label: 0 for label in engines}
        for probe in rows:
            want = None
            for label, engine in engines.items():
                start = time.perf_counter()
                got = engine.identify(embedding=probe)
                times[label].append((time.perf_counter() - start) * 1000)
                want = want or got
                equal[label] += (got.subject_id, got.score, got.registrants) == (
                    want.subject_id,
                    want.score,
                    want.registrants,
                )
        base = statistics.median(times["processes-2"])
        console.print(f"{registrants:,} registrants, {probes} probes, load {os.getloadavg()}")
        for label, ms in times.items():
            p50 = statistics.median(ms)
            console.print(
                f"{label:20s} p50 {p50:7.1f} ms  overhead {p50 - base:+7.1f} ms  "
                f"equal {equal[label]}/{probes}"
            )
        for engine in engines.values():
            engine.close()
    finally:
        import ray as ray_module

        ray_module.shutdown()
        ray_cluster.stop(cluster)
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main(
        int(sys.argv[1]) if len(sys.argv) > 1 else 100_000,
        int(sys.argv[2]) if len(sys.argv) > 2 else 30,
    )
