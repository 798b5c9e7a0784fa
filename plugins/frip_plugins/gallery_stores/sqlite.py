"""Gallery store ``sqlite``: one SQLite file per engine, the embedded default.

A block (its ciphertexts) and the slot map change in one transaction, so a crash leaves
every subject either fully enrolled or absent. Every blob carries its SHA-256, checked
on each read: a corrupted block is reported, never scored. The schema version lives in
``PRAGMA user_version``.
"""

from __future__ import annotations

import sqlite3
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from frip_engine import sqlite_tx
from frip_engine.contracts import GalleryStore, Register
from frip_engine.errors import InputError, StoreError
from frip_engine.hookspecs import hookimpl
from frip_engine.private import engine_file, private_file
from frip_plugins.gallery_stores._slot_locks import SlotLocks
from frip_plugins.gallery_stores._sql import SqlGalleryStore

SCHEMA_VERSION = 1
DEFAULT_FILE = "gallery.sqlite"
SQLITE_HEADER = b"SQLite format 3\x00"
SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE public_contexts (
    key_version INTEGER PRIMARY KEY, data BLOB NOT NULL, sha256 TEXT NOT NULL);
CREATE TABLE blocks (
    block_id INTEGER PRIMARY KEY, partition INTEGER NOT NULL, key_version INTEGER NOT NULL,
    revision INTEGER NOT NULL, capacity INTEGER NOT NULL, data BLOB NOT NULL,
    sha256 TEXT NOT NULL, updated_at TEXT NOT NULL);
CREATE TABLE subjects (
    subject_id TEXT PRIMARY KEY, block_id INTEGER NOT NULL REFERENCES blocks(block_id),
    slot INTEGER NOT NULL, images INTEGER NOT NULL, enrolled_at TEXT NOT NULL,
    UNIQUE (block_id, slot));
CREATE TABLE routing (
    id INTEGER PRIMARY KEY CHECK (id = 1), revision INTEGER NOT NULL, data BLOB NOT NULL,
    sha256 TEXT NOT NULL);
CREATE TABLE staged_blocks (
    block_id INTEGER PRIMARY KEY REFERENCES blocks(block_id), source_revision INTEGER NOT NULL,
    key_version INTEGER NOT NULL, data BLOB NOT NULL, sha256 TEXT NOT NULL);
