"""Cluster routing: which partitions a probe is searched in, and where a template goes.

The state is one centroid sum and one size per cluster. Sums are aggregates of faces, so
the state is sealed at rest (AES-256-GCM under a routing key kept in the key store) and
opened only in the trusted key service and during enrolment, when the plaintext
templates exist anyway. Sums are updated additively at enrolment and erasure, so
centroids track their members without ever decrypting the gallery.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from frip_engine.contracts import Clusterer
from frip_engine.errors import ProfileError, StoreError


@dataclass
class RouterState:
    sums: np.ndarray  # (clusters, dimension)
    counts: np.ndarray  # (clusters,) registrants per cluster
    extractor: str

    @property
    def clusters(self) -> int:
        return int(self.counts.shape[0])

    def centroids(self) -> np.ndarray:
        """Unit-length centroid directions (spherical k-means); empty clusters are zero."""
        norms = np.linalg.norm(self.sums, axis=1, keepdims=True)
        out = np.zeros_like(self.sums)
        np.divide(self.sums, norms, out=out, where=norms > 0)
        return out

    def route(self, probe: np.ndarray, probe_clusters: int | None) -> list[int]:
        """The ``probe_clusters`` non-empty clusters most similar to the probe (None = all)."""
        live = np.flatnonzero(self.counts > 0)
        if probe_clusters is not None and probe_clusters < live.size:
            similarity = self.centroids()[live] @ probe
            live = live[np.argsort(-similarity, kind="stable")[:probe_clusters]]
        return [int(c) for c in live]

    def add(self, cluster: int, rows: np.ndarray, sign: int = 1) -> None:
        self.sums[cluster] += sign * rows.sum(axis=0)
        self.counts[cluster] += sign * rows.shape[0]

    def remove(self, cluster: int, row: np.ndarray) -> None:
        self.sums[cluster] -= row
        self.counts[cluster] -= 1
        if self.counts[cluster] == 0:
            self.sums[cluster] = 0.0  # no rounding residue of erased faces stays behind

    def wipe(self) -> None:
        self.sums.fill(0.0)

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez(buffer, sums=self.sums, counts=self.counts, extractor=np.array(self.extractor))
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> RouterState:
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as saved:
                return cls(
                    np.array(saved["sums"], dtype=np.float64),
                    np.array(saved["counts"], dtype=np.int64),
                    str(saved["extractor"]),
                )
        except (ValueError, KeyError, OSError) as exc:
            raise StoreError(f"routing state is unreadable: {exc}") from exc

    def check(self, dimension: int, extractor: str) -> None:
        if self.sums.shape[1] != dimension or self.extractor != extractor:
            raise ProfileError(
                f"the cluster model was built for {self.sums.shape[1]}-d '{self.extractor}' "
                f"templates; this engine makes {dimension}-d '{extractor}' ones"
            )


def balanced_assign(templates: np.ndarray, centroids: np.ndarray, room: np.ndarray) -> np.ndarray:
    """Nearest cluster with room for each template; -1 where every cluster is full.

    Pairs are taken most-similar first, so a full cluster turns away the templates that
    fit it least, and they go to their next-nearest cluster with room.
    """
    room = room.copy()
    assignment = np.full(templates.shape[0], -1, dtype=np.int64)
    if centroids.shape[0] == 0 or templates.shape[0] == 0:
        return assignment
    similarity = templates @ centroids.T
    order = np.argsort(-similarity, axis=None, kind="stable")
    rows, cols = np.unravel_index(order, similarity.shape)
    left = templates.shape[0]
    for row, col in zip(rows.tolist(), cols.tolist(), strict=True):
        if assignment[row] < 0 and room[col] > 0:
            assignment[row] = col
            room[col] -= 1
            left -= 1
            if left == 0:
                break
    return assignment


def plan(
    state: RouterState | None,
    templates: np.ndarray,
    clusterer: Clusterer,
    max_size: int,
    extractor: str,
) -> tuple[RouterState, np.ndarray]:
    """Assign new templates to clusters, founding new clusters for what does not fit.

    Returns the state grown by any new (still empty) clusters, and each template's
    cluster. The caller adds the templates to the state as their blocks commit.
    """
    dimension = templates.shape[1]
    if state is None:
        state = RouterState(np.zeros((0, dimension)), np.zeros(0, dtype=np.int64), extractor)
    room = np.maximum(max_size - state.counts, 0)
    assignment = balanced_assign(templates, state.centroids(), room)
    overflow = np.flatnonzero(assignment < 0)
    if overflow.size:
        fill = float(clusterer.fill)
        wanted = clusterer.clusters if state.clusters == 0 else None
        k = wanted or int(np.ceil(overflow.size / max(1.0, fill * max_size)))
        distinct = np.unique(templates[overflow], axis=0).shape[0]
        k = max(1, min(int(k), distinct))  # never more clusters than distinct templates
        centroids = clusterer.fit(templates[overflow], k)
        centroids = centroids / np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
        if k * max_size < overflow.size:
            raise ProfileError(
                f"clusters={k} of at most {max_size} cannot hold {overflow.size} registrants"
            )
        extra = balanced_assign(templates[overflow], centroids, np.full(k, max_size))
        assignment[overflow] = extra + state.clusters
        state = RouterState(
            np.vstack([state.sums, np.zeros((k, dimension))]),
            np.concatenate([state.counts, np.zeros(k, dtype=np.int64)]),
            state.extractor,
        )
    return state, assignment
