"""What every face extractor shares, written once.

- model files that ship inside PyPI packages, pinned by SHA-256 and checked before loading;
- onnxruntime sessions with pinned threads and quiet logs;
- orientation: a photo turned by a quarter turn is turned back before the face is used;
- face selection when an image holds several faces (largest, central, InsightFace's rank,
  or refuse), with a note saying which face was used;
- 5-point similarity alignment onto the ArcFace 112x112 template (ArcFace, SFace);
- box crops with a margin (FaceNet was trained on MTCNN box crops, not 5-point warps);
- L2 normalisation and batching;
- ``FacePipeline``: detect -> select -> crop -> embed (in batches) -> normalise, with a
  per-stage clock the extractor benchmark reads.

Heavy modules (cv2, onnxruntime, skimage) are imported inside functions: ``frip plugins``
must list an extractor without loading any of them.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from frip_engine.contracts import Extraction, ModelFile
from frip_engine.errors import (
    FripError,
    InputError,
    NoFaceError,
    PluginError,
    ProfileError,
    SeveralFacesError,
)

SELECTION_POLICIES = {
    "largest": "the largest box",
    "central": "the box nearest the centre",
    "insightface": "area minus twice the squared offset from the centre",
    "single": "several faces are an error",
}
# Measured on lfw-large by benchmarks/face_policy.py (docs/face-policy.md): rank-1 0.9923
# (arcface), 0.9856 (sface), 0.9654 (facenet) against 0.9870, 0.9765, 0.9486 for "largest",
# which picked a bystander in 2-6% of the photos with several faces. "central" ties on LFW.
DEFAULT_SELECTION = "insightface"
ORIENTATIONS = ("auto", "refuse", "as-is")
# A view's face ranks by its detection score less ROLL_PENALTY per 90 degrees of roll left
# after the quarter turn: detectors trained on upright faces also "find" an upside-down face
# with upright-looking landmarks and a similar score, but less squarely. Measured by
# benchmarks/face_orientation.py (600 lfw-large photos, each in 4 turns): 0 of 2,400 wrong
# for arcface and sface, 4 of 2,400 (one photo, in all four turns) for facenet.
ROLL_PENALTY = 0.2

# The ArcFace / InsightFace 5-point template for 112x112 crops (also SFace's, in OpenCV's
# FaceRecognizerSF::alignCrop): image-left eye, image-right eye, nose tip, mouth corners.
ARCFACE_TEMPLATE_112 = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)


# ----------------------------------------------------------------------------- model files
def packaged_model(package: str, relative: str, sha256: str, licence: str) -> ModelFile:
    """A model file inside an installed distribution (no download, ever).

    The package is located, not imported: some of them import OpenCV and print at import.
    """
    spec = importlib.util.find_spec(package)
    folders = list(spec.submodule_search_locations or []) if spec else []
    base = folders[0] if folders else f"<{package} is not installed>"
    return ModelFile(relative.rsplit("/", 1)[-1], os.path.join(base, relative), sha256, licence)


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_models(extractor: str, models: Sequence[ModelFile], reinstall: str) -> None:
    """Refuse to load a model file that is missing or whose bytes are not the pinned ones."""
    for model in models:
        try:
            actual = sha256_file(model.path)
        except OSError as exc:
            raise PluginError(
                f"{extractor}: model file {model.path} cannot be read ({exc}); "
                f"run: pip install {reinstall}"
            ) from exc
        if actual != model.sha256:
            raise PluginError(
                f"{extractor}: model file {model.path} has SHA-256 {actual}, expected "
                f"{model.sha256}; refusing to load it. Reinstall: pip install --force-reinstall "
                f"{reinstall}"
            )


def session_options(threads: int) -> Any:
    """onnxruntime options: ``threads`` intra-op threads, one inter-op, warnings silenced."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # shape and initializer chatter is not the user's problem
    return options


def onnx_session(model: str | bytes, threads: int) -> Any:
    """An onnxruntime CPU session from a model path or the model's bytes."""
    import onnxruntime

    return onnxruntime.InferenceSession(
        model, session_options(threads), providers=["CPUExecutionProvider"]
    )


def check_common_params(
    extractor: str,
    select: str,
    orientation: str,
    same_person_floor: float,
    batch_size: int,
    threads: int,
) -> None:
    if select not in SELECTION_POLICIES:
        raise ProfileError(
            f"{extractor}: select must be one of {', '.join(SELECTION_POLICIES)}, got {select!r}"
        )
    if orientation not in ORIENTATIONS:
        raise ProfileError(
            f"{extractor}: orientation must be one of {', '.join(ORIENTATIONS)}, "
            f"got {orientation!r}"
        )
    if not -1.0 <= same_person_floor <= 1.0:
        raise ProfileError(
            f"{extractor}: same_person_floor is a cosine and must be in [-1, 1] "
            "(-1 accepts any images under one subject)"
        )
    if not 1 <= batch_size <= 256:
        raise ProfileError(f"{extractor}: batch_size must be in [1, 256]")
    if not 1 <= threads <= 64:
        raise ProfileError(f"{extractor}: threads must be in [1, 64]")


