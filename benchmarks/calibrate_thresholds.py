"""Calibrate the shipped decision thresholds on lfw-large, per extractor x protection.

    python benchmarks/calibrate_thresholds.py                  # every available extractor
    python benchmarks/calibrate_thresholds.py -e arcface --fpir 0.01 --threads 2

For each extractor (arcface, sface, facenet, facenet-pytorch: those `frip plugins` lists
as available) and each protection (none; pe-miu at every block size 16/32/64/128 that
leaves the template at least two blocks) this runs the open-set identification protocol
of :mod:`frip_eval.calibrate` on ../shared/data/lfw-large and writes (the report:
:mod:`frip_eval.calibrate_report`)

- ``frip_engine/calibration.json``: the table the engine takes its default threshold from;
- ``docs/calibration.md``: the table with FNIR/FPIR and how it was measured;
- ``docs/calibration.png``: best non-mated and mate score distributions with thresholds.

Embeddings are held in memory only (never written to disk): each extractor embeds the
4,048 images once (minutes) and every protection and block size is calibrated from them.
BLAS and onnxruntime threads are pinned to ``--threads`` (at most 2).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
LFW_LARGE = REPO.parent / "shared" / "data" / "lfw-large"
EXTRACTORS = ("arcface", "sface", "facenet", "facenet-pytorch")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--index", type=Path, default=LFW_LARGE / "index.csv")
    parser.add_argument("-e", "--extractor", action="append", help="repeatable; default: all")
    parser.add_argument("--fpir", type=float, default=None, help="default: the engine's (1%%)")
    parser.add_argument("--threads", type=int, default=2, choices=(1, 2))
    parser.add_argument("--table", type=Path, default=REPO / "frip_engine" / "calibration.json")
    parser.add_argument("--docs", type=Path, default=REPO / "docs")
    args = parser.parse_args(argv)
    for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[variable] = str(args.threads)  # before numpy's BLAS starts its pool

    from frip_eval.calibrate import DEFAULT_FPIR, calibrate, combinations, write_table
    from frip_eval.calibrate_report import write_report
    from frip_eval.data import Dataset, embed_with
    from rich.progress import Progress

    from frip_engine import plugins

    dataset = Dataset.load(None, args.index)
    fpir = args.fpir or DEFAULT_FPIR
    names = args.extractor or [
        n for n in EXTRACTORS if plugins.registry().get("extractor", n).available
    ]
    skipped = [n for n in EXTRACTORS if n not in names and not args.extractor]
    command = "python benchmarks/calibrate_thresholds.py " + shlex.join(
        argv if argv is not None else sys.argv[1:]
    )
    records: list[Any] = []
    scores: dict[Any, Any] = {}
    old: dict[str, float] = {}  # each extractor's own (lfw-dev) threshold, for comparison
    with Progress() as bar:
        for name in names:  # calibrated as soon as its embeddings are there
            task = bar.add_task(f"{name}: embedding", total=len(dataset.paths))
            emb = embed_with(name, dataset, args.threads, lambda _n, k, t=task: bar.advance(t, k))
            old[name] = emb.threshold
            for protection, size in combinations(emb.dimension):
                label = f"{name} {protection}" + (f" {size}" if size else "")
                task = bar.add_task(label, total=len(dataset.paths))
                record, found = calibrate(
                    emb,
                    dataset.labels,
                    protection,
                    size,
                    fpir,
                    dataset.root.name,
                    command.strip(),
                    lambda k, t=task: bar.advance(t, k),
                )
                records.append(record)
                scores[record.key] = found
                bar.update(task, completed=len(dataset.paths))
                bar.console.print(record.describe())
            write_table([r for r in records if r.extractor == name], args.table)
    written = write_report(records, scores, old, skipped, args.docs)
    print("written: " + ", ".join(map(str, [args.table, *written])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
