"""The audit log: who did what to which engine, and when; append-only and hash-chained.

Every enrolment, identification and verification (the decision, never the probe),
removal, linkage event and key administration is one row in ``$FRIP_HOME/audit.sqlite``.
Triggers refuse UPDATE and DELETE, and each row carries SHA-256(previous hash + row), so
an edit made around the triggers (another SQLite client, a hex editor) breaks the chain
at that row and ``verify`` names it. Rows hold ids, outcomes and scores, no biometric data.

A change to an engine is bracketed: an ``<action>_intent`` row is written (and an open
intent recorded) before the engine commits, and the outcome row, naming the intent, after.
A crash in between leaves the intent open; ``reconcile`` settles it when the service next
opens the engine, from what the engine holds (``recovered`` if the change is there,
``aborted`` if not). So every subject an engine holds has its enrolment in the log.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from frip_engine.errors import CorruptionError
from frip_engine.service.db import Database, now_iso

if TYPE_CHECKING:
    import sqlite3

    from frip_engine.engine import Engine

SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY, at TEXT NOT NULL, actor TEXT NOT NULL, key_id TEXT,
    action TEXT NOT NULL, engine TEXT, subject_id TEXT, outcome TEXT NOT NULL,
    request_id TEXT, prev_hash TEXT NOT NULL, hash TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS audit_engine ON audit (engine, seq);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TABLE IF NOT EXISTS intents (
    seq INTEGER PRIMARY KEY REFERENCES audit(seq), engine_id TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS intents_engine ON intents (engine_id);
"""
GENESIS = "0" * 64
INTENT = "_intent"
ADDING = frozenset({"enrol", "linkage_enrol"})  # the other bracketed actions remove
FIELDS = ("seq", "at", "actor", "key_id", "action", "engine", "subject_id", "outcome", "request_id")


@dataclass(frozen=True)
class Event:
    """One thing that happened; ``outcome`` is a small JSON-able dict (no embeddings)."""

    actor: str
    action: str
    engine: str | None = None
    subject_id: str | None = None
    outcome: dict[str, Any] | None = None
    key_id: str | None = None
    request_id: str | None = None


def _chain(prev_hash: str, row: dict[str, Any]) -> str:
    canonical = json.dumps([row[f] for f in FIELDS], separators=(",", ":"))
    return hashlib.sha256(f"{prev_hash}\n{canonical}".encode()).hexdigest()


class AuditLog:
    def __init__(self, home: Path) -> None:
        self.db = Database(home / "audit.sqlite", synchronous="FULL")
        self.db.ensure(SCHEMA)

    def append(self, event: Event) -> int:
        """Write one event durably (fsync'd) and return its sequence number."""
        return self.append_many([event])[0]

    def append_many(self, events: Sequence[Event]) -> list[int]:
        """Write events durably in one transaction (one fsync, as for a batch of
        identifications) and return their sequence numbers, in order."""
        with self.db.transaction() as tx:
            return [self._append(tx, event) for event in events]

    def intend(self, event: Event, engine_id: str) -> int:
        """Before an engine changes: an ``<action>_intent`` row and an open intent."""
        with self.db.transaction() as tx:
            seq = self._append(tx, replace(event, action=event.action + INTENT))
            tx.execute("INSERT INTO intents VALUES (?, ?)", (seq, engine_id))
            return seq

    def settle(self, intent: int, event: Event) -> int:
        """After the change (or its failure): the outcome row, naming the intent it closes."""
        with self.db.transaction() as tx:
            seq = self._append(
                tx, replace(event, outcome={**(event.outcome or {}), "intent": intent})
            )
            tx.execute("DELETE FROM intents WHERE seq = ?", (intent,))
            return seq

    def reconcile(self, engine: Engine) -> int:
        """Settle the intents a crash left open on this engine from what it holds now."""
        rows = self.db.query(
            "SELECT a.* FROM intents i JOIN audit a ON a.seq = i.seq WHERE i.engine_id = ? "
            "ORDER BY a.seq",
            (engine.profile.engine_id,),
        )
        for row in rows:
            action = str(row["action"]).removesuffix(INTENT)
            present = engine.gallery_store.subject(row["subject_id"]) is not None
            happened = present == (action in ADDING)
            found = Event(
                actor=row["actor"],
                action=action,
                engine=engine.name,
                subject_id=row["subject_id"],
                outcome={"state": "recovered" if happened else "aborted"},
                key_id=row["key_id"],
                request_id=row["request_id"],
            )
            self.settle(row["seq"], found)
        return len(rows)

    def _append(self, tx: sqlite3.Connection, event: Event) -> int:
        last = tx.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        seq, prev = (last["seq"] + 1, last["hash"]) if last else (1, GENESIS)
        row = {
            "seq": seq,
            "at": now_iso(),
            "actor": event.actor,
            "key_id": event.key_id,
            "action": event.action,
            "engine": event.engine,
            "subject_id": event.subject_id,
            "outcome": json.dumps(event.outcome or {}, sort_keys=True),
            "request_id": event.request_id,
        }
        tx.execute(
            "INSERT INTO audit VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (*[row[f] for f in FIELDS], prev, _chain(prev, row)),
        )
        return seq

    def query(
        self,
        owned: frozenset[str],
        vendor: str,
        engine: str | None = None,
        after: int = 0,
        limit: int = 100,
        subject_id: str | None = None,
    ) -> list[dict[str, Any]]:
        """Events on the vendor's own engines, and the vendor's own events anywhere (its
        linkage into engines it does not own), oldest first; only those of one subject
        when ``subject_id`` is given."""
        names = sorted(owned)
        marks = ",".join("?" * len(names))
        where = f"seq > ? AND (engine IN ({marks}) OR actor = ?)"
        args: list[object] = [after, *names, vendor]
        if engine is not None:
            where += " AND engine = ?"
            args.append(engine)
        if subject_id is not None:
            where += " AND subject_id = ?"
            args.append(subject_id)
        rows = self.db.query(
            f"SELECT * FROM audit WHERE {where} ORDER BY seq LIMIT ?", (*args, limit)
        )
        return [
            {**{f: r[f] for f in FIELDS}, "outcome": json.loads(r["outcome"]), "hash": r["hash"]}
            for r in rows
        ]

    def recent(self, limit: int = 50) -> list[dict[str, Any]]:
        """The latest ``limit`` events of every actor, newest first (the operator's view)."""
        rows = self.db.query("SELECT * FROM audit ORDER BY seq DESC LIMIT ?", (limit,))
        return [{**{f: r[f] for f in FIELDS}, "outcome": json.loads(r["outcome"])} for r in rows]

    def verify(self) -> int:
        """Recompute the chain from the first row; return the row count or name the break."""
        prev, count = GENESIS, 0
        for r in self.db.query("SELECT * FROM audit ORDER BY seq"):
            count += 1
            row = {f: r[f] for f in FIELDS}
            if r["seq"] != count or r["prev_hash"] != prev or _chain(prev, row) != r["hash"]:
                raise CorruptionError(
                    f"audit log {self.db.path}: the hash chain breaks at row {r['seq']}: "
                    "a row was altered, removed or inserted outside the service"
                )
            prev = r["hash"]
        return count

    def close(self) -> None:
        self.db.close()


def suppressed(row: Event, count: int) -> Event:
    """A refused attempt's row noting how many before it went unwritten (over budget)."""
    return replace(row, outcome={**(row.outcome or {}), "suppressed": count})
