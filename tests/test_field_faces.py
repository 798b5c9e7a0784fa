"""Issue 13 items 9-11 on real models and real lfw-dev faces.

9. A photo turned by a quarter turn (90, 180, 270 degrees, no EXIF) gives the upright
   photo's embedding, with a note; EXIF orientation is honoured when decoding.
10. Several faces in one photo: the selection policy is a parameter, ``insightface`` ranks
    like InsightFace's ``detect(max_num=)``, and the notes say which face was used.
11. Images of one subject that disagree beyond what one person gives are refused, naming
    the images and the score.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from frip_plugins.extractors._common import DEFAULT_SELECTION, Face, FacePipeline, select_face
from PIL import Image

from frip_engine import plugins
from frip_engine.engine import EnrolItem
from frip_engine.errors import InputError, ProfileError, SubjectError
from frip_engine.images import load_image

REPO = Path(__file__).resolve().parents[1]
EXTRACTORS = ("arcface", "sface", "facenet")
PEOPLE = (("Adam_Sandler", 1), ("Amanda_Bynes", 1))


def _face(lfw: Path, name: str = "Adam_Sandler", n: int = 1) -> Path:
    return lfw / name / f"{name}_{n:04d}.jpg"


def _turned(path: Path, degrees: int) -> np.ndarray:
    """The photo turned counter-clockwise by ``degrees`` with PIL, as BGR pixels (no EXIF)."""
    rgb = np.asarray(Image.open(path).convert("RGB").rotate(degrees, expand=True))
    return load_image(np.ascontiguousarray(rgb[:, :, ::-1]))


def _jpeg(pixels_bgr: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels_bgr[:, :, ::-1])).save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def extractors() -> Iterator[dict[str, FacePipeline]]:
    yield {name: plugins.create("extractor", name) for name in EXTRACTORS}


# ----------------------------------------------------------------------------- item 9
@pytest.mark.parametrize("person", PEOPLE)
@pytest.mark.parametrize("degrees", [90, 180, 270])
@pytest.mark.parametrize("name", EXTRACTORS)
def test_a_turned_photo_gives_the_upright_photos_embedding(
    name: str, degrees: int, person: tuple[str, int], lfw: Path, extractors: Any
) -> None:
    extractor = extractors[name]
    path = _face(lfw, *person)
    upright = extractor.extract(load_image(path))
    turned = extractor.extract(_turned(path, degrees))
    assert float(turned.embedding @ upright.embedding) > 0.99
    assert any(f"turned {360 - degrees} degrees" in note for note in turned.notes), turned.notes
    assert not any("turned" in note for note in upright.notes)
    # the box is reported in the turned photo's own pixels
    assert np.allclose(turned.box, _turn_box(upright.box, degrees // 90, 250), atol=1.0)


def _turn_box(box: tuple[float, ...], turns: int, side: int) -> tuple[float, ...]:
    """A box in a square photo of ``side`` pixels after ``turns`` counter-clockwise turns:
    each takes pixel point (x, y) to (y, side - x)."""
    x1, y1, x2, y2 = box
    for _ in range(turns):
        x1, y1, x2, y2 = y1, side - x2, y2, side - x1
    return x1, y1, x2, y2


@pytest.mark.parametrize("name", EXTRACTORS)
def test_orientation_can_refuse_or_trust_the_photo(name: str, lfw: Path) -> None:
    factory = plugins.registry().get("extractor", name).factory
    upside_down = _turned(_face(lfw), 180)
    with pytest.raises(InputError, match="upside down"):
        factory(orientation="refuse").extract(upside_down)
    assert factory(orientation="refuse").extract(load_image(_face(lfw))).notes == []
    as_is = factory(orientation="as-is")
    try:
        trusted = as_is.extract(upside_down)
    except InputError:  # some detectors find no face at all in an upside-down photo
        return
    assert not any("turned" in note for note in trusted.notes)
    with pytest.raises(ProfileError, match="orientation must be one of"):
        factory(orientation="sideways")


def test_an_upside_down_enrolment_matches_its_person(make_engine: Any, lfw: Path) -> None:
    """The field report: 0.09 against its own person before; now the usual genuine score."""
    engine = make_engine("turned")
    report = engine.enrol_many(
        [EnrolItem("adam", images=[_jpeg(_turned(_face(lfw), 180))]), _person(lfw, "Andy_Roddick")]
    )
    assert report.enrolled == ["adam", "Andy_Roddick"]
    assert any("upside down" in note for note in report.notes["adam"])
    decision = engine.identify(image=_face(lfw, n=2))
    assert decision.subject_id == "adam" and decision.score is not None
    assert decision.score > 0.5
    sideways = engine.identify(image=_jpeg(_turned(_face(lfw, n=2), 90)))
    assert sideways.subject_id == "adam"
    assert any("turned 270 degrees" in note for note in sideways.notes)


def _person(lfw: Path, name: str) -> EnrolItem:
    return EnrolItem(name, images=[_face(lfw, name)])


# EXIF orientation tag -> the PIL transpose that stores an upright photo under that tag
_STORED_AS = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


@pytest.mark.parametrize("tag", sorted(_STORED_AS))
def test_every_exif_orientation_is_honoured(tag: int, lfw: Path) -> None:
    photo = Image.open(_face(lfw)).convert("RGB").crop((0, 0, 250, 200))  # not square
    move = _STORED_AS[tag]
    stored = photo if move is None else photo.transpose(move)
    exif = Image.Exif()
    exif[0x0112] = tag
    buffer = io.BytesIO()
    stored.save(buffer, format="PNG", exif=exif.tobytes())  # lossless: pixels compare exactly
    decoded = load_image(buffer.getvalue())
    assert np.array_equal(decoded, np.asarray(photo)[:, :, ::-1])


def test_damaged_exif_is_ignored_quietly(lfw: Path, recwarn: pytest.WarningsRecorder) -> None:
    buffer = io.BytesIO()
    broken = b"Exif\x00\x00II*\x00\x08\x00\x00\x00\x01\x00\x12\x01\x03\x00\x05\x00\x00\x00\xff"
    Image.open(_face(lfw)).save(buffer, format="JPEG", exif=broken)
    assert load_image(buffer.getvalue()).shape == (250, 250, 3)
    assert not [w for w in recwarn if "EXIF" in str(w.message)]


# ----------------------------------------------------------------------------- item 10
def _box(x1: float, y1: float, x2: float, y2: float) -> Face:
    return Face((x1, y1, x2, y2), 0.9, np.zeros((5, 2)))


def test_the_insightface_policy_ranks_like_insightface_detect_max_num() -> None:
    shape = (300, 400, 3)
    large_far = _box(0, 0, 150, 150)  # area 22,500, 125/75 px off the centre
    medium_near = _box(210, 100, 310, 200)  # area 10,000, 60 px off
    tiny_centre = _box(195, 145, 205, 155)  # area 100, on the centre
    faces = [large_far, medium_near, tiny_centre]
    assert select_face(faces, shape, "largest")[0] is large_far
    assert select_face(faces, shape, "central")[0] is tiny_centre
    chosen, notes = select_face(faces, shape, "insightface")
    assert chosen is medium_near
    # InsightFace's own ranking (SCRFD.detect, metric 'default') picks the same face
    det = np.array([[*f.box, f.score] for f in faces])
    area = (det[:, 2] - det[:, 0]) * (det[:, 3] - det[:, 1])
    centre = shape[0] // 2, shape[1] // 2
    offsets = np.vstack(
        [(det[:, 0] + det[:, 2]) / 2 - centre[1], (det[:, 1] + det[:, 3]) / 2 - centre[0]]
    )
    assert faces[int(np.argmax(area - np.sum(offsets**2, 0) * 2.0))] is chosen
    assert notes == [
        "3 faces found; used face 3 of 3 counted from the left, box (210, 100, 310, 200), "
        "by select = 'insightface' (area minus twice the squared offset from the centre)"
    ]


def _side_by_side(lfw: Path) -> np.ndarray:
    left = load_image(_face(lfw, "Adam_Sandler"))
    right = load_image(_face(lfw, "Amanda_Bynes"))
    return np.ascontiguousarray(np.hstack([left, right]))


@pytest.mark.parametrize("name", EXTRACTORS)
def test_the_notes_say_which_of_several_faces_was_used(
    name: str, lfw: Path, extractors: Any
) -> None:
    extractor = extractors[name]
    photo = _side_by_side(lfw)
    result = extractor.extract(photo)
    assert result.faces_found == 2
    (note,) = [n for n in result.notes if "faces found" in n]
    found = re.search(r"used face (\d) of 2 counted from the left, box \((\d+), ", note)
    assert found, note
    assert f"select = '{extractor.select}'" in note
    index, x1 = int(found.group(1)), int(found.group(2))
    assert (index == 1) == (x1 < 250)  # the box is in the photo's own pixels
    alone = extractor.extract(load_image(_face(lfw, ("Adam_Sandler", "Amanda_Bynes")[index - 1])))
    assert float(result.embedding @ alone.embedding) > 0.9


def test_an_identify_decision_says_which_face_was_used(make_engine: Any, lfw: Path) -> None:
    engine = make_engine("multi")
    engine.enrol_many([_person(lfw, "Adam_Sandler"), _person(lfw, "Amanda_Bynes")])
    decision = engine.identify(image=_jpeg(_side_by_side(lfw)))
    assert decision.matched
    assert any(re.search(r"2 faces found; used face \d of 2 .*box \(", n) for n in decision.notes)


def test_the_default_policy_and_floors_are_the_ones_measured_on_lfw_large() -> None:
    measured = json.loads((REPO / "docs" / "face-policy.json").read_text())
    assert measured["chosen"] == DEFAULT_SELECTION
    for name in EXTRACTORS:
        extractor = plugins.create("extractor", name)
        assert extractor.select == DEFAULT_SELECTION
        assert extractor.same_person_floor == measured["same_person_floor"][name]


@pytest.mark.parametrize("name", EXTRACTORS)
def test_a_bad_policy_is_a_profile_error(name: str) -> None:
    with pytest.raises(ProfileError, match="insightface"):
        plugins.create("extractor", name, select="biggest")


# ----------------------------------------------------------------------------- item 11
def test_two_people_under_one_subject_are_refused(make_engine: Any, lfw: Path) -> None:
    engine = make_engine("fused")
    adam, amanda = _face(lfw, "Adam_Sandler"), _face(lfw, "Amanda_Bynes")
    report = engine.enrol_many([EnrolItem("x", images=[adam, _face(lfw, n=2), amanda])])
    assert report.enrolled == []
    message = report.failed["x"]
    assert "Amanda_Bynes_0001.jpg" in message and "Adam_Sandler_0001.jpg" in message
    assert re.search(r"cosine -?0\.\d\d", message), message
    with pytest.raises(SubjectError, match="not one person"):
        engine.enrol(EnrolItem("x", images=[adam, amanda]))
    assert engine.gallery_store.subjects() == []
    # the same person's two photos are one subject
    engine.enrol(EnrolItem("adam", images=[adam, _face(lfw, n=2), _face(lfw, n=3)]))


def test_embeddings_that_disagree_are_refused_and_the_floor_is_a_parameter(
    make_engine: Any, lfw: Path
) -> None:
    arcface = plugins.create("extractor", "arcface")
    adam = arcface.extract(load_image(_face(lfw))).embedding
    amanda = arcface.extract(load_image(_face(lfw, "Amanda_Bynes"))).embedding
    engine = make_engine("floor")
    with pytest.raises(SubjectError, match=r"embedding 1 and embedding 2 .*cosine"):
        engine.enrol(EnrolItem("x", embeddings=[adam, amanda]))
    lenient = make_engine("lenient", extractor={"plugin": "arcface", "same_person_floor": -1.0})
    lenient.enrol(EnrolItem("x", embeddings=[adam, amanda]))
    assert [s.subject_id for s in lenient.gallery_store.subjects()] == ["x"]


@pytest.mark.parametrize("name", EXTRACTORS)
def test_the_floor_is_calibrated_below_the_threshold_and_checked(name: str) -> None:
    extractor = plugins.create("extractor", name)
    assert -1.0 <= extractor.same_person_floor < extractor.threshold
    with pytest.raises(ProfileError, match="same_person_floor"):
        plugins.create("extractor", name, same_person_floor=1.5)
