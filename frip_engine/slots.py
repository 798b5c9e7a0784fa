"""Slots promised to enrolments in flight (reserved, not yet committed).

An enrolment whose HE backend adds rows as a delta (packed CKKS layout) takes its slots
under the engine's write lock, encrypts its rows outside the lock, and adds them to the
block's latest revision under the lock again (homomorphic addition commutes, so writers
may commit in any order). Between the two, its slots are reserved here so that no other
writer takes them.

A reservation lives in this process's memory and, where the gallery store shares writers
across processes or hosts, in the store (``reserve_slots``) for as long as the writer's
process or session lives: SQLite's OFD byte locks, dropped by the kernel with the
process; PostgreSQL rows that count only while their owner session holds its advisory
lock, dropped by the server with the session. Both hold for every block id. A writer
that dies between reserving and committing leaves nothing behind: its slots are free
again and hold no subject (a subject is enrolled only once its slot-map row commits with
the block that holds its ciphertexts). Should two writers ever meet in one slot anyway
(a writer of an older version, which reserves nothing), the store's UNIQUE (block_id,
slot) refuses the second commit whole: nothing half-written, never a mixed slot.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any, Protocol, cast

import numpy as np

Release = Callable[[], None]


class DeltaMatcher(Protocol):
    """A matcher that adds an enrolment to a block as a delta (the packed CKKS layout:
    ``frip_plugins.he_backends._ckks_layouts.CKKSMatcher``)."""

    deltas: bool

    def encrypt_zeros(self, count: int) -> list[Any]:
        """``count`` fresh public-key encryptions of zero, each to be used once."""
        ...

    def encrypt_rows_with(self, rows: np.ndarray, slots: Sequence[int], zeros: list[Any]) -> Any:
        """A block of ``rows`` in ``slots`` alone, from encryptions of zero popped off
        ``zeros`` (the rest encrypted afresh)."""
        ...

    def add_delta(self, block: Any, delta: Any) -> Any:
        """``block`` with the rows of ``delta`` (a block of new rows alone) added."""
        ...


def delta_matcher(matcher: object) -> DeltaMatcher | None:
    """``matcher`` where it adds enrolments as deltas, else None."""
    return cast(DeltaMatcher, matcher) if getattr(matcher, "deltas", False) else None


class Reservations:
    """This process's reserved slots per block id, shared by its threads, and the
    gallery store's cross-process reservations where it keeps them."""

    def __init__(self, store: Any) -> None:
        self._held: dict[int, set[int]] = defaultdict(set)
        self._lock = threading.Lock()
        self._store = store if hasattr(store, "reserve_slots") else None

    def taken(self, block_id: int) -> set[int]:
        """The slots of block ``block_id`` reserved by any writer (this process's, and
        other processes' where the store keeps reservations)."""
        with self._lock:
            mine = set(self._held.get(block_id, ()))
        if self._store is not None:
            mine |= self._store.reserved_slots(block_id)
        return mine

    def hold(self, block_id: int, slots: list[int]) -> Release:
        """Reserve ``slots`` of ``block_id`` (call under the write lock, after
        :meth:`taken`); returns the function that releases them (idempotent)."""
        with self._lock:
            self._held[block_id].update(slots)
        if self._store is not None:
            try:
                self._store.reserve_slots(block_id, slots)
            except BaseException:
                self._forget(block_id, slots)
                raise
        done = threading.Event()

        def release() -> None:
            if done.is_set():
                return
            done.set()
            self._forget(block_id, slots)
            if self._store is not None:
                self._store.release_slots(block_id, slots)

        return release

    def _forget(self, block_id: int, slots: list[int]) -> None:
        with self._lock:
            held = self._held[block_id]
            held.difference_update(slots)
            if not held:
                del self._held[block_id]
