"""An enrolment encrypted off the engine's thread (issue 16, the service's group commit):
``prepare_enrolment`` plans it under the write lock, ``encrypt_enrolment`` encrypts it in
a worker process holding the public context only, ``commit_enrolment`` commits it. The
engine answers from its committed blocks meanwhile; a block changed in between is
refused whole, and each subject of the group is told."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import BACKENDS, near, unit_vectors

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


# ------------------------------------------------ the commit itself off the engine's thread
def _held_commits(monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event, list[str]]:
    """Every gallery store's commit_block waits for the returned event; the names of the
    threads that committed are listed."""
    from frip_plugins.gallery_stores._sql import SqlGalleryStore

    release, threads = threading.Event(), []
    commit_block = SqlGalleryStore.commit_block

    def held(store: Any, *args: Any, **kwargs: Any) -> int:
        threads.append(threading.current_thread().name)
        assert release.wait(60)
        return commit_block(store, *args, **kwargs)

    monkeypatch.setattr(SqlGalleryStore, "commit_block", held)
    return release, threads


def test_a_delta_group_commits_off_the_engine_thread_while_it_answers_from_the_old_gallery(
    make_engine: Callable[..., Engine], monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = make_engine("x", he=BACKENDS["tenseal-fast"])
    vectors = unit_vectors(3, seed=71)
    engine.enrol(EnrolItem("a", embeddings=[vectors[0]]))
    assert engine.identify(embedding=near(vectors[0], 0.2, 1)).subject_id == "a"  # cached
    none = engine.prepare_enrolment([])  # nothing to commit: no delta plan
    assert engine.commit_enrolment_later(none, engine.encrypt_enrolment(none)) is None
    none.discard()

    release, threads = _held_commits(monkeypatch)
    prepared = engine.prepare_enrolment([EnrolItem("b", embeddings=[vectors[1]])])
    assert prepared.deltas
    committing = engine.commit_enrolment_later(prepared, engine.encrypt_enrolment(prepared))
    assert committing is not None
    until(lambda: bool(threads), "the committer did not reach commit_block")
    assert threading.current_thread().name not in threads
    probe = near(vectors[1], 0.2, 2)
    assert not engine.identify(embedding=probe).matched  # the committed gallery: no b yet
    assert engine.subjects() == ["a"] and not committing.done()
    release.set()

    def no_reload(block_id: int) -> tuple[int, bytes]:
        raise AssertionError("the block just committed was read back")

    monkeypatch.setattr(engine.gallery_store, "read_block", no_reload)
    report = engine.adopt_enrolment(prepared, committing)
    assert report.enrolled == ["b"] and not report.failed
    assert not prepared.matrix.any()
    assert engine.identify(embedding=probe).subject_id == "b"
    assert engine.subjects() == ["a", "b"]


def test_a_group_whose_block_moved_to_another_key_is_refused_whole(
    make_engine: Callable[..., Engine], monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = make_engine("k", he=BACKENDS["tenseal-fast"])
    vectors = unit_vectors(4, seed=73)
    engine.enrol_many([EnrolItem("a", embeddings=[vectors[0]])])
    group = [EnrolItem(s, embeddings=[vectors[i + 1]]) for i, s in enumerate("bc")]
    prepared = engine.prepare_enrolment(group)
    encrypted = engine.encrypt_enrolment(prepared)
    encrypted.result()
    engine.rotate_he_keys()  # the block is re-encrypted under v2 before the commit
    committing = engine.commit_enrolment_later(prepared, encrypted)
    assert committing is not None
    report = engine.adopt_enrolment(prepared, committing)
    assert report.enrolled == [] and sorted(report.failed) == ["b", "c"]
    assert all(isinstance(e, StoreError) for e in report.errors.values())
    assert engine.subjects() == ["a"]
    (info,) = engine.gallery_store.blocks()
    assert info.key_version == 2
    assert engine.identify(embedding=near(vectors[0], 0.2, 3)).subject_id == "a"


def test_a_later_write_between_plan_and_commit_is_kept_the_group_added_to_it(
    make_engine: Callable[..., Engine],
) -> None:
    """Deltas commute: a group planned before another write to its block is added to the
    block's latest revision, so both writes stand."""
    engine = make_engine("m", he=BACKENDS["tenseal-fast"])
    vectors = unit_vectors(4, seed=79)
    engine.enrol_many([EnrolItem("a", embeddings=[vectors[0]])])
    prepared = engine.prepare_enrolment([EnrolItem("b", embeddings=[vectors[1]])])
    encrypted = engine.encrypt_enrolment(prepared)
    engine.enrol(EnrolItem("c", embeddings=[vectors[2]]))  # the same block, meanwhile
    committing = engine.commit_enrolment_later(prepared, encrypted)
    assert committing is not None
    assert engine.adopt_enrolment(prepared, committing).enrolled == ["b"]
    for i, subject in enumerate("abc"):
        assert engine.identify(embedding=near(vectors[i], 0.2, i)).subject_id == subject


