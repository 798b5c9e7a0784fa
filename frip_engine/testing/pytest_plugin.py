"""The pytest plugin frip-engine registers (``pytest11`` entry point ``frip_engine``): the
fixtures the conformance suites use, available to any test once frip-engine is installed.

- ``frip_faces``: the folder of real face images (lfw-dev layout: ``<person>/<image>``),
  from ``--frip-faces DIR``, else ``$FRIP_TEST_FACES``, else ``../shared/data/lfw-dev``
  beside the rootdir when it exists, else the face bundled here (``faces/``: Eileen
  Collins, cropped to 250x250 from scikit-image's ``astronaut.png``, a NASA photograph in
  the public domain); a folder named explicitly but absent fails the tests using it.
- ``frip_face_image``: the first image of that folder, decoded as the engine decodes it
  (:func:`frip_engine.images.load_image`: uint8 BGR, shape (H, W, 3)).
- ``frip_blank_image``: a uniform grey uint8 BGR image, (250, 250, 3): no face in it.

Nothing heavy is imported here: images are decoded only when a test asks for one.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

FACES_ENV = "FRIP_TEST_FACES"
BUNDLED_FACES = Path(__file__).parent / "faces"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--frip-faces",
        default=None,
        help=f"folder of real face images for the frip-engine conformance suites "
        f"(default: ${FACES_ENV}, else ../shared/data/lfw-dev beside the rootdir, else "
        "the public-domain face bundled with frip_engine.testing)",
    )


def faces_folder(config: pytest.Config) -> Path:
    """Where the face images are looked for: the folder named by the option or the
    variable (it may not be there), else lfw-dev beside the rootdir, else the bundled one."""
    chosen = config.getoption("--frip-faces") or os.environ.get(FACES_ENV)
    if chosen:
        return Path(chosen)
    lfw_dev = Path(config.rootpath).parent / "shared" / "data" / "lfw-dev"
    return lfw_dev if lfw_dev.is_dir() else BUNDLED_FACES


@pytest.fixture(scope="session")
def frip_faces(pytestconfig: pytest.Config) -> Path:
    """The folder of real face images (see the module docstring); fails when a folder
    named by ``--frip-faces`` or ``$FRIP_TEST_FACES`` is absent."""
    folder = faces_folder(pytestconfig)
    if not folder.is_dir():
        pytest.fail(
            f"no face images at {folder}: pass --frip-faces DIR or set {FACES_ENV} to a "
            "folder of them (lfw-dev layout, <person>/<image>.jpg), or neither to use the "
            "bundled face"
        )
    return folder


@pytest.fixture(scope="session")
def frip_face_image(frip_faces: Path) -> np.ndarray:
    """One real face, uint8 BGR (H, W, 3), as ``load_image`` gives it to an extractor."""
    from frip_engine.images import load_image

    images = sorted(p for p in frip_faces.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        pytest.fail(f"no .jpg/.jpeg/.png image under {frip_faces}")
    return load_image(images[0])


@pytest.fixture(scope="session")
def frip_blank_image() -> np.ndarray:
    """A uniform grey uint8 BGR image (250, 250, 3): nothing an extractor may call a face."""
    return np.full((250, 250, 3), 128, dtype=np.uint8)
