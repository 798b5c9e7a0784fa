"""The data every measurement runs on, read one way: labelled images (:class:`Dataset`:
lfw-dev by default, or any folder or index CSV), embedded once per extractor
(:func:`embed_dataset`, in memory only, never on disk) and split by one open-set rule
(:func:`identification_protocol`). ``frip eval`` and ``frip eval calibrate`` score the
split directly; ``frip demo``, ``frip bench cluster``, ``frip bench he`` and
``benchmarks/routing_recall.py`` run it through engines as an :class:`LfwSplit`. Also:
synthetic distractors fitted to real embeddings.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import Progress as Bar

from frip_engine import plugins
from frip_engine.datasets import csv_identities, folder_identities
from frip_engine.errors import FripError, InputError
from frip_engine.images import load_image
from frip_engine.kinds import SECTIONS
from frip_eval.threads import pin_opencv

CHUNK = 32  # images decoded and extracted together (the extractor batches inside)

Progress = Callable[[int], None]


# ----------------------------------------------------------------------------- reading
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


@dataclass
class Dataset:
    """Labelled images: from a folder of ``<identity>/<images>`` or an index CSV."""

    root: Path
    paths: list[Path]
    labels: list[str]

    @classmethod
    def load(cls, folder: Path | None = None, index: Path | None = None) -> Dataset:
        if (folder is None) == (index is None):
            raise InputError("give exactly one of an image folder or an index CSV")
        if folder is not None:
            found, root = folder_identities(folder), folder
        else:
            assert index is not None
            found, root = csv_identities(index), index.parent
        paths = [p for k in sorted(found) for p in found[k]]
        labels = [k for k in sorted(found) for _ in found[k]]
        return cls(root, paths, labels)

    def limit(self, identities: int | None) -> Dataset:
        """The first ``identities`` identities (sorted by name), for quick runs."""
        if identities is None:
            return self
        keep = set(sorted(set(self.labels))[:identities])
        rows = [(p, k) for p, k in zip(self.paths, self.labels, strict=True) if k in keep]
        return Dataset(self.root, [p for p, _ in rows], [k for _, k in rows])


# ----------------------------------------------------------------------------- embedding
@dataclass
class Embedded:
    """One extractor's embeddings of a dataset (in memory only) and what it cost."""

    extractor: str
    dimension: int
    threshold: float
    matrix: np.ndarray  # (n, d) unit rows; zeros where extraction failed
    ok: np.ndarray  # (n,) bool
    failures: dict[str, str]
    seconds: dict[str, float]  # decode, detect, align, embed (when the extractor reports them)
    total_seconds: float

    @property
    def images_per_second(self) -> float:
        return len(self.ok) / self.total_seconds if self.total_seconds else 0.0


def make_extractor(name: str, threads: int | None = None, **params: Any) -> Any:
    """Build an extractor plugin, passing ``threads`` only to factories that take it."""
    component = plugins.registry().get("extractor", name)
    if threads is not None and "threads" in inspect.signature(component.factory).parameters:
        params["threads"] = threads
    return component.create(**params)


def embed_dataset(
    extractor: Any, paths: Sequence[Path], progress: Progress | None = None
) -> Embedded:
    """Decode and extract every image; failures are recorded, never fatal."""
    load = getattr(extractor, "load", None)
    if callable(load):
        load()  # model loading is not part of the throughput
    stages: dict[str, float] | None = getattr(extractor, "stage_seconds", None)
    before = dict(stages) if stages is not None else {}
    matrix = np.zeros((len(paths), int(extractor.dimension)))
    ok = np.zeros(len(paths), dtype=bool)
    failures: dict[str, str] = {}
    decode = 0.0
    started = time.perf_counter()
    for start in range(0, len(paths), CHUNK):
        chunk = list(range(start, min(start + CHUNK, len(paths))))
        images: list[np.ndarray] = []
        kept: list[int] = []
        tick = time.perf_counter()
        for i in chunk:
            try:
                images.append(load_image(paths[i]))
                kept.append(i)
            except FripError as exc:
                failures[str(paths[i])] = str(exc)
        decode += time.perf_counter() - tick
        for i, result in zip(kept, _extract_all(extractor, images), strict=True):
            if isinstance(result, FripError):
                failures[str(paths[i])] = str(result)
                continue
            vector = np.asarray(result.embedding, dtype=np.float64)
            matrix[i] = vector / np.linalg.norm(vector)
            ok[i] = True
        if progress:
            progress(len(chunk))
    total = time.perf_counter() - started
    seconds = {"decode": decode}
    if stages is not None:
        seconds.update({k: v - before.get(k, 0.0) for k, v in stages.items()})
    return Embedded(
        str(extractor.name),
        int(extractor.dimension),
        float(extractor.threshold),
        matrix,
        ok,
        failures,
        seconds,
        total,
    )


def _extract_all(extractor: Any, images: list[np.ndarray]) -> list[Any]:
    many = getattr(extractor, "extract_many", None)
    if callable(many):
        return list(many(images))
    out: list[Any] = []
    for image in images:
        try:
            out.append(extractor.extract(image))
        except FripError as exc:
            out.append(exc)
    return out


def embed_with(
    name: str, dataset: Dataset, threads: int, progress: Callable[[str, int], None] | None
) -> Embedded:
    """The named extractor plugin's embeddings of every image of ``dataset``, in memory
    (never written to disk), with BLAS/OpenCV pinned to ``threads``; ``progress(name, n)``
    after each ``n`` images."""
    pin_opencv(threads)
    extractor = make_extractor(name, threads=threads)
    step = (lambda n: progress(name, n)) if progress else None
    return embed_dataset(extractor, dataset.paths, step)


