"""Clusterer ``single``: one partition, every probe searches the whole gallery."""

from __future__ import annotations

from typing import Any

from frip_engine.hookspecs import hookimpl


class SinglePartition:
    name = "single"
    routed = False
    probe_clusters = None


@hookimpl
def register_clusterers(register: Any) -> None:
    register("single", SinglePartition, summary="one partition: exhaustive search")
