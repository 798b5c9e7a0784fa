"""Where each writer's time goes when 1 and W writer processes enrol into one engine
(issue 19), on both gallery stores.

    python benchmarks/bench_store_writers.py                 # 4 writers, 2,048 subjects
    python benchmarks/bench_store_writers.py --writers 4 --subjects 2048 --chunk 512

Starts a throw-away PostgreSQL server (tests/_postgres.py: Debian's postgresql, as its
unprivileged user). Each writer process (spawned, engine opened as ``frip bench store``
makes it: TenSEAL fast preset, fast scorer) times, summed over its enrol_many calls: the
wait for the engine's write lock and the time holding it, the encryption, the delta
addition (load the block's latest revision, add, serialise: under the lock) and the store
commit, with the bytes committed. Prints one JSON object per (store, writers): those
sums over the writers, their CPU ms per subject, the server's (PostgreSQL backends and
those that ended, from /proc) and the cores busy. Read the ratios on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def _timing(sums: dict[str, float], key: str, function: Callable[..., Any]) -> Callable[..., Any]:
    """``function`` adding its seconds to ``sums[key]``."""

    def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            sums[key] += time.perf_counter() - start

    return timed


def _writer(home: str, name: str, seed: int, count: int, chunk: int, out: str) -> None:
    from frip_eval import bench_store
    from frip_eval.threads import pin_threads

    from frip_engine.engine import Engine

    pin_threads()
    sums = dict.fromkeys(("lock_wait", "lock_held", "encrypt", "delta_add", "commit"), 0.0)
    counts = {"commit_bytes": 0, "commits": 0, "locks": 0}
    writing = Engine._writing

    @contextmanager
    def timed_writing(self: Engine) -> Iterator[None]:
        asked = time.perf_counter()
        with writing(self):
            got = time.perf_counter()
            sums["lock_wait"] += got - asked
            counts["locks"] += 1
            try:
                yield
            finally:
                sums["lock_held"] += time.perf_counter() - got

    encrypted_blocks = Engine._encrypted_blocks

    def timed_blocks(self: Engine, *args: Any, **kwargs: Any) -> Iterator[Any]:
        blocks = encrypted_blocks(self, *args, **kwargs)
        while True:
            start = time.perf_counter()
            block = next(blocks, None)
            sums["encrypt"] += time.perf_counter() - start
            if block is None:
                return
            yield block

    Engine._writing = timed_writing  # type: ignore[method-assign,assignment]
    Engine._encrypted_blocks = timed_blocks  # type: ignore[method-assign]
    Engine._with_delta = _timing(sums, "delta_add", Engine._with_delta)  # type: ignore[method-assign]
    vectors = bench_store._vectors(count, seed)
    with Engine.open(name, Path(home)) as engine:
        store = engine.gallery_store
        commit = _timing(sums, "commit", store.commit_block)

        def counted(*args: Any, **kwargs: Any) -> Any:
            counts["commit_bytes"] += len(args[5])
            counts["commits"] += 1
            return commit(*args, **kwargs)

        store.commit_block = counted  # type: ignore[method-assign]
        used = resource.getrusage(resource.RUSAGE_SELF)
        before = used.ru_utime + used.ru_stime
        bench_store._enrol(engine, vectors, f"w{seed}-", chunk)
        used = resource.getrusage(resource.RUSAGE_SELF)
    Path(out).write_text(
        json.dumps({**sums, **counts, "cpu": used.ru_utime + used.ru_stime - before})
    )


def _server_cpu(postmaster: int) -> float:
    """CPU seconds of the server: the postmaster, its children, and its ended children."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry) == postmaster:
            total += sum(int(f) for f in fields[11:15])
        elif int(fields[1]) == postmaster:
            total += int(fields[11]) + int(fields[12])
    return total / tick


def main() -> None:
    import _postgres
    from frip_eval import bench_store

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--subjects", type=int, default=2048, help="all writers together")
    parser.add_argument("--chunk", type=int, default=512, help="subjects per enrol_many")
    parser.add_argument("--stores", default="sqlite,postgres")
    args = parser.parse_args()
    server = _postgres.start()
    server.create_database("bench")
    os.environ.update(server.env("bench"))
    os.environ.setdefault("FRIP_PASSPHRASE", bench_store.BENCH_PASSPHRASE)
    postmaster = int((server.data / "postmaster.pid").read_text().split()[0])
    home = Path(tempfile.mkdtemp(prefix="frip-store-writers-"))
    spawn = multiprocessing.get_context("spawn")
    try:
        for store in args.stores.split(","):
            for count in sorted({1, args.writers}):
                name = f"w{count}-{store}"
                section = bench_store._store_section(store, None, f"w{count}")
                bench_store._create(home, name, section).close()
                outs = [home / f"{name}-{w}.json" for w in range(count)]
                each = args.subjects // count
                processes = [
                    spawn.Process(
                        target=_writer, args=(str(home), name, 100 + w, each, args.chunk, str(o))
                    )
                    for w, o in enumerate(outs)
                ]
                server_before, start = _server_cpu(postmaster), time.perf_counter()
                for process in processes:
                    process.start()
                for process in processes:
                    process.join()
                elapsed = time.perf_counter() - start
                server_used = _server_cpu(postmaster) - server_before
                rows = [json.loads(o.read_text()) for o in outs]
                sums = {k: round(sum(r[k] for r in rows), 2) for k in rows[0]}
                subjects = each * count
                print(
                    json.dumps(
                        {
                            "store": store,
                            "writers": count,
                            "subjects": subjects,
                            "elapsed_s": round(elapsed, 2),
                            "writer_cpu_ms_per_subject": round(1000 * sums["cpu"] / subjects, 2),
                            "server_cpu_ms_per_subject": round(1000 * server_used / subjects, 2),
                            "block_mb_per_commit": round(
                                sums["commit_bytes"] / max(1, sums["commits"]) / 1e6, 1
                            ),
                            **sums,
                            "load_average": os.getloadavg()[0],
                        }
                    ),
                    flush=True,
                )
    finally:
        shutil.rmtree(home, ignore_errors=True)
        _postgres.stop(server)


if __name__ == "__main__":
    main()
