"""The linkage service under load: throughput, p50/p99, errors, batch size, enrolment.

    python benchmarks/bench_service.py                         # 1,000 registrants, all loads
    python benchmarks/bench_service.py --probes embedding --clients 1 4 16 32
    python benchmarks/bench_service.py --large                 # also 100,000 (slow to enrol)
    python benchmarks/bench_service.py --registrants 100000 --cache /tmp/frip-galleries

For each gallery (1,000 synthetic registrants, and 100,000 with ``--large``; fast
preset) ``frip serve`` runs as a child process on loopback with batching off
(``--batch-max 1``) and on (``--batch-max``/``--batch-wait-ms`` below), or unbatched
only when the served tree has no ``--batch-max`` (said in the output). Each client count
runs read-only and with ``--writers`` clients enrolling into the same engine, each
keeping ``--writer-inflight`` enrolments outstanding (default 8; one run per value
given, 1: closed loop); probes are embeddings near enrolled templates and/or lfw-dev
face images (``--lfw``, read in place). ``--cache DIR`` builds each gallery once into
DIR and copies it for every later run; ``--workers N`` gives the engine N scoring
processes. The engine alone (in-process identify and identify_many on the same gallery)
is timed before each server starts, for comparison. Threads are pinned to one per pool
(BLAS, OpenMP, numba) for this process and the server. Prints the Markdown table and
writes docs/bench-service.json, .md and .png (see ``frip_eval.bench_service``).
Exits 1 if any request failed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

LFW = Path(__file__).resolve().parents[2] / "shared" / "data" / "lfw-dev"


def main(argv: list[str] | None = None) -> int:
    from frip_eval.bench_service import WRITER_INFLIGHT  # imports no numpy: pinning holds

    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--registrants", type=int, nargs="+", default=[1000])
    parser.add_argument("--large", action="store_true", help="also 100,000 registrants")
    parser.add_argument("--probes", nargs="+", choices=["embedding", "image"], default=None)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16, 32, 64])
    parser.add_argument("--writers", type=int, default=2, help="0: read-only runs only")
    parser.add_argument(
        "--writer-inflight",
        type=int,
        nargs="+",
        default=[WRITER_INFLIGHT],
        metavar="K",
        help="enrolment requests each writer keeps outstanding, one run with writers per K "
        f"(default {WRITER_INFLIGHT}; 1: closed loop, one at a time)",
    )
    parser.add_argument("--seconds", type=float, default=15.0, help="per run")
    parser.add_argument(
        "--warmup",
        type=float,
        default=2.0,
        help="seconds per server: 1 identifying, then 1 enrolling client",
    )
    parser.add_argument("--batch-max", type=int, default=32, help="batching on")
    parser.add_argument("--batch-wait-ms", type=float, default=None, help="default: server's")
    parser.add_argument("--image-people", type=int, default=100, help="lfw-dev people")
    parser.add_argument("--lfw", type=Path, default=LFW)
    parser.add_argument("--workers", type=int, default=1, help="engine scoring processes")
    parser.add_argument(
        "--cache", type=Path, default=None, help="keep built galleries here, copy them per run"
    )
    parser.add_argument("--output", type=Path, default=Path("docs"))
    args = parser.parse_args(argv)
    if min(args.registrants + args.clients + args.writer_inflight + [args.workers]) < 1:
        parser.error("sizes, clients, --writer-inflight and workers must be positive")
    if args.writers < 0:
        parser.error("--writers must be >= 0")
    if args.batch_max < 2:
        parser.error("--batch-max must be >= 2")

    from frip_eval.bench_service import Plan, pin_threads, run

    pin_threads()  # before numpy loads, here and in the server
    plan = Plan(
        registrants=sorted(set(args.registrants + ([100_000] if args.large else []))),
        probes=args.probes or ["embedding", "image"],
        clients=sorted(set(args.clients)),
        writers=args.writers,
        writer_inflight=sorted(set(args.writer_inflight)),
        seconds=args.seconds,
        batch_max=args.batch_max,
        batch_wait_ms=args.batch_wait_ms,
        image_people=args.image_people,
        lfw=args.lfw,
        warmup=args.warmup,
        workers=args.workers,
        cache=args.cache,
    )
    command = "python benchmarks/bench_service.py " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    report = run(plan, args.output, command.strip())
    return 0 if report["errors"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
