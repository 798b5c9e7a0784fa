"""The shared extractor pieces, and every extractor against the same real and bad inputs."""

from __future__ import annotations

import importlib
import io
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from frip_plugins.extractors._common import (
    Face,
    FacePipeline,
    align_5point,
    batches,
    crop_with_margin,
    l2_normalise,
    select_face,
    verify_models,
)
from PIL import Image

from frip_engine import plugins
from frip_engine.errors import ImageError, InputError, NoFaceError, PluginError, ProfileError
from frip_engine.images import MAX_PIXELS, load_image

EXTRACTORS = ("arcface", "sface", "facenet")


def _face(lfw: Path, name: str = "Adam_Sandler", n: int = 1) -> Path:
    return lfw / name / f"{name}_{n:04d}.jpg"


# ----------------------------------------------------------------------------- pure pieces
def _f(x1: float, y1: float, x2: float, y2: float) -> Face:
    return Face((x1, y1, x2, y2), 0.9, np.zeros((5, 2)))


def test_selection_policies() -> None:
    big_corner, small_centre = _f(0, 0, 100, 100), _f(180, 130, 220, 170)
    faces = [small_centre, big_corner]
    shape = (300, 400, 3)
    chosen, notes = select_face(faces, shape, "largest")
    assert chosen is big_corner and notes == [
        "2 faces found; used face 1 of 2 counted from the left, box (0, 0, 100, 100), "
        "by select = 'largest' (the largest box)"
    ]
    chosen, notes = select_face(faces, shape, "central")
    assert chosen is small_centre and "face 2 of 2" in notes[0] and "'central'" in notes[0]
    with pytest.raises(InputError, match=r"2 faces found.*'single'"):
        select_face(faces, shape, "single")
    assert select_face([big_corner], shape, "single") == (big_corner, [])
    with pytest.raises(NoFaceError, match="no face"):
        select_face([], shape, "largest")


def test_crop_with_margin_geometry_and_faces_outside() -> None:
    image = np.zeros((200, 300, 3), dtype=np.uint8)
    image[50:150, 100:200] = 255  # the "face" box, 100x100
    crop = crop_with_margin(image, (100, 50, 200, 150), margin=0.5, size=80)
    assert crop.shape == (80, 80, 3)
    # a 0.5 margin adds 25 px each side: the white box fills the middle 100/150 of the crop
    row = crop[40, :, 0]
    white = np.nonzero(row > 127)[0]
    assert white.min() == pytest.approx(80 * 25 / 150, abs=1.5)
    assert white.max() == pytest.approx(80 * 125 / 150, abs=1.5)
    edge = crop_with_margin(image, (-40, -40, 60, 60), margin=0.2, size=40)  # clipped, not padded
    assert edge.shape == (40, 40, 3)
    with pytest.raises(NoFaceError, match="outside the image"):
        crop_with_margin(image, (400, 300, 500, 400), margin=0.2, size=40)


def test_l2_normalise_and_batches() -> None:
    rows = l2_normalise(np.array([[3.0, 4.0], [0.0, 2.0]]))
    assert np.allclose(rows, [[0.6, 0.8], [0.0, 1.0]])
    with pytest.raises(NoFaceError, match="empty or non-finite"):
        l2_normalise(np.array([[0.0, 0.0]]))
    with pytest.raises(NoFaceError):
        l2_normalise(np.array([[np.nan, 1.0]]))
    assert [list(b) for b in batches(list(range(7)), 3)] == [[0, 1, 2], [3, 4, 5], [6]]


def test_alignment_equals_insightface_norm_crop(lfw: Path, arcface: FacePipeline) -> None:
    """One alignment for ArcFace and SFace, identical to InsightFace's reference code."""
    from insightface.utils import face_align

    image = load_image(_face(lfw))
    landmarks = max(arcface.detect(image), key=lambda f: f.area).landmarks
    ours = align_5point(image, landmarks, 112)
    with warnings.catch_warnings():  # skimage deprecates the call norm_crop still makes
        warnings.simplefilter("ignore", FutureWarning)
        reference = face_align.norm_crop(image, landmarks, 112)
    assert ours.shape == (112, 112, 3)
    assert np.abs(ours.astype(int) - reference.astype(int)).max() <= 1


