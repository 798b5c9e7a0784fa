"""Extractor throughput on lfw-dev: images/s and the decode/detect/align/embed split.

    python benchmarks/bench_extractors.py                      # arcface, facenet, sface
    python benchmarks/bench_extractors.py -e sface --threads 2 --identities 50

Threads are pinned (default 1: onnxruntime intra-op, OpenCV, BLAS) so figures compare
across extractors and do not depend on what else the machine runs. The same measurement
is ``frip bench extract``; this script also prints a Markdown table for docs/extractors.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--index", type=Path, help="index CSV (default: lfw-dev's)")
    parser.add_argument("--folder", type=Path, help="folder of <identity>/<images>")
    parser.add_argument(
        "-e", "--extractor", action="append", help="repeatable; default: arcface facenet sface"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--identities", type=int, default=None, help="first N identities only")
    parser.add_argument("--output", type=Path, default=Path("results/bench"))
    args = parser.parse_args(argv)
    for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[variable] = str(args.threads)  # before numpy's BLAS starts its pool

    from frip_eval.data import Dataset, find_lfw_dev
    from frip_eval.evaluation import benchmark

    index = args.index
    if index is None and args.folder is None:
        index = find_lfw_dev(None) / "index.csv"
    dataset = Dataset.load(args.folder, index).limit(args.identities)
    names = args.extractor or ["arcface", "facenet", "sface"]
    summary = benchmark(dataset, names, args.threads, args.batch_size)
    args.output.mkdir(parents=True, exist_ok=True)
    path = args.output / "extractors.json"
    path.write_text(json.dumps(summary, indent=2))
    print(f"{len(dataset.paths)} images, {args.threads} thread(s); ms per image:\n")
    print("| extractor | images/s | total | decode | detect | align | embed | no face |")
    print("|---|---|---|---|---|---|---|---|")
    for name, entry in summary["extractors"].items():
        ms = entry["ms_per_image"]
        split = " | ".join(
            f"{ms.get(k, float('nan')):.1f}" for k in ("decode", "detect", "align", "embed")
        )
        print(
            f"| {name} | {entry['images_per_second']:.1f} | {entry['ms_per_image_total']:.1f} "
            f"| {split} | {entry['failures']} |"
        )
    print(f"\nwritten: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
