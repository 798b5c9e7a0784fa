"""An extractor that returns vectors of norm 3 and finds a face in anything."""

from __future__ import annotations

from typing import Any

import numpy as np

from frip_engine.contracts import Extraction, ModelFile
from frip_engine.testing import ExtractorConformance


class LongVectors:
    name = "long"
    dimension = 64
    threshold = 0.3
    same_person_floor = 0.1

    def models(self) -> list[ModelFile]:
        return []

    def extract(self, image: np.ndarray) -> Extraction:
        vector = np.random.default_rng(int(image.sum()) % 1000).standard_normal(64)
        return Extraction(3 * vector / np.linalg.norm(vector), 1, (0, 0, 1, 1), 0.9)


class TestLongVectors(ExtractorConformance):
    def make(self, **overrides: Any) -> Any:
        return LongVectors()
