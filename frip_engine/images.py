"""Image decoding shared by every extractor: file, bytes or array -> upright 8-bit BGR array.

Every extractor takes what ``load_image`` returns, so the limits live here once: a
decompression bomb is refused before decoding, a thumbnail is refused as too small for a
face, grey / 16-bit / alpha inputs become 8-bit BGR, and EXIF orientation is applied.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np

from frip_engine.errors import ImageError, MissingFileError
from frip_engine.validate import refuse_special_file

MAX_PIXELS = 40_000_000  # a decompression bomb is refused before it is decoded
MIN_SIDE = 32


def load_image(source: str | Path | bytes | np.ndarray) -> np.ndarray:
    """Decode an image, honour its EXIF orientation, and return it as uint8 BGR (H, W, 3).

    All eight EXIF orientations (turns and mirrors) are undone; a damaged EXIF block is
    ignored (the pixels as stored). A photo turned without EXIF is the extractors' concern
    (their ``orientation`` parameter).

    An array is taken as already decoded, in OpenCV's channel order (BGR or BGRA, or grey),
    uint8 or uint16, and goes through the same size limits.
    """
    if isinstance(source, np.ndarray):
        return _from_array(source)
    name = "image bytes" if isinstance(source, bytes) else str(source)
    if not isinstance(source, bytes):
        path = Path(source)
        refuse_special_file(path, name)
        if not path.is_file():
            raise MissingFileError(f"{name}: no such file")
        source = path.read_bytes()
    if not source:
        raise ImageError(f"{name}: empty file")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # damaged EXIF: Pillow ignores it
        array = _decode(source, name)
    if min(array.shape[:2]) < MIN_SIDE:
        raise ImageError(f"{name}: {array.shape[1]}x{array.shape[0]} is too small for a face")
    return array


def _decode(data: bytes, name: str) -> np.ndarray:
    """Decode file bytes to upright uint8 BGR pixels, or raise ImageError."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    Image.MAX_IMAGE_PIXELS = None  # we enforce our own, clearer limit below
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.width * img.height > MAX_PIXELS:
                raise ImageError(
                    f"{name}: {img.width}x{img.height} is over the {MAX_PIXELS:,}-pixel limit"
                )
            img.load()
            return _to_bgr8(ImageOps.exif_transpose(img))
    except UnidentifiedImageError as exc:
        raise ImageError(f"{name}: not an image file this engine can read") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{name}: damaged or truncated image ({exc})") from exc


def _from_array(array: np.ndarray) -> np.ndarray:
    """Check and convert an in-memory image (grey, BGR or BGRA; uint8 or uint16)."""
    name = f"image array {array.shape} {array.dtype}"
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ImageError(f"{name}: expected (H, W), (H, W, 3) or (H, W, 4) pixels")
    height, width = array.shape[:2]
    if height * width > MAX_PIXELS:
        raise ImageError(f"{name}: {width}x{height} is over the {MAX_PIXELS:,}-pixel limit")
    if min(height, width) < MIN_SIDE:
        raise ImageError(f"{name}: {width}x{height} is too small for a face")
    if array.dtype == np.uint16:
        pixels = _deep_to_8bit(array)
    elif array.dtype == np.uint8:
        pixels = array
    else:
        raise ImageError(f"{name}: pixels must be uint8 or uint16")
    if pixels.ndim == 2:
        pixels = np.stack([pixels] * 3, axis=-1)
    return np.array(pixels[:, :, :3], dtype=np.uint8, order="C")  # a private copy


def _deep_to_8bit(data: np.ndarray) -> np.ndarray:
    """16-bit or float pixels to 8 bits, stretched to the image's own maximum."""
    values = np.asarray(data, dtype=np.float64)
    top = float(values.max()) or 1.0
    return np.clip(values / top * 255.0, 0, 255).astype(np.uint8)


def _to_bgr8(img: object) -> np.ndarray:
    from PIL import Image

    assert isinstance(img, Image.Image)
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        grey = _deep_to_8bit(np.asarray(img))
        rgb = np.stack([grey] * 3, axis=-1)
    else:
        rgb = np.asarray(img.convert("RGB"))
    return np.ascontiguousarray(rgb[:, :, ::-1])
