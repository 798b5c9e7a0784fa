"""Executor ``processes``: score in worker processes on this machine (``workers = N``).

TenSEAL holds the GIL, so scoring on several cores means processes: the worker mechanics
are :class:`frip_engine.parallel.ParallelScorer`'s (forkserver workers holding the public
context only, worker ``i`` holding the blocks whose id is ``i`` modulo N, each ending
with the engine process). A worker killed mid-call fails that call with WorkerLostError
(retry) and is replaced at the next one. ``[engine] workers = N`` (N > 1) in an older
profile means this executor with N workers.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from typing import Any

from frip_engine.contracts import Executor, Register, ShardStatus
from frip_engine.errors import ProfileError
from frip_engine.hookspecs import hookimpl
from frip_engine.parallel import ParallelScorer, WorkerSetup

MAX_WORKERS = 64
STATUS_SECONDS = 5.0  # how long status() waits for a busy worker before calling it unhealthy


class ProcessesExecutor(ParallelScorer):
    """``workers`` forkserver processes (1-64; default 2). See the module's docstring."""

    name = "processes"

    def __init__(self, setup: WorkerSetup, workers: int = 2) -> None:
        self.check_params({"workers": workers})
        super().__init__(setup, workers)
        self._closed = False

    @staticmethod
    def check_params(params: Mapping[str, Any]) -> None:
        """Raise ProfileError for a ``workers`` out of 1-64 (the profile's loader calls
        this, so that a bad section fails when the engine is created or opened)."""
        workers = params.get("workers", 2)
        if not _counts(workers) or not 1 <= workers <= MAX_WORKERS:
            raise ProfileError(
                f"workers must be an integer from 1 to {MAX_WORKERS}, not {workers!r}"
            )

    def status(self) -> list[ShardStatus]:
        node = socket.gethostname()
        if self._closed:
            return [
                ShardStatus(f"worker-{i}", node, (), 0, False, "closed")
                for i in range(len(self._pools))
            ]
        shards = []
        for i, answer in enumerate(self.held(STATUS_SECONDS)):
            if isinstance(answer, Exception):
                why = f"no answer: {type(answer).__name__} {answer}".strip()
                shards.append(ShardStatus(f"worker-{i}", node, (), 0, False, why))
                continue
            pid, held = answer
            blocks = tuple(sorted(held))
            shards.append(
                ShardStatus(f"worker-{i}", f"{node} pid {pid}", blocks, sum(held.values()), True)
            )
        return shards

    def close(self) -> None:
        self._closed = True
        super().close()


def _counts(value: object) -> bool:
    """Whether ``value`` is an integer (True and False are not)."""
    return isinstance(value, int) and not isinstance(value, bool)


@hookimpl
def register_executors(register: Register[Executor]) -> None:
    register(
        "processes",
        ProcessesExecutor,
        summary="score in N worker processes on this machine (workers = N)",
    )
