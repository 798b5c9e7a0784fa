"""Open engines, each driven by its own single thread.

An ``Engine`` is not thread-safe (TenSEAL objects, a SQLite connection bound to the
thread that opened it), so each engine gets one worker thread that opens it and runs
every call on it, in arrival order. The event loop only awaits those calls, so it stays
free for other requests and other engines; an acknowledged call has returned in full.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from frip_engine.engine import Engine

T = TypeVar("T")


class EngineSlot:
    """One open engine and the one thread allowed to touch it."""

    def __init__(self, name: str, executor: ThreadPoolExecutor, engine: Engine) -> None:
        self.name = name
        self.executor = executor
        self.engine = engine

    async def run(self, work: Callable[[Engine], T]) -> tuple[T, float]:
        """Run ``work(engine)`` on the engine's thread; also return how long it queued."""
        submitted = time.perf_counter()
        started: list[float] = []

        def timed() -> T:
            started.append(time.perf_counter())
            return work(self.engine)

        result = await asyncio.get_running_loop().run_in_executor(self.executor, timed)
        return result, started[0] - submitted

    def call(self, work: Callable[[], T]) -> T:
        """Run ``work`` on the engine's thread from another (non-engine) thread and wait."""
        return self.executor.submit(work).result()


class EnginePool:
    def __init__(self, home: Path, on_open: Callable[[Engine], Any]) -> None:
        self.home = home
        self.on_open = on_open
        self._slots: dict[str, EngineSlot] = {}
        self._opening = asyncio.Lock()

    def __len__(self) -> int:
        return len(self._slots)

    async def get(self, name: str) -> EngineSlot:
        """The engine's slot, opening it (and settling crash leftovers) on first use."""
        slot = self._slots.get(name)
        if slot is not None:
            return slot
        async with self._opening:
            if name in self._slots:
                return self._slots[name]
            executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"engine-{name}")
            try:
                engine = await asyncio.get_running_loop().run_in_executor(
                    executor, self._open, name
                )
            except BaseException:
                executor.shutdown(wait=False)
                raise
            self._slots[name] = EngineSlot(name, executor, engine)
            return self._slots[name]

    def _open(self, name: str) -> Engine:
        from frip_engine.engine import Engine

        engine = Engine.open(name, self.home)
        try:
            self.on_open(engine)
        except BaseException:
            engine.close()
            raise
        return engine

    def close(self) -> None:
        """Close every engine on its own thread, then stop the threads."""
        for slot in self._slots.values():
            slot.executor.submit(slot.engine.close).result()
            slot.executor.shutdown(wait=True)
        self._slots.clear()
