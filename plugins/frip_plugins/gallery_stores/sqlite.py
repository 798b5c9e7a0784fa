"""Gallery store ``sqlite``: one SQLite file per engine, the embedded default.

A block (its ciphertexts) and the slot map change in one transaction, so a crash leaves
every subject either fully enrolled or absent. Every blob carries its SHA-256, checked
on each read: a corrupted block is reported, never scored. The schema version lives in
``PRAGMA user_version``.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from frip_engine import sqlite_tx
from frip_engine.contracts import BlockInfo, GalleryStore, NewSubject, Register, SubjectRecord
from frip_engine.errors import CorruptionError, StoreError, SubjectError
from frip_engine.hookspecs import hookimpl
from frip_engine.private import engine_file, private_file

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


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class SQLiteGalleryStore:
    name = "sqlite"

    def __init__(self, path: str | None = None) -> None:
        self._placed = path  # bind() resolves it against the engine folder
        self.path = Path(path) if path else None  # as given until bound
        self._db: sqlite3.Connection | None = None
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
        if not create:
            self._check_file(self.path)
        try:
            private_file(self.path)  # 0600 before SQLite opens it: its -wal and -shm follow
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
        self._db = db
        return db

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

    def _failed(self, exc: sqlite3.Error, wrote: bool) -> StoreError:
        """SQLite's error as a StoreError naming the engine, the file and what to do."""
        advice = "nothing was written; " if wrote else ""
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

    def meta(self) -> dict[str, str]:
        return dict(self._query("SELECT key, value FROM meta"))

    def put_public_context(self, key_version: int, data: bytes) -> None:
        with self._transaction() as tx:
            tx.execute(
                "INSERT INTO public_contexts VALUES (?, ?, ?)", (key_version, data, _digest(data))
            )

    def public_context(self, key_version: int) -> bytes:
        rows = self._query(
            "SELECT data, sha256 FROM public_contexts WHERE key_version = ?", (key_version,)
        )
        if not rows:
            raise StoreError(f"{self._where()} has no public context v{key_version}")
        data, digest = rows[0]
        if _digest(data) != digest:
            raise CorruptionError(f"{self._where()}: public context v{key_version} is corrupted")
        return bytes(data)

    def blocks(self) -> list[BlockInfo]:
        rows = self._query(
            "SELECT b.block_id, b.partition, b.key_version, b.revision, b.capacity, "
            "(SELECT count(*) FROM subjects s WHERE s.block_id = b.block_id), length(b.data) "
            "FROM blocks b ORDER BY b.block_id"
        )
        return [BlockInfo(*row) for row in rows]

    def read_block(self, block_id: int) -> tuple[int, bytes]:
        rows = self._query(
            "SELECT revision, data, sha256 FROM blocks WHERE block_id = ?", (block_id,)
        )
        if not rows:
            raise StoreError(f"{self._where()}: block {block_id} is not in it")
        revision, data, digest = rows[0]
        if _digest(data) != digest:
            raise CorruptionError(
                f"{self._where()}: block {block_id} failed its SHA-256 check: the file "
                "is corrupted; restore it from a backup (the block was not used)"
            )
        return int(revision), bytes(data)

    def read_routing(self) -> tuple[int, bytes] | None:
        """The sealed cluster-routing state and its revision, or None before the first fit."""
        rows = self._query("SELECT revision, data, sha256 FROM routing WHERE id = 1")
        if not rows:
            return None
        revision, data, digest = rows[0]
        if _digest(data) != digest:
            raise CorruptionError(f"{self._where()}: the routing state failed its SHA-256 check")
        return int(revision), bytes(data)

    def subjects(self) -> list[SubjectRecord]:
        rows = self._query(
            "SELECT subject_id, block_id, slot, enrolled_at, images FROM subjects ORDER BY rowid"
        )
        return [SubjectRecord(*row) for row in rows]

    def subject(self, subject_id: str) -> SubjectRecord | None:
        rows = self._query(
            "SELECT subject_id, block_id, slot, enrolled_at, images FROM subjects "
            "WHERE subject_id = ?",
            (subject_id,),
        )
        return SubjectRecord(*rows[0]) if rows else None

    def commit_block(
        self,
        block_id: int | None,
        expected_revision: int,
        partition: int,
        key_version: int,
        capacity: int,
        data: bytes,
        added: Sequence[NewSubject] = (),
        removed: Sequence[str] = (),
        routing: tuple[int, bytes] | None = None,
        context_sha256: str | None = None,
    ) -> int:
        """Write a block, its slot-map changes and (when given, as expected revision and
        sealed data) the routing state in one transaction; return the block id. A block
        whose ``context_sha256`` is not that of HE key ``key_version``'s public context
        was encrypted under another key and is refused."""
        now = _now()
        with self._transaction() as tx:
            (current,) = tx.execute("SELECT value FROM meta WHERE key = 'key_version'").fetchone()
            if int(current) != key_version:
                raise StoreError(
                    f"the engine is on HE key v{current}, this write is under v{key_version}: "
                    "the keys were rotated meanwhile; nothing was written, retry"
                )
            if context_sha256 is not None:
                (recorded,) = tx.execute(
                    "SELECT sha256 FROM public_contexts WHERE key_version = ?", (key_version,)
                ).fetchone()
                if recorded != context_sha256:
                    raise StoreError(
                        f"{self._where()}: this block was encrypted under another public key "
                        f"than HE key v{key_version}'s; refused, nothing was written"
                    )
            if block_id is None:
                cursor = tx.execute(
                    "INSERT INTO blocks (partition, key_version, revision, capacity, data, "
                    "sha256, updated_at) VALUES (?, ?, 1, ?, ?, ?, ?)",
                    (partition, key_version, capacity, data, _digest(data), now),
                )
                assert cursor.lastrowid is not None
                block_id = int(cursor.lastrowid)
            else:
                cursor = tx.execute(
                    "UPDATE blocks SET data = ?, sha256 = ?, revision = revision + 1, "
                    "updated_at = ? WHERE block_id = ? AND revision = ?",
                    (data, _digest(data), now, block_id, expected_revision),
                )
                if cursor.rowcount != 1:
                    raise StoreError(
                        f"block {block_id} changed while this update was prepared; retry"
                    )
            if routing is not None:
                self._write_routing(tx, *routing)
            try:
                for subject_id in removed:
                    tx.execute("DELETE FROM subjects WHERE subject_id = ?", (subject_id,))
                tx.executemany(
                    "INSERT INTO subjects VALUES (?, ?, ?, ?, ?)",
                    [(s.subject_id, block_id, s.slot, s.images, now) for s in added],
                )
            except sqlite3.IntegrityError as exc:
                raise SubjectError(
                    f"slot map rejected the change ({exc}); nothing was written"
                ) from exc
        return block_id

    @staticmethod
    def _write_routing(tx: sqlite3.Connection, expected: int, data: bytes) -> None:
        row = tx.execute("SELECT revision FROM routing WHERE id = 1").fetchone()
        if (row[0] if row else 0) != expected:
            raise StoreError("the cluster model changed while this update was prepared; retry")
        tx.execute(
            "INSERT OR REPLACE INTO routing VALUES (1, ?, ?, ?)",
            (expected + 1, data, _digest(data)),
        )

    # ------------------------------------------------------------------ HE key rotation
    def clear_staging(self) -> None:
        with self._transaction() as tx:
            tx.execute("DELETE FROM staged_blocks")

    def stage_block(self, block_id: int, revision: int, key_version: int, data: bytes) -> None:
        """Keep a block re-encrypted under the next key aside until the switch."""
        with self._transaction() as tx:
            tx.execute(
                "INSERT OR REPLACE INTO staged_blocks VALUES (?, ?, ?, ?, ?)",
                (block_id, revision, key_version, data, _digest(data)),
            )

    def switch_key_version(self, key_version: int, public_context: bytes) -> None:
        """Swap every block for its staged re-encryption and the key version, in one go."""
        with self._transaction() as tx:
            stale = tx.execute(
                "SELECT count(*) FROM blocks b LEFT JOIN staged_blocks s USING (block_id) "
                "WHERE s.block_id IS NULL OR s.key_version != ? OR s.source_revision != b.revision",
                (key_version,),
            ).fetchone()[0]
            if stale:
                raise StoreError(
                    f"{stale} block(s) changed or were not re-encrypted during the key "
                    "rotation; nothing was switched, the engine stays on its current keys"
                )
            tx.execute(
                "UPDATE blocks SET key_version = ?, revision = revision + 1, updated_at = ?, "
                "data = (SELECT data FROM staged_blocks s WHERE s.block_id = blocks.block_id), "
                "sha256 = (SELECT sha256 FROM staged_blocks s WHERE s.block_id = blocks.block_id)",
                (key_version, _now()),
            )
            tx.execute(
                "INSERT OR REPLACE INTO public_contexts VALUES (?, ?, ?)",
                (key_version, public_context, _digest(public_context)),
            )
            tx.execute("UPDATE meta SET value = ? WHERE key = 'key_version'", (str(key_version),))
            tx.execute("DELETE FROM staged_blocks")

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


@hookimpl
def register_gallery_stores(register: Register[GalleryStore]) -> None:
    register("sqlite", SQLiteGalleryStore, summary="one SQLite file per engine (embedded default)")
