"""Cross-process slot reservations for a gallery kept in a local file (``sqlite``): Linux
open-file-description (OFD) byte-range locks on ``<gallery file>.slots``, one byte per
slot (block b, slot s at byte b * SLOT_SPAN + s). A file offset holds 63 bits and a block id
(a rowid) 63 too, so the ids are spread over files of BLOCKS_PER_FILE blocks each: block b
is block b % BLOCKS_PER_FILE of ``<gallery file>.slots`` (b < BLOCKS_PER_FILE, every engine
in practice) or of ``<gallery file>.slots.<b // BLOCKS_PER_FILE>``.

A reservation holds its own open file description until it is released; the kernel
drops the lock when the description is closed, which happens when the process ends,
however it ends (``kill -9`` included). Nothing is ever written into the file. OFD locks,
unlike POSIX ``lockf`` locks, belong to the description, not the process: one thread
closing another descriptor does not drop this process's other reservations, and
another reservation of the same process is seen as taken like any other.
"""

from __future__ import annotations

import fcntl
import os
import struct
import threading
from pathlib import Path

from frip_engine.errors import StoreError

SLOT_SPAN = 1 << 16  # bytes per block: more than any CKKS block's slots (N/2 <= 16384)
BLOCKS_PER_FILE = 1 << 46  # blocks per file: offsets stay below 2^62
# struct flock on Linux (64-bit off_t): l_type, l_whence, l_start, l_len, l_pid (0 for OFD)
_FLOCK = struct.Struct("@hhqqi4x")


def _runs(slots: list[int]) -> list[tuple[int, int]]:
    """Sorted ``slots`` as (first, length) runs of consecutive slots."""
    runs: list[tuple[int, int]] = []
    for slot in sorted(set(slots)):
        if runs and runs[-1][0] + runs[-1][1] == slot:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((slot, 1))
    return runs


class SlotLocks:
    """Reservations of slots in the file ``path`` (created 0600 when first used)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._held: dict[tuple[int, tuple[int, ...]], int] = {}
        self._lock = threading.Lock()

    def _open(self, block_id: int) -> tuple[int, int]:
        """The descriptor of the file holding ``block_id``'s bytes, and their first offset."""
        if not 0 <= block_id < 1 << 63:
            raise StoreError(f"block id {block_id} is not a rowid (0 <= id < 2^63)")
        part, place = divmod(block_id, BLOCKS_PER_FILE)
        path = self.path.with_name(f"{self.path.name}.{part}") if part else self.path
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT, 0o600), place * SLOT_SPAN
        except OSError as exc:
            raise StoreError(f"cannot open the slot reservations {path}: {exc}") from exc

    def reserve(self, block_id: int, slots: list[int]) -> None:
        """Hold ``slots`` of ``block_id`` until :meth:`release`; StoreError if another
        writer holds one of them (the caller checked :meth:`taken` under the write lock,
        so only a writer that ignores that lock gets here)."""
        fd, base = self._open(block_id)
        try:
            for first, length in _runs(slots):
                lock = _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, base + first, length, 0)
                fcntl.fcntl(fd, fcntl.F_OFD_SETLK, lock)
        except OSError as exc:
            os.close(fd)
            raise StoreError(
                f"slots of block {block_id} are reserved by another writer ({exc}); retry"
            ) from exc
        with self._lock:
            self._held[(block_id, tuple(sorted(slots)))] = fd

    def release(self, block_id: int, slots: list[int]) -> None:
        """Drop the reservation :meth:`reserve` made of these slots (none: nothing)."""
        with self._lock:
            fd = self._held.pop((block_id, tuple(sorted(slots))), None)
        if fd is not None:
            os.close(fd)

    def taken(self, block_id: int) -> set[int]:
        """The slots of ``block_id`` any reservation holds (this process's too)."""
        fd, base = self._open(block_id)
        found: set[int] = set()
        try:
            start, end = base, base + SLOT_SPAN
            while start < end:
                probe = _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, start, end - start, 0)
                kind, _, first, length, _ = _FLOCK.unpack(fcntl.fcntl(fd, fcntl.F_OFD_GETLK, probe))
                if kind == fcntl.F_UNLCK:
                    break
                stop = end if length == 0 else min(end, first + length)
                found.update(range(first - base, stop - base))
                start = stop
        finally:
            os.close(fd)
        return found

    def close(self) -> None:
        """Release every reservation still held."""
        with self._lock:
            fds, self._held = list(self._held.values()), {}
        for fd in fds:
            os.close(fd)
