"""Scoring blocks, and encrypting new ones, in worker processes.

TenSEAL holds the GIL, so parallel scoring means processes. Each worker owns a fixed
share of the blocks (block id modulo the number of workers), opens the engine's gallery store
itself and keeps the blocks it has loaded, so a gallery is loaded once per worker, not
once per probe. Workers get the public context only: they can score and encrypt, not
decrypt. A bulk enrolment hands them whole new blocks to encrypt: the rows cross a local
pipe, are encrypted and dropped; only ciphertext comes back.
Workers start with 'forkserver' (never fork: a PKCS#11 library must not be forked), which
runs the calling script's top level again in each worker: a script that uses an engine
with workers must do so under ``if __name__ == "__main__":``, and is told so before any
worker starts (:func:`check_main_guard`).

A worker holds the public key of one HE key version, fixed when it starts. Every task
names the key version it is for and the worker refuses any other, so a pool that outlived
a key rotation can never encrypt a block under the retired key; new blocks come back with
the fingerprint of the public context that encrypted them, which the store checks.

Workers end with the engine process, even a killed one (``kill -9``): each watches the
process that started it (:func:`_watch_owner`) and exits once it is gone. Their parent is
the forkserver, not the engine, and each holds the pipes whose end-of-file tells the
forkserver and the resource tracker to exit, so those two go as soon as the workers do.
"""

from __future__ import annotations

import ast
import hashlib
import multiprocessing
import os
import sys
import threading
import time
import tokenize
from collections.abc import Callable
from concurrent.futures import BrokenExecutor, Future, ProcessPoolExecutor
from dataclasses import dataclass, field, fields
from itertools import count
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any, TypeVar

import numpy as np

from frip_engine.contracts import BlockInfo, parse_isolated, score_isolated
from frip_engine.errors import FripError, StoreError, WorkerLostError, WorkerStartError


@dataclass(frozen=True)
class InProcess:
    """The engine's own matcher and loaded blocks, lent to an executor that scores in the
    engine's process (the ``local`` executor), so a block is held once, and a block the
    engine just committed is scored without reading it back. Public material only."""

    matcher: Callable[[], Any]  # the engine's Matcher now (public context)
    # (block id, revision) -> the block loaded, from the cache or the store (StoreError if
    # the store holds another revision: it moved, retry)
    load_block: Callable[[int, int], Any]
    forget: Callable[[int], None]  # drop a block from the cache (it is being changed)
    held: Callable[[], dict[int, int]]  # block id -> serialised bytes, of the blocks held


@dataclass(frozen=True)
class WorkerSetup:
    """What a worker needs to rebuild the public side of an engine. ``in_process`` lends
    an executor in the engine's own process the engine's matcher and block cache; it never
    crosses a process boundary (a pickled setup leaves it out)."""

    he_backend: str
    he_backend_params: dict[str, Any]
    gallery_store: str
    gallery_store_params: dict[str, Any]
    engine_dir: str
    public_context: bytes
    pemiu_block_size: int | None  # a pe-miu engine's probe block size
    key_version: int  # the HE key version of public_context
    owner_pid: int = field(default_factory=os.getpid)  # the engine process (made there)
    in_process: InProcess | None = field(default=None, compare=False, repr=False)

    def __getstate__(self) -> dict[str, Any]:
        """What pickling sends to another process: every field but ``in_process``."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "in_process"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        for name, value in {**state, "in_process": None}.items():
            object.__setattr__(self, name, value)


def context_fingerprint(public_context: bytes) -> str:
    """SHA-256 (hex) of a serialised public context: which public key encrypted a block."""
    return hashlib.sha256(public_context).hexdigest()


_worker: dict[str, Any] = {}
T = TypeVar("T")


OWNER_POLL_SECONDS = 0.5


def _parent_of(pid: int) -> int | None:
    """The parent pid of process ``pid`` from /proc, or None where that cannot be read
    (no /proc, or the process is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])  # the name, in (), may hold spaces


