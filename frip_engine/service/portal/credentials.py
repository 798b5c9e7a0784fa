"""The portal's secrets, in ``$FRIP_HOME/service.sqlite``: registrants' withdrawal codes,
operators' console keys, and the short sessions either opens.

A withdrawal code is 25 characters from a 32-letter alphabet without look-alikes
(``ABCDE-FGHJK-...``): the first 5 find the row (a lookup id), the other 20 are a
100-bit secret from :mod:`secrets`, stored only as scrypt(secret, per-row salt) (RFC 7914,
n=2**14, r=8, p=1). An operator key is ``fripop_<10 hex id>_<43 base64url>`` stored the
same way. Both are shown once. A check of an unknown id does the same scrypt work as a
known one, so timing does not tell which ids exist. Sessions live in memory only (a
restart signs everyone out) and expire after ``SESSION_SECONDS``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from dataclasses import dataclass

from frip_engine.errors import InputError
from frip_engine.service.db import Database, now_iso

SCHEMA = """
CREATE TABLE IF NOT EXISTS portal_registrants (
    code_id TEXT PRIMARY KEY, subject_id TEXT NOT NULL UNIQUE,
    salt BLOB NOT NULL, digest BLOB NOT NULL, created_at TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'issuing');
CREATE TABLE IF NOT EXISTS portal_operators (
    key_id TEXT PRIMARY KEY, name TEXT NOT NULL,
    salt BLOB NOT NULL, digest BLOB NOT NULL, created_at TEXT NOT NULL);
"""
ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # 32 letters: no I/1 or O/0 to confuse
ID_LENGTH, SECRET_LENGTH = 5, 20  # 25 bits of lookup id, 100 bits of secret
CODE_INPUT = re.compile(rf"^[{ALPHABET}]{{{ID_LENGTH + SECRET_LENGTH}}}$")
OPERATOR_KEY = re.compile(r"^fripop_([0-9a-f]{10})_([A-Za-z0-9_-]{43})$")
SESSION_SECONDS = 15 * 60
SCRYPT_AT_ONCE = 2  # scrypt runs at once, over all clients (each takes ~16 MiB, a core)


def _hash(salt: bytes, secret: str) -> bytes:
    """scrypt(secret, salt): 32 bytes (about 50 ms and 16 MiB)."""
    return hashlib.scrypt(secret.encode(), salt=salt, n=2**14, r=8, p=1, dklen=32)


def _matches(row: dict[str, bytes] | None, secret: str) -> bool:
    """Whether ``secret`` is the row's; the same scrypt work when there is no row."""
    salt = row["salt"] if row else b"\0" * 16
    digest = _hash(salt, secret)
    return row is not None and hmac.compare_digest(digest, row["digest"])


def normalise_code(text: str) -> str | None:
    """A typed code without spaces or dashes, upper case; None unless it has the shape."""
    compact = re.sub(r"[\s-]", "", text).upper()
    return compact if CODE_INPUT.fullmatch(compact) else None


def grouped(code: str) -> str:
    """``ABCDEFGHJK...`` as ``ABCDE-FGHJK-...`` (groups of five, as shown to a person)."""
    return "-".join(code[i : i + 5] for i in range(0, len(code), 5))


