"""Length-prefixed framing of byte strings: a tag, a count, then each part with its
length. Blocks, probe uploads and secret-shared scores travel in it."""

from __future__ import annotations

import struct

from frip_engine.errors import BackendError


def frame(tag: bytes, parts: list[bytes]) -> bytes:
    """``tag``, the number of parts (uint32) and each part after its length (uint64)."""
    header = tag + struct.pack("<I", len(parts))
    return header + b"".join(struct.pack("<Q", len(p)) + p for p in parts)


def unframe(tag: bytes, data: bytes, error: type[BackendError] = BackendError) -> list[bytes]:
    """The parts of a :func:`frame` of ``tag``; ``error`` (a BackendError) for data of
    another tag, truncated, or with trailing bytes."""
    if not data.startswith(tag):
        raise error(f"block is not a {tag.decode(errors='replace')} block")
    offset = len(tag)
    try:
        (count,) = struct.unpack_from("<I", data, offset)
        offset += 4
        parts = []
        for _ in range(count):
            (size,) = struct.unpack_from("<Q", data, offset)
            offset += 8
            if offset + size > len(data):
                raise error("block is truncated")
            parts.append(data[offset : offset + size])
            offset += size
    except struct.error as exc:
        raise error(f"block is truncated ({exc})") from exc
    if offset != len(data):
        raise error("block has trailing bytes")
    return parts