def _owner_gone(owner_pid: int, forkserver_pid: int, forkserver_parent: int | None) -> bool:
    """Whether the engine process ``owner_pid`` has ended: it no longer exists, this
    worker's parent (the forkserver) changed, or the forkserver was adopted by another
    process than the one that started it (on Linux this also catches a killed engine left
    unreaped as a zombie, and a reused pid)."""
    try:
        os.kill(owner_pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # it exists under another user: a reused pid, which the checks below catch
    if os.getppid() != forkserver_pid:
        return True
    return _parent_of(forkserver_pid) != forkserver_parent


def _watch_owner(owner_pid: int) -> None:
    """Start a daemon thread that ends this worker process (``os._exit``) within about
    OWNER_POLL_SECONDS of the engine process ``owner_pid`` ending, however it ended."""
    forkserver_pid = os.getppid()
    forkserver_parent = _parent_of(forkserver_pid)  # the engine process, None without /proc

    def watch() -> None:
        while not _owner_gone(owner_pid, forkserver_pid, forkserver_parent):
            time.sleep(OWNER_POLL_SECONDS)
        os._exit(1)

    threading.Thread(target=watch, name="frip-owner-watch", daemon=True).start()


def _start(setup: WorkerSetup) -> None:
    _watch_owner(setup.owner_pid)
    from frip_engine import plugins

    he_backend = plugins.create("he_backend", setup.he_backend, **setup.he_backend_params)
    gallery_store = plugins.create(
        "gallery_store", setup.gallery_store, **setup.gallery_store_params
    )
    gallery_store.bind(setup.engine_dir)
    matcher = he_backend.matcher(setup.public_context, setup.pemiu_block_size)
    _worker.update(
        matcher=matcher,
        gallery_store=gallery_store,
        blocks={},
        sizes={},
        key_version=setup.key_version,
        fingerprint=context_fingerprint(setup.public_context),
    )


def _check_key(key_version: int) -> None:
    if key_version != _worker["key_version"]:
        raise StoreError(
            f"this worker process holds HE key v{_worker['key_version']} and was asked for "
            f"v{key_version}; it refuses (the engine restarts its workers after a rotation)"
        )


def _block(block_id: int, revision: int) -> Any:
    """This worker's loaded copy of a block at ``revision`` (read from the store once)."""
    matcher, blocks = _worker["matcher"], _worker["blocks"]
    cached = blocks.get(block_id)
    if cached is None or cached[0] != revision:
        found, data = _worker["gallery_store"].read_block(block_id)
        if found != revision:
            raise StoreError(f"block {block_id} changed during this identification; retry")
        blocks[block_id] = cached = (found, matcher.load(data))
        _worker["sizes"][block_id] = len(data)
    return cached[1]


def _held() -> tuple[int, dict[int, int]]:
    """This worker's process id and the blocks it holds: block id -> serialised bytes."""
    sizes: dict[int, int] = _worker["sizes"]
    return os.getpid(), {b: sizes.get(b, 0) for b in sorted(_worker["blocks"])}


def _score_many(
    key_version: int, block_id: int, revision: int, payloads: tuple[bytes, ...]
) -> list[bytes | FripError]:
    """Each probe's scores on one block (one pass where the matcher batches), or the
    error of a probe that cannot be parsed or scored; the probes are parsed once per
    worker while consecutive calls carry the same payloads."""
    _check_key(key_version)
    matcher = _worker["matcher"]
    if _worker.get("payloads") != payloads:
        _worker.update(payloads=payloads, parsed=parse_isolated(matcher, payloads))
    parsed: list[Any | FripError] = _worker["parsed"]
    return score_isolated(matcher, _block(block_id, revision), parsed)


def _encrypt(key_version: int, rows: np.ndarray, slots: list[int]) -> tuple[str, bytes]:
    _check_key(key_version)
    matcher = _worker["matcher"]
    return _worker["fingerprint"], bytes(matcher.dump(matcher.encrypt_rows(rows, slots)))


# One block of a prepared enrolment: the open block to add to, as (block id, revision), or
# None for a new block; then the rows (float64 (n, d)) and their slots.
EncryptJob = tuple[tuple[int, int] | None, np.ndarray, list[int]]


def _encrypt_jobs(key_version: int, jobs: list[EncryptJob]) -> list[tuple[str, bytes]]:
    """Each job's block, serialised, with the fingerprint of the public context used: an
    open block read from the store at its revision (StoreError if it moved) with the rows
    added, or a new block of the rows."""
    _check_key(key_version)
    matcher = _worker["matcher"]
    done = []
    for where, rows, slots in jobs:
        if where is None:
            block = matcher.encrypt_rows(rows, slots)
        else:
            block = matcher.add_rows(_block(*where), rows, slots)
            _worker["blocks"].pop(where[0], None)  # its next revision is another block
        done.append((_worker["fingerprint"], bytes(matcher.dump(block))))
    return done


def result(future: Future[T]) -> T:
    """A worker's answer; a worker that died (killed, out of memory) becomes a
    WorkerLostError (retry), one that failed otherwise a StoreError."""
    try:
        return future.result()
    except FripError:
        raise
    except BrokenExecutor as exc:
        raise WorkerLostError(
            f"a worker process ended before answering ({type(exc).__name__}); nothing was "
            "decided: retry (a new worker takes its place)"
        ) from exc
    except Exception as exc:  # a worker failed to start or raised
        raise StoreError(f"a worker process failed: {type(exc).__name__}: {exc}") from exc


def _rerun_main() -> ModuleType | None:
    """The ``__main__`` module if a new worker runs it again (as multiprocessing's spawn
    preparation does for a script or a module run with ``-m``, but not for a package's
    ``__main__`` or an interactive session), else None."""
    main = sys.modules.get("__main__")
    name = getattr(getattr(main, "__spec__", None), "name", None)
    if name is not None:
        return None if name == "__main__" or name.endswith(".__main__") else main
    return main if getattr(main, "__file__", None) else None


def _is_main_test(test: ast.expr) -> bool:
    """Whether ``test`` is ``__name__ == "__main__"`` (either way round)."""
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1):
        return False
    sides = [test.left, test.comparators[0]]
    return isinstance(test.ops[0], ast.Eq) and any(
        isinstance(a, ast.Name) and a.id == "__name__" and isinstance(b, ast.Constant)
        and b.value == "__main__"
        for a, b in (sides, sides[::-1])
    )  # fmt: skip


