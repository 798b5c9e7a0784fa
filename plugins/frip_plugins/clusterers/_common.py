"""What the k-means clusterers share: parameters, their checks, and the paper preset."""

from __future__ import annotations

from frip_engine.errors import ProfileError

PAPER_MAX_SIZE = 120  # the source paper's cap: 120 registrants per cluster


class CappedClusterer:
    """Base for routed clusterers: a size cap, a fill target and the probe fan-out p."""

    name = ""
    routed = True

    def __init__(
        self,
        max_size: int | str | None = None,
        probe_clusters: int | str = 2,
        fill: float = 0.8,
        clusters: int | None = None,
        seed: int = 0,
    ) -> None:
        self.max_size: int | None = None  # None: one packed block
        if max_size is not None:
            if max_size == "paper":
                max_size = PAPER_MAX_SIZE
            if not isinstance(max_size, int) or max_size < 1:
                raise ProfileError(f"{self.name}: max_size must be a positive integer or 'paper'")
            self.max_size = max_size
        self.probe_clusters: int | None = None  # None ("all"): every partition
        if probe_clusters != "all":
            if not isinstance(probe_clusters, int) or probe_clusters < 1:
                raise ProfileError(f"{self.name}: probe_clusters must be an integer >= 1 or 'all'")
            self.probe_clusters = probe_clusters
        if not 0.1 <= fill <= 1.0:
            raise ProfileError(f"{self.name}: fill must be between 0.1 and 1")
        if clusters is not None and (not isinstance(clusters, int) or clusters < 1):
            raise ProfileError(f"{self.name}: clusters must be a positive integer")
        self.fill = fill
        self.clusters = clusters
        self.seed = seed
