"""Vendors, their engines and their API keys, in ``$FRIP_HOME/service.sqlite``.

A key is ``frip_<key id>_<secret>``: the id finds the row, the 256-bit secret is checked
against HMAC-SHA256(per-key salt, secret). The secret is random, so a fast salted hash is
as strong as a slow one here, and it keeps authentication off the request's critical path.
The key itself is shown once, by ``frip vendors create``, and never stored.

Each engine has exactly one owning vendor (a unique index says so), and only the owner's
keys read, identify against, list or change it. Cross-engine linkage is a narrower,
explicit right: ``frip vendors link DESK --engine E`` records that E's owner opted E into
DESK's linkage, which lets DESK enrol consenting registrants into E through /v1/linkage and
erase them on revocation, and nothing else.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import sqlite3
from dataclasses import dataclass

from frip_engine.errors import DuplicateSubjectError, InputError, NotFoundError
from frip_engine.service.db import Database, now_iso
from frip_engine.service.errors import InvalidKeyError, MissingKeyError, RevokedKeyError

SCHEMA = """
CREATE TABLE IF NOT EXISTS vendors (name TEXT PRIMARY KEY, created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS vendor_engines (
    vendor TEXT NOT NULL REFERENCES vendors(name), engine TEXT NOT NULL,
    PRIMARY KEY (vendor, engine));
CREATE UNIQUE INDEX IF NOT EXISTS vendor_engines_owner ON vendor_engines (engine);
CREATE TABLE IF NOT EXISTS linkage_grants (
    linker TEXT NOT NULL REFERENCES vendors(name), engine TEXT NOT NULL,
    granted_at TEXT NOT NULL, PRIMARY KEY (linker, engine));
CREATE TABLE IF NOT EXISTS engine_adapters (engine TEXT PRIMARY KEY, adapter TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS api_keys (
    key_id TEXT PRIMARY KEY, vendor TEXT NOT NULL REFERENCES vendors(name),
    salt BLOB NOT NULL, digest BLOB NOT NULL, created_at TEXT NOT NULL, revoked_at TEXT);
"""
KEY_PATTERN = re.compile(r"^frip_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class Caller:
    """Who sent a request: the vendor, which of its keys, the engines it owns, and the
    other vendors' engines opted into its linkage (enrol and erase under consent only)."""

    vendor: str
    key_id: str
    engines: frozenset[str]
    linkable: frozenset[str] = frozenset()


def claimed_key_id(authorization: str | None) -> str | None:
    """The key id in a well-formed ``Bearer`` key (known, revoked or forged alike)."""
    match = _parse(authorization)
    return match[0] if match else None


def _parse(authorization: str | None) -> tuple[str, str] | None:
    scheme, _, key = (authorization or "").partition(" ")
    match = KEY_PATTERN.fullmatch(key.strip()) if scheme.lower() == "bearer" else None
    return None if match is None else (match[1], match[2])


def _digest(salt: bytes, secret: str) -> bytes:
    return hmac.new(salt, secret.encode(), hashlib.sha256).digest()


class Vendors:
    def __init__(self, db: Database) -> None:
        self.db = db
        db.ensure(SCHEMA)

    # ------------------------------------------------------------------ administration (CLI)
    def create(self, name: str, engines: list[str], adapter: str | None = None) -> str:
        """A new vendor owning ``engines`` (none for a registration desk that only links);
        returns its first API key."""
        from frip_engine.profile import check_name

        if not NAME_PATTERN.fullmatch(name):
            raise InputError(f"vendor name {name!r}: use 1-64 letters, digits, '.', '_' or '-'")
        for engine in engines:
            check_name(engine)
        with self.db.transaction() as tx:
            if tx.execute("SELECT 1 FROM vendors WHERE name = ?", (name,)).fetchone():
                raise DuplicateSubjectError(f"vendor '{name}' already exists")
            for engine in engines:
                owner = self._owner(tx, engine)
                if owner is not None:
                    raise InputError(
                        f"engine '{engine}' belongs to vendor '{owner}'; an engine has one "
                        f"owner (to enrol into it by linkage: frip vendors link {name} "
                        f"--engine {engine})"
                    )
            if adapter is not None:
                for engine in engines:
                    row = tx.execute(
                        "SELECT adapter FROM engine_adapters WHERE engine = ?", (engine,)
                    ).fetchone()
                    if row is not None and row["adapter"] != adapter:
                        raise InputError(
                            f"engine '{engine}' already speaks adapter '{row['adapter']}'"
                        )
            tx.execute("INSERT INTO vendors VALUES (?, ?)", (name, now_iso()))
            tx.executemany(
                "INSERT INTO vendor_engines VALUES (?, ?)", [(name, e) for e in set(engines)]
            )
            if adapter is not None:
                tx.executemany(
                    "INSERT OR IGNORE INTO engine_adapters VALUES (?, ?)",
                    [(e, adapter) for e in set(engines)],
                )
            return self._new_key(tx, name)

    def link(self, linker: str, engines: list[str]) -> None:
        """Opt other vendors' engines into ``linker``'s consent linkage (idempotent)."""
        with self.db.transaction() as tx:
            self._exists(tx, linker)
            for engine in engines:
                owner = self._owner(tx, engine)
                if owner is None:
                    raise NotFoundError(f"engine '{engine}' has no owning vendor")
                if owner == linker:
                    raise InputError(f"vendor '{linker}' owns '{engine}': it links it already")
            tx.executemany(
                "INSERT OR IGNORE INTO linkage_grants VALUES (?, ?, ?)",
                [(linker, e, now_iso()) for e in set(engines)],
            )

    def unlink(self, linker: str, engines: list[str]) -> None:
        """Withdraw linkage grants; consents already given can still be revoked (erased)."""
        with self.db.transaction() as tx:
            self._exists(tx, linker)
            tx.executemany(
                "DELETE FROM linkage_grants WHERE linker = ? AND engine = ?",
                [(linker, e) for e in set(engines)],
            )

    @staticmethod
    def _owner(tx: sqlite3.Connection, engine: str) -> str | None:
        row = tx.execute("SELECT vendor FROM vendor_engines WHERE engine = ?", (engine,))
        found = row.fetchone()
        return None if found is None else str(found["vendor"])

    @staticmethod
    def _exists(tx: sqlite3.Connection, name: str) -> None:
        if not tx.execute("SELECT 1 FROM vendors WHERE name = ?", (name,)).fetchone():
            raise NotFoundError(f"vendor '{name}' does not exist")

    def add_key(self, name: str) -> str:
        """Another key for an existing vendor (to rotate: add one, then revoke the old)."""
        with self.db.transaction() as tx:
            self._exists(tx, name)
            return self._new_key(tx, name)

    @staticmethod
    def _new_key(tx: sqlite3.Connection, vendor: str) -> str:
        key_id, secret, salt = (
            secrets.token_hex(6),
            secrets.token_urlsafe(32),
            secrets.token_bytes(16),
        )
        tx.execute(
            "INSERT INTO api_keys VALUES (?, ?, ?, ?, ?, NULL)",
            (key_id, vendor, salt, _digest(salt, secret), now_iso()),
        )
        return f"frip_{key_id}_{secret}"

    def revoke(self, key_id: str) -> str:
        """Revoke one key; it stops working at the service's next request. Returns its vendor."""
        with self.db.transaction() as tx:
            row = tx.execute("SELECT vendor, revoked_at FROM api_keys WHERE key_id = ?", (key_id,))
            found = row.fetchone()
            if found is None:
                raise NotFoundError(f"API key '{key_id}' does not exist")
            if found["revoked_at"] is None:
                tx.execute(
                    "UPDATE api_keys SET revoked_at = ? WHERE key_id = ?", (now_iso(), key_id)
                )
            return str(found["vendor"])

    def listing(self) -> list[dict[str, object]]:
        """Vendors with their engines, linkage grants and keys (ids and dates only, never a
        digest)."""
        result: list[dict[str, object]] = []
        for vendor in self.db.query("SELECT name, created_at FROM vendors ORDER BY name"):
            name = vendor["name"]
            engines = [
                r["engine"]
                for r in self.db.query(
                    "SELECT engine FROM vendor_engines WHERE vendor = ? ORDER BY engine", (name,)
                )
            ]
            keys = [
                dict(r)
                for r in self.db.query(
                    "SELECT key_id, created_at, revoked_at FROM api_keys WHERE vendor = ? "
                    "ORDER BY created_at",
                    (name,),
                )
            ]
            linked = [
                r["engine"]
                for r in self.db.query(
                    "SELECT engine FROM linkage_grants WHERE linker = ? ORDER BY engine", (name,)
                )
            ]
            adapters = {e: self.adapter_of(e) for e in engines if self.adapter_of(e)}
            result.append(
                {
                    "vendor": name,
                    "created_at": vendor["created_at"],
                    "engines": engines,
                    "linkage": linked,
                    "adapters": adapters,
                    "keys": keys,
                }
            )
        return result

    def names(self) -> set[str]:
        """Every vendor's name."""
        return {str(r["name"]) for r in self.db.query("SELECT name FROM vendors")}

    # ------------------------------------------------------------------ requests (service)
    def authenticate(self, authorization: str | None) -> Caller:
        """The caller behind an ``Authorization: Bearer <key>`` header, or an AuthError."""
        if not authorization:
            raise MissingKeyError("send the API key as 'Authorization: Bearer <key>'")
        parsed = _parse(authorization)
        if parsed is None:
            raise InvalidKeyError("the API key is malformed (expected 'Bearer frip_...')")
        key_id, secret = parsed
        rows = self.db.query(
            "SELECT vendor, salt, digest, revoked_at FROM api_keys WHERE key_id = ?", (key_id,)
        )
        salt = rows[0]["salt"] if rows else b"\0" * 16
        expected = rows[0]["digest"] if rows else b""
        valid = hmac.compare_digest(_digest(salt, secret), expected)  # same work either way
        if not valid:
            raise InvalidKeyError("the API key is not valid")
        if rows[0]["revoked_at"] is not None:
            raise RevokedKeyError("the API key was revoked")
        return self.caller(str(rows[0]["vendor"]), key_id)

    def caller(self, vendor: str, key_id: str) -> Caller:
        """A vendor's rights as a Caller acting under ``key_id`` (a key's id, or the name
        of an in-process client such as the registration portal, for the audit log)."""
        scope = self.db.query(  # owned engines and linkage grants in one read
            "SELECT engine, 1 AS owned FROM vendor_engines WHERE vendor = ? "
            "UNION ALL SELECT engine, 0 FROM linkage_grants WHERE linker = ?",
            (vendor, vendor),
        )
        engines = frozenset(r["engine"] for r in scope if r["owned"])
        linkable = frozenset(r["engine"] for r in scope if not r["owned"])
        return Caller(vendor, key_id, engines, linkable)

    def adapter_of(self, engine: str) -> str | None:
        """The vendor adapter an engine's templates are written in, if any."""
        rows = self.db.query("SELECT adapter FROM engine_adapters WHERE engine = ?", (engine,))
        return str(rows[0]["adapter"]) if rows else None
