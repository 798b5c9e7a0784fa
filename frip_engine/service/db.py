"""One way to open the service's SQLite files: WAL, shared across threads behind a lock.

The service touches its database from the event loop and from engine threads; SQLite
connections are thread-bound by default, so each file gets one connection opened with
``check_same_thread=False`` and every use goes through the caller's lock.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from frip_engine import sqlite_tx
from frip_engine.errors import StoreError
from frip_engine.private import private_file


def now_iso() -> str:
    """UTC time to the microsecond, the one timestamp format of the service's records."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


class Database:
    """A SQLite file with a schema applied once and a lock around every use."""

    def __init__(self, path: Path, synchronous: str = "FULL") -> None:
        self.path = path
        try:
            private_file(path)  # 0600 before SQLite opens it: its -wal and -shm follow
            self._db = sqlite3.connect(
                path, isolation_level=None, timeout=30, check_same_thread=False
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={synchronous}")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.row_factory = sqlite3.Row
        except (sqlite3.DatabaseError, OSError) as exc:
            raise StoreError(f"service database {path} is not usable: {exc}") from exc
        self.lock = threading.RLock()

    def ensure(self, schema: str) -> None:
        """Create a module's tables if they are not there yet (``IF NOT EXISTS`` DDL)."""
        with self.lock:
            try:
                self._db.executescript(schema)
            except sqlite3.DatabaseError as exc:
                raise StoreError(f"service database {self.path}: {exc}") from exc

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: all of it is committed, or none (also on a crash)."""
        with self.lock, sqlite_tx.transaction(self._db):
            yield self._db

    def query(self, sql: str, args: tuple[object, ...] = ()) -> list[sqlite3.Row]:
        with self.lock:
            return self._db.execute(sql, args).fetchall()

    def close(self) -> None:
        with self.lock:
            self._db.close()