# ----------------------------------------------------------------------------- faces
@dataclass(frozen=True)
class Face:
    """One detected face in image pixels: box (x1, y1, x2, y2), score, five landmarks."""

    box: tuple[float, float, float, float]
    score: float
    landmarks: np.ndarray  # (5, 2): image-left eye, image-right eye, nose, mouth left, right

    @property
    def area(self) -> float:
        x1, y1, x2, y2 = self.box
        return max(0.0, x2 - x1) * max(0.0, y2 - y1)

    @property
    def roll(self) -> float:
        """Degrees the face is turned in the image, from its landmarks: 0 when the mouth's
        midpoint lies straight below the eyes' midpoint, +-90 on its side, +-180 upside down.
        """
        eyes = (self.landmarks[0] + self.landmarks[1]) / 2.0
        mouth = (self.landmarks[3] + self.landmarks[4]) / 2.0
        dx, dy = (float(v) for v in mouth - eyes)
        return math.degrees(math.atan2(-dx, dy))

    def scaled(self, factor: float) -> Face:
        """The same face in an image ``factor`` times larger."""
        box = tuple(float(v) * factor for v in self.box)
        return Face((box[0], box[1], box[2], box[3]), self.score, self.landmarks * factor)

    def turned_back(self, turns: int, shape: tuple[int, ...]) -> Face:
        """The same face in the photo that ``np.rot90(photo, turns)`` (shape ``shape``) shows.

        Each clockwise quarter turn of an (h, w) image takes pixel point (x, y) to (h - y, x).
        """
        corners = np.array([self.box[:2], self.box[2:]], dtype=np.float64)
        points = np.asarray(self.landmarks, dtype=np.float64)
        height = shape[0]
        width = shape[1]
        for _ in range(turns % 4):
            corners = np.stack([height - corners[:, 1], corners[:, 0]], axis=1)
            points = np.stack([height - points[:, 1], points[:, 0]], axis=1)
            height, width = width, height
        low, high = corners.min(axis=0), corners.max(axis=0)
        box = (float(low[0]), float(low[1]), float(high[0]), float(high[1]))
        return Face(box, self.score, points)


def select_face(
    faces: Sequence[Face], shape: tuple[int, ...], policy: str
) -> tuple[Face, list[str]]:
    """Pick the face to use by policy; when there was a choice, a note says which and why.

    ``largest``: the biggest box (a portrait's subject). ``central``: nearest the image
    centre, ties by size (a kiosk camera). ``insightface``: InsightFace's own ranking in
    ``detect(max_num=)``: area minus twice the squared offset of the box's centre from the
    image's, in pixels. ``single``: several faces are an error (1:1 enrolment, where
    enrolling a bystander would be worse than asking again). The note numbers the faces
    from the left of the image and gives the chosen box in its pixels.
    """
    if not faces:
        raise NoFaceError("no face found in the image")
    if len(faces) == 1:
        return faces[0], []
    if policy == "single":
        raise SeveralFacesError(
            f"{len(faces)} faces found and the extractor's policy is select = 'single': "
            "give an image with one face, or use select = 'largest', 'central' or 'insightface'"
        )
    cy, cx = shape[0] // 2, shape[1] // 2

    def offset_squared(face: Face) -> float:
        x1, y1, x2, y2 = face.box
        return ((x1 + x2) / 2 - cx) ** 2 + ((y1 + y2) / 2 - cy) ** 2

    if policy == "central":
        best = min(faces, key=lambda f: (offset_squared(f), -f.area))
    elif policy == "insightface":
        best = max(faces, key=lambda f: f.area - 2.0 * offset_squared(f))
    else:
        best = max(faces, key=lambda f: f.area)
    from_left = sorted(faces, key=lambda f: f.box[0] + f.box[2])
    number = next(i for i, f in enumerate(from_left, 1) if f is best)
    box = ", ".join(f"{v:.0f}" for v in best.box)
    return best, [
        f"{len(faces)} faces found; used face {number} of {len(faces)} counted from the left, "
        f"box ({box}), by select = '{policy}' ({SELECTION_POLICIES[policy]})"
    ]


def upright_rank(faces: Sequence[Face]) -> float:
    """How surely one view of a photo shows its faces upright: the best detection score of a
    face whose landmarks roll at most 45 degrees, less ``ROLL_PENALTY`` per 90 degrees of
    that roll; -inf when no face there looks upright."""
    ranks = [f.score - ROLL_PENALTY * abs(f.roll) / 90.0 for f in faces if abs(f.roll) <= 45.0]
    return max(ranks, default=-math.inf)


