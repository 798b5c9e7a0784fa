"""Protection ``pe-miu``: block permutation with a fresh CSPRNG permutation per template.

Templates are split into ``block_size`` blocks and shuffled (Terhoerst et al. 2020); a
comparison assigns probe blocks to reference blocks (``linear_sum_assignment`` on block
distances) and takes the cosine similarity. Both ``protect`` and ``protect_probe`` return a
typed :class:`frip_engine.pemiu.PemiuTemplate` carrying block size, extractor, dimension and
permutation complexity; ``compare`` refuses templates of another block size or extractor
and a template is never protected twice. The extractor name is the engine's: ``bind`` sets
it when the profile is built, and refuses a ``[protection] extractor`` naming another
model. Under HE (probe mode ``pe-miu`` of the packed CKKS backends) the matcher computes
every block-pair inner product of the shuffled probe against the encrypted gallery and the
key service solves the assignment per registrant.
"""

from __future__ import annotations

import numpy as np

from frip_engine import pemiu
from frip_engine.contracts import Protection, Register
from frip_engine.errors import InputError, ProfileError
from frip_engine.hookspecs import hookimpl
from frip_engine.pemiu import PemiuTemplate


class PemiuProtection:
    name = "pe-miu"
    probe_mode = "pe-miu"

    def __init__(
        self, block_size: int = 32, min_complexity: int | None = None, extractor: str | None = None
    ) -> None:
        pemiu.check_block_size(block_size, block_size)  # a positive integer
        if min_complexity is not None and (
            isinstance(min_complexity, bool) or not isinstance(min_complexity, int)
        ):
            raise InputError(f"pe-miu: min_complexity must be an integer, not {min_complexity!r}")
        if min_complexity is not None and min_complexity < 0:
            raise InputError(f"pe-miu: min_complexity must be >= 0, not {min_complexity}")
        self.block_size = block_size
        self.min_complexity = min_complexity  # None: every block moves (a derangement)
        self.extractor = extractor  # None until bound to an engine's extractor

    @property
    def probe_block_size(self) -> int:
        return self.block_size

    def bind(self, extractor: str, dimension: int) -> None:
        """Record the engine's extractor in every template to come; a profile whose
        ``[protection] extractor`` names another model, or whose block size does not fit
        the dimension, is refused before any template exists."""
        if self.extractor is not None and self.extractor != extractor:
            raise ProfileError(
                f"pe-miu: extractor = '{self.extractor}' but the engine's extractor is "
                f"'{extractor}'; templates would carry the wrong model's name"
            )
        try:
            self.output_dimension(dimension)
        except InputError as exc:
            raise ProfileError(str(exc)) from exc
        self.extractor = extractor

    def output_dimension(self, dimension: int) -> int:
        blocks = pemiu.check_block_size(self.block_size, dimension)
        if blocks < 2:
            raise InputError(
                f"pe-miu: block_size {self.block_size} makes the {dimension}-d template one "
                "block, and one block cannot move; use a smaller block_size"
            )
        if self.min_complexity is not None and self.min_complexity > blocks:
            raise InputError(
                f"pe-miu: min_complexity {self.min_complexity} exceeds the {blocks} blocks"
            )
        return dimension

    def protect(self, embedding: np.ndarray | PemiuTemplate) -> PemiuTemplate:
        if self.extractor is None:
            raise ProfileError(
                "pe-miu: no extractor: build it from an engine profile, or pass extractor="
            )
        return pemiu.protect(embedding, self.block_size, self.extractor, self.min_complexity)

    def protect_probe(self, embedding: np.ndarray | PemiuTemplate) -> PemiuTemplate:
        """A probe gets its own fresh permutation, exactly like a reference."""
        return self.protect(embedding)

    def compare(self, probe: PemiuTemplate, reference: PemiuTemplate) -> float:
        return pemiu.compare(probe, reference)


@hookimpl
def register_protections(register: Register[Protection]) -> None:
    register(
        "pe-miu",
        PemiuProtection,
        summary="PE-MIU block permutation (Terhoerst et al. 2020); encrypted galleries score "
        "it in the pe-miu probe mode (packed layout)",
    )
