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


@pytest.mark.parametrize("held", [0, 60])  # 60 > 8 x 6: ids looked up one by one
def test_bad_subject_ids_fail_alone_whatever_the_gallery_holds(
    store: dict[str, Any], make_engine: Callable[..., Engine], held: int
) -> None:
    """A bad id (a lone surrogate, a NUL, not text) is refused alone and the other items of
    its chunk are enrolled, also when the chunk is small beside the gallery (the ids are
    then looked up one by one in the store, which must never see a bad one)."""
    engine = make_engine(extractor=SFACE, he=FAST, gallery_store=store)
    bad: list[Any] = ["bad\udcff", "bad\x00id", 5, None, b"x"]
    vectors = unit_vectors(held + len(bad) + 1, 128, seed=2)
    if held:
        assert not engine.enrol_many(_items(vectors[:held])).failed
    items = [EnrolItem(b, embeddings=[v]) for b, v in zip(bad, vectors[held:], strict=False)]
    report = engine.enrol_many([*items, EnrolItem("ok", embeddings=[vectors[-1]])])
    assert report.enrolled == ["ok"]
    assert list(report.failed) == bad


@pytest.mark.parametrize("bad", ["bad\udcff", "bad\x00id", 5, None])
def test_every_query_by_subject_id_refuses_a_bad_one_before_the_store(
    store: dict[str, Any], make_engine: Callable[..., Engine], bad: Any
) -> None:
    """The kind of the bulk-enrolment fault: no path hands the store a bad id."""
    from frip_engine.errors import SubjectError
    from frip_engine.linkage import remove_everywhere

    engine = make_engine(extractor=SFACE, he=FAST, gallery_store=store)
    vector = unit_vectors(1, 128, seed=3)[0]
    engine.enrol_many(_items(vector[None, :]))
    for query in (
        lambda: engine.verify(bad, embedding=vector),
        lambda: engine.remove(bad),
        lambda: remove_everywhere([engine], bad),
    ):
        with pytest.raises(SubjectError):
            query()
