"""CLI changes to an engine land in the service's audit log (tryout finding: a subject
enrolled from the command line into a vendor's engine had no enrolment on record)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from conftest import unit_vectors

from frip_engine.engine import Engine
from frip_engine.profile import Profile
from frip_engine.service.audit import AuditLog


def frip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "frip_engine", *args], capture_output=True, text=True
    )


def _rows(home: Path) -> list[dict[str, object]]:
    audit = AuditLog(home)
    try:
        rows = audit.db.query("SELECT * FROM audit ORDER BY seq", ())
        return [dict(r) for r in rows]
    finally:
        audit.close()


def test_cli_changes_are_audited_where_the_service_keeps_a_log(home: Path) -> None:
    profile = {"engine": {"name": "doors", "insecure": True}, "he": {"plugin": "plaintext"}}
    Engine.create(Profile.from_dict(profile), home).close()
    vectors = unit_vectors(2)
    np.save(home.parent / "a.npy", vectors[0])
    np.save(home.parent / "b.npy", vectors[1])

    # a home the service never used gets no audit log
    first = frip("enrol", "doors", "--subject", "a", "--embedding", str(home.parent / "a.npy"))
    assert first.returncode == 0, first.stderr
    assert not (home / "audit.sqlite").exists()

    AuditLog(home).close()  # the service has run here
    enrolled = frip("enrol", "doors", "--subject", "b", "--embedding", str(home.parent / "b.npy"))
    assert enrolled.returncode == 0, enrolled.stderr
    again = frip("enrol", "doors", "--subject", "b", "--embedding", str(home.parent / "b.npy"))
    assert again.returncode != 0
    removed = frip("remove", "doors", "b")
    assert removed.returncode == 0, removed.stderr
    assert frip("remove", "doors", "nobody").returncode != 0
    assert frip("keys", "rotate-he", "doors").returncode == 0

    rows = [
        (r["actor"], r["action"], r["subject_id"], json.loads(str(r["outcome"])))
        for r in _rows(home)
    ]
    actors = {actor for actor, *_ in rows}
    assert len(actors) == 1 and next(iter(actors)).startswith("cli:")
    settled = [(action, subject, outcome.get("state")) for _, action, subject, outcome in rows]
    assert settled == [
        ("enrol_intent", "b", None),
        ("enrol", "b", "done"),
        ("enrol_intent", "b", None),
        ("enrol", "b", "failed"),
        ("remove_intent", "b", None),
        ("remove", "b", "done"),
        ("remove_intent", "nobody", None),
        ("remove", "nobody", "failed"),
        ("rotate_he", None, None),
    ]
    assert rows[-1][3] == {"key_version": "2"}
    verified = frip("audit", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
