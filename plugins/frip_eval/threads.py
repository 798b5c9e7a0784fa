"""Thread pinning for measurements: timings on a shared machine stay comparable."""

from __future__ import annotations

import os


def pin_threads() -> None:
    """One BLAS/OpenMP thread (and one faiss thread) for this process and its children."""
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = "1"
    try:
        import faiss

        faiss.omp_set_num_threads(1)
    except ImportError:
        pass


def pin_opencv(threads: int) -> None:
    """Pin OpenCV's own pool to ``threads`` (onnxruntime sessions are pinned per extractor)."""
    try:
        import cv2
    except ImportError:
        return
    cv2.setNumThreads(threads)
