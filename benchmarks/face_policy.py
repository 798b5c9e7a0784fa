"""Which face to use when a photo holds several, and how unlike two photos of one person get.

    python benchmarks/face_policy.py                     # lfw-large, arcface sface facenet
    python benchmarks/face_policy.py -e sface --limit 500
    python benchmarks/face_policy.py --combine a/face-policy.json b/face-policy.json

Every face the detector finds in every photo is embedded once; each selection policy
(``largest``, ``central``, ``insightface``) then picks one face per photo, and is scored by
what the pick does to recognition over the whole set:

- ``rank1``: closed-set identification, leave one out: each photo of a person with at
  least two photos is a probe against one mean template per person (its own person's
  template built from the person's other photos);
- ``genuine_mean`` and ``tar``: the mean genuine-pair cosine, and the share of genuine
  pairs at or above the extractor's threshold;
- ``bystander``: among photos with several faces (of people with other photos), the share
  where the policy picked a face other than the one most like the person's other photos.

The default policy is the one with the best mean rank-1 over the extractors (then genuine
mean; ties go to ``insightface``, the field's rule, then ``largest``). The same run
calibrates each extractor's ``same_person_floor`` (issue 13 item 11): the 0.1% quantile
of the genuine-pair cosine under the chosen policy, with the share of impostor pairs that
fall below it.

Threads are pinned (default 1) before numpy and onnxruntime start. Detection runs on the
photo as given (``orientation = 'as-is'``: LFW photos are upright). Writes
``docs/face-policy.json`` and ``docs/face-policy.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

POLICIES = ("largest", "central", "insightface")
TIE_ORDER = ("central", "largest", "insightface")  # last wins a tie
FLOOR_QUANTILE = 0.001
HEADER = ("threads", "machine")  # what must match to combine runs
REPO = Path(__file__).resolve().parents[1]


def faces_of(extractor: Any, image: Any) -> tuple[list[Any], Any]:
    """Every face in a photo and their unit embeddings (n, d), in the detector's order."""
    import numpy as np
    from frip_plugins.extractors._common import l2_normalise

    faces = extractor.detect(image)
    if not faces:
        return [], np.empty((0, extractor.dimension))
    crops = np.stack([extractor.crop(image, face) for face in faces])
    rows = [
        np.asarray(extractor.embed(crops[i : i + extractor.batch_size]), dtype=np.float64)
        for i in range(0, len(crops), extractor.batch_size)
    ]
    return faces, l2_normalise(np.vstack(rows))


def measure(name: str, paths: list[Path], labels: list[str], threads: int) -> dict[str, Any]:
    """Embed every face of every photo with one extractor and score each policy."""
    import numpy as np
    from frip_plugins.extractors._common import select_face

    from frip_engine import plugins
    from frip_engine.errors import FripError
    from frip_engine.images import load_image

    extractor = plugins.create("extractor", name, threads=threads, orientation="as-is")
    extractor.load()
    started = time.perf_counter()
    picks: dict[str, list[int]] = {p: [] for p in POLICIES}
    embedded: list[Any] = []
    kept: list[int] = []
    for index, path in enumerate(paths):
        try:
            image = load_image(path)
            faces, vectors = faces_of(extractor, image)
        except FripError:
            continue
        if not faces:
            continue
        kept.append(index)
        embedded.append(vectors)
        for policy in POLICIES:
            chosen, _ = select_face(faces, image.shape, policy)
            picks[policy].append(next(i for i, f in enumerate(faces) if f is chosen))
    seconds = time.perf_counter() - started
    people = np.asarray([labels[i] for i in kept])
    names, person = np.unique(people, return_inverse=True)
    several = [len(v) > 1 for v in embedded]
    result: dict[str, Any] = {
        "images": len(paths),
        "with_a_face": len(kept),
        "with_several_faces": int(sum(several)),
        "threshold": float(extractor.threshold),
        "seconds": round(seconds, 1),
        "policies": {},
    }
    for policy in POLICIES:
        matrix = np.stack([v[k] for v, k in zip(embedded, picks[policy], strict=True)])
        result["policies"][policy] = score_policy(
            matrix, person, len(names), embedded, picks[policy], several, extractor.threshold
        )
    result["disagreements"] = {
        f"{a}/{b}": int(sum(x != y for x, y in zip(picks[a], picks[b], strict=True)))
        for i, a in enumerate(POLICIES)
        for b in POLICIES[i + 1 :]
    }
    return result


