"""A gallery store whose commit is two transactions: the block, then (after a slow disk's
pause) the slot map. A kill between them leaves a block its slot map does not match."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from frip_plugins.gallery_stores.sqlite import SQLiteGalleryStore

from frip_engine.contracts import NewSubject
from frip_engine.testing import GalleryStoreConformance


class TwoStepStore(SQLiteGalleryStore):
    def commit_block(
        self,
        block_id: int | None,
        expected_revision: int,
        partition: int,
        key_version: int,
        capacity: int,
        data: bytes,
        added: Sequence[NewSubject] = (),
        removed: Sequence[str] = (),
        routing: tuple[int, bytes] | None = None,
        context_sha256: str | None = None,
    ) -> int:
        block_id = super().commit_block(
            block_id, expected_revision, partition, key_version, capacity, data
        )
        time.sleep(0.3)
        with self._transaction() as tx:
            tx.executemany(
                "INSERT INTO subjects VALUES (?, ?, ?, ?, ?)",
                [(s.subject_id, block_id, s.slot, s.images, "now") for s in added],
            )
        return block_id


class TestTwoStepStore(GalleryStoreConformance):
    def make(self, **overrides: Any) -> Any:
        return TwoStepStore()
