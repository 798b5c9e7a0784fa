"""The data the measurements run on: lfw-dev (found, extracted, split) and synthetic
distractors fitted to real embeddings.

lfw-dev is read one way for every measurement that runs it through engines (``frip
demo``, ``frip bench cluster``, ``frip bench he``, ``benchmarks/routing_recall.py``):
people with several images are enrolled from their first, their other images are mated
probes, everyone else's images are strangers. ``frip eval`` reads any labelled set
(lfw-dev by default) as a :class:`frip_eval.evaluation.Dataset`. Embeddings stay in
memory, never on disk.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import Progress

from frip_engine.datasets import csv_identities
from frip_engine.engine import Engine
from frip_engine.errors import FripError, InputError
from frip_engine.profile import Profile


def find_lfw_dev(given: Path | None) -> Path:
    """lfw-dev's folder: ``given``, else ``../shared/data/lfw-dev`` from the working
    directory or from the repository. InputError when none of them has an ``index.csv``."""
    candidates = (
        [given]
        if given
        else [
            Path.cwd().parent / "shared" / "data" / "lfw-dev",
            Path(__file__).resolve().parents[3] / "shared" / "data" / "lfw-dev",
        ]
    )
    for path in candidates:
        if path is not None and (path / "index.csv").is_file():
            return path
    raise InputError(
        "lfw-dev not found: expected ../shared/data/lfw-dev with index.csv; pass --data PATH"
    )


def lfw_identities(root: Path, limit: int | None = None) -> dict[str, list[Path]]:
    """Identity -> image paths from lfw-dev's ``index.csv`` (the first ``limit`` identities)."""
    identities = csv_identities(root / "index.csv")
    if limit is not None:
        identities = dict(list(identities.items())[:limit])
    return identities


def plaintext_profile(name: str) -> Profile:
    """A plaintext reference engine (templates in the clear, memory key store): for
    extracting embeddings and for the decisions encrypted engines are checked against."""
    return Profile.from_dict(
        {
            "engine": {"name": name, "insecure": True},
            "he": {"plugin": "plaintext"},
            "key_store": {"plugin": "memory"},
        }
    )


def extract_all(
    engine: Engine, identities: dict[str, list[Path]], console: Console
) -> tuple[dict[Path, np.ndarray], dict[str, str], float]:
    """Every image's embedding through ``engine``'s extractor (models loaded before the
    clock starts): embeddings by path, failures by path (the reason), seconds per image."""
    embeddings: dict[Path, np.ndarray] = {}
    failures: dict[str, str] = {}
    paths = [p for v in identities.values() for p in v]
    engine.embed_image(paths[0])  # load the models outside the timed loop
    started = time.perf_counter()
    with Progress(console=console, transient=True, disable=not console.is_terminal) as bar:
        task = bar.add_task("detecting, aligning, embedding", total=len(paths))
        for path in paths:
            try:
                embeddings[path], _notes = engine.embed_image(path)
            except FripError as exc:
                failures[str(path)] = str(exc)
            bar.advance(task)
    return embeddings, failures, (time.perf_counter() - started) / len(paths)


@dataclass(frozen=True)
class LfwSplit:
    """lfw-dev as the measurements use it: people with several images enrolled from their
    first, their other images as mated probes, everyone else's images as strangers."""

    everything: np.ndarray  # (images, d) every embedding (what distractors are fitted to)
    ids: list[str]  # enrolled identities, in gallery order
    gallery: np.ndarray  # (len(ids), d)
    probes: np.ndarray  # (probes, d)
    truth: list[str | None]  # each probe's identity, None for a stranger
    per_image: float  # seconds of extraction per image
    failures: dict[str, str] = field(default_factory=dict)  # image path -> why no embedding


def split_identities(
    engine: Engine, identities: dict[str, list[Path]], console: Console
) -> LfwSplit:
    """Extract ``identities`` through ``engine`` and split them; a person whose first
    image fails counts as a stranger, an image that fails is left out."""
    embeddings, failures, per_image = extract_all(engine, identities, console)
    enrolled = {k: v[0] for k, v in identities.items() if len(v) > 1 and v[0] in embeddings}
    probes = [
        (embeddings[p], k if k in enrolled else None)
        for k, v in identities.items()
        for p in (v[1:] if k in enrolled else v)
        if p in embeddings
    ]
    return LfwSplit(
        np.stack(list(embeddings.values())),
        list(enrolled),
        np.stack([embeddings[p] for p in enrolled.values()]),
        np.stack([p for p, _ in probes]),
        [t for _, t in probes],
        per_image,
        failures,
    )


def lfw_split(root: Path, home: Path, console: Console, limit: int | None = None) -> LfwSplit:
    """Extract lfw-dev (the first ``limit`` identities) with a throw-away plaintext engine
    in ``home`` and split it (:func:`split_identities`)."""
    extractor = Engine.create(plaintext_profile("extract"), home)
    try:
        return split_identities(extractor, lfw_identities(root, limit), console)
    finally:
        extractor.close()


def distractors(real: np.ndarray, count: int, seed: int) -> np.ndarray:
    """(count, d) unit vectors from a Gaussian with the (n, d) real embeddings' mean and
    covariance: synthetic registrants that look like real ones to a clusterer or a scorer."""
    rng = np.random.default_rng(seed)
    mean = real.mean(axis=0)
    _, spread, basis = np.linalg.svd(real - mean, full_matrices=False)
    scale = spread / np.sqrt(real.shape[0] - 1)
    samples = mean + (rng.standard_normal((count, scale.size)) * scale) @ basis
    return np.asarray(samples / np.linalg.norm(samples, axis=1, keepdims=True))
