"""Bulk enrolment (issue 17): a chunk of ``enrol_many`` costs in proportion to the chunk,
not to the gallery already enrolled, and decides exactly as before."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from conftest import unit_vectors

from frip_engine.engine import Engine, EnrolItem

SFACE = {"plugin": "sface"}
FAST = {"plugin": "tenseal", "preset": "fast", "scorer": "fast"}


def _items(vectors: np.ndarray, first: int = 0) -> list[EnrolItem]:
    return [EnrolItem(f"s{first + i}", embeddings=[v]) for i, v in enumerate(vectors)]


def _count_slot_map_reads(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A list that grows by one each time the engine reads the whole slot map."""
    reads: list[int] = []
    whole = engine.gallery_store.subjects

    def counted() -> Any:
        reads.append(1)
        return whole()

    monkeypatch.setattr(engine.gallery_store, "subjects", counted)
    return reads


def test_a_small_chunk_into_full_blocks_reads_no_whole_slot_map(
    make_engine: Callable[..., Engine], monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = make_engine(extractor=SFACE, he=FAST)
    capacity = engine.matcher.slots
    gallery = unit_vectors(capacity + 1, 128, seed=3)
    assert not engine.enrol_many(_items(gallery[:capacity])).failed  # one full block
    reads = _count_slot_map_reads(engine, monkeypatch)

    report = engine.enrol_many(
        [EnrolItem("s5", embeddings=[gallery[5]]), *_items(gallery[capacity:], capacity)]
    )

    assert reads == []
    assert report.enrolled == [f"s{capacity}"]
    assert report.failed == {"s5": "subject 's5' is already enrolled"}
    assert engine.identify(embedding=gallery[capacity]).subject_id == f"s{capacity}"


def test_a_chunk_into_an_open_block_takes_its_free_slots_and_refuses_duplicates(
    make_engine: Callable[..., Engine],
) -> None:
    engine = make_engine(extractor=SFACE, he=FAST)
    gallery = unit_vectors(60, 128, seed=4)
    assert not engine.enrol_many(_items(gallery[:50])).failed
    report = engine.enrol_many([*_items(gallery[48:60], 48)])

    assert report.enrolled == [f"s{i}" for i in range(50, 60)]
    assert set(report.failed) == {"s48", "s49"}
    assert len(engine.gallery_store.blocks()) == 1
    slots = sorted(s.slot for s in engine.gallery_store.subjects())
    assert slots == list(range(60))
    for i in (0, 49, 50, 59):
        decision = engine.identify(embedding=gallery[i])
        assert decision.subject_id == f"s{i}"
