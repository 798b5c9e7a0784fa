"""Edge work off the engine path: image decoding, face detection, alignment and embedding
in a pool of worker processes.

An engine's thread does HE scoring and the key service's decisions only; the event loop
does I/O only. So an image (probe or enrolment) is checked from its header on a thread
(``ImageDecoder.inspect``: a decompression bomb never reaches a worker), then decoded and
embedded in a worker process, and only its unit embedding reaches the engine's queue,
where it batches like any embedding probe.

Workers hold the extractor only (its models, loaded once per worker by the pool's
initializer): no key, no gallery, nothing secret. One pool per extractor configuration
(an engine's ``[extractor]`` section), each sized to the cores this process may use.
Workers start with 'forkserver' (never fork: a PKCS#11 library may be loaded in the
service) and end with the service, even a killed one (``parallel._watch_owner``).

A worker that dies (killed, out of memory) breaks its ``ProcessPoolExecutor``: every
image in flight in it fails with ``BrokenProcessPool``. The pool is then replaced and each
of those images is embedded once more; an image whose second try also loses its worker
fails with :class:`WorkerLostError` (503, retry). An answer is never taken from another
image: each task returns its own result or its own error.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from frip_engine.errors import WorkerLostError

if TYPE_CHECKING:
    from frip_engine.engine import Engine


@dataclass(frozen=True)
class ExtractorSpec:
    """An engine's extractor as a worker rebuilds it: the plugin's name and its profile
    parameters as sorted JSON (hashable; equal for engines that extract alike)."""

    plugin: str
    params: str

    @classmethod
    def of(cls, engine: Engine) -> ExtractorSpec:
        """The spec of ``engine``'s ``[extractor]`` section (reads the profile only)."""
        params = json.dumps(engine.profile.params("extractor"), sort_keys=True)
        return cls(engine.profile.plugin("extractor"), params)


@dataclass(frozen=True)
class Embedded:
    """One image's face, embedded in a worker: its unit embedding, float64 (d,), the
    extractor's notes on the image, and the seconds spent decoding and extracting."""

    vector: np.ndarray
    notes: list[str]
    seconds: float


_worker: dict[str, Any] = {}


def _start(spec: ExtractorSpec, owner_pid: int) -> None:
    """Worker initializer: follow the service process, build the extractor, load its models."""
    from frip_engine import plugins
    from frip_engine.parallel import _watch_owner

    _watch_owner(owner_pid)
    extractor = plugins.create("extractor", spec.plugin, **json.loads(spec.params))
    load = getattr(extractor, "load", None)  # a face pipeline loads its models on demand
    if callable(load):
        load()
    _worker["extractor"] = extractor


def _embed(data: bytes, field: str) -> tuple[np.ndarray, list[str], float]:
    """In a worker: decode ``data`` (an image file's bytes) and embed its one face.
    Raises the image's own ImageError, NoFaceError, EmbeddingError, ..."""
    from frip_engine.embeddings import normalise
    from frip_engine.images import load_image

    started = time.perf_counter()
    extractor = _worker["extractor"]
    found = extractor.extract(load_image(data))
    vector = normalise(found.embedding, extractor.dimension, f"the embedding of '{field}'")
    return vector, list(found.notes), time.perf_counter() - started


def _ready() -> int:
    """In a worker: its pid, once its initializer has run (the pool is warm)."""
    return os.getpid()


def cores() -> int:
    """How many cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class EdgePool:
    """Worker processes that embed images, one pool of ``workers`` per extractor spec."""

    def __init__(self, workers: int | None = None) -> None:
        self.workers = workers or cores()
        self._pools: dict[ExtractorSpec, ProcessPoolExecutor] = {}
        self._lock = threading.Lock()
        self._closed = False

    def pool(self, spec: ExtractorSpec) -> ProcessPoolExecutor:
        """The live pool for ``spec``, started on first use with all its workers at once
        (Python's pool would start one more only when a task finds none idle, so under
        load images would wait for a worker loading its models)."""
        with self._lock:
            if self._closed:
                raise WorkerLostError("the service is shutting down; retry")
            pool = self._pools.get(spec)
            if pool is None:
                pool = ProcessPoolExecutor(
                    self.workers,
                    mp_context=multiprocessing.get_context("forkserver"),
                    initializer=_start,
                    initargs=(spec, os.getpid()),
                )
                for _ in range(self.workers):  # each submission finding no idle worker starts one
                    pool.submit(_ready)
                self._pools[spec] = pool
            return pool

    def _replace(self, spec: ExtractorSpec, broken: ProcessPoolExecutor) -> None:
        """Drop ``broken`` (a worker of it died) so the next call starts a new pool; a pool
        another caller already replaced is left alone."""
        with self._lock:
            if self._pools.get(spec) is broken:
                del self._pools[spec]
        broken.shutdown(wait=False, cancel_futures=True)

    def pids(self, spec: ExtractorSpec) -> list[int]:
        """The process ids of ``spec``'s current workers (for tests and operators)."""
        with self._lock:
            pool = self._pools.get(spec)
        processes = getattr(pool, "_processes", None) or {}
        return sorted(processes)

    async def warm(self, spec: ExtractorSpec) -> list[int]:
        """Start ``spec``'s workers and wait until each has loaded its models; their pids.

        A pool a worker of which died while idle is replaced once; raises WorkerLostError
        when the new one fails to start too."""
        loop = asyncio.get_running_loop()
        lost: BrokenProcessPool | None = None
        for _ in range(2):
            pool = self.pool(spec)
            try:
                futures = [loop.run_in_executor(pool, _ready) for _ in range(self.workers)]
                return sorted(set(await asyncio.gather(*futures)))
            except BrokenProcessPool as exc:
                lost = exc
                self._replace(spec, pool)
        raise WorkerLostError(
            f"the {spec.plugin} worker processes ended while starting, twice ({lost}): retry"
        ) from lost

    async def embed(self, spec: ExtractorSpec, data: bytes, field: str) -> Embedded:
        """The embedding of the one face in ``data``, made in a worker process.

        Raises the image's own error (ImageError, NoFaceError, ... from the extractor), or
        WorkerLostError when its worker died on both tries."""
        loop = asyncio.get_running_loop()
        lost: BrokenProcessPool | None = None
        for _ in range(2):
            pool = self.pool(spec)
            try:
                vector, notes, seconds = await loop.run_in_executor(pool, _embed, data, field)
            except BrokenProcessPool as exc:  # killed, out of memory, or its start failed
                lost = exc
                self._replace(spec, pool)
                continue
            return Embedded(vector, notes, seconds)
        raise WorkerLostError(
            f"the worker process embedding '{field}' ended before answering, twice ({lost}); "
            "nothing was decided for this request: retry"
        ) from lost

    def close(self) -> None:
        """Stop every pool's workers."""
        with self._lock:
            self._closed = True
            pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            pool.shutdown(wait=True, cancel_futures=True)
