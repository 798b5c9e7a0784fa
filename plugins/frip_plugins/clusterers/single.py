"""Clusterer ``single``: one partition, every probe searches the whole gallery."""

from __future__ import annotations

import numpy as np

from frip_engine.contracts import Clusterer, Register
from frip_engine.errors import ProfileError
from frip_engine.hookspecs import hookimpl


class SinglePartition:
    """Not routed: the engine packs blocks to the matcher's slots and never calls ``fit``."""

    name = "single"
    routed = False
    probe_clusters: int | None = None
    max_size: int | None = None
    fill = 1.0
    clusters: int | None = None

    def fit(self, embeddings: np.ndarray, k: int) -> np.ndarray:
        raise ProfileError("clusterer 'single' keeps one partition and fits no centroids")


@hookimpl
def register_clusterers(register: Register[Clusterer]) -> None:
    register("single", SinglePartition, summary="one partition: exhaustive search")
