"""The executor suite: an executor's scores are exactly the in-process scores, a bad probe
fails alone, a block of another key version is refused, new blocks come back under the
setup's public context, ``status`` lists every block it holds exactly once and ``close``
can be called twice.

The suite builds one small synthetic gallery per test class: an engine (TenSEAL's
``compact`` preset, a key store in memory, a k-means clusterer making several blocks) in
a temporary FRIP_HOME, whose public setup (:class:`~frip_engine.parallel.WorkerSetup`,
no secret) builds the executor under test.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest

from frip_engine.contracts import (
    BlockInfo,
    Executor,
    ShardStatus,
    parse_isolated,
    score_isolated,
)
from frip_engine.errors import FripError, StoreError
from frip_engine.testing.adapter import unit_vectors
from frip_engine.testing.base import Conformance, refused

REGISTRANTS = 8  # in groups of at most GROUP_SIZE: several blocks
GROUP_SIZE = 6


class ExecutorConformance(Conformance):
    """An executor built as ``factory(setup, **params)`` scores every (block, probes) job
    as the engine's own process would, byte for byte, and keeps the guarantees of
    :class:`~frip_engine.contracts.Executor`. ``gallery_profile`` is the profile of the
    synthetic gallery (override it for another HE backend)."""

    kind: ClassVar[str] = "executor"
    gallery_profile: ClassVar[dict[str, Any]] = {
        "engine": {"name": "executor-suite"},
        "he": {"plugin": "tenseal", "preset": "compact"},
        "clusterer": {"plugin": "kmeans", "max_size": GROUP_SIZE},
        "key_store": {"plugin": "memory"},
    }

    @pytest.fixture(scope="class")
    @classmethod
    def gallery(cls, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
        """The synthetic gallery's engine (several blocks of registrants)."""
        from frip_engine.engine import Engine, EnrolItem
        from frip_engine.profile import Profile

        engine = Engine.create(
            Profile.from_dict(cls.gallery_profile), tmp_path_factory.mktemp("home")
        )
        vectors = unit_vectors(REGISTRANTS, engine.parts.dimension, seed=3)
        report = engine.enrol_many(
            [EnrolItem(f"s{i}", embeddings=[v]) for i, v in enumerate(vectors)]
        )
        assert not report.failed, report.failed
        assert len(engine.gallery_store.blocks()) > 1, "the synthetic gallery has one block"
        try:
            yield engine
        finally:
            engine.close()

    @pytest.fixture
    def executor(self, gallery: Any) -> Iterator[Any]:
        made = self.make(setup=gallery._worker_setup())
        assert isinstance(made, Executor), "the component does not satisfy Executor"
        try:
            yield made
        finally:
            made.close()

    @staticmethod
    def payloads(gallery: Any, count: int) -> tuple[bytes, ...]:
        """``count`` probe payloads, as the edge encodes them."""
        vectors = unit_vectors(count, gallery.parts.dimension, seed=9)
        return tuple(gallery.matcher.encode_probe(v) for v in vectors)

    @staticmethod
    def expected(gallery: Any, info: BlockInfo, payloads: tuple[bytes, ...]) -> list[Any]:
        """The scores the engine's own process computes (no executor)."""
        matcher = gallery.matcher
        _, data = gallery.gallery_store.read_block(info.block_id)
        return score_isolated(matcher, matcher.load(data), parse_isolated(matcher, payloads))

    def test_scores_equal_the_in_process_scores(self, gallery: Any, executor: Any) -> None:
        blocks = gallery.gallery_store.blocks()
        probes = self.payloads(gallery, 3)
        jobs = [(info, probes[: 1 + i % 3]) for i, info in enumerate(blocks)]
        answers = executor.score_many(jobs)
        assert len(answers) == len(jobs), f"{len(answers)} answers for {len(jobs)} jobs"
        for (info, payloads), answer in zip(jobs, answers, strict=True):
            assert answer == self.expected(gallery, info, payloads), (
                f"block {info.block_id}: scores differ from the in-process scores"
            )
        assert executor.score_many([]) == [], "no jobs must give no answers"

    def test_a_bad_probe_fails_alone(self, gallery: Any, executor: Any) -> None:
        info = gallery.gallery_store.blocks()[0]
        good = self.payloads(gallery, 2)
        (answer,) = executor.score_many([(info, (good[0], b"not a probe", good[1]))])
        assert isinstance(answer[1], FripError), f"a bad payload gave {type(answer[1]).__name__}"
        assert [answer[0], answer[2]] == self.expected(gallery, info, good), (
            "a bad payload changed the other probes' scores"
        )

    def test_a_block_of_another_key_version_is_refused(self, gallery: Any, executor: Any) -> None:
        info = gallery.gallery_store.blocks()[0]
        other = BlockInfo(**{**info.__dict__, "key_version": info.key_version + 1})
        with refused(StoreError, "scoring a block of another HE key version"):
            executor.score_many([(other, self.payloads(gallery, 1))])

    def test_new_blocks_come_back_under_the_setups_public_context(
        self, gallery: Any, executor: Any
    ) -> None:
        rows = unit_vectors(2, gallery.parts.dimension, seed=11)
        fingerprint, data = executor.encrypt_steps(
            [(None, rows, [0, 1])], gallery.key_version
        ).result(timeout=300)[0]
        assert fingerprint == hashlib.sha256(gallery.key_service.public_context).hexdigest(), (
            "a new block came back stamped with another public context than the setup's"
        )
        assert gallery.matcher.load(data) is not None, "a new block does not load"
        wrong = executor.encrypt_steps([(None, rows, [0, 1])], gallery.key_version + 1)
        with refused(StoreError, "encrypting under another HE key version"):
            wrong.result(timeout=300)

    def test_status_lists_every_block_held_exactly_once(self, gallery: Any, executor: Any) -> None:
        blocks = gallery.gallery_store.blocks()
        executor.score_many([(info, self.payloads(gallery, 1)) for info in blocks])
        shards = executor.status()
        assert shards and all(isinstance(s, ShardStatus) for s in shards), shards
        held = [b for shard in shards for b in shard.blocks]
        assert sorted(held) == sorted(b.block_id for b in blocks), (
            f"blocks held {sorted(held)}, gallery {sorted(b.block_id for b in blocks)}"
        )
        assert all(s.healthy and not s.why for s in shards), shards
        assert all(s.bytes_held > 0 for s in shards if s.blocks), shards
        assert len({s.name for s in shards}) == len(shards), "two shards share a name"

    def test_close_twice_is_harmless(self, gallery: Any, executor: Any) -> None:
        executor.score_many([(gallery.gallery_store.blocks()[0], self.payloads(gallery, 1))])
        executor.close()
        executor.close()