"""

# Gallery files this process has SQLite connections open to, and how many. Opening such a
# file again here (the checks in _connect open and close it) would drop every POSIX lock
# SQLite holds on it for the whole process (SQLite's "How To Corrupt", 2.2): another
# process closing its last connection would then take the file as unused and delete the
# WAL this one still writes to. A second handle in the process (the engine's committer
# thread) skips those checks: the file exists and was checked by the first.
_OPEN: Counter[Path] = Counter()
_OPEN_LOCK = threading.Lock()


class SQLiteGalleryStore(SqlGalleryStore):
    """The gallery in one SQLite file (WAL journal, ``secure_delete``: a removed or
    re-keyed ciphertext is overwritten in the file at its commit)."""

    name = "sqlite"
    _subject_order = "rowid"
    _integrity_error = sqlite3.IntegrityError

    def __init__(self, path: str | None = None) -> None:
        self._placed = path  # bind() resolves it against the engine folder
        self.path = Path(path) if path else None  # as given until bound
        self._db: sqlite3.Connection | None = None
        self._slots: SlotLocks | None = None
        self._engine = "?"

    @property
    def max_blob_bytes(self) -> int:
        """SQLite's limit on one blob (SQLITE_LIMIT_LENGTH: 1e9 bytes unless compiled
        otherwise); a block is stored as one blob."""
        probe = sqlite3.connect(":memory:")
        try:
            return probe.getlimit(sqlite3.SQLITE_LIMIT_LENGTH)
        finally:
            probe.close()

    def bind(self, engine_dir: str) -> None:
        self._engine = Path(engine_dir).name
        self.path = engine_file(self._placed, engine_dir, DEFAULT_FILE, "[gallery_store] path")

    def describe(self) -> str:
        return f"sqlite {self.path}"

    def _where(self) -> str:
        return f"engine '{self._engine}': gallery file {self.path}"

    def _connect(self, create: bool = False) -> sqlite3.Connection:
        """The connection; an existing gallery is checked before SQLite touches it, and
        opening it writes nothing (its WAL journal mode was set when it was created)."""
        if self._db is not None:
            return self._db
        if self.path is None:
            raise StoreError("sqlite gallery store is not bound to an engine directory")
        with _OPEN_LOCK:  # the first handle's checks end before a second one connects
            if not _OPEN[self.path.resolve()]:
                if not create:
                    self._check_file(self.path)
                try:
                    private_file(self.path)  # 0600 before SQLite opens it: -wal, -shm follow
                except OSError as exc:
                    raise StoreError(
                        f"{self._where()} is not a readable SQLite file: {exc}"
                    ) from exc
            _OPEN[self.path.resolve()] += 1
        try:
            db = self._open(create)
        except BaseException:
            self._forget()
            raise
        self._db = db
        return db

    def _open(self, create: bool) -> sqlite3.Connection:
        """A connection to the (checked) gallery file."""
        assert self.path is not None
        try:
            db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
            if create:
                db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA foreign_keys=ON")
            db.execute("PRAGMA secure_delete=ON")  # erased ciphertexts are overwritten on disk
            version = db.execute("PRAGMA user_version").fetchone()[0]
        except (sqlite3.DatabaseError, OSError) as exc:
            raise StoreError(f"{self._where()} is not a readable SQLite file: {exc}") from exc
        if not create and version != SCHEMA_VERSION:
            db.close()
            raise StoreError(
                f"{self._where()} has schema version {version}; "
                f"this frip-engine reads version {SCHEMA_VERSION}"
            )
        return db

    def _forget(self) -> None:
        """This handle's connection is gone: one fewer open to the file (see _OPEN)."""
        assert self.path is not None
        key = self.path.resolve()
        with _OPEN_LOCK:
            _OPEN[key] -= 1
            if not _OPEN[key]:
                del _OPEN[key]

    def _check_file(self, path: Path) -> None:
        """Refuse a gallery file that is missing, empty or not SQLite, before SQLite would
        quietly treat it as a new empty database (and write a header into it)."""
        try:
            with path.open("rb") as handle:
                header = handle.read(len(SQLITE_HEADER))
        except FileNotFoundError:
            raise StoreError(f"{self._where()} is missing; restore it from a backup") from None
        except OSError as exc:
            raise StoreError(f"{self._where()} cannot be read: {exc}") from exc
        if not header:
            raise StoreError(
                f"{self._where()} is empty (0 bytes), e.g. after a full disk or an interrupted "
                "copy; restore it from a backup (nothing was changed)"
            )
        if header != SQLITE_HEADER:
            raise StoreError(
                f"{self._where()} is not a readable SQLite file (no SQLite header); "
                "restore it from a backup (nothing was changed)"
            )

    def _failed(self, exc: sqlite3.Error, wrote: bool) -> StoreError | InputError:
        """SQLite's error as a StoreError naming the engine, the file and what to do; an
        engine used from a thread other than the one that opened it is the caller's
        mistake (an InputError), not a damaged file."""
        advice = "nothing was written; " if wrote else ""
        if isinstance(exc, sqlite3.ProgrammingError) and "thread" in str(exc):
            return InputError(
                f"{self._where()}: this engine was opened in another thread, and an engine "
                f"is used by the thread that opened it; {advice}open one engine per thread "
                "(README, Python API)"
            )
        if "malformed" in str(exc):
            advice += "the file is damaged: restore it from a backup"
        elif "locked" in str(exc) or "busy" in str(exc):
            advice += "another process kept it busy for over 30 s; retry"
        else:
            advice += "check the disk and the file, then retry"
        return StoreError(f"{self._where()}: {exc}; {advice}")

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        db = self._connect()
        try:
            with sqlite_tx.transaction(db):
                yield db
        except sqlite3.Error as exc:
            raise self._failed(exc, wrote=True) from exc

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """Reads inside see one consistent state of blocks and slot map (WAL snapshot)."""
        db = self._connect()
        try:
            with sqlite_tx.transaction(db, "BEGIN"):
                yield
        except sqlite3.Error as exc:
            raise self._failed(exc, wrote=False) from exc

    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        try:
            return self._connect().execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise self._failed(exc, wrote=False) from exc

    def initialise(self, meta: dict[str, str]) -> None:
        self._connect(create=True)
        if self._query("SELECT count(*) FROM sqlite_master")[0][0]:
            raise StoreError(f"{self._where()} already holds a gallery")
        with self._transaction() as tx:
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    tx.execute(statement)
            tx.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            tx.executemany("INSERT INTO meta VALUES (?, ?)", sorted(meta.items()))

    # --------------------------------------------- reservations of enrolments in flight
    def _slot_locks(self) -> SlotLocks:
        if self._slots is None:
            if self.path is None:
                raise StoreError("sqlite gallery store is not bound to an engine directory")
            self._slots = SlotLocks(self.path.with_name(self.path.name + ".slots"))
        return self._slots

    def reserve_slots(self, block_id: int, slots: list[int]) -> None:
        """Reserve ``slots`` of ``block_id`` for an enrolment in flight, across processes,
        until :meth:`release_slots` or this process ends (``frip_engine.slots``)."""
        self._slot_locks().reserve(block_id, slots)

    def release_slots(self, block_id: int, slots: list[int]) -> None:
        self._slot_locks().release(block_id, slots)

    def reserved_slots(self, block_id: int) -> set[int]:
        """The slots of ``block_id`` that enrolments in flight (any process) reserved."""
        return self._slot_locks().taken(block_id)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
            self._forget()
        if self._slots is not None:
            self._slots.close()


@hookimpl
def register_gallery_stores(register: Register[GalleryStore]) -> None:
    register("sqlite", SQLiteGalleryStore, summary="one SQLite file per engine (embedded default)")
