"""How often ``orientation = 'auto'`` turns a photo the right way, per extractor.

    python benchmarks/face_orientation.py                   # 600 lfw-large photos x 4 turns
    python benchmarks/face_orientation.py -e sface --photos 200

Each photo is detected once in each of its four quarter turns; for every way the photo
could have been handed over (as taken, or turned 90, 180, 270 degrees) the extractor's own
rule (``frip_plugins.extractors._common.upright_rank``, ties to the photo as given) picks a
view, exactly as
``FacePipeline.upright`` would (``np.rot90`` is exact, so the views are the same pixels).
A pick is right when it brings the photo back to how it was taken. Threads are pinned
(default 1). Writes results/face-orientation.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/lfw-large")
    parser.add_argument("-e", "--extractor", action="append", help="default: all three")
    parser.add_argument("--photos", type=int, default=600, help="every 6th photo, this many")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", type=Path, default=REPO / "results")
    args = parser.parse_args(argv)
    for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[variable] = str(args.threads)  # before numpy's BLAS starts its pool

    import numpy as np
    from frip_eval.data import Dataset
    from frip_plugins.extractors._common import upright_rank

    from frip_engine import plugins
    from frip_engine.images import load_image

    paths = Dataset.load(index=args.data / "index.csv").paths[1::6][: args.photos]
    summary: dict[str, dict[str, object]] = {}
    print("| extractor | photos with a face | wrong picks at 0 / 90 / 180 / 270 degrees |")
    print("|---|---|---|")
    for name in args.extractor or ["arcface", "sface", "facenet"]:
        extractor = plugins.create("extractor", name, threads=args.threads)
        extractor.load()
        wrong = [0, 0, 0, 0]
        counted = 0
        for path in paths:
            image = load_image(path)
            ranks = [upright_rank(extractor.detect(np.rot90(image, j).copy())) for j in range(4)]
            if ranks[0] == -np.inf:
                continue  # no upright face as taken: nothing to recover
            counted += 1
            for handed in range(4):  # the photo handed over turned by `handed` quarter turns
                views = [ranks[(j + handed) % 4] for j in range(4)]
                picked = int(np.argmax(views))  # first maximum: ties keep the photo as given
                wrong[handed] += int((picked + handed) % 4 != 0)
        summary[name] = {"photos": counted, "wrong_by_turn": wrong}
        print(f"| {name} | {counted} | {' / '.join(str(w) for w in wrong)} |", flush=True)
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "face-orientation.json").write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
