"""The ``ray`` executor on a real multi-node Ray cluster started on this machine (a head
and two worker nodes offering the custom resources ``shard_node_a`` and ``shard_node_b``,
once for this module): it passes the executor suite, pins its shards to different nodes,
decides as the local executor does, and a shard actor or a whole worker node killed in
the middle of a stream of identifies gives, for every probe, the right decision over the
whole gallery or an explicit WorkerLostError (retry), then serves again on its own.
Skipped, saying why, where Ray is not installed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import PASSPHRASE, near, unit_vectors
from frip_eval import ray_cluster
from frip_plugins.executors import _residue_cache as residue_cache
from frip_plugins.executors.ray import Shard, owner

from frip_engine import plugins
from frip_engine.contracts import KeyAccess
from frip_engine.decision import Decision
from frip_engine.engine import Engine, EnrolItem
from frip_engine.errors import ExecutorConnectError, ProfileError, StoreError, WorkerLostError
from frip_engine.parallel import context_fingerprint
from frip_engine.profile import load_profile, save_profile
from frip_engine.testing import ExecutorConformance

NODES = ("shard_node_a", "shard_node_b")
# a small gallery of several blocks (one per k-means partition), 128-d (sface)
GALLERY = {
    "extractor": {"plugin": "sface"},
    "he": {"plugin": "tenseal", "preset": "compact", "scorer": "fast"},
    "clusterer": {"plugin": "kmeans", "clusters": 4, "probe_clusters": 4},
}
REGISTRANTS = 40


@pytest.fixture(scope="module")
def cluster() -> Iterator[ray_cluster.Cluster]:
    reason = ray_cluster.unavailable()
    if reason:
        pytest.skip(reason)
    import ray
    from frip_plugins.executors.ray import _connect

    with pytest.MonkeyPatch.context() as env:  # what an operator's `ray start` has on a node
        env.setenv("FRIP_PASSPHRASE", PASSPHRASE)  # for the key-service actors' file key store
        started = ray_cluster.start(NODES)
    try:
        _connect(started.address)
        started.wait_nodes(1 + len(NODES))
        yield started
    finally:
        ray.shutdown()  # before the cluster goes: a driver left connected would be ended
        ray_cluster.stop(started)


def _ray_section(cluster: ray_cluster.Cluster, **more: Any) -> dict[str, Any]:
    return {
        "plugin": "ray",
        "shards": 2,
        "address": cluster.address,
        "placement": list(NODES),
        **more,
    }


class TestRay(ExecutorConformance):
    plugin_name = "ray"
    plugin_module = "frip_plugins.executors.ray"

    @pytest.fixture
    def executor(self, gallery: Any, cluster: ray_cluster.Cluster) -> Iterator[Any]:
        section = _ray_section(cluster)
        del section["plugin"]
        made = self.make(setup=gallery._worker_setup(), **section)
        try:
            yield made
        finally:
            made.close()


# ------------------------------------------------------------------------ without Ray
def test_rendezvous_placement_moves_only_the_blocks_it_must() -> None:
    blocks = range(2000)
    four = [f"shard-{i}" for i in range(4)]
    before = {b: owner(b, four) for b in blocks}
    assert before == {b: owner(b, list(reversed(four))) for b in blocks}  # order-free
    counts = [list(before.values()).count(s) for s in four]
    assert min(counts) > 400, counts  # about a quarter each
    after = {b: owner(b, [*four, "shard-4"]) for b in blocks}
    moved = [b for b in blocks if after[b] != before[b]]
    assert all(after[b] == "shard-4" for b in moved)  # only to the new shard
    assert 300 < len(moved) < 500, len(moved)  # about a fifth
    fewer = {b: owner(b, four[1:]) for b in blocks}
    assert all(fewer[b] == before[b] for b in blocks if before[b] != "shard-0")


def test_a_shard_refuses_the_store_of_another_engine(make_engine: Callable[..., Engine]) -> None:
    mine, other = make_engine("mine", **GALLERY), make_engine("other", **GALLERY)
    vectors = unit_vectors(3, 128, seed=5)
    mine.enrol_many([EnrolItem(f"s{i}", embeddings=[v]) for i, v in enumerate(vectors)])
    info = mine.gallery_store.blocks()[0]
    setup = mine._worker_setup()
    crossed = type(setup)(
        setup.he_backend,
        setup.he_backend_params,
        setup.gallery_store,
        setup.gallery_store_params,
        setup.engine_dir,
        other.key_service.public_context,  # another engine's public key, this engine's store
        setup.pemiu_block_size,
        setup.key_version,
    )
    assert context_fingerprint(crossed.public_context) != context_fingerprint(setup.public_context)
    shard = Shard(crossed, "shard-0", ["shard-0"])
    refused = shard.score([(info.block_id, info.revision, info.key_version)], [()], [0])
    assert isinstance(refused, StoreError) and "another engine" in str(refused)


def _cached_shard(
    engine: Engine, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Shard, list[int]]:
    """A shard over all of ``engine``'s blocks with residue cache ``cache``, and the block
    ids it read from the store while starting."""
    store_type = type(engine.gallery_store)
    reads: list[int] = []
    read_block = store_type.read_block

    def counted(self: Any, block_id: int) -> Any:
        reads.append(block_id)
        return read_block(self, block_id)

    monkeypatch.setattr(store_type, "read_block", counted)
    return Shard(engine._worker_setup(), "shard-0", ["shard-0"], cache_dir=str(cache)), reads


def test_a_restarted_shard_maps_its_residue_files_instead_of_reading_the_store(
    make_engine: Callable[..., Engine], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = make_engine("cached", **GALLERY)
    vectors = unit_vectors(REGISTRANTS, 128, seed=7)
    engine.enrol_many([EnrolItem(f"s{i}", embeddings=[v]) for i, v in enumerate(vectors)])
    infos = engine.gallery_store.blocks()
    keys = [(i.block_id, i.revision, i.key_version) for i in infos]
    probe = (engine.matcher.encode_probe(vectors[0]),)
    cache = tmp_path / "residues"
    first, reads = _cached_shard(engine, cache, monkeypatch)
    assert sorted(reads) == sorted(i.block_id for i in infos)
    files = list(cache.rglob("*"))
    assert files and all(
        (f.stat().st_mode & 0o777) == (0o700 if f.is_dir() else 0o600) for f in files
    )
    second, reads = _cached_shard(engine, cache, monkeypatch)
    assert reads == []  # every block mapped from its file
    assert second.score(keys, [probe], [0] * len(keys)) == first.score(
        keys, [probe], [0] * len(keys)
    )
    # a damaged file is deleted, not scored: that block is read from the store again
    damaged = sorted(cache.rglob("*.npy"))[0]
    raw = bytearray(damaged.read_bytes())
    raw[-1] ^= 0xFF
    damaged.write_bytes(bytes(raw))
    third, reads = _cached_shard(engine, cache, monkeypatch)
    assert len(reads) == 1 and third._cache is not None
    assert third._cache.damaged == [damaged.name]
    assert third.score(keys, [probe], [0] * len(keys)) == first.score(
        keys, [probe], [0] * len(keys)
    )


def _first_block_cached(
    engine: Engine, seed: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Engine, np.ndarray, Path, Any, Path, str]:
    """``engine`` with REGISTRANTS subjects enrolled and a shard's residue files written
    under ``tmp_path/residues``: (engine, its vectors, that cache, its first block's info,
    that block's file, the files' key part ``k<key version>-<fingerprint>``)."""
    vectors = unit_vectors(REGISTRANTS, 128, seed=seed)
    engine.enrol_many([EnrolItem(f"s{i}", embeddings=[v]) for i, v in enumerate(vectors)])
    cache = tmp_path / "residues"
    _cached_shard(engine, cache, monkeypatch)
    info = engine.gallery_store.blocks()[0]
    (path,) = cache.rglob(f"b{info.block_id}-r*.npy")
    return engine, vectors, cache, info, path, path.stem.split("-", 2)[2]


def test_a_residue_file_of_another_revision_or_key_version_is_not_used(
    make_engine: Callable[..., Engine], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine, _, cache, info, path, key = _first_block_cached(
        make_engine("stale", **GALLERY), 8, tmp_path, monkeypatch
    )
    for name in (f"r{info.revision + 1}-{key}", f"r{info.revision}-k9-{key[3:]}"):
        for ext in (".npy", ".json"):  # what a newer revision / other key would be named
            old = path.with_suffix(ext)
            old.rename(old.with_name(f"b{info.block_id}-{name}{ext}"))
        _, reads = _cached_shard(engine, cache, monkeypatch)
        assert reads == [info.block_id]  # read from the store, not the foreign file
        assert not list(cache.rglob(f"b{info.block_id}-{name}.*"))  # and deleted
        (path,) = cache.rglob(f"b{info.block_id}-r*.npy")


def test_residue_files_of_superseded_revisions_and_gone_blocks_are_removed(
    make_engine: Callable[..., Engine], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A starting shard removes the files of blocks the store no longer holds or holds at
    a newer revision; mapping or writing a block's file removes its other revisions'."""
    engine, vectors, cache, info, path, key = _first_block_cached(
        make_engine("pruned", **GALLERY), 9, tmp_path, monkeypatch
    )
    stale = [f"b{info.block_id}-r{info.revision - 1}-{key}", f"b999-r1-{key}"]
    for name in stale:  # an older revision of a block, a block the store no longer has
        for ext in (".npy", ".json"):
            (path.parent / f"{name}{ext}").write_bytes(path.with_suffix(ext).read_bytes())
    _, reads = _cached_shard(engine, cache, monkeypatch)
    assert reads == []
    assert not [p for p in cache.rglob("b*") if p.name.startswith(tuple(stale))]
    blocks = len(engine.gallery_store.blocks())
    assert len(list(cache.rglob("*.npy"))) == blocks  # one file per block: no pile-up
    engine.enrol_many([EnrolItem("new", embeddings=[near(vectors[0], 0.1, seed=1)])])
    _cached_shard(engine, cache, monkeypatch)  # a block moved to a new revision
    revisions = {b.block_id: b.revision for b in engine.gallery_store.blocks()}
    files = sorted(cache.rglob("*.npy"))
    assert len(files) == len(revisions)
    assert all(f"-r{revisions[int(f.name[1:].split('-')[0])]}-" in f.name for f in files)