def score_policy(
    matrix: Any,
    person: Any,
    people: int,
    embedded: list[Any],
    picks: list[int],
    several: list[bool],
    threshold: float,
) -> dict[str, Any]:
    """Rank-1, genuine scores, the same-person floor and bystander picks for one policy."""
    import numpy as np

    counts = np.bincount(person, minlength=people)
    sums = np.zeros((people, matrix.shape[1]))
    np.add.at(sums, person, matrix)
    probes = np.nonzero(counts[person] >= 2)[0]
    norms = np.linalg.norm(sums, axis=1)
    scores = matrix[probes] @ sums.T / np.maximum(norms, 1e-12)
    own = sums[person[probes]] - matrix[probes]  # each probe's person without the probe
    own_scores = np.einsum("ij,ij->i", own, matrix[probes])
    scores[np.arange(len(probes)), person[probes]] = own_scores / np.maximum(
        np.linalg.norm(own, axis=1), 1e-12
    )
    hits = int(np.sum(np.argmax(scores, axis=1) == person[probes]))
    crowded = [k for k, i in enumerate(probes) if several[i]]
    wrong_face = sum(
        int(np.argmax(embedded[probes[k]] @ own[k])) != picks[probes[k]] for k in crowded
    )
    cosines = matrix @ matrix.T
    upper = np.triu_indices(len(matrix), k=1)
    same = person[upper[0]] == person[upper[1]]
    genuine, impostor = cosines[upper][same], cosines[upper][~same]
    floor = float(np.quantile(genuine, FLOOR_QUANTILE))
    return {
        "probes": len(probes),
        "rank1": round(hits / max(len(probes), 1), 5),
        "genuine_pairs": len(genuine),
        "genuine_mean": round(float(genuine.mean()), 5),
        "tar": round(float(np.mean(genuine >= threshold)), 5),
        "genuine_quantiles": {
            str(q): round(float(np.quantile(genuine, q)), 4) for q in (0.0, 0.001, 0.005, 0.01)
        },
        "same_person_floor": round(floor, 2),
        "impostor_pairs": len(impostor),
        "impostors_below_floor": round(float(np.mean(impostor < round(floor, 2))), 5),
        "crowded_probes": len(crowded),
        "bystander": round(wrong_face / max(len(crowded), 1), 5),
    }


def choose(results: dict[str, Any]) -> str:
    """The policy with the best mean rank-1, then mean genuine score; ties go to the field's
    rule (``insightface``), then ``largest``."""

    def merit(policy: str) -> tuple[float, float, int]:
        entries = [r["policies"][policy] for r in results.values()]
        rank1 = sum(e["rank1"] for e in entries) / len(entries)
        genuine = sum(e["genuine_mean"] for e in entries) / len(entries)
        return round(rank1, 6), round(genuine, 6), TIE_ORDER.index(policy)

    return max(POLICIES, key=merit)


