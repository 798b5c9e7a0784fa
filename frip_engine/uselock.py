"""Who has an engine open, across threads and processes.

Every open :class:`~frip_engine.engine.Engine` holds a shared ``flock`` on
``<engine>/in-use.lock`` (a 0600 file) from before it reads its profile until ``close()``.
An operation that swaps the engine's gallery store (``frip engine migrate``) converts its
own handle's lock to exclusive without waiting: refused while any other handle, in any
process, has the engine open (a running ``frip serve`` would keep writing into the old
store). While that exclusive lock is held, opening the engine is refused. The kernel drops
a lock when its holder exits or dies; each handle opens the file anew, so two handles in
one process exclude each other too.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from frip_engine.errors import EngineInUseError, StoreError

USE_LOCK_FILE = "in-use.lock"


class EngineUse:
    """One open handle's shared lock on an engine (released by :meth:`release`, or when
    the object is collected). Raises EngineInUseError while the engine is being migrated,
    StoreError when the lock file cannot be opened."""

    def __init__(self, directory: Path, engine: str) -> None:
        import fcntl

        self.engine = engine
        path = directory / USE_LOCK_FILE
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StoreError(f"engine '{engine}': cannot open its lock {path}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise EngineInUseError(
                f"engine '{engine}' is being moved to another gallery store (frip engine "
                "migrate): retry when that has finished"
            ) from None
        self._fd = fd
        self._release = weakref.finalize(self, os.close, fd)

    def release(self) -> None:
        """Drop the lock (closing its file); harmless twice."""
        self._release()

    @contextmanager
    def alone(self, doing: str) -> Iterator[None]:
        """Hold the engine exclusively for the ``with`` block (``doing`` names the operation
        in the error), without waiting: EngineInUseError while any other handle has it open.
        The handle's shared lock is back afterwards."""
        import fcntl

        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            # a refused conversion drops the shared lock: take it back (nobody else can
            # hold it exclusively while the other users hold theirs)
            with suppress(BlockingIOError):
                fcntl.flock(self._fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            raise EngineInUseError(
                f"engine '{self.engine}' is open in another process (a running frip serve, a "
                f"script) or another handle: {doing} needs it unused; stop frip serve (or "
                "close the other handle) first; nothing was changed"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_SH)