# ----------------------------------------------------------------------------- decoding
def test_arrays_are_accepted_in_opencv_order_and_checked(lfw: Path) -> None:
    bgr = load_image(_face(lfw))
    same = load_image(bgr)
    assert np.array_equal(same, bgr) and same is not bgr  # a private copy
    grey = load_image(bgr[:, :, 1])
    assert grey.shape == bgr.shape and np.array_equal(grey[:, :, 0], grey[:, :, 2])
    bgra = np.dstack([bgr, np.full(bgr.shape[:2], 255, np.uint8)])
    assert np.array_equal(load_image(bgra), bgr)
    deep = load_image(bgr.astype(np.uint16) * 257)  # stretched to its own maximum, as files
    stretched = (bgr.astype(float) / bgr.max() * 255).astype(np.uint8)
    assert deep.dtype == np.uint8 and np.abs(deep.astype(int) - stretched).max() <= 1
    with pytest.raises(ImageError, match="uint8 or uint16"):
        load_image(bgr.astype(np.float32))
    with pytest.raises(ImageError, match="too small"):
        load_image(bgr[:20, :20])
    with pytest.raises(ImageError, match=r"\(H, W\)"):
        load_image(np.zeros((40, 40, 2), np.uint8))
    side = int(np.sqrt(MAX_PIXELS)) + 10
    huge = np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (side, side, 3))  # no memory used
    with pytest.raises(ImageError, match="pixel limit"):
        load_image(huge)


def test_a_16_bit_png_file_and_a_bmp_are_decoded(lfw: Path) -> None:
    grey = Image.open(_face(lfw)).convert("L")
    deep = Image.fromarray(np.asarray(grey).astype(np.uint16) * 64)  # 14 bits used
    buffer = io.BytesIO()
    deep.save(buffer, format="PNG")
    decoded = load_image(buffer.getvalue())
    assert decoded.shape == (250, 250, 3) and decoded.max() > 200  # stretched to 8 bits
    buffer = io.BytesIO()
    Image.open(_face(lfw)).save(buffer, format="BMP")
    assert load_image(buffer.getvalue()).shape == (250, 250, 3)


# ----------------------------------------------------------------------------- extractors
@pytest.fixture(scope="module")
def extractors() -> Iterator[dict[str, FacePipeline]]:
    made = {name: plugins.create("extractor", name) for name in EXTRACTORS}
    yield made


@pytest.fixture(scope="module")
def arcface(extractors: dict[str, FacePipeline]) -> FacePipeline:
    extractor = extractors["arcface"]
    extractor.load()
    return extractor


def _unit(vector: np.ndarray) -> np.ndarray:
    return vector / np.linalg.norm(vector)


@pytest.mark.parametrize("name", EXTRACTORS)
def test_declares_dimension_threshold_licence_and_pinned_models(
    name: str, extractors: dict[str, FacePipeline]
) -> None:
    extractor = extractors[name]
    component = plugins.registry().get("extractor", name)
    assert component.available and component.info["dimension"] == extractor.dimension
    assert component.info["threshold"] == extractor.threshold and 0 < extractor.threshold < 1
    models = extractor.models()
    assert models and all(len(m.sha256) == 64 and m.licence for m in models)
    verify_models(name, models, "-")  # the installed files are the pinned ones
    assert extractor.licence


@pytest.mark.parametrize("name", EXTRACTORS)
def test_same_person_scores_above_threshold_and_strangers_below(
    name: str, lfw: Path, extractors: dict[str, FacePipeline]
) -> None:
    extractor = extractors[name]
    people = [("Adam_Sandler", 1), ("Adam_Sandler", 2), ("Andy_Roddick", 1), ("Amanda_Bynes", 1)]
    results = extractor.extract_many([load_image(_face(lfw, p, n)) for p, n in people])
    vectors = [r.embedding for r in results]  # type: ignore[union-attr]
    assert all(v.shape == (extractor.dimension,) for v in vectors)
    assert all(abs(np.linalg.norm(v) - 1) < 1e-6 for v in vectors)
    mated = vectors[0] @ vectors[1]
    strangers = [vectors[i] @ vectors[j] for i, j in ((0, 2), (0, 3), (1, 2), (2, 3))]
    assert mated > extractor.threshold > max(strangers)
    # a batch gives what single calls give
    alone = extractor.extract(load_image(_face(lfw, "Andy_Roddick"))).embedding
    assert np.allclose(alone, vectors[2], atol=1e-4)


