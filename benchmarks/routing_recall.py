"""Routing recall of clustered search on lfw-dev plus fitted distractors (plaintext, offline).

Why clustered search cannot keep exhaustive accuracy at a 4x speed-up here: for every
mated probe that exhaustive search gets right, is its mate's cluster among the probe's
top-p clusters? Routed by centroid (what the engine does) and, to test whether a finer
router helps, by the best of S sub-centroids per cluster (k-means inside each cluster).
A speed-up of 4x over 25 one-block clusters means p <= 6; keeping rank-1 within 0.5
points of exhaustive needs a recall of about 0.995.

    python benchmarks/routing_recall.py [--registrants 100000] [--data ../shared/data/lfw-dev]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from frip_eval.data import distractors, lfw_split
from frip_eval.evaluation import cosine_searches
from frip_eval.threads import pin_threads
from rich.console import Console
from rich.table import Table

FAN_OUTS = (1, 2, 4, 6, 8, 12, 16)


def _unit(rows: np.ndarray) -> np.ndarray:
    return np.asarray(rows / np.linalg.norm(rows, axis=1, keepdims=True), dtype=np.float32)


def _kmeans(rows: np.ndarray, k: int, seed: int) -> np.ndarray:
    import faiss

    model = faiss.Kmeans(rows.shape[1], k, niter=20, spherical=True, seed=seed, verbose=False)
    model.cp.min_points_per_centroid = 1  # sub-clusters of a few thousand points are fine
    model.train(np.ascontiguousarray(rows, dtype=np.float32))
    return _unit(model.centroids)


def _recall(cluster_scores: np.ndarray, mate_cluster: np.ndarray) -> list[float]:
    order = np.argsort(-cluster_scores, axis=1)
    return [float(np.mean((order[:, :p] == mate_cluster[:, None]).any(axis=1))) for p in FAN_OUTS]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registrants", type=int, default=100_000)
    parser.add_argument("--clusters", type=int, nargs="+", default=[25, 31])
    parser.add_argument("--subs", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--data", type=Path, default=None)
    args = parser.parse_args()
    pin_threads()
    console = Console()
    lfw = lfw_split(args.data, console)
    mated = [i for i, who in enumerate(lfw.truth) if who is not None]
    gallery = _unit(
        np.vstack([lfw.gallery, distractors(lfw.everything, args.registrants - len(lfw.ids), 7)])
    )
    probes = _unit(lfw.probes[mated])
    slot = {k: i for i, k in enumerate(lfw.ids)}
    truth = np.array([slot[lfw.truth[i]] for i in mated])
    exhaustive = cosine_searches(gallery, probes, truth, probes[:0])
    console.print(f"exhaustive rank-1 {exhaustive.rank1:.4f} over {len(truth)} mated probes")
    right = exhaustive.top1_hit
    probes, truth = probes[right], truth[right]
    table = Table(title=f"routing recall at N={args.registrants:,} (exhaustive hits only)")
    for column in ("clusters", "router", *(f"p={p}" for p in FAN_OUTS)):
        table.add_column(column)
    for k in args.clusters:
        centroids = _kmeans(gallery, k, seed=1)
        member = np.argmax(gallery @ centroids.T, axis=1)
        rows = [("centroid", probes @ centroids.T)]
        for subs in args.subs:
            best = np.full((len(probes), k), -np.inf, dtype=np.float32)
            for c in range(k):
                inside = gallery[member == c]
                if len(inside):
                    sub = _kmeans(inside, min(subs, len(inside)), seed=2)
                    best[:, c] = (probes @ sub.T).max(axis=1)
            rows.append((f"best of {subs} subs", best))
        for router, scores in rows:
            table.add_row(str(k), router, *(f"{r:.3f}" for r in _recall(scores, member[truth])))
    console.print(table)


if __name__ == "__main__":
    main()
