"""The gallery store suite: a commit is all or nothing, even when the process is killed in
the middle of one; a stale revision or a block under another public context writes
nothing; a damaged stored block is detected (CorruptionError), never used.

:func:`_commit_forever` is the child process the kill test starts: it commits blocks in a
loop until it is killed.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from frip_engine.contracts import GalleryStore, NewSubject
from frip_engine.errors import CorruptionError, StoreError
from frip_engine.testing.base import Conformance, refused

CAPACITY = 4096
PUBLIC_CONTEXT = b"conformance public context"
META = {"engine_id": "conformance-engine", "name": "engine", "dimension": "32", "key_version": "1"}


def block_data(generation: int, size: int) -> bytes:
    """Block contents that say which commit wrote them: the generation, then random
    bytes seeded by it (incompressible, like ciphertexts)."""
    head = generation.to_bytes(8, "little")
    return head + np.random.default_rng(generation).bytes(size - len(head))


def generation_of(data: bytes, size: int) -> int:
    """The generation ``data`` was written by; AssertionError if it is a mixture."""
    generation = int.from_bytes(data[:8], "little")
    assert data == block_data(generation, size), "the block holds parts of two commits"
    return generation


def commit_generation(store: Any, block_id: int | None, generation: int, size: int) -> int:
    """Commit generation ``generation``: the block's data and subject ``s<generation>``."""
    revision = 0 if block_id is None else store.read_block(block_id)[0]
    return int(
        store.commit_block(
            block_id,
            revision,
            0,
            1,
            CAPACITY,
            block_data(generation, size),
            added=[NewSubject(f"s{generation}", generation % CAPACITY, 1)],
        )
    )


def _commit_forever() -> None:
    """The child: build the store from argv (module, class, params JSON, engine folder,
    block size), then commit generation after generation, printing each once committed."""
    module, qualname, params, engine_dir, size = sys.argv[1:6]
    factory: Any = importlib.import_module(module)
    for part in qualname.split("."):
        factory = getattr(factory, part)
    store = factory(**json.loads(params))
    store.bind(engine_dir)
    block_id = store.blocks()[0].block_id
    generation = max(int(s.subject_id[1:]) for s in store.subjects())
    while True:
        generation += 1
        commit_generation(store, block_id, generation, int(size))
        print(generation, flush=True)


