"""Slot reservations of enrolments in flight hold for every block id a store can hand out
(ids are never reused: an old engine's ids grow without bound), on both stores: seen by
another store object, refused to a second writer, gone when released or when the writer's
session ends."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from frip_engine.engine import Engine
from frip_engine.errors import StoreError

# 0, the old PostgreSQL limit (block ids < 2^31 / 2^14) and past it, the old SQLite limit
# (byte offsets < 2^63 / 2^16) and past it, and the largest id a BIGINT / rowid holds
BLOCK_IDS = [1, 131_071, 131_072, 1 << 31, (1 << 47) - 1, 1 << 47, (1 << 63) - 1]


def _other_store(engine: Engine, store: dict[str, Any]) -> Any:
    """A second store object on ``engine``'s gallery (another writer's, as on another host)."""
    if store["plugin"] == "postgres":
        from frip_plugins.gallery_stores.postgres import PostgresGalleryStore

        other: Any = PostgresGalleryStore(dsn=store["dsn"])
    else:
        from frip_plugins.gallery_stores.sqlite import SQLiteGalleryStore

        other = SQLiteGalleryStore()
    other.bind(str(engine.directory))
    return other


def test_reservations_hold_for_every_block_id(
    store: dict[str, Any], make_engine: Callable[..., Engine]
) -> None:
    engine = make_engine("r", gallery_store=store, he={"preset": "compact"})
    mine, other = engine.gallery_store, _other_store(engine, store)
    try:
        for block_id in BLOCK_IDS:
            mine.reserve_slots(block_id, [0, 5, 16_383])
            assert other.reserved_slots(block_id) == {0, 5, 16_383}, block_id
            for neighbour in (block_id - 1, block_id + 1):
                if 0 <= neighbour < 1 << 63:
                    assert other.reserved_slots(neighbour) == set(), (block_id, neighbour)
            with pytest.raises(StoreError, match="reserved by another writer"):
                other.reserve_slots(block_id, [4, 5])
            other.reserve_slots(block_id, [4, 6])
            mine.release_slots(block_id, [0, 5, 16_383])
            assert mine.reserved_slots(block_id) == {4, 6}, block_id
            other.release_slots(block_id, [4, 6])
            assert mine.reserved_slots(block_id) == set(), block_id
        other.reserve_slots(BLOCK_IDS[-1], [7])
        other.close()  # the writer's session (process) ends: its reservations go with it
        deadline = time.monotonic() + 10  # once the server has ended the session's backend
        while mine.reserved_slots(BLOCK_IDS[-1]) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert mine.reserved_slots(BLOCK_IDS[-1]) == set()
    finally:
        other.close()


@pytest.mark.parametrize("store", ["postgres"], indirect=True)
def test_writers_past_the_old_postgres_limit_pack_like_one_writer(
    store: dict[str, Any], home: Path
) -> None:
    """An engine whose block ids have grown past 131,071 (the old int4 lock keys' limit):
    three writer processes still enrol everyone once, densely, in one block."""
    import psycopg
    from test_enrol_delta import writer_processes_enrol_densely

    first = 1 << 62

    def grown() -> None:
        with psycopg.connect(autocommit=True) as conn:
            conn.execute(f"ALTER TABLE frip_p.blocks ALTER COLUMN block_id RESTART WITH {first}")

    writer_processes_enrol_densely(home, store, created=grown)
    with Engine.open("p", home) as engine:
        assert [b.block_id for b in engine.gallery_store.blocks()] == [first]
