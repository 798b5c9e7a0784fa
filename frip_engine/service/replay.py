"""Replay protection: every state-changing request carries a fresh id and its send time.

``X-Request-Id`` (16-128 characters of letters, digits, '-' and '_') must be new for the
key, and ``X-Request-Time`` (Unix seconds) within the window of the server's clock. Ids
are remembered in the service database for twice the window, so a request re-sent later,
or after a restart, is refused as well; older ones are refused by their time alone.
An id is reserved when its request arrives (so two copies racing in cannot both pass)
and released if the request is then refused with a 4xx, which changes nothing: the
corrected request may be re-sent under the same id.
"""

from __future__ import annotations

import math
import re
import sqlite3
import time

from frip_engine.service.db import Database
from frip_engine.service.errors import ReplayError, RequestIdError

SCHEMA = """
CREATE TABLE IF NOT EXISTS nonces (
    key_id TEXT NOT NULL, nonce TEXT NOT NULL, seen REAL NOT NULL,
    PRIMARY KEY (key_id, nonce));
CREATE INDEX IF NOT EXISTS nonces_seen ON nonces (seen);
"""
ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{16,128}$")
PRUNE_EVERY = 500  # requests between deletions of ids older than twice the window


class ReplayGuard:
    def __init__(self, db: Database, window: float = 300.0) -> None:
        self.db = db
        self.window = window
        self._since_prune = 0
        db.ensure(SCHEMA)

    def check(self, key_id: str, request_id: str | None, sent: str | None) -> None:
        """Accept a request id once per key, and only if its time is inside the window."""
        if request_id is None or not ID_PATTERN.fullmatch(request_id):
            raise RequestIdError(
                "send a fresh X-Request-Id (16-128 letters, digits, '-' or '_') per request"
            )
        try:
            sent_at = float(sent) if sent is not None else math.nan
        except ValueError:
            sent_at = math.nan
        if not math.isfinite(sent_at):
            raise RequestIdError("send X-Request-Time: the request's Unix time in seconds")
        now = time.time()
        if abs(now - sent_at) > self.window:
            raise RequestIdError(
                f"X-Request-Time is {sent_at - now:+.0f} s from the server's clock (+: ahead "
                f"of it, -: behind it); the window is +-{self.window:.0f} s"
            )
        try:
            with self.db.transaction() as tx:
                tx.execute("INSERT INTO nonces VALUES (?, ?, ?)", (key_id, request_id, now))
                self._since_prune += 1
                if self._since_prune >= PRUNE_EVERY:
                    self._since_prune = 0
                    tx.execute("DELETE FROM nonces WHERE seen < ?", (now - 2 * self.window,))
        except sqlite3.IntegrityError:
            raise ReplayError(
                f"request id {request_id} was already used with this key: not processed again"
            ) from None

    def release(self, key_id: str, request_id: str) -> None:
        """Forget an id whose request was refused before it changed anything."""
        with self.db.transaction() as tx:
            tx.execute("DELETE FROM nonces WHERE key_id = ? AND nonce = ?", (key_id, request_id))