def test_inspect_flags_damaged_residue_files(
    make_engine: Callable[..., Engine], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What ``frip cluster status`` shows per node: each file's engine, block, revision,
    bytes, and why it is damaged (size, SHA-256, mode, another key version), if it is."""
    engine = make_engine("inspected", **GALLERY)
    vectors = unit_vectors(REGISTRANTS, 128, seed=10)
    engine.enrol_many([EnrolItem(f"s{i}", embeddings=[v]) for i, v in enumerate(vectors)])
    cache = tmp_path / "residues"
    _cached_shard(engine, cache, monkeypatch)
    files = sorted(cache.rglob("*.npy"))
    key = files[0].stem.split("-", 2)[2]
    current = {files[0].parent.name: key}
    rows = residue_cache.inspect(cache, current)
    infos = {b.block_id: b for b in engine.gallery_store.blocks()}
    assert len(rows) == len(infos) and all(r["problem"] == "" for r in rows), rows
    assert {(r["block"], r["revision"]) for r in rows} == {
        (b.block_id, b.revision) for b in infos.values()
    }
    assert all(r["engine"] == str(engine.directory) and r["bytes"] > 0 for r in rows)
    truncated, flipped, opened, foreign = files[:4]
    with open(truncated, "r+b") as f:
        f.truncate(truncated.stat().st_size - 8)
    raw = bytearray(flipped.read_bytes())
    raw[-1] ^= 0xFF
    flipped.write_bytes(bytes(raw))
    opened.chmod(0o644)
    for ext in (".npy", ".json"):
        moved = foreign.with_suffix(ext)
        moved.rename(moved.with_name(moved.name.replace(f"-{key[:2]}", "-k9")))
    (files[0].parent / "stray.bin").write_bytes(b"x")
    problems = {r["file"]: r["problem"] for r in residue_cache.inspect(cache, current)}
    assert "unreadable" in problems[truncated.name] or "bytes" in problems[truncated.name]
    assert "SHA-256" in problems[flipped.name]
    assert "0644" in problems[opened.name]
    assert "k9" in problems[foreign.name.replace(f"-{key[:2]}", "-k9")]
    assert problems["stray.bin"] == "not a residue file"
    assert residue_cache.remove_engine(cache, str(engine.directory)) > 0
    assert residue_cache.inspect(cache, current) == []


def test_a_shard_whose_blocks_do_not_fit_its_nodes_memory_says_so(
    make_engine: Callable[..., Engine], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Out of memory while loading is a clear error on every call, not a restart loop."""
    from frip_plugins.executors import ray as ray_executor

    engine = make_engine("tight", **GALLERY)
    vectors = unit_vectors(3, 128, seed=6)
    engine.enrol_many([EnrolItem(f"s{i}", embeddings=[v]) for i, v in enumerate(vectors)])
    info = engine.gallery_store.blocks()[0]
    monkeypatch.setattr(ray_executor, "available_memory", lambda: info.size_bytes // 2)
    shard = Shard(engine._worker_setup(), "shard-0", ["shard-0"])
    refused = shard.score([(info.block_id, info.revision, info.key_version)], [()], [0])
    assert isinstance(refused, ProfileError), refused
    assert "memory" in str(refused) and "shard-0" in str(refused) and "shards" in str(refused)


def test_bad_parameters_are_profile_errors(make_engine: Callable[..., Engine]) -> None:
    setup = make_engine("params")._worker_setup()
    with pytest.raises(ProfileError, match="one Ray custom resource name per shard"):
        plugins.create("executor", "ray", setup=setup, shards=2, placement=["a"])
    with pytest.raises(ProfileError, match="shards must be"):
        plugins.create("executor", "ray", setup=setup, shards=0)
    with pytest.raises(ProfileError, match="encrypt_workers must be"):
        plugins.create("executor", "ray", setup=setup, encrypt_workers=0)
    # numbers no Ray call can use: refused at load, not at the first identify
    for key, value in [
        ("timeout", float("inf")),
        ("timeout", 1e300),
        ("timeout", float("nan")),
        ("timeout", "60"),
        ("timeout", True),
        ("num_cpus", 1e300),
        ("num_cpus", float("nan")),
        ("num_cpus", "1"),
    ]:
        with pytest.raises(ProfileError, match=key):
            plugins.create("executor", "ray", setup=setup, **{key: value})
    with pytest.raises(ProfileError, match="placement"):
        plugins.create("executor", "ray", setup=setup, shards=1, placement=[""])


def test_num_cpus_no_node_offers_is_a_profile_error(
    make_engine: Callable[..., Engine], cluster: ray_cluster.Cluster
) -> None:
    """Not a 600 s wait then "retry": a shard asking more CPUs than any node has never starts."""
    setup = make_engine("greedy")._worker_setup()
    with pytest.raises(ProfileError, match="num_cpus"):
        plugins.create("executor", "ray", setup=setup, address=cluster.address, num_cpus=64)


def test_an_address_that_does_not_answer_is_a_clear_error(
    make_engine: Callable[..., Engine],
) -> None:
    pytest.importorskip("ray", reason="Ray is not installed (pip install -e '.[ray]')")
    setup = make_engine("nowhere")._worker_setup()
    started = time.monotonic()
    with pytest.raises(ExecutorConnectError, match=r"no Ray cluster answers at 127\.0\.0\.1:1"):
        plugins.create("executor", "ray", setup=setup, address="127.0.0.1:1")
    assert time.monotonic() - started < 10
    with pytest.raises(ProfileError, match="address must be"):
        plugins.create("executor", "ray", setup=setup, address="no port")


def test_auto_joins_only_the_cluster_ray_start_recorded_never_another_found_running(
    make_engine: Callable[..., Engine],
    cluster: ray_cluster.Cluster,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``address = "auto"`` is RAY_ADDRESS or the cluster the last ``ray start`` here
    recorded; when that one is gone, a clear error, not Ray's legacy fallback of joining
    whatever cluster runs on the machine (the session's test cluster runs meanwhile)."""
    from frip_plugins.executors import ray as ray_executor
    from ray._private import utils

    setup = make_engine("auto")._worker_setup()
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(utils, "read_ray_address", lambda temp_dir=None: "127.0.0.1:1")
    with pytest.raises(ExecutorConnectError, match=r"no Ray cluster answers at 127\.0\.0\.1:1"):
        plugins.create("executor", "ray", setup=setup, address="auto")
    monkeypatch.setattr(utils, "read_ray_address", lambda temp_dir=None: None)
    with pytest.raises(ExecutorConnectError, match="no Ray cluster was started on this machine"):
        plugins.create("executor", "ray", setup=setup, address="auto")
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:2")
    assert ray_executor.resolve_address("auto") == "127.0.0.1:2"
    assert ray_executor.resolve_address("10.0.0.1:6379") == "10.0.0.1:6379"


# --------------------------------------------------------------------------- on the cluster
def _same(a: Decision, b: Decision) -> None:
    assert (a.matched, a.subject_id, a.score, a.registrants, a.blocks_scored) == (
        b.matched,
        b.subject_id,
        b.score,
        b.registrants,
        b.blocks_scored,
    )
    assert a.candidates == b.candidates


def _reopened_on_ray(
    make_engine: Callable[..., Engine], home: Path, cluster: ray_cluster.Cluster, **sections: Any
) -> tuple[Engine, np.ndarray, list[Decision]]:
    """An engine enrolled and decided on the local executor, then reopened on the ray
    executor (its profile's [executor] changed, as an operator would): (engine on Ray,
    probes, the local decisions)."""
    name = f"onray{len(sections)}"
    local = make_engine(name, **GALLERY, **sections)
    vectors = unit_vectors(REGISTRANTS, 128, seed=1)
    report = local.enrol_many([EnrolItem(f"s{i}", embeddings=[v]) for i, v in enumerate(vectors)])
    assert not report.failed and len(local.gallery_store.blocks()) == 4
    probes = np.vstack([vectors[:6], unit_vectors(2, 128, seed=99)])  # 6 mated, 2 unknown
    expected = local.identify_many(embeddings=list(probes), top_k=3)
    local.close()
    profile_path = local.directory / "profile.toml"
    profile = load_profile(profile_path)
    profile.sections["executor"] = _ray_section(cluster, timeout=10)
    save_profile(profile, profile_path)
    return Engine.open(name, home), probes, [d for d in expected if isinstance(d, Decision)]


@pytest.fixture
def on_ray(
    make_engine: Callable[..., Engine], home: Path, cluster: ray_cluster.Cluster
) -> Iterator[tuple[Engine, np.ndarray, list[Decision]]]:
    """:func:`_reopened_on_ray` with the memory key store, which no other process
    reaches: the shards score, the engine's own key service decides."""
    engine, probes, expected = _reopened_on_ray(make_engine, home, cluster)
    try:
        yield engine, probes, expected
    finally:
        engine.close()


@pytest.fixture
def deciding_on_nodes(
    make_engine: Callable[..., Engine],
    home: Path,
    cluster: ray_cluster.Cluster,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[Engine, np.ndarray, list[Decision]]]:
    """:func:`_reopened_on_ray` with the file key store, which each node's key-service
    actor reaches: decisions made on the nodes. The engine's own key service is made to
    fail if it is asked to decide, which proves no score ciphertext is decided here."""
    engine, probes, expected = _reopened_on_ray(
        make_engine, home, cluster, key_store={"plugin": "file"}
    )

    def not_here(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the coordinator's key service was asked to decide")

    monkeypatch.setattr(engine.key_service, "decide_many", not_here)
    try:
        yield engine, probes, expected
    finally:
        engine.close()


def _stream(
    engine: Engine, probes: np.ndarray, expected: list[Decision], until: threading.Event
) -> tuple[int, int]:
    """Identify the probes one by one until ``until`` is set, then one round more; every
    answer must be the expected decision or WorkerLostError. (right, lost)."""
    right = lost = 0
    rounds_after = 0
    while rounds_after < 1:
        if until.is_set():
            rounds_after += 1
        for probe, want in zip(probes, expected, strict=True):
            try:
                got = engine.identify(embedding=probe, top_k=3)
            except WorkerLostError as exc:
                assert "retry" in str(exc)
                lost += 1
                continue
            _same(got, want)
            right += 1
    return right, lost


def _serves_again(engine: Engine, probes: np.ndarray, expected: list[Decision]) -> float:
    """Seconds until the engine answers every probe again (retrying on WorkerLostError)."""
    started = time.monotonic()
    while True:
        try:
            answers = engine.identify_many(embeddings=list(probes), top_k=3)
        except WorkerLostError:
            assert time.monotonic() - started < 120, "the shard did not come back"
            time.sleep(0.5)
            continue
        for got, want in zip(answers, expected, strict=True):
            assert isinstance(got, Decision), got
            _same(got, want)
        return time.monotonic() - started


def test_shards_on_two_nodes_decide_as_the_local_executor(
    on_ray: tuple[Engine, np.ndarray, list[Decision]],
) -> None:
    engine, probes, expected = on_ray
    answers = engine.identify_many(embeddings=list(probes), top_k=3)
    for got, want in zip(answers, expected, strict=True):
        assert isinstance(got, Decision), got
        _same(got, want)
        assert got.registrants == REGISTRANTS  # every shard's registrants were covered
    assert sum(d.subject_id == f"s{i}" for i, d in enumerate(expected[:6])) == 6
    executor, shards = engine.shards()  # what frip cluster status prints
    assert executor == "ray" and [s.name for s in shards] == ["shard-0", "shard-1"]
    assert all(s.healthy for s in shards), shards
    assert len({s.node.split()[0] for s in shards}) == 2, shards  # two Ray nodes
    held = sorted(b for s in shards for b in s.blocks)
    assert held == sorted(b.block_id for b in engine.gallery_store.blocks())
    assert all(s.bytes_held > 0 for s in shards if s.blocks)


def _killed_mid_stream(
    engine: Engine, probes: np.ndarray, expected: list[Decision], kill: Callable[[], None]
) -> tuple[int, int]:
    """Run the stream of identifies here (the engine is this thread's) and ``kill`` from
    another thread in the middle of it."""
    done = threading.Event()

    def killer() -> None:
        time.sleep(1.0)
        try:
            kill()
        finally:
            done.set()

    killing = threading.Thread(target=killer)
    killing.start()
    try:
        return _stream(engine, probes, expected, done)
    finally:
        killing.join()


@pytest.mark.parametrize("deciding", ["on_ray", "deciding_on_nodes"])
def test_a_shard_killed_mid_stream_is_retry_then_serves_again(
    deciding: str, request: pytest.FixtureRequest
) -> None:
    """Whether the engine decides (memory key store) or the nodes' key services do."""
    engine, probes, expected = request.getfixturevalue(deciding)
    _serves_again(engine, probes, expected)
    executor = engine._executor()
    import ray

    _, _, pid, _ = ray.get(executor._actors[0].held.remote())

    right, _ = _killed_mid_stream(engine, probes, expected, lambda: os.kill(pid, signal.SIGKILL))
    assert right > 0
    _serves_again(engine, probes, expected)  # restarted by Ray, reloaded from the store
    shards = executor.status()
    assert all(s.healthy for s in shards) and f"pid {pid}" not in shards[0].node, shards


def test_a_worker_node_killed_mid_stream_is_retry_then_serves_again(
    on_ray: tuple[Engine, np.ndarray, list[Decision]], cluster: ray_cluster.Cluster
) -> None:
    engine, probes, expected = on_ray
    _serves_again(engine, probes, expected)
    try:
        right, _ = _killed_mid_stream(
            engine, probes, expected, lambda: cluster.kill_worker("shard_node_b")
        )
        assert right > 0
    finally:
        cluster.start_worker("shard_node_b")  # the machine comes back (an operator, a VM)
    _serves_again(engine, probes, expected)  # the pinned shard restarted on it by itself
    assert all(s.healthy for s in engine._executor().status())


# ------------------------------------------------------- decisions made where scores are made
def _pids(actors: list[Any], method: str) -> list[int]:
    import ray

    if method == "held":
        return [ray.get(actor.held.remote())[2] for actor in actors]
    return [ray.get(actor.pid.remote()) for actor in actors]


def test_key_service_actors_decide_on_the_nodes_as_the_local_executor(
    deciding_on_nodes: tuple[Engine, np.ndarray, list[Decision]],
) -> None:
    engine, probes, expected = deciding_on_nodes
    answers = engine.identify_many(embeddings=list(probes), top_k=3)
    for got, want in zip(answers, expected, strict=True):
        assert isinstance(got, Decision), got
        _same(got, want)
        assert got.registrants == REGISTRANTS
        assert got.timings["decryption"] > 0  # decrypted, on a node
    verified = engine.verify("s2", embedding=probes[2])  # one block, one node
    assert verified.matched and verified.subject_id == "s2"
    executor = engine._executor()
    deciders = list(executor._deciders.values())
    assert len(deciders) == 2  # one per node group, beside its shards
    assert not set(_pids(deciders, "pid")) & set(_pids(executor._actors, "held"))


def _status(*more: str) -> subprocess.CompletedProcess[str]:
    """``frip cluster status`` in its own process (a driver of its own, as an operator's)."""
    command = [sys.executable, "-m", "frip_engine", "cluster", "status", *more]
    env = dict(os.environ, COLUMNS="250")
    return subprocess.run(command, capture_output=True, text=True, check=False, env=env)


def test_cluster_status_lists_key_services_and_residue_files(
    deciding_on_nodes: tuple[Engine, np.ndarray, list[Decision]],
    make_engine: Callable[..., Engine],
    residue_dir: Path,
) -> None:
    """Beside the shards: the key-service actors the engine's own process started (seen
    from another process), and every node's residue files, in the session's residue
    directory (the nodes honour $FRIP_RESIDUE_DIR); another engine's damaged file is
    DAMAGED, a deleted engine's files are orphaned, and --prune-orphans removes them."""
    engine, probes, _ = deciding_on_nodes
    engine.identify_many(embeddings=list(probes), top_k=3)  # the key services are started
    damaged, gone = make_engine("damaged", **GALLERY), make_engine("gone", **GALLERY)
    for other in (damaged, gone):  # files written by a shard of theirs on this machine
        other.enrol_many([EnrolItem("s0", embeddings=[unit_vectors(1, 128, seed=4)[0]])])
        Shard(other._worker_setup(), "shard-0", ["shard-0"])
    (broken,) = (residue_dir / residue_cache.engine_dir_name(str(damaged.directory))).glob("*.npy")
    raw = bytearray(broken.read_bytes())
    raw[-1] ^= 0xFF
    broken.write_bytes(bytes(raw))
    gone.close()
    shutil.rmtree(gone.directory)
    legacy = residue_dir / ("0" * 32)  # left by an older frip: files, no engine.json
    legacy.mkdir(mode=0o700)
    (sound, *_) = (residue_dir / residue_cache.engine_dir_name(str(engine.directory))).glob("*.npy")
    for part in (sound, sound.with_suffix(".json")):
        shutil.copy2(part, legacy / part.name)

    shown = _status(engine.name, "--json")
    assert shown.returncode == 0, shown.stderr
    status = json.loads(shown.stdout)
    mine = [k for k in status["key_services"] if k["this_engine"]]
    assert len(mine) == 2 and len({k["node"] for k in mine}) == 2, status["key_services"]
    assert all(k["engine"] == engine.name and k["state"] == "alive" for k in mine), mine
    assert all(k["key_version"] == engine._worker_setup().key_version for k in mine)
    files = status["residue_files"]
    assert len({f["node"] for f in files}) == 3  # every node of the cluster answered
    assert {f["dir"] for f in files} == {str(residue_dir)}  # never the shared default
    blocks = {(b.block_id, b.revision) for b in engine.gallery_store.blocks()}
    ours = [f for f in files if f["engine"] == str(engine.directory)]
    assert {(f["block"], f["revision"]) for f in ours} == blocks
    assert all(f["state"] == "ok" and f["bytes"] > 0 for f in ours), ours
    (bad,) = {f["state"] + f["why"] for f in files if f["file"] == broken.name}
    assert bad.startswith("DAMAGED") and "SHA-256" in bad
    assert {f["state"] for f in files if f["engine"] == str(gone.directory)} == {"orphaned"}
    assert {f["state"] + ": " + f["why"] for f in files if f["folder"] == legacy.name} == {
        "orphaned: no engine.json: no engine opened it since"
    }

    table = _status(engine.name, "--prune-orphans")
    assert table.returncode == 0, table.stderr
    for shown_text in ("key services", "residue files", "alive", "DAMAGED", broken.name):
        assert shown_text in table.stdout, table.stdout
    assert "orphaned" not in table.stdout
    assert not (residue_dir / residue_cache.engine_dir_name(str(gone.directory))).exists()
    assert not legacy.exists()


def test_shard_processes_never_hold_the_secret_key(
    deciding_on_nodes: tuple[Engine, np.ndarray, list[Decision]],
) -> None:
    engine, probes, _ = deciding_on_nodes
    engine.identify_many(embeddings=list(probes), top_k=3)  # the key has been used
    secret = engine.parts.key_store.load_secret(engine.profile.engine_id, "he-secret-v1")
    needle = bytes(secret[len(secret) // 2 : len(secret) // 2 + 48])
    for pid in _pids(engine._executor()._actors, "held"):
        assert not _in_memory(pid, needle), f"shard process {pid} holds the secret key"
    assert _in_memory(os.getpid(), needle)  # the scan finds it where it is (here: `secret`)


def _in_memory(pid: int, needle: bytes) -> bool:
    """Whether ``needle`` is in any readable private (anonymous or heap) mapping of ``pid``."""
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as mem:
        for line in maps:
            fields = line.split()
            if not fields[1].startswith("r") or (len(fields) > 5 and not fields[5].startswith("[")):
                continue  # unreadable, or a mapped file (code, data files)
            if fields[-1] in ("[vvar]", "[vsyscall]", "[vdso]"):
                continue
            start, end = (int(x, 16) for x in fields[0].split("-"))
            try:
                mem.seek(start)
                if needle in mem.read(end - start):
                    return True
            except OSError:
                continue
    return False


def test_a_key_service_actor_killed_mid_stream_is_retry_then_serves_again(
    deciding_on_nodes: tuple[Engine, np.ndarray, list[Decision]],
) -> None:
    engine, probes, expected = deciding_on_nodes
    _serves_again(engine, probes, expected)
    executor = engine._executor()
    (pid, _) = _pids(list(executor._deciders.values()), "pid")

    right, _ = _killed_mid_stream(engine, probes, expected, lambda: os.kill(pid, signal.SIGKILL))
    assert right > 0
    _serves_again(engine, probes, expected)  # restarted by Ray, on its node
    assert pid not in _pids(list(executor._deciders.values()), "pid")
    services = [k for k in executor.details()["key_services"] if k["this_engine"]]
    assert sorted(k["restarts"] for k in services) == [0, 1], services  # cluster status shows it


def test_key_service_actors_killed_restart_each_on_its_own_node(
    make_engine: Callable[..., Engine], home: Path, cluster: ray_cluster.Cluster
) -> None:
    """Without placement, each node's key service is pinned to that node (hard affinity):
    killed, Ray restarts it there, beside its shards, not on whichever node has room; its
    node lost (shards restarted elsewhere), key services start beside the shards' nodes."""
    import ray

    engine, probes, expected = _reopened_on_ray(
        make_engine, home, cluster, key_store={"plugin": "file"}
    )
    engine.close()
    path = engine.directory / "profile.toml"
    profile = load_profile(path)
    del profile.sections["executor"]["placement"]  # shards spread, groups are Ray nodes
    save_profile(profile, path)
    engine = Engine.open(engine.name, home)
    try:
        _serves_again(engine, probes, expected)
        deciders = engine._executor()._deciders

        def node(actor: Any) -> str:
            mine = actor.__ray_call__.remote(lambda _: ray.get_runtime_context().get_node_id())
            return str(ray.get(mine))

        assert all(node(actor) == group for group, actor in deciders.items())
        for pid in _pids(list(deciders.values()), "pid"):
            os.kill(pid, signal.SIGKILL)
        _serves_again(engine, probes, expected)
        assert all(node(actor) == group for group, actor in deciders.items())
        # a node lost: its key service cannot come back there; new ones beside the shards
        workers = {
            n["NodeID"]: r for n in ray.nodes() if n["Alive"] for r in NODES if r in n["Resources"]
        }
        lost = next(group for group in deciders if group in workers)  # SPREAD: one at least
        try:
            cluster.kill_worker(workers[lost])
            _serves_again(engine, probes, expected)
            executor = engine._executor()
            assert lost not in executor._groups and lost not in executor._deciders
            assert all(node(a) == group for group, a in executor._deciders.items())
        finally:
            cluster.start_worker(workers[lost])
    finally:
        engine.close()


def test_actors_take_no_constructor_argument_from_the_object_store(
    make_engine: Callable[..., Engine],
    cluster: ray_cluster.Cluster,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """The public context (MBs) is read by each actor from the gallery store, so Ray
    passes the constructor arguments inline: a restarted actor depends on no object, and
    Ray prints no warning about it (ray#53727) on every command."""
    engine = make_engine("lean", **GALLERY, key_store={"plugin": "file"})
    engine.enrol_many([EnrolItem("s0", embeddings=[unit_vectors(1, 128, seed=3)[0]])])
    section = _ray_section(cluster)
    del section["plugin"]
    executor = plugins.create("executor", "ray", setup=engine._worker_setup(), **section)
    try:
        (info,) = engine.gallery_store.blocks()
        payload = engine.matcher.encode_probe(unit_vectors(1, 128, seed=3)[0])
        access = KeyAccess("file", {}, engine.profile.engine_id)
        (answer,) = executor.decide_many(
            [payload], [(info, [0])], {info.block_id: np.array([0])}, 1, access
        )
        assert not isinstance(answer, Exception) and answer[0][0][1] == (info.block_id, 0)
    finally:
        executor.close()
    assert "constructor arguments in the object store" not in capfd.readouterr().err
