"""Optional subject attributes (age, gender, ...), sealed with AES-256-GCM at rest.

The key lives in the engine's own key store (key id ``attributes-key``, made on first
use, like the routing key), so attributes are exactly as protected as the engine's HE
key. The engine id and subject id are the associated data: a sealed row moved to another
subject or engine fails to open. Rows are written ``pending`` before the enrolment
commits and marked ``committed`` after; ``reconcile`` settles rows a crash left behind
(kept if the subject made it into the gallery, deleted otherwise), so a subject is never
half-present.
"""

from __future__ import annotations

import json
import math
import os
import re
from typing import TYPE_CHECKING, Any

from frip_engine.errors import BackendError, KeyStoreError
from frip_engine.keyservice import wipe
from frip_engine.service.db import Database
from frip_engine.service.errors import RequestError

if TYPE_CHECKING:
    from frip_engine.engine import Engine

ATTRIBUTES_KEY_ID = "attributes-key"
SCHEMA = """
CREATE TABLE IF NOT EXISTS attributes (
    engine_id TEXT NOT NULL, subject_id TEXT NOT NULL, state TEXT NOT NULL,
    sealed BLOB NOT NULL, PRIMARY KEY (engine_id, subject_id));
"""
NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
MAX_ATTRIBUTES = 16
MAX_TEXT = 256
INT64 = (-(2**63), 2**63 - 1)  # a whole number's bounds; other numbers are finite float64


def check_attributes(value: object) -> dict[str, str | int | float | bool]:
    """At most 16 ``name: value`` pairs of text (up to 256 characters), numbers (a whole
    number within int64, any other a finite float64) or booleans; else RequestError."""
    if not isinstance(value, dict):
        raise RequestError("'attributes' must be an object of name: value pairs")
    if len(value) > MAX_ATTRIBUTES:
        raise RequestError(f"'attributes' holds at most {MAX_ATTRIBUTES} entries")
    for name, item in value.items():
        if not NAME.fullmatch(name):
            raise RequestError(f"attribute name {name!r}: use a-z, 0-9 and '_', up to 32")
        if isinstance(item, str) and len(item) > MAX_TEXT:
            raise RequestError(f"attribute {name!r} is longer than {MAX_TEXT} characters")
        if not isinstance(item, str | int | float | bool) or item != item:  # NaN != NaN
            raise RequestError(f"attribute {name!r} must be text, a number or a boolean")
        if isinstance(item, float) and not math.isfinite(item):  # JSON 1e400 parses as inf
            raise RequestError(f"attribute {name!r} must be a finite number")
        if (
            isinstance(item, int)
            and not isinstance(item, bool)
            and not INT64[0] <= item <= INT64[1]
        ):
            raise RequestError(
                f"attribute {name!r}: a whole number must fit a signed 64-bit integer "
                "(-2**63 to 2**63-1); send a larger one as text"
            )
        if isinstance(item, str):
            try:
                item.encode("utf-8")  # a lone surrogate ("\\ud800") would break every read
            except UnicodeEncodeError:
                raise RequestError(f"attribute {name!r} is not valid Unicode text") from None
    return dict(value)


def _aad(engine: Engine, subject_id: str) -> bytes:
    return f"frip-engine:{engine.profile.engine_id}:attributes:{subject_id}".encode()


def _key(engine: Engine, create: bool) -> bytearray:
    key_store, engine_id = engine.parts.key_store, engine.profile.engine_id
    try:
        secret: bytearray = key_store.load_secret(engine_id, ATTRIBUTES_KEY_ID)
        return secret
    except KeyStoreError:
        sealed = key_store.status(engine_id).get("sealed_keys", [])
        if not create or ATTRIBUTES_KEY_ID in sealed:
            raise
    key = bytearray(os.urandom(32))
    key_store.store_secret(engine_id, ATTRIBUTES_KEY_ID, key)
    return key


class AttributeStore:
    """Sealed attribute rows; every method runs in the engine's own thread."""

    def __init__(self, db: Database) -> None:
        self.db = db
        db.ensure(SCHEMA)

    def stage(self, engine: Engine, subject_id: str, values: dict[str, Any]) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        key = _key(engine, create=True)
        try:
            nonce = os.urandom(12)
            plain = json.dumps(values, sort_keys=True).encode()
            sealed = nonce + AESGCM(bytes(key)).encrypt(nonce, plain, _aad(engine, subject_id))
        finally:
            wipe(key)
        with self.db.transaction() as tx:
            tx.execute(
                "INSERT OR REPLACE INTO attributes VALUES (?, ?, 'pending', ?)",
                (engine.profile.engine_id, subject_id, sealed),
            )

    def commit(self, engine: Engine, subject_id: str) -> None:
        with self.db.transaction() as tx:
            tx.execute(
                "UPDATE attributes SET state = 'committed' WHERE engine_id = ? AND subject_id = ?",
                (engine.profile.engine_id, subject_id),
            )

    def drop(self, engine: Engine, subject_id: str) -> None:
        with self.db.transaction() as tx:
            tx.execute(
                "DELETE FROM attributes WHERE engine_id = ? AND subject_id = ?",
                (engine.profile.engine_id, subject_id),
            )

    def read(self, engine: Engine, subject_id: str) -> dict[str, Any]:
        """A committed subject's attributes ({} when none were given)."""
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        rows = self.db.query(
            "SELECT sealed FROM attributes WHERE engine_id = ? AND subject_id = ? "
            "AND state = 'committed'",
            (engine.profile.engine_id, subject_id),
        )
        if not rows:
            return {}
        sealed = bytes(rows[0]["sealed"])
        key = _key(engine, create=False)
        try:
            plain = AESGCM(bytes(key)).decrypt(sealed[:12], sealed[12:], _aad(engine, subject_id))
        except (InvalidTag, ValueError):
            raise BackendError(
                f"the sealed attributes of '{subject_id}' failed authentication: altered, "
                "or moved from another subject or engine"
            ) from None
        finally:
            wipe(key)
        values: dict[str, Any] = json.loads(plain)
        return values

    def reconcile(self, engine: Engine) -> int:
        """Settle rows a crash left: keep those whose subject is enrolled, drop the rest."""
        present = {s.subject_id for s in engine.gallery_store.subjects()}
        engine_id = engine.profile.engine_id
        rows = self.db.query(
            "SELECT subject_id, state FROM attributes WHERE engine_id = ?", (engine_id,)
        )
        settled = 0
        with self.db.transaction() as tx:
            for row in rows:
                if row["subject_id"] not in present:
                    tx.execute(
                        "DELETE FROM attributes WHERE engine_id = ? AND subject_id = ?",
                        (engine_id, row["subject_id"]),
                    )
                    settled += 1
                elif row["state"] == "pending":
                    tx.execute(
                        "UPDATE attributes SET state = 'committed' "
                        "WHERE engine_id = ? AND subject_id = ?",
                        (engine_id, row["subject_id"]),
                    )
                    settled += 1
        return settled