@pytest.mark.parametrize("name", EXTRACTORS)
def test_grey_and_16_bit_images_still_give_the_persons_embedding(
    name: str, lfw: Path, extractors: dict[str, FacePipeline]
) -> None:
    extractor = extractors[name]
    colour = extractor.extract(load_image(_face(lfw))).embedding
    grey = load_image(np.asarray(Image.open(_face(lfw)).convert("L")))
    deep = load_image(np.asarray(Image.open(_face(lfw)).convert("L")).astype(np.uint16) * 257)
    for image in (grey, deep):
        assert _unit(extractor.extract(image).embedding) @ colour > 0.7


@pytest.mark.parametrize("name", EXTRACTORS)
def test_no_face_is_a_clear_error(name: str, extractors: dict[str, FacePipeline]) -> None:
    noise = np.random.default_rng(0).integers(0, 255, (300, 300, 3), dtype=np.uint8)
    with pytest.raises(NoFaceError, match="no face"):
        extractors[name].extract(noise)
    results = extractors[name].extract_many([noise, np.full((200, 200, 3), 90, np.uint8)])
    assert all(isinstance(r, NoFaceError) for r in results)


def _two_faces(lfw: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A big face in the left corner and a smaller one in the centre of a wide canvas."""
    big = load_image(_face(lfw, "Adam_Sandler"))
    small = np.asarray(Image.fromarray(load_image(_face(lfw, "Andy_Roddick"))).resize((170, 170)))
    canvas = np.full((300, 700, 3), 127, dtype=np.uint8)
    canvas[25:275, :250] = big
    canvas[65:235, 265:435] = small
    return canvas, big, small


@pytest.mark.parametrize("name", EXTRACTORS)
def test_several_faces_follow_the_selection_policy(
    name: str, lfw: Path, extractors: dict[str, FacePipeline]
) -> None:
    extractor = extractors[name]
    canvas, big, small = _two_faces(lfw)
    big_alone = extractor.extract(big).embedding
    small_alone = extractor.extract(small).embedding
    factory = plugins.registry().get("extractor", name).factory
    largest = factory(select="largest").extract(canvas)
    assert largest.faces_found >= 2 and "select = 'largest'" in largest.notes[0]
    assert largest.embedding @ big_alone > largest.embedding @ small_alone
    central = factory(select="central")
    picked = central.extract(canvas)
    assert "select = 'central'" in picked.notes[0]
    assert picked.embedding @ small_alone > picked.embedding @ big_alone
    with pytest.raises(InputError, match="faces found"):
        factory(select="single").extract(canvas)


@pytest.mark.parametrize(
    ("name", "module", "table", "key"),
    [
        ("arcface", "frip_plugins.extractors.arcface", "MODELS", "recogniser"),
        ("sface", "frip_plugins.extractors.sface", "MODELS", "recogniser"),
        ("facenet", "frip_plugins.extractors.facenet", "MTCNN_MODELS", "onet"),
    ],
)
def test_a_model_file_whose_hash_does_not_match_is_refused(
    name: str, module: str, table: str, key: str, monkeypatch: Any
) -> None:
    models = getattr(importlib.import_module(module), table)
    monkeypatch.setitem(models, key, (models[key][0], "0" * 64))
    fresh = plugins.registry().get("extractor", name).factory()
    with pytest.raises(PluginError, match=r"SHA-256 .* expected 0000"):
        fresh.extract(np.zeros((64, 64, 3), dtype=np.uint8))


def test_facenet_graph_hash_is_checked_too(monkeypatch: Any) -> None:
    from frip_plugins.extractors import facenet

    monkeypatch.setattr(facenet, "FACENET_MODEL", ("graph_final.pb", "f" * 64))
    with pytest.raises(PluginError, match=r"graph_final\.pb has SHA-256"):
        facenet.FaceNetExtractor().load()


@pytest.mark.parametrize("name", EXTRACTORS)
def test_bad_parameters_are_profile_errors(name: str) -> None:
    with pytest.raises(ProfileError, match="select must be one of"):
        plugins.create("extractor", name, select="biggest")
    with pytest.raises(ProfileError, match="batch_size"):
        plugins.create("extractor", name, batch_size=0)
