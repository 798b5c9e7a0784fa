"""An enrolment encrypted off the engine's thread (issue 16, the service's group commit):
``prepare_enrolment`` plans it under the write lock, ``encrypt_enrolment`` encrypts it in
a worker process holding the public context only, ``commit_enrolment`` commits it. The
engine answers from its committed blocks meanwhile; a block changed in between is
refused whole, and each subject of the group is told."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from conftest import near, unit_vectors

from frip_engine.engine import Engine, EnrolItem
from frip_engine.errors import StoreError


def test_a_group_is_committed_whole_or_refused_whole_when_its_block_moved(
    make_engine: Callable[..., Engine],
) -> None:
    engine = make_engine("g", engine={"name": "g", "insecure": True}, he={"plugin": "plaintext"})
    vectors = unit_vectors(4, seed=31)
    engine.enrol_many([EnrolItem(s, embeddings=[vectors[i]]) for i, s in enumerate("ab")])
    group = [EnrolItem(s, embeddings=[vectors[i + 2]]) for i, s in enumerate("cd")]

    prepared = engine.prepare_enrolment(group)
    pending = engine.encrypt_enrolment(prepared)
    assert engine.identify(embedding=near(vectors[0], 0.2, 1)).subject_id == "a"
    engine.remove("a")  # another write to the block the group was planned into
    report = engine.commit_enrolment(prepared, pending)
    assert report.enrolled == [] and sorted(report.failed) == ["c", "d"]
    assert all(isinstance(e, StoreError) for e in report.errors.values())
    assert engine.subjects() == ["b"]  # neither of the group is there
    assert not prepared.matrix.any()  # the plaintext templates were wiped

    prepared = engine.prepare_enrolment(group)  # planned again: both in one commit
    report = engine.commit_enrolment(prepared, engine.encrypt_enrolment(prepared))
    assert sorted(report.enrolled) == ["c", "d"] and not report.failed
    assert engine.identify(embedding=near(vectors[3], 0.2, 2)).subject_id == "d"


def test_a_committed_group_refreshes_the_cached_block_to_what_a_reload_gives(
    make_engine: Callable[..., Engine], monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = make_engine("c", engine={"name": "c", "insecure": True}, he={"plugin": "plaintext"})
    vectors = unit_vectors(3, seed=37)
    engine.enrol_many([EnrolItem("a", embeddings=[vectors[0]])])
    assert engine.identify(embedding=near(vectors[0], 0.2, 1)).subject_id == "a"  # cached

    prepared = engine.prepare_enrolment(
        [EnrolItem(s, embeddings=[vectors[i + 1]]) for i, s in enumerate("bc")]
    )
    report = engine.commit_enrolment(prepared, engine.encrypt_enrolment(prepared))
    assert sorted(report.enrolled) == ["b", "c"]
    (info,) = engine.gallery_store.blocks()
    revision, data = engine.gallery_store.read_block(info.block_id)
    cached_revision, cached = engine._blocks[info.block_id]
    assert cached_revision == revision == info.revision
    assert np.array_equal(cached, engine.matcher.load(data))  # exactly the stored block

    def no_reload(block_id: int) -> tuple[int, bytes]:
        raise AssertionError("the block just committed was read back")

    monkeypatch.setattr(engine.gallery_store, "read_block", no_reload)
    assert engine.identify(embedding=near(vectors[2], 0.2, 2)).subject_id == "c"
