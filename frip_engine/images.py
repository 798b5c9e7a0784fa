"""Image decoding shared by every extractor: file or bytes -> upright 8-bit BGR array."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from frip_engine.errors import ImageError

MAX_PIXELS = 40_000_000  # a decompression bomb is refused before it is decoded
MIN_SIDE = 32


def load_image(source: str | Path | bytes) -> np.ndarray:
    """Decode an image, honour its EXIF orientation, and return it as uint8 BGR (H, W, 3)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    name = "image bytes" if isinstance(source, bytes) else str(source)
    if not isinstance(source, bytes):
        path = Path(source)
        if not path.is_file():
            raise ImageError(f"{name}: no such file")
        source = path.read_bytes()
    if not source:
        raise ImageError(f"{name}: empty file")
    Image.MAX_IMAGE_PIXELS = None  # we enforce our own, clearer limit below
    try:
        with Image.open(io.BytesIO(source)) as img:
            if img.width * img.height > MAX_PIXELS:
                raise ImageError(
                    f"{name}: {img.width}x{img.height} is over the {MAX_PIXELS:,}-pixel limit"
                )
            img.load()
            upright = ImageOps.exif_transpose(img)
            array = _to_bgr8(upright)
    except UnidentifiedImageError as exc:
        raise ImageError(f"{name}: not an image file this engine can read") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{name}: damaged or truncated image ({exc})") from exc
    if min(array.shape[:2]) < MIN_SIDE:
        raise ImageError(f"{name}: {array.shape[1]}x{array.shape[0]} is too small for a face")
    return array


def _to_bgr8(img: object) -> np.ndarray:
    from PIL import Image

    assert isinstance(img, Image.Image)
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        data = np.asarray(img, dtype=np.float64)
        top = float(data.max()) or 1.0
        grey = np.clip(data / top * 255.0, 0, 255).astype(np.uint8)
        rgb = np.stack([grey] * 3, axis=-1)
    else:
        rgb = np.asarray(img.convert("RGB"))
    return np.ascontiguousarray(rgb[:, :, ::-1])
