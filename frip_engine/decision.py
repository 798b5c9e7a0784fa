"""Decisions and their stage timings (the source paper's Table II, plus our extra stages)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

# Table II's columns plus ours (routing, gallery_load, key_unwrap, decryption), apart so
# nothing hides in "other".
STAGES = (
    "feature_extraction",
    "probe_encryption",
    "routing",
    "gallery_load",
    "distance_derivation",
    "key_unwrap",
    "decryption",
    "minimum_selection",
)


class Stopwatch:
    """Accumulates seconds per stage; ``other`` is whatever the total has beyond them."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def add(self, other: dict[str, float]) -> None:
        for name, value in other.items():
            self.seconds[name] = self.seconds.get(name, 0.0) + value

    def finish(self) -> dict[str, float]:
        """Seconds per stage (every one of STAGES, then any other recorded, e.g.
        ``batch_wait``), ``other`` (the total beyond them) and ``total``, since creation."""
        total = time.perf_counter() - self.started
        table = {name: self.seconds.get(name, 0.0) for name in STAGES}
        table.update({k: v for k, v in self.seconds.items() if k not in table})
        table["other"] = max(0.0, total - sum(table.values()))
        table["total"] = total
        return table


@dataclass
class Candidate:
    subject_id: str
    score: float


@dataclass
class Decision:
    """What the key service answers: the best subject(s) and whether it passed; no embedding."""

    engine: str
    matched: bool
    subject_id: str | None
    score: float | None
    threshold: float
    candidates: list[Candidate]
    timings: dict[str, float]
    registrants: int
    blocks_scored: int
    probe_bytes: int = 0  # the probe as uploaded to the matcher, in the engine's probe mode
    # probes scored together with this one (Engine.identify_many); in a batch of more than
    # one, timings["batch_wait"] is the time spent on the other probes' own stages
    batch_size: int = 1
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)
