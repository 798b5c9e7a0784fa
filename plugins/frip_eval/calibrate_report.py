"""The calibration report (``docs/calibration.md`` and ``docs/calibration.png``) that
``benchmarks/calibrate_thresholds.py`` writes beside the table, from the records and
search scores of :func:`frip_eval.calibrate.calibrate`. Aggregates only: thresholds,
rates and score histograms, never an embedding.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from frip_engine.calibration import Calibration
from frip_eval.evaluation import SearchScores, threshold_at_fpir
from frip_eval.plots import pyplot

Key = tuple[str, str, int | None]


def markdown(
    records: Sequence[Calibration],
    scores: Mapping[Key, SearchScores],
    old: Mapping[str, float],
    skipped: Sequence[str],
) -> str:
    """``docs/calibration.md``: one row per record (with FPIR/FNIR at the extractor's
    ``old`` threshold and at FPIR 0.1%), then how the thresholds are measured and used.
    ``skipped``: extractors not calibrated (not installed)."""
    first = records[0]
    lines = [
        "# Calibrated decision thresholds",
        "",
        f"Measured {first.date} on {first.dataset} ({first.images} images of "
        f"{first.identities} people, 2-4 images each for {first.gallery} of them) with "
        f"`{first.command}`; the engine reads them from `frip_engine/calibration.json`.",
        "",
        "| extractor | protection | block | threshold | FPIR target | FPIR | FNIR | rank-1 | "
        "highest non-mated | enrolled | mated / non-mated searches | no face | "
        "old threshold: FPIR / FNIR | at FPIR 0.1%: threshold / FNIR |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        found, before = scores[r.key], old[r.extractor]
        strict = threshold_at_fpir(found.best_non_mated, 0.001)
        lines.append(
            f"| {r.extractor} | {r.protection} | {r.block_size or '-'} | {r.threshold:.4f} | "
            f"{r.fpir_target:.1%} | {r.fpir:.2%} | {r.fnir:.2%} | {r.rank1:.4f} | "
            f"{r.max_non_mated:.4f} | {r.gallery} | {r.mated} / {r.non_mated} | {r.failures} | "
            f"{before:.2f}: {found.fpir(before):.2%} / {found.fnir(before):.2%} | "
            f"{strict:.4f} / {found.fnir(strict):.2%} |"
        )
    if skipped:
        lines += ["", f"Not calibrated (not installed here): {', '.join(skipped)}."]
    return "\n".join(lines) + "\n" + ABOUT


ABOUT = """
![score distributions and thresholds](calibration.png)

## How the thresholds are measured

Open-set identification (ISO/IEC 19795-1; `plugins/frip_eval/calibrate.py`): every person
with two or more images is enrolled from their first image (the gallery); their other
images are *mated searches*; every person with one image searches once, unenrolled (a
*non-mated search*). A search returns a candidate when its best score is at or above the
threshold. The threshold is the lowest one (rounded up to 6 decimals) at which at most
`floor(FPIR x non-mated searches)` non-mated searches return a candidate; FNIR is the share
of mated searches whose best candidate is not the mate or scores below the threshold.
A face the extractor cannot find counts against it (a missed mated search). Under pe-miu
the gallery and every search are protected with fresh permutations and compared with
the real comparator (`frip_engine.pemiu.compare_many`, best block assignment) - the
engine's scores, which the CKKS pe-miu probe mode reproduces to 1e-4.

**Why FPIR 1%.** lfw-large has about 2,000 non-mated searches: at 1% the threshold rests
on the 20 highest non-mated scores, a stable estimate. At 0.1% it rests on one or two
searches, and on LFW those are label noise: the same person under two spellings
(Hasan_Wirayuda / Hassan_Wirajuda 0.64, Yingfan_Wang / Wang_Yingfan 0.63 with arcface)
and a mislabelled photo (Carlos_Ruckauf / Eduardo_Duhalde 0.77); the last column shows
thresholds of 0.64-0.84 and FNIR above 50% there. facenet's FNIR of 35% at FPIR 1% is
the model's own (it was 32% at its lfw-dev threshold 0.65, which let 1.3% of unknowns
through): prefer arcface. Deployments that
need a lower FPIR should calibrate on their own, cleaner, population
(`frip eval calibrate --fpir 0.001`) with at least 10 / FPIR non-mated searches.

