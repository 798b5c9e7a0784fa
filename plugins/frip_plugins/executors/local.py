"""Executor ``local``: score in the engine's own process, on the engine's loaded blocks.

The engine lends it its matcher and block cache (:class:`~frip_engine.parallel.InProcess`),
so a block is held once and a block the engine just committed is scored without being read
back. Built from a setup without that (a test, an embedding application), it opens the
gallery store itself and keeps its own cache.
"""

from __future__ import annotations

import socket
from concurrent.futures import Future
from typing import Any

from frip_engine import plugins
from frip_engine.contracts import (
    BlockInfo,
    Executor,
    Register,
    ShardStatus,
    parse_isolated,
    score_isolated,
)
from frip_engine.errors import FripError, StoreError
from frip_engine.hookspecs import hookimpl
from frip_engine.parallel import EncryptJob, InProcess, WorkerSetup, context_fingerprint


def _own_blocks(setup: WorkerSetup) -> InProcess:
    """A matcher and a block cache of this executor's own, from the public setup."""
    he_backend = plugins.create("he_backend", setup.he_backend, **setup.he_backend_params)
    store = plugins.create("gallery_store", setup.gallery_store, **setup.gallery_store_params)
    store.bind(setup.engine_dir)
    matcher = he_backend.matcher(setup.public_context, setup.pemiu_block_size)
    cache: dict[int, tuple[int, int, Any]] = {}  # block id -> (revision, bytes, block)

    def load_block(block_id: int, revision: int) -> Any:
        cached = cache.get(block_id)
        if cached is None or cached[0] != revision:
            found, data = store.read_block(block_id)
            if found != revision:
                raise StoreError(f"block {block_id} changed during this identification; retry")
            cache[block_id] = cached = (found, len(data), matcher.load(data))
        return cached[2]

    def forget(block_id: int) -> None:
        cache.pop(block_id, None)

    def held() -> dict[int, int]:
        return {block_id: entry[1] for block_id, entry in cache.items()}

    return InProcess(lambda: matcher, load_block, forget, held)


class LocalExecutor:
    """Scores in the calling thread: every probe payload parsed once per call, each block
    scored once for all the probes that want it (see :class:`~frip_engine.contracts.Executor`)."""

    name = "local"

    def __init__(self, setup: WorkerSetup) -> None:
        self._key_version = setup.key_version
        self._fingerprint = context_fingerprint(setup.public_context)
        self._blocks: InProcess | None = setup.in_process or _own_blocks(setup)

    def _host(self) -> InProcess:
        if self._blocks is None:
            raise StoreError("this executor is closed; the engine builds a new one")
        return self._blocks

    def _check_key(self, key_version: int) -> None:
        if key_version != self._key_version:
            raise StoreError(
                f"this executor holds HE key v{self._key_version} and was asked for "
                f"v{key_version}; it refuses (the engine builds a new one after a rotation)"
            )

    def score_many(
        self, jobs: list[tuple[BlockInfo, tuple[bytes, ...]]]
    ) -> list[list[bytes | FripError]]:
        host = self._host()
        for info, _ in jobs:
            self._check_key(info.key_version)
        matcher = host.matcher()
        distinct = list(dict.fromkeys(p for _, payloads in jobs for p in payloads))
        parsed = dict(zip(distinct, parse_isolated(matcher, distinct), strict=True))
        return [
            score_isolated(
                matcher,
                host.load_block(info.block_id, info.revision),
                [parsed[p] for p in payloads],
            )
            for info, payloads in jobs
        ]

    def encrypt_steps(
        self, jobs: list[EncryptJob], key_version: int
    ) -> Future[list[tuple[str, bytes]]]:
        """Computed in the calling thread before returning (an engine with this executor
        encrypts a prepared enrolment in a worker process of its own instead)."""
        done: Future[list[tuple[str, bytes]]] = Future()
        try:
            self._check_key(key_version)
            done.set_result([self._encrypt(job) for job in jobs])
        except Exception as exc:  # the future carries it, as a worker's would
            done.set_exception(exc)
        return done

    def _encrypt(self, job: EncryptJob) -> tuple[str, bytes]:
        host = self._host()
        matcher = host.matcher()
        where, rows, slots = job
        if where is None:
            block = matcher.encrypt_rows(rows, slots)
        else:
            block = matcher.add_rows(host.load_block(*where), rows, slots)
            host.forget(where[0])  # its next revision is another block
        return self._fingerprint, bytes(matcher.dump(block))

    def status(self) -> list[ShardStatus]:
        held = {} if self._blocks is None else self._blocks.held()
        why = "" if self._blocks is not None else "closed"
        return [
            ShardStatus(
                "local",
                socket.gethostname(),
                tuple(sorted(held)),
                sum(held.values()),
                self._blocks is not None,
                why,
            )
        ]

    def close(self) -> None:
        self._blocks = None  # the engine's cache stays the engine's; an own one goes


@hookimpl
def register_executors(register: Register[Executor]) -> None:
    register(
        "local",
        LocalExecutor,
        summary="score in the engine's own process (the default; one core per engine)",
    )
