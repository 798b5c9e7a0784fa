"""Open engines, each driven by its own single thread.

An ``Engine`` is not thread-safe (TenSEAL objects, a SQLite connection bound to the
thread that opened it), so each engine gets one worker thread that opens it and runs
every call on it, in arrival order. The event loop only awaits those calls, so it stays
free for other requests and other engines; an acknowledged call has returned in full.

Micro-batching (``EngineSlot.batch``): calls that can be answered together (identify
requests with the same options; enrolments) wait in the engine's queue; the engine's
thread takes up to ``batch_max`` of one kind at a time (or the kind's own limits, as
enrolment groups have) and answers them in one call. A call that
finds the engine idle runs at once, alone; only when others are already queued does the
thread wait, at most ``batch_wait`` seconds, for the batch to fill.

A batch may answer :class:`Later` (a group of enrolments: planned on the engine's
thread, encrypted in a worker process, committed by the engine's committer thread or,
where it is no delta, on the engine's thread): the engine's
thread is free meanwhile and answers other kinds (identify from the committed blocks).
Up to ``Later.at_once`` batches of that kind may be in flight together (1: they run one
at a time, in order; more: a pipeline, the next group encrypted while one commits).
Once a Later batch's work is done, its finish runs on the engine's thread right after
the batch running now, ahead of every batch queued meanwhile: a commit (and the
acknowledgements it holds back) never waits behind a stream of identify batches.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from frip_engine.engine import Engine

T = TypeVar("T")
I = TypeVar("I")  # noqa: E741  (one item of a batch)


@dataclass(eq=False)
class Later(Generic[T]):
    """A batch's answer that comes later: once ``pending`` is done (off the engine's
    thread), ``finish(pending)`` runs on the engine's thread and gives each item its
    result or its own exception, in order. ``at_once``: how many batches of its kind may
    be in flight (answering Later) together, this one included; 1 keeps them in order."""

    pending: Future[Any]
    finish: Callable[[Future[Any]], Sequence[T | BaseException]]
    at_once: int = 1


# Answers a batch on the engine's thread: one result or exception per item, in order,
# now or Later.
BatchWork = Callable[["Engine", list[I]], "Sequence[T | BaseException] | Later[T]"]


@dataclass(eq=False)
class Waiting(Generic[I, T]):
    """One call queued for a batch: its kind (calls of equal ``key`` are answered
    together, by ``work``, at most ``most`` at a time, waiting at most ``wait`` seconds
    for more once others of its kind queue), its item, and the future its caller awaits."""

    key: Hashable
    item: I
    work: BatchWork[I, T]
    most: int
    wait: float  # seconds
    future: Future[T] = field(default_factory=Future)
    submitted: float = field(default_factory=time.perf_counter)
    started: float = 0.0


class EngineSlot:
    """One open engine, the one thread allowed to touch it, and its batch queue."""

    def __init__(
        self,
        name: str,
        executor: ThreadPoolExecutor,
        engine: Engine,
        batch_max: int = 1,
        batch_wait: float = 0.0,
    ) -> None:
        self.name = name
        self.executor = executor
        self.engine = engine
        self.batch_max = batch_max
        self.batch_wait = batch_wait  # seconds
        self._waiting: list[Waiting[Any, Any]] = []
        self._arrived = threading.Condition()
        self._later: dict[Hashable, list[Later[Any]]] = {}  # kind -> its batches in flight
        self._finishing: deque[Callable[[], None]] = deque()  # Later batches done: finish

    async def run(self, work: Callable[[Engine], T]) -> tuple[T, float]:
        """Run ``work(engine)`` on the engine's thread; also return how long it queued."""
        submitted = time.perf_counter()
        started: list[float] = []

        def timed() -> T:
            started.append(time.perf_counter())
            return work(self.engine)

        result = await asyncio.get_running_loop().run_in_executor(self.executor, timed)
        return result, started[0] - submitted

    async def batch(
        self,
        key: Hashable,
        item: I,
        work: BatchWork[I, T],
        limits: tuple[int, float] | None = None,
    ) -> tuple[T, float]:
        """Answer ``item`` on the engine's thread together with the queued items of the same
        ``key``: ``work(engine, items)`` gives each its result or its own exception (raised
        here, to this caller only); an exception of ``work`` itself is raised to all. Also
        returns how long the item queued (seconds). ``limits``: (most items per batch,
        longest wait in seconds for a batch to fill) for this kind; default the slot's
        ``batch_max`` and ``batch_wait``."""
        most, wait = limits or (self.batch_max, self.batch_wait)
        waiting: Waiting[I, T] = Waiting(key, item, work, most, wait)
        with self._arrived:
            self._waiting.append(waiting)
            self._arrived.notify()
        self.executor.submit(self._drain)  # one drain per call: none is left behind
        result = await asyncio.wrap_future(waiting.future)
        return result, waiting.started - waiting.submitted

    def queued(self) -> int:
        """How many calls wait for a batch."""
        with self._arrived:
            return len(self._waiting)

    def answering_later(self) -> int:
        """How many batches were handed off (Later) and are not yet finished."""
        with self._arrived:
            return sum(len(batches) for batches in self._later.values())

    def _held(self, key: Hashable) -> bool:
        """Whether calls of kind ``key`` must wait: as many of its batches are in flight
        (Later) as the strictest of them allows. Under ``_arrived``."""
        batches = self._later.get(key, [])
        return bool(batches) and len(batches) >= min(b.at_once for b in batches)

    def _drain(self) -> None:
        """On the engine's thread: first finish every Later batch whose work is done;
        then answer the oldest queued call whose kind is not held back by its batches
        in flight, with up to ``most - 1`` more of its kind (nothing if earlier drains
        took them all), every one queued when it starts or arriving within its ``wait``."""
        while True:
            with self._arrived:
                if not self._finishing:
                    break
                finish = self._finishing.popleft()
            finish()
        with self._arrived:
            ready = [w for w in self._waiting if not self._held(w.key)]
            if not ready:
                return
            key, most = ready[0].key, ready[0].most
            deadline = time.perf_counter() + ready[0].wait
            while 1 < self._count(key) < most:  # others of its kind wait too
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                self._arrived.wait(left)
            chosen = [w for w in self._waiting if w.key == key][:most]
            self._waiting = [w for w in self._waiting if w not in chosen]
        chosen = [w for w in chosen if w.future.set_running_or_notify_cancel()]
        if not chosen:
            return
        started = time.perf_counter()
        for waiting in chosen:
            waiting.started = started
        try:
            results = chosen[0].work(self.engine, [w.item for w in chosen])
        except BaseException as exc:  # the engine's own fault: every caller is told
            self._answer(chosen, exc)
            return
        if isinstance(results, Later):
            with self._arrived:
                self._later.setdefault(key, []).append(results)
            results.pending.add_done_callback(lambda _: self._resume(key, chosen, results))
            return
        self._answer(chosen, results)

    def _resume(self, key: Hashable, chosen: list[Waiting[Any, Any]], later: Later[Any]) -> None:
        """Once a Later batch's work is done (any thread): finish it on the engine's thread
        at the next drain, ahead of the calls queued, then let its kind's queued calls in."""

        def finish() -> None:
            try:
                self._answer(chosen, later.finish(later.pending))
            except BaseException as exc:  # the engine's own fault: every caller is told
                self._answer(chosen, exc)
            finally:
                with self._arrived:
                    batches = self._later.get(key, [])
                    batches.remove(later)
                    if not batches:
                        del self._later[key]
                    queued = self._count(key)
                for _ in range(queued):  # the drains these calls submitted found them held
                    self.executor.submit(self._drain)

        with self._arrived:
            self._finishing.append(finish)
        try:
            self.executor.submit(self._drain)
        except RuntimeError as exc:  # the engine is closing: nothing is committed
            with self._arrived:
                if finish not in self._finishing:
                    return  # a drain already running took it
                self._finishing.remove(finish)
            self._answer(chosen, exc)

    @staticmethod
    def _answer(chosen: list[Waiting[Any, Any]], results: Sequence[Any] | BaseException) -> None:
        """Give each chosen call its result or exception (one exception: to all)."""
        if isinstance(results, BaseException):
            for waiting in chosen:
                waiting.future.set_exception(results)
            return
        for waiting, result in zip(chosen, results, strict=True):
            if isinstance(result, BaseException):
                waiting.future.set_exception(result)
            else:
                waiting.future.set_result(result)

    def _count(self, key: Hashable) -> int:
        return sum(1 for w in self._waiting if w.key == key)

    def call(self, work: Callable[[], T]) -> T:
        """Run ``work`` on the engine's thread from another (non-engine) thread and wait."""
        return self.executor.submit(work).result()


class EnginePool:
    """The open engines, by name; each slot batches up to ``batch_max`` calls (1: none),
    waiting at most ``batch_wait`` seconds to fill a batch once calls queue."""

    def __init__(
        self,
        home: Path,
        on_open: Callable[[Engine], Any],
        batch_max: int = 1,
        batch_wait: float = 0.0,
    ) -> None:
        self.home = home
        self.on_open = on_open
        self.batch_max = batch_max
        self.batch_wait = batch_wait
        self._slots: dict[str, EngineSlot] = {}
        self._opening = asyncio.Lock()

    def __len__(self) -> int:
        return len(self._slots)

    def opened(self, name: str) -> EngineSlot | None:
        """The engine's slot if it is open, else None (never opens it)."""
        return self._slots.get(name)

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
            slot = EngineSlot(name, executor, engine, self.batch_max, self.batch_wait)
            self._slots[name] = slot
            return slot

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
