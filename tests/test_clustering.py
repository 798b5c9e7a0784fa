"""Clusterers, capped partitions, sealed centroids and top-p routing."""

from __future__ import annotations

import sqlite3
from typing import Any

import numpy as np
import pytest
from conftest import near, unit_vectors

from frip_engine.engine import Engine, EnrolItem
from frip_engine.errors import CorruptionError, ProfileError, SubjectError
from frip_engine.profile import Profile, build

PLAIN = {"he": {"plugin": "plaintext", "slots": 256}}


def _groups(n: int, groups: int = 5, spread: float = 3.0, seed: int = 1) -> np.ndarray:
    """Registrants in loose groups, like faces of similar-looking populations."""
    centres = unit_vectors(groups, seed=seed)
    return np.array([near(centres[i % groups], spread, 10_000 * seed + i) for i in range(n)])


def _engine(
    make_engine: Any, name: str, clusterer: dict[str, Any], he: dict[str, Any] | None = None
) -> Engine:
    sections: dict[str, Any] = {"clusterer": clusterer, **(he or PLAIN)}
    if (he or PLAIN)["he"]["plugin"] == "plaintext":
        sections["engine"] = {"name": name, "insecure": True}
    return make_engine(name, **sections)  # type: ignore[no-any-return]


def _enrol(engine: Engine, vectors: np.ndarray, prefix: str = "s") -> None:
    report = engine.enrol_many(
        [EnrolItem(f"{prefix}{i}", embeddings=[v]) for i, v in enumerate(vectors)]
    )
    assert not report.failed


@pytest.mark.parametrize("plugin", ["kmeans", "faiss"])
def test_all_clusters_equals_exhaustive_search_under_he(make_engine: Any, plugin: str) -> None:
    vectors = _groups(150)
    tenseal = {"he": {"plugin": "tenseal"}}
    clustered = _engine(make_engine, f"c-{plugin}", {"plugin": plugin, "max_size": 40}, tenseal)
    exhaustive = _engine(make_engine, f"x-{plugin}", {"plugin": "single"}, tenseal)
    _enrol(clustered, vectors)
    _enrol(exhaustive, vectors)
    assert len({b.partition for b in clustered.gallery_store.blocks()}) >= 4
    for i in range(0, 150, 10):
        probe = near(vectors[i], 0.8, 500 + i)
        a = clustered.identify(embedding=probe, top_k=3, probe_clusters="all")
        b = exhaustive.identify(embedding=probe, top_k=3)
        assert [c.subject_id for c in a.candidates] == [c.subject_id for c in b.candidates]
        assert a.matched == b.matched
        routed = clustered.identify(embedding=probe, probe_clusters=2)
        assert routed.subject_id == f"s{i}" and routed.blocks_scored <= 2


def test_cluster_sizes_are_capped_and_overflow_founds_new_clusters(make_engine: Any) -> None:
    engine = _engine(make_engine, "cap", {"plugin": "kmeans", "max_size": 20})
    _enrol(engine, _groups(30))
    assert all(b.used <= 20 for b in engine.gallery_store.blocks())
    first = {b.partition for b in engine.gallery_store.blocks()}
    # 40 more, all from one group: its cluster fills up, the rest found new clusters
    _enrol(engine, np.array([near(_groups(5)[0], 2.0, 900 + i) for i in range(40)]), prefix="t")
    sizes = [b.used for b in engine.gallery_store.blocks()]
    assert all(size <= 20 for size in sizes) and sum(sizes) == 70
    assert {b.partition for b in engine.gallery_store.blocks()} > first


def test_routing_finds_mated_probes_at_small_p(make_engine: Any) -> None:
    vectors = _groups(400, groups=8)
    engine = _engine(
        make_engine, "route", {"plugin": "kmeans", "max_size": 60, "probe_clusters": 2}
    )
    _enrol(engine, vectors)
    partitions = len({b.partition for b in engine.gallery_store.blocks()})
    hits = [
        engine.identify(embedding=near(vectors[i], 0.5, i)).subject_id == f"s{i}"
        for i in range(0, 400, 7)
    ]
    assert np.mean(hits) >= 0.95
    decision = engine.identify(embedding=vectors[0])
    assert decision.blocks_scored == 2 < partitions
    assert "routing" in decision.timings


def test_centroids_are_sealed_at_rest(make_engine: Any) -> None:
    engine = _engine(make_engine, "sealed", {"plugin": "kmeans", "max_size": 30})
    _enrol(engine, _groups(90))
    current = engine.gallery_store.read_routing()
    assert current is not None
    state = engine.key_service.open_router(current[1])
    assert state is not None and state.clusters >= 3
    engine.close()
    raw = (engine.directory / "gallery.sqlite").read_bytes()
    assert b"sums.npy" not in raw and b"counts.npy" not in raw  # no npz in the clear
    for centroid in state.centroids():
        assert centroid[:4].tobytes() not in raw
    for row in state.sums:
        assert row[:4].tobytes() not in raw