def orientation_note(turns: int) -> str:
    """What was done to a photo turned by ``turns`` counter-clockwise quarter turns."""
    how = "was upside down" if turns == 2 else "lay on its side"
    return (
        f"the face {how}: the photo was turned {90 * turns} degrees counter-clockwise to "
        "make it upright"
    )


def detection_view(image: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """The image shrunk so its longer side is at most ``max_side``, and the factor back.

    Detection cost grows with pixels; faces worth recognising survive the shrink, and the
    crop is then taken from the full-resolution image.
    """
    import cv2

    longest = max(image.shape[:2])
    if longest <= max_side:
        return image, 1.0
    factor = max_side / longest
    size = (max(1, round(image.shape[1] * factor)), max(1, round(image.shape[0] * factor)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA), 1.0 / factor


# ----------------------------------------------------------------------------- crops
def align_5point(image: np.ndarray, landmarks: np.ndarray, size: int = 112) -> np.ndarray:
    """Warp the face so its five landmarks land on the ArcFace template (least squares).

    The similarity is scikit-image's Umeyama estimate and the warp OpenCV's, exactly as
    InsightFace's ``norm_crop`` does, so ArcFace's calibrated threshold still holds.
    """
    import cv2
    from skimage.transform import SimilarityTransform

    if size % 112:
        raise ValueError("the ArcFace template is defined for multiples of 112 pixels")
    points = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
    transform = SimilarityTransform.from_estimate(points, ARCFACE_TEMPLATE_112 * (size / 112))
    if not transform or not np.all(np.isfinite(transform.params)):
        raise NoFaceError("the face's landmarks are degenerate; it cannot be aligned")
    matrix = transform.params[:2, :]
    return np.asarray(cv2.warpAffine(image, matrix, (size, size), borderValue=0.0))


def crop_with_margin(
    image: np.ndarray, box: tuple[float, float, float, float], margin: float, size: int
) -> np.ndarray:
    """The box widened by ``margin`` x its size on each axis (half per side), resized square.

    FaceNet's LFW protocol crops MTCNN boxes with a 32-pixel margin at 160 pixels; a
    relative margin keeps that proportion for faces of any size.
    """
    import cv2

    height, width = image.shape[:2]
    x1, y1, x2, y2 = box
    dx, dy = margin * (x2 - x1) / 2.0, margin * (y2 - y1) / 2.0
    left, top = max(int(x1 - dx), 0), max(int(y1 - dy), 0)
    right, bottom = min(int(x2 + dx), width), min(int(y2 + dy), height)
    if right - left < 2 or bottom - top < 2:
        raise NoFaceError("the detected face lies outside the image")
    crop = image[top:bottom, left:right]
    return np.asarray(cv2.resize(crop, (size, size), interpolation=cv2.INTER_LINEAR))


# ----------------------------------------------------------------------------- vectors
def l2_normalise(rows: np.ndarray) -> np.ndarray:
    """Unit rows (float64); a zero row is an extraction failure, not a silent NaN."""
    matrix = np.atleast_2d(np.asarray(rows, dtype=np.float64))
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    if not np.all(np.isfinite(matrix)) or np.any(norms < 1e-12):
        raise NoFaceError("the model produced an empty or non-finite embedding for this face")
    return np.asarray(matrix / norms)


def batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# ----------------------------------------------------------------------------- pipeline
STAGES = ("detect", "align", "embed")


class FacePipeline:
    """Detect -> select -> crop -> embed -> normalise; subclasses supply the three models.

    ``extract_many`` crops every image first and embeds the crops in batches of
    ``batch_size``; ``stage_seconds`` accumulates wall time per stage for the benchmark.

    ``orientation``: ``auto`` detects in the photo and in its three quarter turns and uses
    the view whose face is most surely upright (``upright_rank``), with a note when that is
    not the photo as given; ``refuse`` raises InputError for such a photo; ``as-is`` trusts
    the photo (one detection: the cheapest, for cameras that are known to be upright).
    ``same_person_floor``: the cosine below which two images of one subject are taken for
    two people and the enrolment is refused; -1 turns the check off. The default,
    ``calibrated_floor``, is the extractor's own 0.1% quantile of the genuine-pair cosine on
    lfw-large (2,155 pairs, benchmarks/face_policy.py): one person's photos fall below it
    about once in a thousand pairs, while 76-87% of pairs of two people do
    (docs/face-policy.md).
    """

    name = "face-pipeline"
    dimension = 0
    threshold = 0.0
    licence = ""
    reinstall = ""  # the pip arguments that restore the model files
    max_batch = 256  # some graphs (OpenCV's FaceNet) take one face at a time
    calibrated_floor = -1.0  # see same_person_floor

    def __init__(
        self,
        select: str = DEFAULT_SELECTION,
        orientation: str = "auto",
        same_person_floor: float | None = None,
        batch_size: int = 16,
        threads: int = 1,
    ) -> None:
        floor = self.calibrated_floor if same_person_floor is None else float(same_person_floor)
        check_common_params(self.name, select, orientation, floor, batch_size, threads)
        self.select = select
        self.orientation = orientation
        self.same_person_floor = floor
        self.batch_size = min(batch_size, self.max_batch)
        self.threads = threads
        self.stage_seconds: dict[str, float] = dict.fromkeys(STAGES, 0.0)
        self._loaded = False

    # -- what subclasses implement
    def models(self) -> list[ModelFile]:
        raise NotImplementedError

    def _load_models(self) -> None:
        raise NotImplementedError

    def detect(self, image: np.ndarray) -> list[Face]:
        raise NotImplementedError

    def crop(self, image: np.ndarray, face: Face) -> np.ndarray:
        raise NotImplementedError

    def embed(self, crops: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    # -- shared
    def load(self) -> None:
        """Check every model file's hash, then build the sessions (once)."""
        if self._loaded:
            return
        verify_models(self.name, self.models(), self.reinstall)
        self._load_models()
        self._loaded = True

    def _timed(self, stage: str, started: float) -> float:
        now = time.perf_counter()
        self.stage_seconds[stage] += now - started
        return now

    def upright(self, image: np.ndarray) -> tuple[np.ndarray, int, list[Face]]:
        """The photo turned so its faces are upright, the counter-clockwise quarter turns
        that took, and the faces detected in that view (its pixels), by ``orientation``."""
        faces = self.detect(image)
        if self.orientation == "as-is":
            return image, 0, faces
        best = (upright_rank(faces), 0, image, faces)
        for turns in (1, 2, 3):  # ties go to the photo as given
            view = np.ascontiguousarray(np.rot90(image, turns))
            found = self.detect(view)
            rank = upright_rank(found)
            if rank > best[0]:
                best = (rank, turns, view, found)
        _, turns, view, faces = best
        if turns and self.orientation == "refuse":
            state = "upside down" if turns == 2 else "on its side"
            raise InputError(
                f"the face is {state} in this photo (it is upright after turning the photo "
                f"{90 * turns} degrees counter-clockwise): turn the photo upright, or set "
                "orientation = 'auto' in [extractor] to let the extractor turn it"
            )
        return view, turns, faces

    def locate(self, image: np.ndarray) -> tuple[Face, int, list[str], np.ndarray]:
        """Detect, turn upright, choose and crop the face: (face, faces found, notes, crop).

        The face's box is in the pixels of ``image`` as given, whatever turn was needed.
        """
        self.load()
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise InputError("extractors take uint8 BGR images of shape (H, W, 3)")
        started = time.perf_counter()
        view, turns, faces = self.upright(image)
        started = self._timed("detect", started)
        in_photo = [f.turned_back(turns, view.shape) for f in faces] if turns else faces
        chosen, notes = select_face(in_photo, image.shape, self.select)
        crop = self.crop(view, faces[next(i for i, f in enumerate(in_photo) if f is chosen)])
        self._timed("align", started)
        return chosen, len(faces), ([orientation_note(turns)] if turns else []) + notes, crop

    def extract(self, image: np.ndarray) -> Extraction:
        result = self.extract_many([image])[0]
        if isinstance(result, FripError):
            raise result
        return result

    def extract_many(self, images: Sequence[np.ndarray]) -> list[Extraction | FripError]:
        """One result per image, in order: an Extraction, or the error that image raised."""
        results: dict[int, Extraction | FripError] = {}
        located: list[tuple[int, Face, int, list[str]]] = []
        crops: list[np.ndarray] = []
        for index, image in enumerate(images):
            try:
                face, found, notes, crop = self.locate(image)
            except FripError as exc:
                results[index] = exc
                continue
            located.append((index, face, found, notes))
            crops.append(crop)
        vectors: list[np.ndarray] = []
        for chunk in batches(crops, self.batch_size):
            started = time.perf_counter()
            raw = np.asarray(self.embed(np.stack(chunk)), dtype=np.float64)
            self._timed("embed", started)
            if raw.shape != (len(chunk), self.dimension):
                raise PluginError(
                    f"{self.name}: the model returned shape {raw.shape}, expected "
                    f"({len(chunk)}, {self.dimension})"
                )
            vectors.extend(raw)
        for (index, face, found, notes), vector in zip(located, vectors, strict=True):
            try:
                results[index] = Extraction(
                    l2_normalise(vector)[0], found, face.box, face.score, notes
                )
            except FripError as exc:
                results[index] = exc
        return [results[i] for i in range(len(images))]
