"""The protection and clusterer suites: shapes, finiteness and the engine's invariants."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pytest

from frip_engine.contracts import Clusterer, Protection
from frip_engine.pemiu import PemiuTemplate
from frip_engine.testing.adapter import unit_vectors
from frip_engine.testing.base import Conformance


class ProtectionConformance(Conformance):
    """Bound to an extractor of ``dimension``, a protection turns a unit vector into a
    finite template of ``output_dimension`` (a plain array or a PemiuTemplate), gallery
    and probe alike, in the probe mode it declares."""

    kind: ClassVar[str] = "protection"
    dimension: ClassVar[int] = 512

    @pytest.fixture
    def protection(self) -> Any:
        made = self.make()
        assert isinstance(made, Protection), "the component does not satisfy Protection"
        made.bind("arcface", self.dimension)
        return made

    def test_templates_are_finite_and_of_the_output_dimension(self, protection: Any) -> None:
        assert protection.probe_mode in ("plain", "pe-miu"), (
            f"probe_mode {protection.probe_mode!r}: 'plain' or 'pe-miu'"
        )
        size = protection.output_dimension(self.dimension)
        for vector in unit_vectors(3, self.dimension):
            for made in (protection.protect(vector), protection.protect_probe(vector)):
                values = made.vector if isinstance(made, PemiuTemplate) else np.asarray(made)
                assert values.shape == (size,), (
                    f"template shape {values.shape}, output_dimension {size}"
                )
                assert np.all(np.isfinite(values)), "the template has NaN or infinite values"
                if protection.probe_mode == "pe-miu":
                    assert isinstance(made, PemiuTemplate), (
                        f"probe_mode pe-miu, but a {type(made).__name__}, not a PemiuTemplate"
                    )
                    assert made.block_size == protection.probe_block_size, (
                        f"template block size {made.block_size}, probe_block_size "
                        f"{protection.probe_block_size}"
                    )


class ClustererConformance(Conformance):
    """A routed clusterer fits ``k`` finite centroids of the templates' dimension and
    routes to at least one partition; an unrouted one fits nothing."""

    kind: ClassVar[str] = "clusterer"

    def test_declared_sizes_are_sensible(self) -> None:
        clusterer = self.make()
        assert isinstance(clusterer, Clusterer), "the component does not satisfy Clusterer"
        assert isinstance(clusterer.routed, bool), f"routed {clusterer.routed!r}: a bool"
        assert clusterer.max_size is None or clusterer.max_size >= 1, (
            f"max_size {clusterer.max_size!r}: None or at least 1"
        )
        assert 0.0 < float(clusterer.fill) <= 1.0, f"fill {clusterer.fill!r}: in (0, 1]"
        assert clusterer.probe_clusters is None or clusterer.probe_clusters >= 1, (
            f"probe_clusters {clusterer.probe_clusters!r}: None or at least 1"
        )

    def test_a_routed_clusterer_fits_k_finite_centroids(self) -> None:
        clusterer = self.make()
        if not clusterer.routed:
            pytest.skip(f"{clusterer.name} is not routed: the engine never calls fit")
        templates = unit_vectors(60, 32, seed=4)
        centroids = np.asarray(clusterer.fit(templates, 3))
        assert centroids.shape == (3, 32), f"fit(60 x 32 templates, 3) gave {centroids.shape}"
        assert np.all(np.isfinite(centroids)), "the centroids have NaN or infinite values"
