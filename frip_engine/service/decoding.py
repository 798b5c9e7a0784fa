"""Image decoding for the service: off the event loop, bounded per request and in number.

A small compressed file can decode into gigabytes (a 77 KB 16-bit PNG of 6300x6300 pixels
becomes ~0.8 GB of arrays through ``load_image``'s conversions) and seconds of CPU. So each
image is checked from its header first (Pillow reads dimensions, mode and bit depth
without decoding): its pixel count against ``max_pixels`` and its estimated peak memory
while decoding against ``max_bytes``, and refused with 422 ``bad_image`` before any pixel
is decoded. What passes is decoded in a worker thread, never on the event loop; images
whose estimate is over ``heavy_bytes`` take one of ``heavy_slots`` places first, so a
burst of big uploads queues instead of multiplying the memory and CPU they take.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from frip_engine.errors import ImageError
from frip_engine.service.errors import Base64Error

# Peak bytes per pixel while load_image decodes and converts an image to 8-bit BGR: Pillow's
# own buffer, the array copy, and for deep (16/32-bit) modes the float64 rescaling.
DEEP_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I", "F"})
DEEP_BYTES_PER_PIXEL = 28
BYTES_PER_PIXEL = 14


def decode_b64(value: object, field: str) -> bytes:
    """Non-empty base64 text to bytes, or Base64Error (400) naming the field."""
    if not isinstance(value, str) or not value:
        raise Base64Error(f"'{field}' must be non-empty base64 text")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise Base64Error(f"'{field}' is not valid base64") from None


def peak_bytes(width: int, height: int, mode: str) -> int:
    """Estimated peak memory, bytes, of decoding a ``width`` x ``height`` image of ``mode``."""
    per_pixel = DEEP_BYTES_PER_PIXEL if mode in DEEP_MODES else BYTES_PER_PIXEL
    return width * height * per_pixel


class ImageDecoder:
    """Header checks, then decoding in worker threads, with heavy decodes rationed."""

    def __init__(
        self,
        max_pixels: int = 24_000_000,
        max_bytes: int = 384 * 1024 * 1024,
        heavy_bytes: int = 64 * 1024 * 1024,
        heavy_slots: int = 1,
        workers: int = 2,
    ) -> None:
        self.max_pixels = max_pixels
        self.max_bytes = max_bytes
        self.heavy_bytes = heavy_bytes
        self._heavy = asyncio.Semaphore(heavy_slots)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode")

    def inspect(self, data: bytes, field: str) -> int:
        """Refuse an image from its header alone; return its estimated peak decode bytes.

        Raises ImageError (422) for an unreadable header, too many pixels, or a decoded
        size over the bound."""
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(io.BytesIO(data)) as img:  # lazy: reads the header only
                width, height, mode = img.width, img.height, img.mode
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise ImageError(f"'{field}': not an image file this service can read") from exc
        except Image.DecompressionBombError:
            raise ImageError(f"'{field}': the image is too large to decode") from None
        if width * height > self.max_pixels:
            raise ImageError(
                f"'{field}': {width}x{height} is over the service's {self.max_pixels:,}-pixel "
                "limit; send a smaller image (a face needs far fewer pixels)"
            )
        needed = peak_bytes(width, height, mode)
        if needed > self.max_bytes:
            raise ImageError(
                f"'{field}': a {width}x{height} {mode} image would take about "
                f"{needed // 2**20} MiB to decode, over the service's "
                f"{self.max_bytes // 2**20} MiB; send it 8-bit or smaller"
            )
        return needed

    def _decode(self, value: object, field: str) -> tuple[bytes, int]:
        data = decode_b64(value, field)
        return data, self.inspect(data, field)

    async def checked(self, value: object, field: str) -> tuple[bytes, int]:
        """Base64 image text to the file's bytes, its header checked off the loop (pixels
        not decoded); also its estimated peak decode bytes. Raises Base64Error (400) or
        ImageError (422)."""
        return await asyncio.get_running_loop().run_in_executor(
            self._pool, self._decode, value, field
        )

    def ration(self, needed: int) -> contextlib.AbstractAsyncContextManager[object]:
        """Where an image of ``needed`` peak decode bytes is decoded: a heavy one holds one
        of the ``heavy_slots`` places meanwhile, a light one goes at once."""
        return self._heavy if needed > self.heavy_bytes else contextlib.nullcontext()

    async def decode(self, value: object, field: str) -> np.ndarray:
        """Base64 image text to upright 8-bit BGR pixels (H, W, 3), decoded off the loop.

        Raises Base64Error (400) or ImageError (422)."""
        data, needed = await self.checked(value, field)
        return await self._load(data, needed)

    async def decode_bytes(self, data: bytes, field: str) -> np.ndarray:
        """An image file's bytes (a form upload) to pixels, as :meth:`decode`. Raises
        ImageError (422)."""
        loop = asyncio.get_running_loop()
        needed = await loop.run_in_executor(self._pool, self.inspect, data, field)
        return await self._load(data, needed)

    async def _load(self, data: bytes, needed: int) -> np.ndarray:
        from frip_engine.images import load_image

        async with self.ration(needed):
            return await asyncio.get_running_loop().run_in_executor(self._pool, load_image, data)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
