"""Linkage consents: which engines a vendor's registrant opted into, and with what result.

A consent is keyed by (vendor, subject id): vendors never see each other's consents. Its
engine rows are written ``pending`` before any engine enrols the subject, so a crash
cannot leave an enrolment the consent does not know about; ``reconcile`` settles pending
rows from the engine's own slot map when the engine is next opened. Revocation marks the
consent ``revoking`` first and deletes it only once every engine has erased the subject,
so an interrupted revocation is finished by asking again. When an engine's owner removes
the subject itself, the row is ``removed`` (``detach``): a revocation then leaves that id
alone, which may by then name someone else the owner enrolled.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from frip_engine.errors import DuplicateSubjectError, UnknownSubjectError
from frip_engine.service.db import Database, now_iso

if TYPE_CHECKING:
    from frip_engine.engine import Engine

SCHEMA = """
CREATE TABLE IF NOT EXISTS consents (
    vendor TEXT NOT NULL, subject_id TEXT NOT NULL, state TEXT NOT NULL,
    created_at TEXT NOT NULL, request_id TEXT, PRIMARY KEY (vendor, subject_id));
CREATE TABLE IF NOT EXISTS consent_engines (
    vendor TEXT NOT NULL, subject_id TEXT NOT NULL, engine TEXT NOT NULL,
    engine_id TEXT NOT NULL, state TEXT NOT NULL, detail TEXT NOT NULL,
    PRIMARY KEY (vendor, subject_id, engine),
    FOREIGN KEY (vendor, subject_id) REFERENCES consents (vendor, subject_id)
        ON DELETE CASCADE);
