"""The framing every backend uses to store a block: a tag, then length-prefixed parts."""

from __future__ import annotations

import struct

from frip_engine.errors import BackendError


def frame(tag: bytes, parts: list[bytes]) -> bytes:
    header = tag + struct.pack("<I", len(parts))
    return header + b"".join(struct.pack("<Q", len(p)) + p for p in parts)


def unframe(tag: bytes, data: bytes) -> list[bytes]:
    if not data.startswith(tag):
        raise BackendError(f"block is not a {tag.decode(errors='replace')} block")
    offset = len(tag)
    try:
        (count,) = struct.unpack_from("<I", data, offset)
        offset += 4
        parts = []
        for _ in range(count):
            (size,) = struct.unpack_from("<Q", data, offset)
            offset += 8
            if offset + size > len(data):
                raise BackendError("block is truncated")
            parts.append(data[offset : offset + size])
            offset += size
    except struct.error as exc:
        raise BackendError(f"block is truncated ({exc})") from exc
    if offset != len(data):
        raise BackendError("block has trailing bytes")
    return parts
