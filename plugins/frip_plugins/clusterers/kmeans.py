"""Clusterer ``kmeans``: scikit-learn k-means on the enrolment batch, capped cluster sizes."""

from __future__ import annotations

import numpy as np

from frip_engine.contracts import Clusterer, Register, Requirement
from frip_engine.hookspecs import hookimpl
from frip_plugins.clusterers._common import CappedClusterer


class KMeansClusterer(CappedClusterer):
    name = "kmeans"

    def fit(self, embeddings: np.ndarray, k: int) -> np.ndarray:
        from sklearn.cluster import KMeans

        model = KMeans(n_clusters=k, n_init=3, random_state=self.seed)
        model.fit(embeddings)
        return np.asarray(model.cluster_centers_, dtype=np.float64)


@hookimpl
def register_clusterers(register: Register[Clusterer]) -> None:
    register(
        "kmeans",
        KMeansClusterer,
        summary="scikit-learn k-means partitions, capped size, top-p routing",
        requires=(Requirement("sklearn", "scikit-learn"),),
    )
