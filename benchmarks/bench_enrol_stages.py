"""Where one online enrolment's time goes, stage by stage (issues 16 and 19).

    python benchmarks/bench_enrol_stages.py                # tenseal, fast preset, fast scorer
    python benchmarks/bench_enrol_stages.py --he pyfhel --repeat 3

One engine (SQLite store, 'fast' preset: N = 8192, 4,096 slots, d = 512) holds
``--registrants`` synthetic registrants in one open block; then a group of ``--group``
new subjects is added to it as the service does, each stage timed alone (median of
``--repeat``): the full re-encryption of the block as before the delta path, the
encryptions of zero a worker keeps in stock, the delta made from them, its serialisation
and the engine's commit (load, add, dump, store write). Prints one JSON object (``cpu_s``:
each stage's CPU seconds on this thread, the core-seconds it costs however loaded the
machine is); the ratios are what to read on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

# CPU seconds of this thread per stage (median), as _timed measured them: on a shared
# machine the core-seconds a stage costs, where its wall time also counts the waits
CPU: dict[str, float] = {}


def _timed(repeat: int, name: str, work: Callable[[], Any]) -> tuple[float, Any]:
    """Median seconds of ``repeat`` runs of ``work`` and its last result; the median CPU
    seconds of this thread go to ``CPU[name]``."""
    times, cpu, out = [], [], None
    for _ in range(repeat):
        start, used = time.perf_counter(), time.thread_time()
        out = work()
        times.append(time.perf_counter() - start)
        cpu.append(time.thread_time() - used)
    CPU[name] = statistics.median(cpu)
    return statistics.median(times), out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--he", default="tenseal", choices=["tenseal", "pyfhel"])
    parser.add_argument("--scorer", default="fast", choices=["fast", "library"])
    parser.add_argument("--registrants", type=int, default=1000)
    parser.add_argument("--group", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)

    from frip_eval.threads import pin_threads

    from frip_engine.engine import Engine, EnrolItem
    from frip_engine.profile import Profile

    pin_threads()
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((args.registrants + args.group, 512))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    profile = {
        "engine": {"name": "stages"},
        "he": {"plugin": args.he, "preset": "fast", "scorer": args.scorer},
        "key_store": {"plugin": "memory"},
    }
    with tempfile.TemporaryDirectory() as home:
        engine = Engine.create(Profile.from_dict(profile), Path(home))
        engine.enrol_many(
            [EnrolItem(f"s{i}", embeddings=[v]) for i, v in enumerate(vectors[: args.registrants])]
        )
        (info,) = engine.gallery_store.blocks()
        matcher, store = engine.matcher, engine.gallery_store
        rows = vectors[args.registrants :]
        slots = list(range(args.registrants, args.registrants + args.group))
        block = engine._load_block(info)
        n, d = args.repeat, rows.shape[1]
        figures: dict[str, float] = {}  # wall seconds per stage (CPU seconds: CPU)
        figures["full_reencrypt_s"], _ = _timed(
            n, "full_reencrypt_s", lambda: matcher.add_rows(block, rows, slots)
        )
        figures["enc_zeros_d_s"], _ = _timed(n, "enc_zeros_d_s", lambda: matcher.encrypt_zeros(d))
        stocks = [matcher.encrypt_zeros(d) for _ in range(n)]
        figures["delta_from_stock_s"], delta = _timed(
            n, "delta_from_stock_s", lambda: matcher.encrypt_rows_with(rows, slots, stocks.pop())
        )
        figures["delta_dump_s"], data = _timed(n, "delta_dump_s", lambda: matcher.dump(delta))
        figures["commit_load_delta_s"], loaded = _timed(
            n, "commit_load_delta_s", lambda: matcher.load(data)
        )
        figures["commit_add_s"], merged = _timed(
            n, "commit_add_s", lambda: matcher.add_delta(block, loaded)
        )
        figures["commit_dump_s"], committed = _timed(
            n, "commit_dump_s", lambda: matcher.dump(merged)
        )
        revision = [info.revision]

        def write() -> None:
            store.commit_block(
                info.block_id, revision[0], 0, engine.key_version, info.capacity, committed
            )
            revision[0] += 1

        figures["commit_store_write_s"], _ = _timed(n, "commit_store_write_s", write)
        figures["reader_reload_s"], _ = _timed(
            n, "reader_reload_s", lambda: matcher.load(committed)
        )
        engine.close()
    commit = sum(v for k, v in figures.items() if k.startswith("commit_"))
    figures["commit_total_s"] = commit
    figures["block_mb"] = len(committed) / 1e6
    figures["delta_mb"] = len(data) / 1e6
    figures["group_with_stock_s"] = figures["delta_from_stock_s"] + figures["delta_dump_s"] + commit
    figures["group_without_stock_s"] = figures["group_with_stock_s"] + figures["enc_zeros_d_s"]
    figures["stock_zeros_per_s"] = d / figures["enc_zeros_d_s"]
    rounded = {k: round(v, 4) for k, v in figures.items()}
    cpu = {k: round(v, 4) for k, v in CPU.items()}
    out = {"he": args.he, "scorer": args.scorer, "group": args.group, **rounded, "cpu_s": cpu}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
