"""What the SQL gallery stores (``sqlite``, ``postgres``) share: the statements of the
gallery contract, written once in the SQL both dialects accept (``?`` placeholders, which
the PostgreSQL store translates; ``ON CONFLICT ... DO UPDATE``; ``RETURNING``).

A subclass supplies its connection handling: ``_transaction`` (one write transaction,
yielding an object with ``execute(sql, args)`` returning a cursor and
``executemany(sql, rows)``), ``_query`` (one read), ``_where`` (the engine and the place,
for messages), ``_erase_dead`` (make the bytes of replaced or deleted ciphertexts
unreadable, after a removal or a key switch), ``_integrity_error`` (the driver's
constraint violation) and ``_subject_order`` (the column giving enrolment order).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Any, ClassVar, Protocol

from frip_engine.contracts import BlockInfo, NewSubject, SubjectRecord
from frip_engine.errors import CorruptionError, StoreError, SubjectError


def digest(data: bytes) -> str:
    """SHA-256 of ``data``, lower-case hex: the checksum stored beside every blob."""
    return hashlib.sha256(data).hexdigest()


def now() -> str:
    """The current UTC time, ISO 8601 to the second (``enrolled_at``, ``updated_at``)."""
    return datetime.now(UTC).isoformat(timespec="seconds")


class Tx(Protocol):
    """The part of a DB-API connection a write transaction uses."""

    def execute(self, sql: str, args: Sequence[Any] = ..., /) -> Any: ...

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]], /) -> Any: ...


class SqlGalleryStore:
    """The gallery contract over SQL; see the module docstring for what a subclass adds."""

    _subject_order: ClassVar[str]
    _integrity_error: type[Exception]

    def _where(self) -> str:
        raise NotImplementedError

    def _transaction(self) -> AbstractContextManager[Tx]:
        raise NotImplementedError

    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        raise NotImplementedError

    def _erase_dead(self) -> None:
        """Leave no readable copy of ciphertexts replaced or deleted by the last commit."""

    def meta(self) -> dict[str, str]:
        return dict(self._query("SELECT key, value FROM meta"))

    def put_public_context(self, key_version: int, data: bytes) -> None:
        with self._transaction() as tx:
            tx.execute(
                "INSERT INTO public_contexts VALUES (?, ?, ?)", (key_version, data, digest(data))
            )

    def public_context(self, key_version: int) -> bytes:
        rows = self._query(
            "SELECT data, sha256 FROM public_contexts WHERE key_version = ?", (key_version,)
        )
        if not rows:
            raise StoreError(f"{self._where()} has no public context v{key_version}")
        data, checksum = rows[0]
        if digest(data) != checksum:
            raise CorruptionError(f"{self._where()}: public context v{key_version} is corrupted")
        return bytes(data)

    def blocks(self) -> list[BlockInfo]:
        rows = self._query(
            "SELECT b.block_id, b.partition, b.key_version, b.revision, b.capacity, "
            "(SELECT count(*) FROM subjects s WHERE s.block_id = b.block_id), length(b.data) "
            "FROM blocks b ORDER BY b.block_id"
        )
        return [BlockInfo(*map(int, row)) for row in rows]

    def read_block(self, block_id: int) -> tuple[int, bytes]:
        rows = self._query(
            "SELECT revision, data, sha256 FROM blocks WHERE block_id = ?", (block_id,)
        )
        if not rows:
            raise StoreError(f"{self._where()}: block {block_id} is not in it")
        revision, data, checksum = rows[0]
        if digest(data) != checksum:
            raise CorruptionError(
                f"{self._where()}: block {block_id} failed its SHA-256 check: the "
                "gallery is corrupted; restore it from a backup (the block was not used)"
            )
        return int(revision), bytes(data)

    def read_routing(self) -> tuple[int, bytes] | None:
        """The sealed cluster-routing state and its revision, or None before the first fit."""
        rows = self._query("SELECT revision, data, sha256 FROM routing WHERE id = 1")
        if not rows:
            return None
        revision, data, checksum = rows[0]
        if digest(data) != checksum:
            raise CorruptionError(f"{self._where()}: the routing state failed its SHA-256 check")
        return int(revision), bytes(data)

    def subjects(self) -> list[SubjectRecord]:
        rows = self._query(
            "SELECT subject_id, block_id, slot, enrolled_at, images FROM subjects "
            f"ORDER BY {self._subject_order}"
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
        was encrypted under another key and is refused. After a removal the replaced
        ciphertext is erased (``_erase_dead``)."""
        stamp = now()
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
                (block_id,) = tx.execute(
                    "INSERT INTO blocks (partition, key_version, revision, capacity, data, "
                    "sha256, updated_at) VALUES (?, ?, 1, ?, ?, ?, ?) RETURNING block_id",
                    (partition, key_version, capacity, data, digest(data), stamp),
                ).fetchone()
            else:
                cursor = tx.execute(
                    "UPDATE blocks SET data = ?, sha256 = ?, revision = revision + 1, "
                    "updated_at = ? WHERE block_id = ? AND revision = ?",
                    (data, digest(data), stamp, block_id, expected_revision),
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
                    "INSERT INTO subjects (subject_id, block_id, slot, images, enrolled_at) "
                    "VALUES (?, ?, ?, ?, ?)",
                    [(s.subject_id, block_id, s.slot, s.images, stamp) for s in added],
                )
            except self._integrity_error as exc:
                raise SubjectError(
                    f"slot map rejected the change ({exc}); nothing was written"
                ) from exc
        if removed:
            self._erase_dead()
        return int(block_id)

    @staticmethod
    def _write_routing(tx: Tx, expected: int, data: bytes) -> None:
        row = tx.execute("SELECT revision FROM routing WHERE id = 1").fetchone()
        if (row[0] if row else 0) != expected:
            raise StoreError("the cluster model changed while this update was prepared; retry")
        tx.execute(
            "INSERT INTO routing VALUES (1, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
            "revision = excluded.revision, data = excluded.data, sha256 = excluded.sha256",
            (expected + 1, data, digest(data)),
        )

    def restore_enrolled_at(self, enrolled_at: dict[str, str]) -> None:
        """Set subjects' enrolment times (subject id -> ISO 8601 UTC), as recorded in the
        store an engine was migrated from (``frip engine migrate``)."""
        with self._transaction() as tx:
            tx.executemany(
                "UPDATE subjects SET enrolled_at = ? WHERE subject_id = ?",
                [(when, subject_id) for subject_id, when in sorted(enrolled_at.items())],
            )

    # ------------------------------------------------------------------ HE key rotation
    def clear_staging(self) -> None:
        with self._transaction() as tx:
            tx.execute("DELETE FROM staged_blocks")

    def stage_block(self, block_id: int, revision: int, key_version: int, data: bytes) -> None:
        """Keep a block re-encrypted under the next key aside until the switch."""
        with self._transaction() as tx:
            tx.execute(
                "INSERT INTO staged_blocks VALUES (?, ?, ?, ?, ?) ON CONFLICT (block_id) DO "
                "UPDATE SET source_revision = excluded.source_revision, key_version = "
                "excluded.key_version, data = excluded.data, sha256 = excluded.sha256",
                (block_id, revision, key_version, data, digest(data)),
            )

    def switch_key_version(self, key_version: int, public_context: bytes) -> None:
        """Swap every block for its staged re-encryption and the key version, in one go;
        then the ciphertexts under the retired key are erased (``_erase_dead``)."""
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
                (key_version, now()),
            )
            tx.execute(
                "INSERT INTO public_contexts VALUES (?, ?, ?) ON CONFLICT (key_version) DO "
                "UPDATE SET data = excluded.data, sha256 = excluded.sha256",
                (key_version, public_context, digest(public_context)),
            )
            tx.execute("UPDATE meta SET value = ? WHERE key = 'key_version'", (str(key_version),))
            tx.execute("DELETE FROM staged_blocks")
        self._erase_dead()