class Registrants:
    """Portal registrants: a subject id of the portal's desk per withdrawal code.

    A code's row is written ``issuing`` before the person is enrolled anywhere and marked
    ``issued`` once the registration is complete; a row still ``issuing`` after a crash
    names a registration to erase (``Portal.recover``), and its code opens nothing."""

    def __init__(self, db: Database) -> None:
        self.db = db
        db.ensure(SCHEMA)

    def create(self, subject_id: str) -> str:
        """A new withdrawal code for ``subject_id`` (grouped), its row ``issuing``; only
        its hash is stored."""
        salt = secrets.token_bytes(16)
        secret = "".join(secrets.choice(ALPHABET) for _ in range(SECRET_LENGTH))
        with self.db.transaction() as tx:
            while True:
                code_id = "".join(secrets.choice(ALPHABET) for _ in range(ID_LENGTH))
                taken = tx.execute(
                    "SELECT 1 FROM portal_registrants WHERE code_id = ?", (code_id,)
                ).fetchone()
                if not taken:
                    break
            tx.execute(
                "INSERT INTO portal_registrants VALUES (?, ?, ?, ?, ?, 'issuing')",
                (code_id, subject_id, salt, _hash(salt, secret), now_iso()),
            )
        return grouped(code_id + secret)

    def find(self, code: str) -> str | None:
        """The subject id a typed code belongs to, or None (malformed, unknown, wrong)."""
        compact = normalise_code(code)
        if compact is None:
            _matches(None, code)  # the same work as a check
            return None
        rows = self.db.query(
            "SELECT subject_id, salt, digest FROM portal_registrants "
            "WHERE code_id = ? AND state = 'issued'",
            (compact[:ID_LENGTH],),
        )
        row = dict(rows[0]) if rows else None
        return str(row["subject_id"]) if row and _matches(row, compact[ID_LENGTH:]) else None

    def issued(self, subject_id: str) -> None:
        """The registration is complete: its code may be shown and used."""
        with self.db.transaction() as tx:
            tx.execute(
                "UPDATE portal_registrants SET state = 'issued' WHERE subject_id = ?",
                (subject_id,),
            )

    def issuing(self) -> list[str]:
        """The subject ids of registrations a crash interrupted (codes never shown)."""
        rows = self.db.query("SELECT subject_id FROM portal_registrants WHERE state != 'issued'")
        return [str(r["subject_id"]) for r in rows]

    def holders(self) -> set[str]:
        """The subject ids holding a code (issued or not)."""
        return {
            str(r["subject_id"]) for r in self.db.query("SELECT subject_id FROM portal_registrants")
        }

    def delete(self, subject_id: str) -> None:
        """Forget a registrant's code (it withdrew from every engine, or its registration
        failed)."""
        with self.db.transaction() as tx:
            tx.execute("DELETE FROM portal_registrants WHERE subject_id = ?", (subject_id,))


class Operators:
    """Keys of the operator console: an operator sees counts and audit rows, never faces."""

    def __init__(self, db: Database) -> None:
        self.db = db
        db.ensure(SCHEMA)

    def create(self, name: str) -> str:
        """A new key for operator ``name``; returns it (only its hash is stored)."""
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}", name):
            raise InputError(f"operator name {name!r}: use 1-64 letters, digits, '_.@-'")
        key_id, secret, salt = (
            secrets.token_hex(5),
            secrets.token_urlsafe(32),
            secrets.token_bytes(16),
        )
        with self.db.transaction() as tx:
            tx.execute(
                "INSERT INTO portal_operators VALUES (?, ?, ?, ?, ?)",
                (key_id, name, salt, _hash(salt, secret), now_iso()),
            )
        return f"fripop_{key_id}_{secret}"

    def check(self, key: str) -> str | None:
        """The operator a key belongs to, or None (a vendor's key or a code is not one)."""
        match = OPERATOR_KEY.fullmatch(key.strip())
        if match is None:
            _matches(None, key)
            return None
        rows = self.db.query(
            "SELECT name, salt, digest FROM portal_operators WHERE key_id = ?", (match[1],)
        )
        row = dict(rows[0]) if rows else None
        return str(row["name"]) if row and _matches(row, match[2]) else None


@dataclass(frozen=True)
class Session:
    """Who a session cookie stands for: a registrant's subject id or an operator's name."""

    kind: str  # "registrant" or "operator"
    who: str
    expires: float


class Sessions:
    """Random session tokens (the cookie's value) held in memory, expiring."""

    def __init__(self, seconds: float = SESSION_SECONDS) -> None:
        self.seconds = seconds
        self._open: dict[str, Session] = {}
        self._lock = threading.Lock()

    def open(self, kind: str, who: str) -> str:
        token = secrets.token_urlsafe(32)
        with self._lock:
            now = time.monotonic()
            self._open = {t: s for t, s in self._open.items() if s.expires > now}
            self._open[token] = Session(kind, who, now + self.seconds)
        return token

    def get(self, token: str | None, kind: str) -> str | None:
        """Who the token's live session of ``kind`` stands for, or None."""
        with self._lock:
            found = self._open.get(token or "")
        if found is None or found.kind != kind or found.expires <= time.monotonic():
            return None
        return found.who

    def close(self, token: str | None) -> None:
        with self._lock:
            self._open.pop(token or "", None)

    def close_all(self, kind: str, who: str) -> None:
        """End every session of one registrant or operator (after a full withdrawal)."""
        with self._lock:
            self._open = {t: s for t, s in self._open.items() if (s.kind, s.who) != (kind, who)}
