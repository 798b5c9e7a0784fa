"""The commit of a delta enrolment, off the engine's thread (issue 16).

A delta plan (packed CKKS, no routing: ``EnrolPlan.deltas``) adds each step's encrypted
rows to its block's latest revision and writes the sum. That commit (~1 s on a quiet
machine for a 67 MB block: load the delta, add, serialise, write with SHA-256) runs here,
on one thread the engine owns, so its thread keeps scoring the committed blocks; the
engine then adopts the result (``Engine.adopt_enrolment``). The committer never touches
the Engine object (an engine serves one thread) nor the secret key: it holds the public
matcher, opens its own gallery-store handle for each group (as the encryption workers
do, ``parallel._start``), and takes the engine's write lock and the store's
``exclusive()`` around each write. The addition (numpy), the hashing and the SQLite
write release the GIL, so it runs beside the scoring on another core.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from frip_engine import plugins
from frip_engine.contracts import BlockInfo, GalleryStore, NewSubject
from frip_engine.errors import FripError, StoreError
from frip_engine.slots import delta_matcher
from frip_engine.writelock import write_lock

# What one step's commit gave: (block id, its new revision, the loaded sum or None for a
# new block), or the error that left its subjects absent.
Outcome = tuple[int, int, Any] | FripError


@dataclass
class CommitStep:
    """One step of a delta plan: its partition, its open block (None: a new one), the
    subjects added, and the engine's cached copy of that block as (revision, loaded)
    when it holds one (used when the store's latest revision is that one)."""

    partition: int
    info: BlockInfo | None
    added: list[NewSubject]
    cached: tuple[int, Any] | None


@dataclass
class CommitJob:
    """A delta plan's commit: its steps, the HE key version it was planned under, the
    engine's public matcher and its block capacity."""

    steps: list[CommitStep]
    key_version: int
    matcher: Any
    capacity: int


class Committer:
    """One thread that commits delta enrolments for one engine, in submission order."""

    def __init__(self, name: str, directory: Path, store: str, params: dict[str, Any]) -> None:
        self.name = name
        self.directory = directory
        self._store, self._params = store, params
        self._thread = ThreadPoolExecutor(1, thread_name_prefix=f"frip-commit-{name}")
        # block id -> (revision, loaded sum) of the last commit here: the base of the next
        # group's sum when no other writer moved the block (two groups in flight were
        # planned on the same cached revision; the second adds to the first's sum)
        self._last: dict[int, tuple[int, Any]] = {}

    def submit(
        self, job: CommitJob, blocks: Future[list[tuple[str, bytes]]]
    ) -> Future[list[Outcome]]:
        """Commit ``job`` once its encrypted ``blocks`` (fingerprint, serialised rows per
        step) are there; the future fails as ``blocks`` did, else gives each step's
        :data:`Outcome`."""
        return self._thread.submit(self._commit, job, blocks)

    def close(self) -> None:
        """Wait for the commits submitted, then end the thread."""
        self._thread.shutdown(wait=True)

    def _commit(self, job: CommitJob, blocks: Future[list[tuple[str, bytes]]]) -> list[Outcome]:
        encrypted = blocks.result()  # an encryption failure fails the whole group
        store: GalleryStore = plugins.create("gallery_store", self._store, **self._params)
        try:
            store.bind(str(self.directory))
            return self._commit_steps(store, job, encrypted)
        finally:
            store.close()

    def _commit_steps(
        self, store: GalleryStore, job: CommitJob, encrypted: Sequence[tuple[str, bytes]]
    ) -> list[Outcome]:
        """Every step's sum is made first (a block gone or re-keyed refuses the whole
        group, nothing written), then each is written under the write lock, made again
        there if another writer moved its block meanwhile."""
        matcher = job.matcher
        merged: list[tuple[int, Any, bytes]] = []
        try:
            for step, (_, data) in zip(job.steps, encrypted, strict=True):
                if step.info is None:
                    merged.append((0, None, data))
                else:
                    delta = matcher.load(data)
                    base = self._newest(step.info.block_id, step.cached)
                    merged.append(_merge(store, job, step.info.block_id, base, delta))
        except FripError as exc:
            return [exc] * len(job.steps)
        outcomes: list[Outcome] = []
        for step, (fingerprint, data), (revision, total, summed) in zip(
            job.steps, encrypted, merged, strict=True
        ):
            try:
                with self._locked(store):
                    if step.info is not None:
                        latest = _latest(store, job, step.info.block_id)
                        if latest.revision != revision:  # another writer: add to its sum
                            cached = (revision, total)
                            revision, total, summed = _merge(
                                store, job, step.info.block_id, cached, matcher.load(data)
                            )
                    block_id = store.commit_block(
                        None if step.info is None else step.info.block_id,
                        revision,
                        step.partition,
                        job.key_version,
                        job.capacity,
                        summed,
                        added=step.added,
                        context_sha256=fingerprint,
                    )
                    now = next(b.revision for b in store.blocks() if b.block_id == block_id)
            except FripError as exc:  # this step is absent; the others stand
                outcomes.append(exc)
                continue
            if total is None:  # a new block, written as encrypted: no sum loaded
                self._last.pop(block_id, None)
            else:
                self._last[block_id] = (now, total)
            outcomes.append((block_id, now, total))
        return outcomes

    def _newest(self, block_id: int, cached: tuple[int, Any] | None) -> tuple[int, Any] | None:
        """The later of the engine's cached copy of ``block_id`` and this committer's last
        sum of it, as (revision, loaded); None when neither is known."""
        known = [c for c in (cached, self._last.get(block_id)) if c is not None]
        return max(known, key=lambda c: c[0], default=None)

    @contextmanager
    def _locked(self, store: GalleryStore) -> Iterator[None]:
        """The engine's write lock, then the store's own exclusive lock where it has one
        (a store shared by hosts): as ``Engine._writing`` takes them, without the key."""
        shared = getattr(store, "exclusive", None)
        with write_lock(self.directory, self.name), shared() if shared else nullcontext():
            yield


def _latest(store: GalleryStore, job: CommitJob, block_id: int) -> BlockInfo:
    """Block ``block_id`` as the store records it now; StoreError when it is gone or on
    another HE key than the plan's (removed or re-encrypted meanwhile)."""
    latest = next((b for b in store.blocks() if b.block_id == block_id), None)
    if latest is None or latest.key_version != job.key_version:
        raise StoreError(
            f"block {block_id} was removed or re-encrypted while this enrolment was "
            "encrypted; nothing was written, retry"
        )
    return latest


def _merge(
    store: GalleryStore, job: CommitJob, block_id: int, cached: tuple[int, Any] | None, delta: Any
) -> tuple[int, Any, bytes]:
    """Block ``block_id`` at its latest revision (``cached`` when it is that revision,
    else read from the store) plus the loaded ``delta``: (that revision, the loaded sum,
    the sum serialised). Raises StoreError (gone, re-keyed, moved while read)."""
    latest = _latest(store, job, block_id)
    if cached is not None and cached[0] == latest.revision:
        base = cached[1]
    else:
        found, data = store.read_block(block_id)
        if found != latest.revision:
            raise StoreError(f"block {block_id} changed while it was read; retry")
        base = job.matcher.load(data)
    adder = delta_matcher(job.matcher)
    if adder is None:
        raise StoreError("this HE backend adds no enrolment deltas")
    total = adder.add_delta(base, delta)
    return latest.revision, total, job.matcher.dump(total)