def markdown(summary: dict[str, Any]) -> str:
    chosen = summary["chosen"]
    lines = [
        "# Face selection policy and the same-person floor",
        "",
        f"Measured by `python benchmarks/face_policy.py`, {summary['threads']} thread(s), "
        f"{summary['machine']}: "
        + "; ".join(
            f"{n} on {e['dataset']} ({e['images']} photos, {e['identities']} people)"
            for n, e in summary["extractors"].items()
        )
        + ". Detection on the photos as given; every face in every photo embedded once, "
        "then each policy picks one.",
        "",
        "## Which face (issue 13 item 10)",
        "",
        "`rank1`: leave-one-out closed-set identification against one mean template per "
        "person; `genuine mean` / `TAR`: genuine-pair cosine and the share at or above the "
        "extractor's threshold; `bystander`: share of several-face probes where the policy "
        "picked a face other than the one most like the person's other photos.",
        "",
        "| extractor | policy | rank-1 | genuine mean | TAR | bystander | several-face probes |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, entry in summary["extractors"].items():
        for policy in POLICIES:
            e = entry["policies"][policy]
            lines.append(
                f"| {name} | {policy} | {e['rank1']:.4f} | {e['genuine_mean']:.4f} | "
                f"{e['tar']:.4f} | {e['bystander']:.3f} | {e['crowded_probes']} |"
            )
    lines += [
        "",
        "Photos with several faces: "
        + ", ".join(
            f"{n} {e['with_several_faces']} of {e['with_a_face']}"
            for n, e in summary["extractors"].items()
        )
        + ". Photos where two policies pick different faces: "
        + "; ".join(
            f"{n} " + ", ".join(f"{k} {v}" for k, v in e["disagreements"].items())
            for n, e in summary["extractors"].items()
        )
        + ".",
        "",
        f'**Default: `select = "{chosen}"`** (best mean rank-1 over the extractors, then '
        "genuine mean; a tie goes to `insightface`, the field's rule, then `largest`). "
        "`select` in `[extractor]` changes it per engine; `single` refuses photos with "
        "several faces."
        + (
            " `central` and `insightface` pick the same faces on LFW, whose photos are "
            "centred on their subject; `insightface` also weighs size, so in a wider scene "
            "a small face near the centre does not beat the subject."
            if all(
                e["disagreements"]["central/insightface"] == 0
                for e in summary["extractors"].values()
            )
            else ""
        ),
        "",
        "## One person's photos: the same-person floor (issue 13 item 11)",
        "",
        f'Under `select = "{chosen}"`: the genuine-pair cosine\'s lowest quantiles, the '
        f"floor (its {FLOOR_QUANTILE:.1%} quantile, rounded to 0.01) and the share of "
        "impostor pairs below the floor, i.e. two people that enrolment under one subject "
        "refuses.",
        "",
        "| extractor | genuine pairs | min | 0.1% | 0.5% | 1% | floor | impostors below |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, entry in summary["extractors"].items():
        e = entry["policies"][chosen]
        q = e["genuine_quantiles"]
        lines.append(
            f"| {name} | {e['genuine_pairs']} | {q['0.0']:.3f} | {q['0.001']:.3f} | "
            f"{q['0.005']:.3f} | {q['0.01']:.3f} | {e['same_person_floor']:.2f} | "
            f"{e['impostors_below_floor']:.3f} |"
        )
    lines += [
        "",
        "A genuine pair below the floor is one photo in a thousand pairs of the same person "
        "(LFW's own label noise and extreme poses among them); enrolment then refuses the "
        "subject and names the two photos, and `same_person_floor` in `[extractor]` "
        "changes the bound (-1 turns the check off).",
        "",
    ]
    return "\n".join(lines)


def summarise(results: dict[str, Any], header: dict[str, Any]) -> dict[str, Any]:
    """The run's header, every extractor's figures, the chosen policy and the floors."""
    chosen = choose(results)
    floors = {n: r["policies"][chosen]["same_person_floor"] for n, r in results.items()}
    return {**header, "extractors": results, "chosen": chosen, "same_person_floor": floors}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/lfw-large")
    parser.add_argument("-e", "--extractor", action="append", help="default: all three")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--limit", type=int, default=None, help="first N photos only")
    parser.add_argument(
        "--min-photos", type=int, default=1, help="only people with at least this many photos"
    )
    parser.add_argument("--output", type=Path, default=REPO / "docs")
    parser.add_argument(
        "--combine", type=Path, nargs="+", help="merge runs of single extractors (JSON files)"
    )
    args = parser.parse_args(argv)
    for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[variable] = str(args.threads)  # before numpy's BLAS starts its pool

    if args.combine:
        runs = [json.loads(path.read_text()) for path in args.combine]
        header = {k: v for k, v in runs[0].items() if k in HEADER}
        if any({k: v for k, v in run.items() if k in HEADER} != header for run in runs):
            raise SystemExit("the runs differ in threads or machine")
        results = {}
        for run in runs:
            for name, entry in run["extractors"].items():
                for key in ("dataset", "identities"):  # older runs kept these at the top
                    entry.setdefault(key, run.get(key))
                results[name] = entry
        summary = summarise(results, header)
    else:
        import cv2
        from frip_eval.data import Dataset

        cv2.setNumThreads(args.threads)
        dataset = Dataset.load(index=args.data / "index.csv")
        counts = Counter(dataset.labels)
        rows = [
            (p, k)
            for p, k in zip(dataset.paths, dataset.labels, strict=True)
            if counts[k] >= args.min_photos
        ][: args.limit]
        paths, labels = [p for p, _ in rows], [k for _, k in rows]
        where = {
            "dataset": args.data.name
            + (f", people with {args.min_photos}+ photos" if args.min_photos > 1 else ""),
            "identities": len(set(labels)),
        }
        results = {
            name: {**where, **measure(name, paths, labels, args.threads)}
            for name in args.extractor or ["arcface", "sface", "facenet"]
        }
        machine = f"{platform.machine()}, {os.cpu_count()} cores"
        header = {"threads": args.threads, "machine": machine}
        summary = summarise(results, header)
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "face-policy.json").write_text(json.dumps(summary, indent=2) + "\n")
    (args.output / "face-policy.md").write_text(markdown(summary))
    print(markdown(summary))
    print(f"written: {args.output / 'face-policy.json'}, {args.output / 'face-policy.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
