"""Checking, normalising and reading embeddings: the one place a vector enters the engine."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from frip_engine.errors import EmbeddingError, SubjectError


def normalise(vector: object, dimension: int, what: str = "embedding") -> np.ndarray:
    """Return an L2-normalised float64 copy, or raise EmbeddingError saying what is wrong."""
    try:
        array = np.asarray(vector, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise EmbeddingError(f"{what} is not a numeric vector: {exc}") from exc
    if array.ndim != 1:
        raise EmbeddingError(f"{what} must be one vector, got shape {array.shape}")
    if array.shape[0] != dimension:
        raise EmbeddingError(
            f"{what} has dimension {array.shape[0]}, this engine expects {dimension}"
        )
    if not np.all(np.isfinite(array)):
        raise EmbeddingError(f"{what} contains NaN or infinite values")
    norm = float(np.linalg.norm(array))
    if norm < 1e-12:
        raise EmbeddingError(f"{what} has zero length and cannot be normalised")
    return array / norm


def mean_template(
    embeddings: Sequence[np.ndarray],
    labels: Sequence[str] | None = None,
    same_person_floor: float = -1.0,
) -> np.ndarray:
    """One template from several images of a subject: the normalised mean direction.

    ``embeddings``: unit vectors, float64 (d,), all from one extractor. ``labels`` name them
    in messages (default "embedding 1", ...). ``same_person_floor``: the lowest cosine two
    images of one person give; each extractor calibrates its own as the 0.1% quantile of
    the genuine-pair cosine on lfw-large (benchmarks/face_policy.py, docs/face-policy.md),
    so a same-person pair falls below it about once in a thousand pairs while most pairs
    of two different people do. -1 accepts any set.

    Returns the unit template, float64 (d,). Raises SubjectError naming the pairs (worst
    first) whose cosine is below the floor: a mean of two people matches neither of them,
    or both. Raises EmbeddingError when the embeddings cancel out.
    """
    matrix = np.stack([np.asarray(e, dtype=np.float64) for e in embeddings])
    if same_person_floor > -1.0:  # -1: no check (a cosine of -1 may round to just below)
        names = list(labels or [f"embedding {i}" for i in range(1, len(matrix) + 1)])
        cosines = matrix @ matrix.T
        first, second = np.triu_indices(len(matrix), k=1)
        apart = sorted(
            (float(cosines[i, j]), names[i], names[j])
            for i, j in zip(first, second, strict=True)
            if cosines[i, j] < same_person_floor
        )
        if apart:
            pairs = "; ".join(f"{a} and {b} have cosine {c:.2f}" for c, a, b in apart[:5])
            more = f" (and {len(apart) - 5} more pairs)" if len(apart) > 5 else ""
            raise SubjectError(
                f"these images are not one person: {pairs}{more}, below the extractor's "
                f"same_person_floor {same_person_floor:.2f} (one person's photos fall below "
                "it about once in a thousand pairs). Enrol them as different subjects or "
                "drop the wrong image; same_person_floor in [extractor] changes the bound"
            )
    mean = np.mean(matrix, axis=0)
    norm = float(np.linalg.norm(mean))
    if not np.isfinite(norm) or norm < 1e-6:
        raise EmbeddingError("the subject's embeddings cancel out: they cannot be one person")
    return np.asarray(mean / norm)


def read_embedding_file(path: Path, dimension: int) -> np.ndarray:
    """Read one embedding from .npy (1-d) or .json (a list of numbers)."""
    if not path.is_file():
        raise EmbeddingError(f"embedding file {path} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            data = np.load(path, allow_pickle=False)
        elif suffix == ".json":
            data = json.loads(path.read_text())
        else:
            raise EmbeddingError(f"{path}: embedding files must be .npy or .json")
    except (ValueError, OSError, json.JSONDecodeError) as exc:
        raise EmbeddingError(f"{path}: not a readable embedding file ({exc})") from exc
    return normalise(data, dimension, what=f"embedding in {path.name}")