# ----------------------------------------------------------------------------- the split
@dataclass
class Protocol:
    """Who is enrolled (one image each) and who searches, as dataset indices."""

    gallery: list[int]
    gallery_labels: list[str]
    mated: list[int]
    mated_truth: list[int]  # position of the mate in the gallery
    non_mated: list[int] = field(default_factory=list)


def identification_protocol(labels: Sequence[str], ok: np.ndarray) -> Protocol:
    """Identities with several images: the first extractable one is enrolled, the others
    search as mated probes; identities with one image search as non-mated probes."""
    by_identity: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        by_identity.setdefault(label, []).append(i)
    protocol = Protocol([], [], [], [])
    for label in sorted(by_identity):
        indices = by_identity[label]
        if len(indices) == 1:
            protocol.non_mated.append(indices[0])
            continue
        usable = [i for i in indices if ok[i]]
        if not usable:  # nobody to enrol: every image is a failed mated search
            continue
        protocol.gallery.append(usable[0])
        protocol.gallery_labels.append(label)
        for i in indices:
            if i != usable[0]:
                protocol.mated.append(i)
                protocol.mated_truth.append(len(protocol.gallery) - 1)
    if not protocol.gallery or not protocol.mated:
        raise InputError("identification needs identities with at least two usable images")
    return protocol


@dataclass(frozen=True)
class LfwSplit:
    """A labelled set split by :func:`identification_protocol`, as engines consume it: the
    gallery to enrol (one embedding per identity) and the probes to identify, each with the
    identity it should find (None: a non-mated probe, whose identity is not enrolled).
    Images whose face could not be extracted cannot be sent to an engine: they are counted
    (``failed_mated``, ``failed_non_mated``) so that metrics count them as the evaluation
    does (a missed mated search, a rejected non-mated one)."""

    dataset: Dataset
    embedded: Embedded
    protocol: Protocol

    @classmethod
    def of(cls, dataset: Dataset, embedded: Embedded) -> LfwSplit:
        return cls(dataset, embedded, identification_protocol(dataset.labels, embedded.ok))

    @property
    def everything(self) -> np.ndarray:
        """(usable images, d) every embedding (what distractors are fitted to)."""
        return np.asarray(self.embedded.matrix[self.embedded.ok])

    @property
    def ids(self) -> list[str]:
        """The enrolled identities, in gallery order."""
        return self.protocol.gallery_labels

    @property
    def gallery(self) -> np.ndarray:
        """(len(ids), d) each enrolled identity's embedding."""
        return self.embedded.matrix[self.protocol.gallery]

    @property
    def _probes(self) -> list[tuple[int, str | None]]:
        """Usable probes in data set order: (image index, identity to find or None)."""
        protocol, labels = self.protocol, self.protocol.gallery_labels
        truth: dict[int, str | None] = dict.fromkeys(protocol.non_mated)
        pairs = zip(protocol.mated, protocol.mated_truth, strict=True)
        truth.update((i, labels[t]) for i, t in pairs)
        return [(i, truth[i]) for i in sorted(truth) if self.embedded.ok[i]]

    @property
    def probes(self) -> np.ndarray:
        """(usable probes, d)"""
        return self.embedded.matrix[[i for i, _ in self._probes]]

    @property
    def truth(self) -> list[str | None]:
        """Each probe's identity, None for a non-mated probe."""
        return [who for _, who in self._probes]

    @property
    def failed_mated(self) -> int:
        return int(np.sum(~self.embedded.ok[self.protocol.mated]))

    @property
    def failed_non_mated(self) -> int:
        return int(np.sum(~self.embedded.ok[self.protocol.non_mated]))

    @property
    def failures(self) -> dict[str, str]:
        """Image path -> why it has no embedding."""
        return self.embedded.failures

    @property
    def per_image(self) -> float:
        """Seconds of decoding and extraction per image."""
        return self.embedded.total_seconds / len(self.dataset.paths)


def lfw_split(
    data: Path | None,
    console: Console,
    extractor: Any = None,
    limit: int | None = None,
) -> LfwSplit:
    """lfw-dev (``data``, else found by :func:`find_lfw_dev`; its first ``limit``
    identities) embedded by ``extractor`` (an extractor plugin instance; default: a fresh
    instance of the default extractor) and split, with a progress bar on ``console``."""
    dataset = Dataset.load(index=find_lfw_dev(data) / "index.csv").limit(limit)
    if extractor is None:
        extractor = make_extractor(str(SECTIONS["extractor"].default))
    with Bar(console=console, transient=True, disable=not console.is_terminal) as bar:
        task = bar.add_task("detecting, aligning, embedding", total=len(dataset.paths))
        embedded = embed_dataset(extractor, dataset.paths, lambda n: bar.advance(task, n))
    return LfwSplit.of(dataset, embedded)


# ----------------------------------------------------------------------------- distractors
def distractors(real: np.ndarray, count: int, seed: int) -> np.ndarray:
    """(count, d) unit vectors from a Gaussian with the (n, d) real embeddings' mean and
    covariance: synthetic registrants that look like real ones to a clusterer or a scorer."""
    rng = np.random.default_rng(seed)
    mean = real.mean(axis=0)
    _, spread, basis = np.linalg.svd(real - mean, full_matrices=False)
    scale = spread / np.sqrt(real.shape[0] - 1)
    samples = mean + (rng.standard_normal((count, scale.size)) * scale) @ basis
    return np.asarray(samples / np.linalg.norm(samples, axis=1, keepdims=True))
