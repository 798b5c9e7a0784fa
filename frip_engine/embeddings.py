"""Checking, normalising and reading embeddings: the one place a vector enters the engine."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from frip_engine.errors import EmbeddingError


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


def mean_template(embeddings: list[np.ndarray]) -> np.ndarray:
    """One template from several images of a subject: the normalised mean direction."""
    mean = np.mean(np.stack(embeddings), axis=0)
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
