"""The framing every backend uses to store a block: a tag, then length-prefixed parts
(:mod:`frip_engine.framing`, shared with the secret-shared probe mode's score envelopes)."""

from frip_engine.framing import frame, unframe

__all__ = ["frame", "unframe"]