**Why per protection and block size.** PE-MIU's comparator takes the best of all block
assignments, so an impostor's score rises the smaller the blocks (more assignments to
choose from); the plain-cosine threshold then accepts strangers (issue 13: with 70
lfw-dev people enrolled at block 32, Andy_Lau_0001 was accepted as Daisy_Fuentes at
0.3445 > 0.34). The score does not depend on the permutations drawn (the best assignment
undoes any shuffle), so the thresholds are reproducible.

**Gallery size.** FPIR grows with the number enrolled (a stranger has more people to
resemble). These thresholds hold for galleries up to the calibration's 748 (`frip stats`
warns beyond that); for larger galleries recalibrate with as many enrolled as you will
have.

## How the engine uses them

`frip create` takes the threshold for the profile's (extractor, protection, pe-miu block
size) from `frip_engine/calibration.json` unless `[engine] threshold` is set, and refuses
a combination that has no entry (no silent fallback to the plain-cosine value); `frip
stats` shows the threshold and where it came from. To calibrate on your own labelled
images (a CSV with `path,identity`, or a folder of `<identity>/<images>`):

    frip eval calibrate -e arcface --protection pe-miu --block-size 32 --index my.csv \\
        --fpir 0.01 --write-profile my-profile.toml

Embeddings are held in memory only: none is written to disk, in the repository or
anywhere else.
"""


def plot(records: Sequence[Calibration], scores: Mapping[Key, SearchScores], path: Path) -> None:
    """``docs/calibration.png``: per record, the mate and best non-mated score
    distributions and the threshold (nothing when matplotlib is missing)."""
    plt = pyplot()
    if plt is None:
        return
    extractors = list(dict.fromkeys(r.extractor for r in records))
    width = max(sum(1 for r in records if r.extractor == e) for e in extractors)
    fig, axes = plt.subplots(
        len(extractors), width, figsize=(3.2 * width, 2.8 * len(extractors)), squeeze=False
    )
    for row, name in enumerate(extractors):
        mine = [r for r in records if r.extractor == name]
        for col in range(width):
            ax = axes[row][col]
            if col >= len(mine):
                ax.axis("off")
                continue
            r = mine[col]
            found = scores[r.key]
            bins = np.linspace(-0.2, 1.0, 61)
            mates = found.mate_score[np.isfinite(found.mate_score)]
            unknown = found.best_non_mated[np.isfinite(found.best_non_mated)]
            ax.hist(mates, bins, alpha=0.6, density=True, label="mate score")
            ax.hist(unknown, bins, alpha=0.6, density=True, label="best non-mated")
            ax.axvline(r.threshold, color="k", linestyle="--", label="threshold")
            title = r.protection + (f" {r.block_size}" if r.block_size else "")
            ax.set_title(f"{name} {title}: t={r.threshold:.3f}\nFNIR {r.fnir:.1%}", fontsize=9)
            if col == 0:
                ax.legend(fontsize=7)
    fig.suptitle(f"{records[0].dataset}: thresholds at FPIR {records[0].fpir_target:.1%}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(
    records: Sequence[Calibration],
    scores: Mapping[Key, SearchScores],
    old: Mapping[str, float],
    skipped: Sequence[str],
    docs: Path,
) -> list[Path]:
    """``calibration.md`` (:func:`markdown`) and ``calibration.png`` (:func:`plot`) in
    ``docs``; returns the files written."""
    docs.mkdir(parents=True, exist_ok=True)
    text = docs / "calibration.md"
    text.write_text(markdown(records, scores, old, skipped), encoding="utf-8")
    image = docs / "calibration.png"
    plot(records, scores, image)
    return [text, image] if image.is_file() else [text]
