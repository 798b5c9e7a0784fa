"""Clusterer ``faiss``: FAISS k-means (the IVF coarse quantiser's trainer), capped sizes."""

from __future__ import annotations

import numpy as np

from frip_engine.contracts import Clusterer, Register, Requirement
from frip_engine.hookspecs import hookimpl
from frip_plugins.clusterers._common import CappedClusterer


class FaissClusterer(CappedClusterer):
    name = "faiss"

    def fit(self, embeddings: np.ndarray, k: int) -> np.ndarray:
        import faiss

        data = np.ascontiguousarray(embeddings, dtype=np.float32)
        kmeans = faiss.Kmeans(data.shape[1], k, niter=25, seed=self.seed, spherical=True)
        kmeans.train(data)
        return np.asarray(kmeans.centroids, dtype=np.float64)


@hookimpl
def register_clusterers(register: Register[Clusterer]) -> None:
    register(
        "faiss",
        FaissClusterer,
        summary="FAISS spherical k-means partitions, capped size, top-p routing",
        requires=(Requirement("faiss", "faiss-cpu"),),
    )