def test_removal_updates_the_cluster_and_empty_clusters_are_skipped(make_engine: Any) -> None:
    engine = _engine(
        make_engine, "erase", {"plugin": "kmeans", "max_size": 10, "probe_clusters": 1}
    )
    vectors = _groups(20, groups=2)
    _enrol(engine, vectors)
    current = engine.gallery_store.read_routing()
    assert current is not None
    before = engine.key_service.open_router(current[1])
    assert before is not None
    record = engine.gallery_store.subject("s0")
    assert record is not None
    members = [
        s.subject_id for s in engine.gallery_store.subjects() if s.block_id == record.block_id
    ]
    for subject in members:
        engine.remove(subject)
    current = engine.gallery_store.read_routing()
    assert current is not None
    after = engine.key_service.open_router(current[1])
    assert after is not None
    assert after.counts.sum() == before.counts.sum() - len(members)
    emptied = int(np.flatnonzero(after.counts == 0)[0])
    assert not np.any(after.sums[emptied])
    survivor = next(s for s in engine.gallery_store.subjects())
    index = int(survivor.subject_id[1:])
    assert engine.identify(embedding=vectors[index]).subject_id == survivor.subject_id


def test_fewer_registrants_than_clusters_and_duplicates(make_engine: Any) -> None:
    few = _engine(make_engine, "few", {"plugin": "kmeans", "clusters": 10})
    _enrol(few, unit_vectors(3))
    assert len({b.partition for b in few.gallery_store.blocks()}) <= 3
    dupes = _engine(make_engine, "dupes", {"plugin": "faiss", "clusters": 4})
    same = np.repeat(unit_vectors(1), 12, axis=0)
    _enrol(dupes, same)
    assert len(dupes.gallery_store.subjects()) == 12
    assert dupes.identify(embedding=same[0]).score == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"probe_clusters": 0}, "probe_clusters"),
        ({"max_size": 0}, "max_size"),
        ({"max_size": "huge"}, "max_size"),
        ({"fill": 2.0}, "fill"),
        ({"clusters": -1}, "clusters"),
    ],
)
def test_bad_clusterer_parameters(params: dict[str, Any], message: str) -> None:
    with pytest.raises(ProfileError, match=message):
        build(
            Profile.from_dict(
                {"engine": {"name": "b"}, "clusterer": {"plugin": "kmeans", **params}}
            )
        )


def test_routing_parameter_out_of_range_at_identify(make_engine: Any) -> None:
    engine = _engine(make_engine, "p", {"plugin": "kmeans", "max_size": 10})
    _enrol(engine, _groups(25))
    with pytest.raises(SubjectError, match="probe_clusters"):
        engine.identify(embedding=unit_vectors(1)[0], probe_clusters=0)
    every = len({b.partition for b in engine.gallery_store.blocks()})
    assert engine.identify(embedding=unit_vectors(1)[0], probe_clusters=99).blocks_scored == every


def test_cluster_model_from_another_extractor_or_tampered(make_engine: Any) -> None:
    engine = _engine(make_engine, "foreign", {"plugin": "kmeans", "max_size": 10})
    _enrol(engine, _groups(15))
    current = engine.gallery_store.read_routing()
    assert current is not None
    state = engine.key_service.open_router(current[1])
    assert state is not None
    state.extractor = "facenet"
    info = engine.gallery_store.blocks()[0]
    engine.gallery_store.commit_block(
        info.block_id,
        info.revision,
        info.partition,
        1,
        info.capacity,
        engine.gallery_store.read_block(info.block_id)[1],
        routing=(current[0], engine.key_service.seal_router(state)),
    )
    with pytest.raises(ProfileError, match="built for 512-d 'facenet'"):
        engine.enrol(EnrolItem("late", embeddings=[unit_vectors(1)[0]]))
    engine.gallery_store.close()
    with sqlite3.connect(engine.directory / "gallery.sqlite") as db:
        (data,) = db.execute("SELECT data FROM routing").fetchone()
        db.execute("UPDATE routing SET data = ?", (data[:40] + bytes([data[40] ^ 1]) + data[41:],))
    with pytest.raises(CorruptionError, match="routing state"):
        engine.identify(embedding=unit_vectors(1)[0])


def test_worker_processes_give_the_same_decisions(make_engine: Any) -> None:
    vectors = _groups(120)
    tenseal = {"he": {"plugin": "tenseal"}}
    serial = _engine(make_engine, "serial", {"plugin": "kmeans", "max_size": 40}, tenseal)
    parallel = make_engine(
        "parallel",
        engine={"name": "parallel", "workers": 2},
        clusterer={"plugin": "kmeans", "max_size": 40},
        he={"plugin": "tenseal"},
    )
    _enrol(serial, vectors)
    _enrol(parallel, vectors)
    assert parallel._scorer is not None  # the workers encrypted the new blocks
    for i in range(0, 120, 15):
        probe = near(vectors[i], 0.7, 70 + i)
        a = serial.identify(embedding=probe, top_k=3, probe_clusters="all")
        b = parallel.identify(embedding=probe, top_k=3, probe_clusters="all")
        assert [c.subject_id for c in a.candidates] == [c.subject_id for c in b.candidates]
        assert b.blocks_scored >= 3
    parallel.remove("s0")  # workers notice the new block revision
    assert parallel.identify(embedding=vectors[0], probe_clusters="all").subject_id != "s0"
