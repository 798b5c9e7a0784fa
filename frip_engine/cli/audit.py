"""The CLI's changes to an engine, in the same audit log as the service's.

Where FRIP_HOME holds an audit log (``audit.sqlite``: the linkage service has run there),
the CLI brackets each change it makes to an engine as the service does
(:func:`frip_engine.service.requests.audited`): an ``<action>_intent`` row per subject before
the engine commits and the outcome row after, so a subject enrolled or erased from the
command line is on record too, and a crash in between is settled when the service next
opens the engine (:meth:`frip_engine.service.audit.AuditLog.reconcile`). Key rotations
are one row each. The actor is ``cli:<login name>``; rows hold ids and outcomes, never
biometric data. In a home the service never used nothing is written.
"""

from __future__ import annotations

import getpass
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from frip_engine.engine import Engine
    from frip_engine.service.audit import AuditLog

AUDIT_FILE = "audit.sqlite"


def _open_log(engine: Engine) -> AuditLog | None:
    """The audit log of the engine's FRIP_HOME, or None where there is none."""
    home = engine.directory.parent.parent  # $FRIP_HOME/engines/<name>
    if not (home / AUDIT_FILE).is_file():
        return None
    from frip_engine.service.audit import AuditLog

    return AuditLog(home)


@contextmanager
def audited_subjects(
    engine: Engine, action: str, subjects: Sequence[str]
) -> Iterator[dict[str, str]]:
    """Bracket a change to ``subjects`` of ``engine`` (``action``: "enrol" or "remove").

    Yields a dict the caller fills with ``subject -> reason`` for each subject the change
    did not apply to; the others are settled as done. An exception settles every subject
    as failed (and propagates)."""
    from frip_engine.service.audit import Event

    audit = _open_log(engine)
    failed: dict[str, str] = {}
    if audit is None:
        yield failed
        return
    actor = f"cli:{getpass.getuser()}"
    try:
        intents = {
            subject: audit.intend(
                Event(actor, action, engine.name, subject), engine.profile.engine_id
            )
            for subject in subjects
        }
        try:
            yield failed
        except BaseException as exc:
            failed.update({s: type(exc).__name__ for s in subjects})
            raise
        finally:
            for subject, intent in intents.items():
                outcome = {"state": "done"}
                if subject in failed:
                    outcome = {"state": "failed", "reason": failed[subject][:200]}
                audit.settle(intent, Event(actor, action, engine.name, subject, outcome))
    finally:
        audit.close()


def audit_key_event(engine: Engine, action: str, **outcome: str) -> None:
    """One row for a key administration the CLI made on ``engine`` (e.g. "rotate_he")."""
    from frip_engine.service.audit import Event

    audit = _open_log(engine)
    if audit is None:
        return
    try:
        audit.append(Event(f"cli:{getpass.getuser()}", action, engine.name, outcome=outcome))
    finally:
        audit.close()
