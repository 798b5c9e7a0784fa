"""The source paper's pipeline: MTCNN on onnxruntime and FaceNet on OpenCV DNN."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from frip_plugins.extractors.arcface import ArcFaceExtractor
from frip_plugins.extractors.facenet import FaceNetExtractor, Mtcnn, standardise

from frip_engine.errors import ProfileError
from frip_engine.images import load_image

PEOPLE = ["Adam_Sandler", "Andy_Roddick", "Amanda_Bynes", "Alejandro_Toledo", "Abdullah"]


def test_mtcnn_landmarks_agree_with_an_independent_detector(lfw: Path) -> None:
    """Five landmarks within a few pixels of SCRFD's, on faces ~100 px wide."""
    mtcnn = Mtcnn()
    scrfd = ArcFaceExtractor()
    scrfd.load()
    errors = []
    for name in PEOPLE:
        image = load_image(lfw / name / f"{name}_0001.jpg")
        ours = max(mtcnn.detect(np.ascontiguousarray(image[:, :, ::-1])), key=lambda f: f.area)
        theirs = max(scrfd.detect(image), key=lambda f: f.area)
        errors.append(np.linalg.norm(ours.landmarks - theirs.landmarks, axis=1).mean())
        x1, y1, x2, y2 = ours.box
        assert ours.score > 0.9
        assert np.all((ours.landmarks[:, 0] > x1) & (ours.landmarks[:, 0] < x2))
        assert np.all((ours.landmarks[:, 1] > y1) & (ours.landmarks[:, 1] < y2))
        assert ours.landmarks[0, 0] < ours.landmarks[1, 0]  # image-left eye first
    assert np.mean(errors) < 4.0


def test_small_faces_in_a_larger_scene_are_found_where_they_are(lfw: Path) -> None:
    import cv2

    image = load_image(lfw / "Adam_Sandler" / "Adam_Sandler_0001.jpg")
    scene = np.full((400, 400, 3), 127, np.uint8)
    scene[300:360, 40:100] = cv2.resize(image, (60, 60), interpolation=cv2.INTER_AREA)
    faces = Mtcnn(min_face_size=15).detect(np.ascontiguousarray(scene[:, :, ::-1]))
    assert len(faces) == 1
    x1, y1, x2, y2 = faces[0].box
    assert 40 <= x1 < x2 <= 100 and 300 <= y1 < y2 <= 360
    with pytest.raises(ProfileError, match="min_face_size"):
        FaceNetExtractor(min_face_size=5)


def test_fixed_standardisation_is_the_default_and_prewhiten_differs() -> None:
    crops = np.random.default_rng(1).integers(0, 255, (2, 160, 160, 3)).astype(np.uint8)
    fixed = standardise(crops, "fixed")
    assert np.allclose(fixed, (crops.astype(np.float32) - 127.5) / 128)
    white = standardise(crops, "prewhiten")
    assert np.allclose(white.mean(axis=(1, 2, 3)), 0, atol=1e-4)
    assert np.allclose(white.std(axis=(1, 2, 3)), 1, atol=1e-3)
    assert FaceNetExtractor().standardisation == "fixed"
    with pytest.raises(ProfileError, match="standardisation"):
        FaceNetExtractor(standardisation="zscore")
    with pytest.raises(ProfileError, match="margin"):
        FaceNetExtractor(margin=2.0)


def test_the_opencv_graph_takes_one_face_per_call_whatever_the_batch(lfw: Path) -> None:
    extractor = FaceNetExtractor(batch_size=32)
    assert extractor.batch_size == 1
    images = [load_image(lfw / "Abdullah" / f"Abdullah_000{i}.jpg") for i in (1, 2, 3)]
    results = extractor.extract_many(images)
    vectors = np.stack([r.embedding for r in results])  # type: ignore[union-attr]
    assert vectors.shape == (3, 512)
    assert np.min(vectors @ vectors.T) > extractor.threshold  # one person
