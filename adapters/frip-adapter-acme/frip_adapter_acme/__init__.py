"""ACME template adapter: ACMT v1 int8 records <-> frip-engine float embeddings."""

from __future__ import annotations

import struct
import zlib

import numpy as np

from frip_engine.contracts import Adapter, Register
from frip_engine.errors import EmbeddingError
from frip_engine.hookspecs import hookimpl

MAGIC = b"ACMT"
HEADER = struct.Struct("<4sBHf")


class AcmeV1Adapter:
    name = "acme-v1"
    vendor = "ACME Face Devices"

    def decode(self, payload: bytes) -> np.ndarray:
        """Check magic, version, length and CRC, then de-quantise."""
        if len(payload) < HEADER.size + 4:
            raise EmbeddingError("ACMT template is too short")
        magic, version, dimension, scale = HEADER.unpack_from(payload)
        if magic != MAGIC:
            raise EmbeddingError("not an ACMT template (bad magic)")
        if version != 1:
            raise EmbeddingError(f"ACMT version {version} is not supported (only 1)")
        expected = HEADER.size + dimension + 4
        if len(payload) != expected:
            raise EmbeddingError(f"ACMT template is {len(payload)} bytes, expected {expected}")
        (crc,) = struct.unpack_from("<I", payload, expected - 4)
        if zlib.crc32(payload[: expected - 4]) != crc:
            raise EmbeddingError("ACMT template failed its CRC check (damaged in transit?)")
        if not np.isfinite(scale) or scale <= 0:
            raise EmbeddingError("ACMT template has an invalid scale")
        values = np.frombuffer(payload, dtype=np.int8, count=dimension, offset=HEADER.size)
        return values.astype(np.float64) * float(scale)

    def encode(self, embedding: np.ndarray) -> bytes:
        """Quantise to int8 with a per-template scale (what an ACME device would send)."""
        vector = np.asarray(embedding, dtype=np.float64)
        peak = float(np.max(np.abs(vector))) or 1.0
        scale = peak / 127.0
        quantised = np.clip(np.round(vector / scale), -127, 127).astype(np.int8)
        body = HEADER.pack(MAGIC, 1, vector.size, scale) + quantised.tobytes()
        return body + struct.pack("<I", zlib.crc32(body))


@hookimpl
def register_adapters(register: Register[Adapter]) -> None:
    register(
        "acme-v1", AcmeV1Adapter, summary="ACME ACMT v1 int8 templates (example vendor adapter)"
    )
