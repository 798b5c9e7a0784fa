"""One write transaction on a SQLite connection, for the gallery store and the service.

SQLite rolls a transaction back by itself after some errors (a full disk, an I/O error,
a busy database); an explicit ROLLBACK then fails with "cannot rollback - no transaction
is active" and would replace the error that mattered. And a failed COMMIT (a deferred
constraint, a full disk) can leave the transaction open, so the connection's next BEGIN
would fail. Here a ROLLBACK is issued only while a transaction is open, its own failure
is logged and never replaces the original error, and COMMIT is inside the guarded part.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

logger = logging.getLogger("frip_engine")


@contextmanager
def transaction(db: sqlite3.Connection, begin: str = "BEGIN IMMEDIATE") -> Iterator[None]:
    """``begin`` ... COMMIT on an autocommit-mode connection (``BEGIN`` for a read snapshot).
    On any error nothing stays written or open, and the error raised is the one that
    caused the failure."""
    db.execute(begin)
    try:
        yield
        db.execute("COMMIT")
    except BaseException:
        rollback(db)
        raise


def rollback(db: sqlite3.Connection) -> None:
    """Roll back the open transaction, if SQLite has not already done so; never raises."""
    if not db.in_transaction:
        return
    try:
        db.execute("ROLLBACK")
    except sqlite3.Error:  # the caller's error is the one to report
        logger.warning(
            "ROLLBACK failed after an error; the original error is reported", exc_info=True
        )
