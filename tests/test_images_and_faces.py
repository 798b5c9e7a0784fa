"""Image decoding and the ArcFace extractor on real faces, and every bad image."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from frip_plugins.extractors.arcface import ArcFaceExtractor
from PIL import Image

from frip_engine.engine import EnrolItem
from frip_engine.errors import ImageError, MissingFileError, NoFaceError, PluginError, SubjectError
from frip_engine.images import load_image


def _face(lfw: Path, name: str = "Adam_Sandler", n: int = 1) -> Path:
    return lfw / name / f"{name}_{n:04d}.jpg"


def _png(img: Image.Image) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return buffer.getvalue()


def test_decodes_colour_grey_and_16_bit(lfw: Path) -> None:
    colour = load_image(_face(lfw))
    assert colour.shape == (250, 250, 3) and colour.dtype == np.uint8
    grey = Image.open(_face(lfw)).convert("L")
    assert load_image(_png(grey)).shape == (250, 250, 3)
    deep = Image.fromarray(np.asarray(grey).astype(np.uint16) * 257)
    assert deep.mode.startswith("I;16")
    decoded = load_image(_png(deep))
    assert decoded.dtype == np.uint8 and decoded.max() > 200


def test_exif_orientation_is_applied(lfw: Path) -> None:
    img = Image.open(_face(lfw)).rotate(90, expand=True)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view": undoes the counter-clockwise turn above
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", exif=exif.tobytes())
    upright = load_image(buffer.getvalue())
    original = load_image(_face(lfw))
    assert upright.shape == original.shape
    assert np.mean(np.abs(upright.astype(int) - original.astype(int))) < 12


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"", "empty"),
        (b"definitely not an image", "not an image"),
        (None, "truncated"),
        (_png(Image.new("RGB", (10, 10))), "too small"),
        (_png(Image.new("1", (8000, 6000))), "pixel limit"),
    ],
)
def test_bad_images(lfw: Path, payload: bytes | None, message: str) -> None:
    if payload is None:
        payload = _face(lfw).read_bytes()[:3000]
    with pytest.raises(ImageError, match=message):
        load_image(payload)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(MissingFileError, match="no such file"):
        load_image(tmp_path / "nope.jpg")


@pytest.fixture(scope="module")
def arcface() -> ArcFaceExtractor:
    return ArcFaceExtractor()


def test_same_person_scores_higher_than_strangers(lfw: Path, arcface: ArcFaceExtractor) -> None:
    def emb(name: str, n: int) -> np.ndarray:
        vector = arcface.extract(load_image(_face(lfw, name, n))).embedding
        return vector / np.linalg.norm(vector)

    a1, a2, b1 = emb("Adam_Sandler", 1), emb("Adam_Sandler", 2), emb("Andy_Roddick", 1)
    assert a1.shape == (512,)
    assert a1 @ a2 > arcface.threshold > a1 @ b1


def test_no_face(arcface: ArcFaceExtractor) -> None:
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 255, (300, 300, 3), dtype=np.uint8)
    with pytest.raises(NoFaceError, match="no face"):
        arcface.extract(noise)


def test_several_faces_takes_the_largest_and_says_so(lfw: Path, arcface: ArcFaceExtractor) -> None:
    big = load_image(_face(lfw, "Adam_Sandler"))
    small = np.asarray(Image.fromarray(load_image(_face(lfw, "Andy_Roddick"))).resize((150, 150)))
    canvas = np.full((300, 450, 3), 127, dtype=np.uint8)
    canvas[25:275, :250] = big
    canvas[75:225, 280:430] = small
    result = arcface.extract(canvas)
    alone = arcface.extract(big).embedding
    assert result.faces_found >= 2
    assert any("used face 1 of" in note for note in result.notes)  # every policy agrees
    cosine = result.embedding @ alone / np.linalg.norm(result.embedding) / np.linalg.norm(alone)
    assert cosine > 0.8


def test_model_file_hash_is_checked(monkeypatch: Any) -> None:
    from frip_plugins.extractors import arcface as module

    monkeypatch.setitem(module.MODELS, "recogniser", ("w600k_mbf.onnx", "0" * 64))
    with pytest.raises(PluginError, match="SHA-256"):
        ArcFaceExtractor().extract(np.zeros((64, 64, 3), dtype=np.uint8))


def test_models_carry_hash_and_licence() -> None:
    models = ArcFaceExtractor().models()
    assert {m.name for m in models} == {"scrfd_500m_bnkps.onnx", "w600k_mbf.onnx"}
    assert all(len(m.sha256) == 64 and "non-commercial" in m.licence for m in models)


def test_enrolment_from_images_reports_bad_ones(
    make_engine: Any, lfw: Path, tmp_path: Path
) -> None:
    engine = make_engine("img")
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"junk")
    report = engine.enrol_many(
        [
            EnrolItem("adam", images=[_face(lfw), junk]),
            EnrolItem("ghost", images=[junk]),
        ]
    )
    assert report.enrolled == ["adam"]
    assert any("not an image" in note for note in report.notes["adam"])
    assert "no usable image" in report.failed["ghost"]
    assert engine.identify(image=_face(lfw, n=2)).subject_id == "adam"
    with pytest.raises(SubjectError, match="no usable image"):
        engine.enrol(EnrolItem("nothing"))
