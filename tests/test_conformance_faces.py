"""The extractor suite's face: lfw-dev when present, else the public-domain face bundled
with frip_engine.testing (so a vendor without lfw-dev still runs every check), and the
bundled face is one the built-in extractor finds."""

from __future__ import annotations

import tomllib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from frip_engine import plugins
from frip_engine.images import load_image
from frip_engine.testing.pytest_plugin import BUNDLED_FACES, faces_folder


def _config(rootpath: Path, option: str | None = None) -> Any:
    return SimpleNamespace(rootpath=rootpath, getoption=lambda name: option)


def test_without_lfw_dev_the_bundled_faces_are_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FRIP_TEST_FACES", raising=False)
    (tmp_path / "vendor").mkdir()
    assert faces_folder(_config(tmp_path / "vendor")) == BUNDLED_FACES
    lfw = tmp_path / "shared" / "data" / "lfw-dev"
    lfw.mkdir(parents=True)
    assert faces_folder(_config(tmp_path / "vendor")) == lfw
    assert faces_folder(_config(tmp_path / "vendor", str(tmp_path))) == tmp_path


def test_the_bundled_face_is_a_face(fresh_plugins: None) -> None:
    (image_path,) = sorted(BUNDLED_FACES.rglob("*.jpg"))
    image = load_image(image_path)
    assert image.shape == (250, 250, 3) and image.dtype == np.uint8
    arcface = plugins.registry().get("extractor", "arcface")
    if not arcface.available:
        pytest.skip(f"{arcface.label} is unavailable: {arcface.install_hint()}")
    extraction = plugins.create("extractor", "arcface", orientation="as-is").extract(image)
    assert extraction.faces_found == 1


def test_the_package_ships_its_typing_marker_and_the_face() -> None:
    """Vendors' mypy sees frip-engine's types (PEP 561) and an installed frip-engine has
    the bundled face: both are package data."""
    root = Path(__file__).resolve().parents[1]
    data = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    shipped = data["package-data"]["frip_engine"]
    assert "py.typed" in shipped and (root / "frip_engine" / "py.typed").is_file()
    faces = [p for pattern in shipped for p in (root / "frip_engine").glob(pattern)]
    assert sorted(BUNDLED_FACES.rglob("*.jpg")) == sorted(p for p in faces if p.suffix == ".jpg")
