"""PE-MIU template protection on lfw-dev: accuracy, gender leakage, complexity, D_sys.

    python benchmarks/bench_protection.py                        # arcface and facenet
    python benchmarks/bench_protection.py -e arcface -b 32 --threads 2

The same measurement as ``frip eval protection``; this script pins BLAS threads first and
prints the Markdown report that docs/protection.md quotes. Outputs go to
``results/eval-protection`` (protection.json, protection.md, protection.png).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument(
        "--index", type=Path, help="index CSV with a gender column (default: lfw-dev's)"
    )
    parser.add_argument(
        "-e", "--extractor", action="append", help="repeatable; default: arcface facenet"
    )
    parser.add_argument(
        "-b", "--block-size", type=int, action="append", help="repeatable; default: 16 32 64 128"
    )
    parser.add_argument("--max-impostors", type=int, default=100_000, help="0: every impostor pair")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--identities", type=int, default=None, help="first N identities only")
    parser.add_argument(
        "--no-he", action="store_true", help="skip the encrypted pe-miu probe mode's cost"
    )
    parser.add_argument("--output", type=Path, default=Path("results/eval-protection"))
    args = parser.parse_args(argv)
    for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[variable] = str(args.threads)  # before numpy's BLAS starts its pool

    from frip_eval.data import Dataset, find_lfw_dev
    from frip_eval.eval_protection import (
        DEFAULT_BLOCK_SIZES,
        markdown,
        read_genders,
        run_protection,
        write_protection_outputs,
    )

    index = args.index or find_lfw_dev(None) / "index.csv"
    dataset = Dataset.load(None, index).limit(args.identities)
    summary = run_protection(
        dataset,
        read_genders(index, dataset),
        args.extractor or ["arcface", "facenet"],
        args.block_size or list(DEFAULT_BLOCK_SIZES),
        args.max_impostors or None,
        args.threads,
        he=not args.no_he,
    )
    files = write_protection_outputs(summary, args.output)
    print(markdown(summary))
    print("written: " + ", ".join(str(f) for f in files))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
