"""PE-MIU template protection (Terhoerst et al. 2020), core side.

A template of dimension ``d`` is cut into ``d / block_size`` blocks that are shuffled by a
fresh permutation per template, drawn from the operating system's CSPRNG
(``secrets.SystemRandom``). Two protected templates are compared by first assigning each
probe block to one reference block, one-to-one, minimising the summed squared Euclidean
block distances (the Hungarian method: ``scipy.optimize.linear_sum_assignment``), then
taking the cosine similarity of the re-ordered probe and the reference. Squared distances
|p_i|^2 + |r_k|^2 - 2<p_i, r_k> summed over a one-to-one assignment always include every
block norm once, so the optimal assignment is the one maximising the summed block inner
products: the comparison needs only the block-pair inner products, which is what an
encrypted gallery can compute (the ``pe-miu`` probe mode of the CKKS backends).

The *permutation complexity* of a protected template is the number of blocks the
permutation moved. ``min_complexity`` (default: every block) rejects permutations that
move fewer blocks; rejection of uniform permutations keeps the accepted ones uniform over
the allowed set (for derangements, about e ~ 2.72 draws per template).

scipy is imported inside the functions that need it, so importing this module is cheap.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from random import Random

import numpy as np

from frip_engine.errors import EmbeddingError, InputError

MAX_DRAWS = 100_000  # a guard only: min_complexity <= blocks always succeeds long before


@dataclass(frozen=True)
class PemiuTemplate:
    """A PE-MIU protected template and the metadata needed to compare it safely.

    ``vector`` holds the permuted blocks (the permutation itself is discarded, never
    stored); ``complexity`` is how many blocks moved. The type itself is the "protected"
    marker: protecting a ``PemiuTemplate`` again is refused.
    """

    vector: np.ndarray
    block_size: int
    extractor: str
    dimension: int
    complexity: int

    @property
    def blocks(self) -> int:
        return self.dimension // self.block_size


def check_block_size(block_size: int, dimension: int) -> int:
    """The number of blocks, or an InputError when ``block_size`` does not divide ``dimension``."""
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise InputError(f"pe-miu: block_size must be a positive integer, not {block_size!r}")
    if dimension % block_size:
        raise InputError(
            f"pe-miu: block_size {block_size} does not divide the template dimension {dimension}"
        )
    return dimension // block_size


def sample_permutation(blocks: int, min_complexity: int, rng: Random | None = None) -> list[int]:
    """A permutation of ``range(blocks)`` moving at least ``min_complexity`` blocks,
    uniform over all such permutations (rejection sampling of uniform shuffles)."""
    if not 0 <= min_complexity <= blocks:
        raise InputError(f"pe-miu: min_complexity must be in 0..{blocks}, not {min_complexity}")
    if blocks == 1 and min_complexity == 1:
        raise InputError("pe-miu: one block cannot move; use a smaller block_size")
    source = rng if rng is not None else secrets.SystemRandom()
    order = list(range(blocks))
    for _ in range(MAX_DRAWS):
        source.shuffle(order)
        if complexity(order) >= min_complexity:
            return order
    raise InputError(f"pe-miu: no permutation of {blocks} blocks moves {min_complexity} blocks")


def complexity(permutation: list[int] | np.ndarray) -> int:
    """How many blocks a permutation moves (positions that do not hold their own index)."""
    return int(sum(1 for i, p in enumerate(permutation) if int(p) != i))


def protect(
    embedding: np.ndarray | PemiuTemplate,
    block_size: int,
    extractor: str,
    min_complexity: int | None = None,
    rng: Random | None = None,
) -> PemiuTemplate:
    """Shuffle the blocks of one embedding with a fresh permutation; ``extractor`` names the
    model that made it, so templates of different models are never compared."""
    if isinstance(embedding, PemiuTemplate):
        raise InputError(
            "pe-miu: this template is already protected "
            f"(block_size {embedding.block_size}); protect the raw embedding once"
        )
    vector = np.asarray(embedding, dtype=np.float64)
    if vector.ndim != 1 or not vector.size:
        raise EmbeddingError(f"pe-miu: expected a 1-d embedding, got shape {vector.shape}")
    if not np.all(np.isfinite(vector)):
        raise EmbeddingError("pe-miu: the embedding is not finite")
    blocks = check_block_size(block_size, vector.size)
    wanted = blocks if min_complexity is None else min_complexity
    order = sample_permutation(blocks, wanted, rng)
    shuffled = vector.reshape(blocks, block_size)[order].reshape(-1).copy()
    return PemiuTemplate(shuffled, block_size, extractor, int(vector.size), complexity(order))


def check_comparable(probe: PemiuTemplate, reference: PemiuTemplate) -> None:
    for which, item in (("probe", probe), ("reference", reference)):
        if not isinstance(item, PemiuTemplate):
            raise InputError(f"pe-miu: the {which} is not a PE-MIU protected template")
    if probe.block_size != reference.block_size:
        raise InputError(
            f"pe-miu: probe block_size {probe.block_size} differs from the reference's "
            f"{reference.block_size}; protect both with the same block size"
        )
    if probe.extractor != reference.extractor or probe.dimension != reference.dimension:
        raise InputError(
            f"pe-miu: probe from extractor '{probe.extractor}' ({probe.dimension}-d) cannot be "
            f"compared with a reference from '{reference.extractor}' ({reference.dimension}-d)"
        )


def compare(probe: PemiuTemplate, reference: PemiuTemplate) -> float:
    """Block assignment by minimum summed Euclidean distance, then cosine similarity."""
    check_comparable(probe, reference)
    return float(compare_many(probe.vector[None], reference.vector[None], probe.block_size)[0])


def compare_many(probes: np.ndarray, references: np.ndarray, block_size: int) -> np.ndarray:
    """Row-wise PE-MIU scores of ``probes[i]`` against ``references[i]`` (both (n, d))."""
    n, d = probes.shape
    blocks = check_block_size(block_size, d)
    p = probes.reshape(n, blocks, block_size)
    r = references.reshape(n, blocks, block_size)
    scores = assigned_scores(np.einsum("nib,njb->nij", p, r))
    norms = np.linalg.norm(probes, axis=1) * np.linalg.norm(references, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(norms > 0, scores / np.where(norms > 0, norms, 1.0), 0.0)
    return np.asarray(out, dtype=np.float64)


def assigned_scores(products: np.ndarray) -> np.ndarray:
    """For each (blocks, blocks) matrix of block-pair inner products (probe block i,
    reference block k), the summed products of the optimal one-to-one assignment."""
    from scipy.optimize import linear_sum_assignment

    scores = np.empty(len(products))
    for n, matrix in enumerate(products):
        rows, cols = linear_sum_assignment(matrix, maximize=True)
        scores[n] = matrix[rows, cols].sum()
    return scores


def stored_vector(template: np.ndarray | PemiuTemplate) -> np.ndarray:
    """What a gallery encrypts for a protected template: its (shuffled) values."""
    return template.vector if isinstance(template, PemiuTemplate) else template