def _guarded(path: str, line: int) -> bool:
    """Whether top-level line ``line`` of the script ``path`` is inside the body of an
    ``if __name__ == "__main__":`` block (True when the source cannot be read: no guess)."""
    try:
        with tokenize.open(path) as handle:
            tree = ast.parse(handle.read())
    except (OSError, SyntaxError, ValueError):
        return True
    for node in tree.body:
        if node.lineno <= line <= (node.end_lineno or node.lineno):
            return (
                isinstance(node, ast.If)
                and _is_main_test(node.test)
                and node.body[0].lineno <= line <= (node.body[-1].end_lineno or line)
            )
    return True


def check_main_guard() -> None:
    """Raise WorkerStartError if worker processes would run the caller's script again,
    because the engine is used from its top level outside ``if __name__ == "__main__":``
    (each worker would start the engine again and die while bootstrapping), or because
    the script has no file to run again (read from standard input)."""
    main = _rerun_main()
    if main is None:
        return
    if not Path(str(main.__file__)).is_file():
        raise WorkerStartError(
            f"this engine scores in worker processes (workers > 1), which start by running "
            f"your script again from its file, and {main.__file__!r} is none (a script read "
            "from standard input, or a file since removed): save the script to a file and "
            "run that, or use workers = 1"
        )
    frame: FrameType | None = sys._getframe(1)
    while frame is not None and not (
        frame.f_code.co_name == "<module>" and frame.f_globals is vars(main)
    ):
        frame = frame.f_back
    if frame is None or _guarded(str(main.__file__), frame.f_lineno):
        return  # not called from the script's top level (a thread, a callback): no guess
    raise WorkerStartError(
        f"{main.__file__}, line {frame.f_lineno}: this engine scores in worker processes "
        "(workers > 1), which start by running your script again; code at its top level "
        "would start the engine in every worker. Put it under "
        "'if __name__ == \"__main__\":' (see README, Python API), or use workers = 1"
    )


class ParallelScorer:
    """Worker processes, one pool of one process each; worker ``i`` holds the blocks whose
    id is ``i`` modulo their number. A worker that died is replaced at the next call."""

    def __init__(self, setup: WorkerSetup, workers: int) -> None:
        check_main_guard()
        self._setup = setup
        self._pools = [self._pool() for _ in range(workers)]
        self._turn = count()
        self.key_version = setup.key_version

    def _pool(self) -> ProcessPoolExecutor:
        context = multiprocessing.get_context("forkserver")
        return ProcessPoolExecutor(
            1, mp_context=context, initializer=_start, initargs=(self._setup,)
        )

    def _heal(self) -> None:
        """Replace each pool whose worker died (a broken pool refuses every task)."""
        for i, pool in enumerate(self._pools):
            if getattr(pool, "_broken", False):
                pool.shutdown(wait=False, cancel_futures=True)
                self._pools[i] = self._pool()

    def score_many(
        self, jobs: list[tuple[BlockInfo, tuple[bytes, ...]]]
    ) -> list[list[bytes | FripError]]:
        """For each (block, probe payloads): each probe's scores on the block, or its own
        error. A worker that dies fails the whole call with a WorkerLostError (its
        replacement starts at the next call), never a partial answer."""
        self._heal()
        futures = [
            self._pools[b.block_id % len(self._pools)].submit(
                _score_many, b.key_version, b.block_id, b.revision, payloads
            )
            for b, payloads in jobs
        ]
        return [result(f) for f in futures]

    def held(self, timeout: float) -> list[tuple[int, dict[int, int]] | Exception]:
        """Per worker in order: (its process id, block id -> serialised bytes held), or
        why it did not answer within ``timeout`` seconds (it died, or is busy)."""
        futures = [pool.submit(_held) for pool in self._pools]
        answers: list[tuple[int, dict[int, int]] | Exception] = []
        for future in futures:
            try:
                answers.append(future.result(timeout=timeout))
            except Exception as exc:  # a dead worker, or one busy for longer than timeout
                answers.append(exc)
        return answers

    def encrypt(
        self, rows: np.ndarray, slots: list[int], key_version: int
    ) -> Future[tuple[str, bytes]]:
        """A new block of ``rows`` in ``slots`` under HE key ``key_version``, from the next
        worker in turn: (fingerprint of the public context used, serialised block)."""
        self._heal()
        pool = self._pools[next(self._turn) % len(self._pools)]
        return pool.submit(_encrypt, key_version, rows, slots)

    def encrypt_steps(
        self, jobs: list[EncryptJob], key_version: int
    ) -> Future[list[tuple[str, bytes]]]:
        """Every job's block under HE key ``key_version``, in order, from the next worker
        in turn: (fingerprint of the public context used, serialised block) per job."""
        self._heal()
        pool = self._pools[next(self._turn) % len(self._pools)]
        return pool.submit(_encrypt_jobs, key_version, jobs)

    def close(self) -> None:
        for pool in self._pools:
            pool.shutdown(cancel_futures=True)
