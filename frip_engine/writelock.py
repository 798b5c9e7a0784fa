"""One writer at a time per engine, across threads and processes.

A write (enrolment, removal, key rotation, moving the keys) reads the slot map, picks
free slots or opens a block, encrypts, and commits. Two writers interleaving would each
see the same free slots, or each open a block of its own; so every write holds an
exclusive ``flock`` on ``<engine>/write.lock`` from before it reads the slot map until
its last commit, and the next writer waits its turn. Readers never take it. The kernel
drops the lock when its holder exits or dies, so a crashed writer never blocks the
engine; each acquisition opens the file anew, so threads of one process exclude each
other too.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from frip_engine.errors import StoreError

LOCK_FILE = "write.lock"
WAIT_SECONDS = 600.0
# the longest sleep between two tries: a waiting writer starts at most this long after
# the lock is released
MAX_PAUSE = 0.01


@contextmanager
def write_lock(directory: Path, engine: str, wait: float = WAIT_SECONDS) -> Iterator[None]:
    """Hold the engine's write lock for the ``with`` block, waiting up to ``wait`` seconds
    for the writer before; StoreError (nothing written) if that writer takes longer."""
    import fcntl

    path = directory / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise StoreError(f"engine '{engine}': cannot open its write lock {path}: {exc}") from exc
    try:
        deadline = time.monotonic() + wait
        pause = 0.005
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise StoreError(
                        f"engine '{engine}' is busy: another writer has held {path} for over "
                        f"{wait:.0f} s; nothing was written, retry when it has finished"
                    ) from None
                time.sleep(pause)
                pause = min(2 * pause, MAX_PAUSE)
        yield
    finally:
        os.close(fd)  # releases the lock
