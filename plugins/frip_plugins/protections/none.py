"""Protection ``none``: the template goes to the HE backend as extracted."""

from __future__ import annotations

import numpy as np

from frip_engine.contracts import Protection, Register
from frip_engine.hookspecs import hookimpl


class NoProtection:
    name = "none"
    probe_mode = "plain"
    probe_block_size = None

    def bind(self, extractor: str, dimension: int) -> None:
        """Nothing to fit: the template stays as the extractor made it."""

    def output_dimension(self, dimension: int) -> int:
        return dimension

    def protect(self, embedding: np.ndarray) -> np.ndarray:
        return embedding

    def protect_probe(self, embedding: np.ndarray) -> np.ndarray:
        return embedding


@hookimpl
def register_protections(register: Register[Protection]) -> None:
    register("none", NoProtection, summary="no template protection (CKKS still hides templates)")
