"""Clusterer ``single``: one partition, every probe searches the whole gallery."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from frip_engine.hookspecs import hookimpl


class SinglePartition:
    name = "single"

    def assign(self, embeddings: np.ndarray) -> list[int]:
        return [0] * len(embeddings)

    def route(self, probe: np.ndarray, partitions: Sequence[int]) -> list[int]:
        return list(partitions)


@hookimpl
def register_clusterers(register: Any) -> None:
    register("single", SinglePartition, summary="one partition: exhaustive search")