def test_the_second_of_two_groups_in_flight_is_added_to_the_firsts_sum_without_a_read(
    make_engine: Callable[..., Engine], home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two groups planned on the same cached revision (the service keeps two in flight):
    the committer adds the second to the sum it just committed, never reading the 67 MB
    block back from the store; both stand."""
    from frip_plugins.gallery_stores._sql import SqlGalleryStore

    engine = make_engine("o", he=BACKENDS["tenseal-fast"])
    vectors = unit_vectors(3, seed=89)
    engine.enrol(EnrolItem("a", embeddings=[vectors[0]]))
    assert engine.identify(embedding=near(vectors[0], 0.2, 1)).subject_id == "a"  # cached
    plans = [
        engine.prepare_enrolment([EnrolItem(s, embeddings=[vectors[i + 1]])])
        for i, s in enumerate("bc")
    ]
    encrypted = [engine.encrypt_enrolment(plan) for plan in plans]

    def no_read(store: Any, block_id: int) -> tuple[int, bytes]:
        raise AssertionError("a block was read back from the store")

    monkeypatch.setattr(SqlGalleryStore, "read_block", no_read)
    committing = [
        engine.commit_enrolment_later(p, e) for p, e in zip(plans, encrypted, strict=True)
    ]
    reports = []
    for plan, commit in zip(plans, committing, strict=True):
        assert commit is not None
        reports.append(engine.adopt_enrolment(plan, commit))
    assert [r.enrolled for r in reports] == [["b"], ["c"]]
    for i, subject in enumerate("abc"):
        assert engine.identify(embedding=near(vectors[i], 0.2, i)).subject_id == subject
    monkeypatch.undo()
    with Engine.open("o", home) as again:  # as stored
        for i, subject in enumerate("abc"):
            assert again.identify(embedding=near(vectors[i], 0.2, i)).subject_id == subject


def test_a_group_into_a_block_the_committer_made_new_reads_that_block(
    make_engine: Callable[..., Engine], home: Path
) -> None:
    """The first group of an empty engine makes a new block (written as encrypted, no sum
    loaded); the next group adds to that block: the committer must read it, not add to a
    sum it never had (a TypeError seen as a lost worker, 503, once)."""
    engine = make_engine("n", he=BACKENDS["tenseal-fast"])
    vectors = unit_vectors(3, seed=97)
    for i, subject in enumerate("abc"):
        prepared = engine.prepare_enrolment([EnrolItem(subject, embeddings=[vectors[i]])])
        committing = engine.commit_enrolment_later(prepared, engine.encrypt_enrolment(prepared))
        assert committing is not None
        report = engine.adopt_enrolment(prepared, committing)
        assert report.enrolled == [subject] and not report.failed, report.failed
    for i, subject in enumerate("abc"):
        assert engine.identify(embedding=near(vectors[i], 0.2, i)).subject_id == subject
    with Engine.open("n", home) as again:  # as stored
        assert again.subjects() == ["a", "b", "c"]


def until(condition: Callable[[], bool], why: str, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, why
        time.sleep(0.01)


def test_a_second_sqlite_handle_in_the_process_keeps_the_wal_of_the_first_safe(
    make_engine: Callable[..., Engine], home: Path
) -> None:
    """The committer opens its own gallery-store handle beside the engine's. Opening the
    SQLite file again in the process (its checks open and close it) must not drop the
    POSIX locks SQLite holds on it for the whole process: else another process closing
    its last connection takes the file as unused and deletes the WAL the engine still
    writes to (SQLite's "how to corrupt", 2.2), and the gallery reads as malformed."""
    import subprocess
    import sys

    from frip_engine import plugins

    engine = make_engine("w", engine={"name": "w", "insecure": True}, he={"plugin": "plaintext"})
    vectors = unit_vectors(3, seed=97)
    engine.enrol(EnrolItem("a", embeddings=[vectors[0]]))  # the engine's connection: open
    wal = engine.gallery_store.path.with_name(engine.gallery_store.path.name + "-wal")
    assert wal.exists()
    second = plugins.create("gallery_store", "sqlite")
    second.bind(str(engine.directory))  # as the committer does, in this process
    assert [b.block_id for b in second.blocks()] == [
        b.block_id for b in engine.gallery_store.blocks()
    ]
    second.close()
    other = (
        "import sys\nfrom frip_engine import plugins\n"
        "store = plugins.create('gallery_store', 'sqlite')\nstore.bind(sys.argv[1])\n"
        "print(len(store.blocks()))\nstore.close()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", other, str(engine.directory)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert wal.exists(), "another process deleted the WAL this process still has open"
    engine.enrol(EnrolItem("b", embeddings=[vectors[1]]))
    assert engine.identify(embedding=near(vectors[1], 0.2, 1)).subject_id == "b"
