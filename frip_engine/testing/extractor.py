"""The extractor suite: what the engine relies on from ``Extractor.extract``."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pytest

from frip_engine.contracts import Extraction, Extractor
from frip_engine.errors import NoFaceError
from frip_engine.testing.base import Conformance, refused


class ExtractorConformance(Conformance):
    """An extractor returns a finite unit vector of its declared dimension for a real
    face, the same one every time, and raises NoFaceError (an InputError, exit 2) for an
    image without a face. ``unit_tolerance``: how far from 1 the norm may be."""

    kind: ClassVar[str] = "extractor"
    unit_tolerance: ClassVar[float] = 1e-3

    @pytest.fixture(scope="class")
    @classmethod
    def extractor(cls) -> Any:
        """One instance per class: models load once."""
        made = cls().make()
        assert isinstance(made, Extractor), "the component does not satisfy Extractor"
        return made

    def test_declares_a_dimension_and_thresholds(self, extractor: Any) -> None:
        dimension = extractor.dimension
        assert isinstance(dimension, int) and dimension > 0, (
            f"dimension {dimension!r}: a positive int"
        )
        threshold, floor = float(extractor.threshold), float(extractor.same_person_floor)
        assert -1.0 <= threshold <= 1.0, f"threshold {threshold}: a cosine in [-1, 1]"
        assert -1.0 <= floor <= 1.0, f"same_person_floor {floor}: a cosine in [-1, 1]"
        models = extractor.models()
        assert isinstance(models, list), f"models() returned {type(models).__name__}, not a list"

    def test_a_face_gives_a_finite_unit_vector_of_its_dimension(
        self, extractor: Any, frip_face_image: np.ndarray
    ) -> None:
        extraction = extractor.extract(frip_face_image.copy())
        assert isinstance(extraction, Extraction), (
            f"extract returned {type(extraction).__name__}, not an Extraction"
        )
        vector = np.asarray(extraction.embedding)
        assert vector.shape == (extractor.dimension,), (
            f"embedding shape {vector.shape}, declared dimension {extractor.dimension}"
        )
        assert np.issubdtype(vector.dtype, np.floating), f"embedding dtype {vector.dtype}"
        assert np.all(np.isfinite(vector)), "the embedding has NaN or infinite values"
        norm = float(np.linalg.norm(vector))
        assert abs(norm - 1.0) <= self.unit_tolerance, f"embedding norm {norm}, not 1"
        assert extraction.faces_found >= 1, f"faces_found {extraction.faces_found} for a face"

    def test_extraction_is_deterministic(self, extractor: Any, frip_face_image: np.ndarray) -> None:
        first = np.asarray(extractor.extract(frip_face_image.copy()).embedding)
        second = np.asarray(extractor.extract(frip_face_image.copy()).embedding)
        assert np.allclose(first, second, atol=1e-6), "two extractions of one image differ"

    def test_an_image_without_a_face_is_refused_with_no_face_error(
        self, extractor: Any, frip_blank_image: np.ndarray
    ) -> None:
        with refused(NoFaceError, "extracting from a blank grey image"):
            extractor.extract(frip_blank_image.copy())