class GalleryStoreConformance(Conformance):
    """The store is bound to a fresh engine folder in ``tmp_path``. For the kill test, the
    component's class must be importable and built by ``Class(**params)`` in another
    process. ``corrupt_block`` damages a stored block; the default finds the block's bytes
    in the files under the engine folder (override it for a store on a server)."""

    kind: ClassVar[str] = "gallery_store"
    block_bytes: ClassVar[int] = 2_000_000  # a large block: a kill lands inside its commit

    @pytest.fixture
    def engine_dir(self, tmp_path: Path) -> Path:
        folder = tmp_path / "engine"
        folder.mkdir(mode=0o700)
        return folder

    def open_store(self, engine_dir: Path) -> Any:
        store = self.make()
        assert isinstance(store, GalleryStore), "the component does not satisfy GalleryStore"
        store.bind(str(engine_dir))
        return store

    @pytest.fixture
    def store(self, engine_dir: Path) -> Iterator[Any]:
        """A new gallery holding one block (generation 1) and subject s1."""
        store = self.open_store(engine_dir)
        store.initialise(dict(META))
        store.put_public_context(1, PUBLIC_CONTEXT)
        commit_generation(store, None, 1, self.block_bytes)
        yield store
        store.close()

    def corrupt_block(self, store: Any, engine_dir: Path, block_id: int) -> None:
        """Change one byte of the stored copy of ``block_id`` (the store is closed)."""
        _, data = store.read_block(block_id)
        store.close()
        changed = []
        for start in range(4096, len(data) - 64, 4096 * 8):
            piece = data[start : start + 64]
            for path in (p for p in engine_dir.rglob("*") if p.is_file()):
                blob = bytearray(path.read_bytes())
                at = blob.find(piece)
                if at >= 0:
                    blob[at + 7] ^= 0xFF
                    path.write_bytes(bytes(blob))
                    changed.append(path)
            if changed:
                return
        pytest.fail(
            "the block's bytes are in no file under the engine folder: override "
            "corrupt_block() to damage a stored block of this store"
        )

    def test_commits_persist_across_a_reopen(self, store: Any, engine_dir: Path) -> None:
        (info,) = store.blocks()
        commit_generation(store, info.block_id, 2, self.block_bytes)
        store.close()
        again = self.open_store(engine_dir)
        try:
            meta = again.meta()
            assert meta["engine_id"] == META["engine_id"], f"after a reopen, meta() is {meta}"
            assert again.public_context(1) == PUBLIC_CONTEXT, (
                "after a reopen, public_context(1) is not what put_public_context stored"
            )
            _, data = again.read_block(info.block_id)
            generation = generation_of(data, self.block_bytes)
            assert generation == 2, f"after a reopen, the block is commit {generation}, not 2"
            subjects = sorted(s.subject_id for s in again.subjects())
            assert subjects == ["s1", "s2"], f"after a reopen, the subjects are {subjects}"
            found = again.subject("s2")
            assert found is not None and found.block_id == info.block_id, (
                f"after a reopen, subject('s2') is {found}, expected in block {info.block_id}"
            )
        finally:
            again.close()

    def test_a_stale_revision_is_refused_and_writes_nothing(self, store: Any) -> None:
        (info,) = store.blocks()
        revision, before = store.read_block(info.block_id)
        commit_generation(store, info.block_id, 2, self.block_bytes)
        with refused(StoreError, "a commit with a stale expected_revision"):
            store.commit_block(
                info.block_id,
                revision,  # what the block was before the last commit
                0,
                1,
                CAPACITY,
                block_data(3, self.block_bytes),
                added=[NewSubject("s3", 3, 1)],
            )
        generation = generation_of(store.read_block(info.block_id)[1], self.block_bytes)
        assert generation == 2, f"after a refused commit the block is commit {generation}, not 2"
        assert store.subject("s3") is None, "a refused commit added its subject"
        assert before != store.read_block(info.block_id)[1], "the accepted commit was not kept"

    def test_a_block_under_another_public_context_is_refused(self, store: Any) -> None:
        before = store.blocks()
        with refused(StoreError, "a block under another public context (context_sha256)"):
            store.commit_block(
                None, 0, 0, 1, CAPACITY, block_data(2, 1000), context_sha256="0" * 64
            )
        assert store.blocks() == before, "a refused commit wrote a block"
        recorded = hashlib.sha256(PUBLIC_CONTEXT).hexdigest()
        new = store.commit_block(
            None, 0, 1, 1, CAPACITY, block_data(3, 1000), context_sha256=recorded
        )
        generation = generation_of(store.read_block(new)[1], 1000)
        assert generation == 3, f"the new block reads as commit {generation}, not 3"

    def test_a_corrupted_block_is_detected(self, store: Any, engine_dir: Path) -> None:
        (info,) = store.blocks()
        self.corrupt_block(store, engine_dir, info.block_id)
        again = self.open_store(engine_dir)
        try:
            with refused(CorruptionError, "reading a block with one byte changed"):
                again.read_block(info.block_id)
        finally:
            again.close()

    def test_a_kill_during_a_commit_leaves_one_whole_state(
        self, store: Any, engine_dir: Path
    ) -> None:
        store.close()
        factory = type(store)
        environment = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        child = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from frip_engine.testing.gallery_store import _commit_forever; _commit_forever()",
                factory.__module__,
                factory.__qualname__,
                json.dumps(self.params),
                str(engine_dir),
                str(self.block_bytes),
            ],
            stdout=subprocess.PIPE,
            text=True,
            env=environment,
        )
        assert child.stdout is not None, "the child process has no stdout pipe"
        acknowledged, stamps = 1, list[float]()
        deadline = time.monotonic() + 60
        while len(stamps) < 4 and time.monotonic() < deadline:
            line = child.stdout.readline()
            if not line:
                break
            acknowledged = int(line)
            stamps.append(time.monotonic())
        if len(stamps) < 4:
            child.kill()
            pytest.fail(
                f"the committing process stopped (exit {child.wait()}) before it was killed"
            )
        time.sleep((stamps[-1] - stamps[0]) / (len(stamps) - 1) / 2)  # inside the next commit
        child.send_signal(signal.SIGKILL)
        child.wait()
        again = self.open_store(engine_dir)
        try:
            (info,) = again.blocks()
            generation = generation_of(again.read_block(info.block_id)[1], self.block_bytes)
            assert generation >= acknowledged, "an acknowledged commit was lost"
            subjects = sorted(int(s.subject_id[1:]) for s in again.subjects())
            assert subjects == list(range(1, generation + 1)), (
                f"the block is generation {generation} but the slot map holds {subjects}"
            )
            commit_generation(again, info.block_id, generation + 1, self.block_bytes)
        finally:
            again.close()