"""


class Consents:
    def __init__(self, db: Database) -> None:
        self.db = db
        db.ensure(SCHEMA)

    def open(
        self,
        vendor: str,
        subject_id: str,
        request_id: str | None,
        pending: dict[str, str],
        refused: dict[str, tuple[str, str]],
        extend: bool = False,
    ) -> None:
        """Record the opt-in: ``pending`` engine -> engine id, ``refused`` -> (id, reason).
        ``extend`` adds engines to an existing consent (UnknownSubjectError without one;
        DuplicateSubjectError for an engine it holds already; a failed or removed row of
        an engine is replaced)."""
        with self.db.transaction() as tx:
            found = tx.execute(
                "SELECT 1 FROM consents WHERE vendor = ? AND subject_id = ?", (vendor, subject_id)
            ).fetchone()
            if found and not extend:
                raise DuplicateSubjectError(f"subject '{subject_id}' already has a linkage")
            if extend and not found:
                raise UnknownSubjectError(f"no linkage for subject '{subject_id}'")
            if extend:
                held = tx.execute(
                    "SELECT engine FROM consent_engines WHERE vendor = ? AND subject_id = ? "
                    "AND state IN ('enrolled', 'pending')",
                    (vendor, subject_id),
                ).fetchall()
                twice = sorted({r["engine"] for r in held} & {*pending, *refused})
                if twice:
                    raise DuplicateSubjectError(f"the linkage holds engine(s) {twice} already")
            else:
                tx.execute(
                    "INSERT INTO consents VALUES (?, ?, 'active', ?, ?)",
                    (vendor, subject_id, now_iso(), request_id),
                )
            rows = [(vendor, subject_id, e, i, "pending", "") for e, i in pending.items()]
            rows += [(vendor, subject_id, e, i, "failed", why) for e, (i, why) in refused.items()]
            tx.executemany("INSERT OR REPLACE INTO consent_engines VALUES (?, ?, ?, ?, ?, ?)", rows)

    def settle(self, vendor: str, subject_id: str, engine: str, state: str, detail: str) -> None:
        with self.db.transaction() as tx:
            tx.execute(
                "UPDATE consent_engines SET state = ?, detail = ? "
                "WHERE vendor = ? AND subject_id = ? AND engine = ?",
                (state, detail, vendor, subject_id, engine),
            )

    def get(self, vendor: str, subject_id: str) -> dict[str, Any] | None:
        rows = self.db.query(
            "SELECT state, created_at FROM consents WHERE vendor = ? AND subject_id = ?",
            (vendor, subject_id),
        )
        if not rows:
            return None
        engines = self.db.query(
            "SELECT engine, state, detail FROM consent_engines "
            "WHERE vendor = ? AND subject_id = ? ORDER BY engine",
            (vendor, subject_id),
        )
        return {
            "subject_id": subject_id,
            "state": rows[0]["state"],
            "created_at": rows[0]["created_at"],
            "engines": {r["engine"]: {"state": r["state"], "detail": r["detail"]} for r in engines},
        }

    def subjects(self, vendor: str) -> list[str]:
        """The subject ids of the vendor's consents."""
        rows = self.db.query("SELECT subject_id FROM consents WHERE vendor = ?", (vendor,))
        return [str(r["subject_id"]) for r in rows]

    def mark_revoking(self, vendor: str, subject_id: str) -> None:
        with self.db.transaction() as tx:
            tx.execute(
                "UPDATE consents SET state = 'revoking' WHERE vendor = ? AND subject_id = ?",
                (vendor, subject_id),
            )

    def holds(self, vendor: str, subject_id: str, engine: str) -> bool:
        """Whether the consent still covers the subject in that engine (may erase it)."""
        rows = self.db.query(
            "SELECT state FROM consent_engines WHERE vendor = ? AND subject_id = ? AND engine = ?",
            (vendor, subject_id, engine),
        )
        return bool(rows) and rows[0]["state"] in ("enrolled", "pending")

    def detach(self, engine: Engine, subject_id: str) -> None:
        """The engine's owner removed the subject: no consent may erase that id there any
        more (the owner could enrol someone else under it)."""
        with self.db.transaction() as tx:
            tx.execute(
                "UPDATE consent_engines SET state = 'removed', detail = 'removed by the owner' "
                "WHERE engine_id = ? AND subject_id = ? AND state IN ('enrolled', 'pending')",
                (engine.profile.engine_id, subject_id),
            )

    def drop(self, vendor: str, subject_id: str, engines: list[str]) -> bool:
        """Forget ``engines`` of a consent (the subject was erased there); the consent
        itself goes once it holds no engine. Returns whether it still exists."""
        with self.db.transaction() as tx:
            tx.executemany(
                "DELETE FROM consent_engines WHERE vendor = ? AND subject_id = ? AND engine = ?",
                [(vendor, subject_id, e) for e in engines],
            )
            held = tx.execute(
                "SELECT 1 FROM consent_engines WHERE vendor = ? AND subject_id = ? "
                "AND state IN ('enrolled', 'pending')",
                (vendor, subject_id),
            ).fetchone()
            if held is None:
                tx.execute(
                    "DELETE FROM consents WHERE vendor = ? AND subject_id = ?",
                    (vendor, subject_id),
                )
            return held is not None

    def delete(self, vendor: str, subject_id: str) -> None:
        with self.db.transaction() as tx:
            tx.execute(
                "DELETE FROM consents WHERE vendor = ? AND subject_id = ?", (vendor, subject_id)
            )

    def reconcile(self, engine: Engine) -> int:
        """Settle this engine's pending rows (left by a crash) from its slot map."""
        rows = self.db.query(
            "SELECT vendor, subject_id FROM consent_engines WHERE engine_id = ? "
            "AND state = 'pending'",
            (engine.profile.engine_id,),
        )
        for row in rows:
            present = engine.gallery_store.subject(row["subject_id"]) is not None
            self.settle(
                row["vendor"],
                row["subject_id"],
                engine.name,
                "enrolled" if present else "failed",
                "settled after an interruption" if present else "interrupted before enrolment",
            )
        return len(rows)
