"""The file key store, the SQLite store's atomicity and checksums, and what reaches disk."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import PASSPHRASE, change_blocks_behind_the_engine, near, unit_vectors
from frip_plugins.key_stores.file import FileKeyStore

from frip_engine.engine import Engine, EnrolItem
from frip_engine.errors import CorruptionError, KeyStoreError, StoreError
from frip_engine.profile import Profile


def _file_engine(home: Path, name: str = "f") -> Engine:
    return Engine.create(Profile.from_dict({"engine": {"name": name}}), home)


def test_file_key_store_round_trip_and_binding(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("FRIP_PASSPHRASE", PASSPHRASE)
    store = FileKeyStore(scrypt_log2_n=14)
    store.bind(str(tmp_path))
    store.store_secret("engine-a", "k1", b"secret bytes")
    assert store.load_secret("engine-a", "k1") == bytearray(b"secret bytes")
    assert oct(os.stat(tmp_path / "secret-key.frip").st_mode & 0o777) == "0o600"
    with pytest.raises(KeyStoreError, match="another engine"):
        FileKeyStore(str(tmp_path / "secret-key.frip")).load_secret("engine-b", "k1")
    with pytest.raises(KeyStoreError, match="'k2' is not"):
        store.load_secret("engine-a", "k2")
    with pytest.raises(KeyStoreError, match="already exists"):
        store.store_secret("engine-a", "k1", b"again")


def test_wrong_passphrase_and_tampering(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("FRIP_PASSPHRASE", PASSPHRASE)
    path = tmp_path / "k.frip"
    FileKeyStore(str(path), scrypt_log2_n=14).store_secret("e", "k1", b"secret")
    monkeypatch.setenv("FRIP_PASSPHRASE", "wrong")
    with pytest.raises(KeyStoreError, match="wrong passphrase"):
        FileKeyStore(str(path)).load_secret("e", "k1")
    monkeypatch.setenv("FRIP_PASSPHRASE", PASSPHRASE)
    data = json.loads(path.read_text())
    sealed = bytearray(__import__("base64").b64decode(data["keys"]["k1"]["sealed"]))
    sealed[0] ^= 1
    data["keys"]["k1"]["sealed"] = __import__("base64").b64encode(bytes(sealed)).decode()
    path.write_text(json.dumps(data))
    with pytest.raises(KeyStoreError, match="altered"):
        FileKeyStore(str(path)).load_secret("e", "k1")
    monkeypatch.delenv("FRIP_PASSPHRASE")
    with pytest.raises(KeyStoreError, match="FRIP_PASSPHRASE"):
        FileKeyStore(str(tmp_path / "new.frip")).store_secret("e", "k1", b"x")


def test_wrong_passphrase_at_identify_changes_nothing(home: Path, monkeypatch: Any) -> None:
    v = unit_vectors(3)
    with _file_engine(home) as engine:
        engine.enrol_many([EnrolItem(f"s{i}", embeddings=[x]) for i, x in enumerate(v)])
    monkeypatch.setenv("FRIP_PASSPHRASE", "not it")
    with Engine.open("f", home) as engine, pytest.raises(KeyStoreError, match="wrong passphrase"):
        engine.identify(embedding=v[0])
    monkeypatch.setenv("FRIP_PASSPHRASE", PASSPHRASE)
    with Engine.open("f", home) as engine:
        assert engine.identify(embedding=v[0]).subject_id == "s0"
        assert engine.stats()["subjects"] == 3


def test_corrupted_block_is_reported_never_used(make_engine: Any, store: dict[str, Any]) -> None:
    engine = make_engine("c", gallery_store=store)
    engine.enrol(EnrolItem("a", embeddings=[unit_vectors(1)[0]]))
    engine.gallery_store.close()
    change_blocks_behind_the_engine(engine, store)
    engine._blocks.clear()
    with pytest.raises(CorruptionError, match="SHA-256"):
        engine.identify(embedding=unit_vectors(1)[0])


def test_unknown_schema_and_non_sqlite_files(make_engine: Any, home: Path) -> None:
    engine = make_engine("s")
    engine.close()
    gallery = engine.directory / "gallery.sqlite"
    with sqlite3.connect(gallery) as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(StoreError, match="schema version 99"):
        Engine.open("s", home)
    for suffix in ("-wal", "-shm"):
        Path(str(gallery) + suffix).unlink(missing_ok=True)
    gallery.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match=r"not a readable SQLite file|file is not a database"):
        Engine.open("s", home)


def test_failed_commit_leaves_nothing_half_done(make_engine: Any, monkeypatch: Any) -> None:
    engine = make_engine("a")
    v = unit_vectors(4)
    engine.enrol(EnrolItem("first", embeddings=[v[0]]))
    before = engine.gallery_store.read_block(1)

    def explode(*args: Any) -> Any:
        raise sqlite3.OperationalError("disk I/O error (simulated)")

    db = engine.gallery_store._connect()
    monkeypatch.setattr(
        engine.gallery_store, "_connect", lambda create=False: _Failing(db, explode)
    )
    report = engine.enrol_many([EnrolItem("second", embeddings=[v[1]])])
    assert "nothing was written" in report.failed["second"] and not report.enrolled
    monkeypatch.undo()
    assert engine.gallery_store.read_block(1) == before
    assert [s.subject_id for s in engine.gallery_store.subjects()] == ["first"]


class _Failing:
    """A connection whose subject inserts fail after the block update went through."""

    def __init__(self, db: sqlite3.Connection, explode: Any) -> None:
        self._db, self._explode = db, explode

    def execute(self, sql: str, *args: Any) -> Any:
        return self._db.execute(sql, *args)

    def executemany(self, sql: str, *args: Any) -> Any:
        return self._explode()

    @property
    def in_transaction(self) -> bool:
        return self._db.in_transaction


KILL_SCRIPT = """
import json, sys, numpy as np
from pathlib import Path
from frip_engine.engine import Engine, EnrolItem
from frip_engine.profile import Profile
profile = {"engine": {"name": "k"}, "gallery_store": json.loads(sys.argv[3])}
engine = Engine.create(Profile.from_dict(profile), Path(sys.argv[1]))
rng = np.random.default_rng(0)
vectors = rng.standard_normal((400, 512))
np.save(sys.argv[2], vectors)
for i, v in enumerate(vectors):
    engine.enrol(EnrolItem(f"s{i:03d}", embeddings=[v]))
    print(i, flush=True)
"""
# The service's path: two groups in flight at once, each encrypted in the worker process
# (a delta of its reserved slots), committed in the other order; ids printed once committed.
KILL_GROUPS_SCRIPT = (
    KILL_SCRIPT.split("for i, v in")[0]
    + """
for first in range(0, 400, 4):
    plans = []
    for group in (range(first, first + 2), range(first + 2, first + 4)):
        items = [EnrolItem(f"s{i:03d}", embeddings=[vectors[i]]) for i in group]
        plan = engine.prepare_enrolment(items)
        plans.append((plan, engine.encrypt_enrolment(plan)))
    for plan, pending in reversed(plans):
        report = engine.commit_enrolment(plan, pending)
        assert not report.failed, report.failed
        for subject in report.enrolled:
            print(int(subject[1:]), flush=True)
"""
)


@pytest.mark.parametrize("script", [KILL_SCRIPT, KILL_GROUPS_SCRIPT], ids=["enrol", "groups"])
def test_sigkill_mid_enrolment_leaves_whole_subjects_only(
    home: Path, tmp_path: Path, store: dict[str, Any], script: str
) -> None:
    saved = tmp_path / "vectors.npy"
    child = subprocess.Popen(
        [sys.executable, "-c", script, str(home), str(saved), json.dumps(store)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    acknowledged: set[int] = set()
    deadline = time.monotonic() + 240
    while len(acknowledged) < 4 and time.monotonic() < deadline:
        line = child.stdout.readline()
        assert line, "the enrolling process died before it was killed"
        acknowledged.add(int(line))
    time.sleep(0.4)  # land somewhere inside the next enrolment
    child.send_signal(signal.SIGKILL)
    child.wait()
    vectors = np.load(saved)
    with Engine.open("k", home) as engine:
        present = {s.subject_id for s in engine.gallery_store.subjects()}
        assert {f"s{i:03d}" for i in acknowledged} <= present
        for subject_id in sorted(present):
            i = int(subject_id[1:])
            probe = near(vectors[i] / np.linalg.norm(vectors[i]), 0.2, i)
            assert engine.identify(embedding=probe).subject_id == subject_id
        # every slot the slot map does not name still encrypts zeros
        record = engine.gallery_store.subject(sorted(present)[0])
        assert record is not None
        _, data = engine.gallery_store.read_block(record.block_id)
        with engine.key_service.unlocked() as decryptor:
            features = decryptor.decrypt_block(data)
        used = {s.slot for s in engine.gallery_store.subjects()}
        free = [s for s in range(features.shape[1]) if s not in used]
        assert np.max(np.abs(features[:, free])) < 1e-4


def test_no_secret_key_or_embedding_on_disk(home: Path, lfw: Path) -> None:
    """Enrol real faces, identify, remove; then scan every file the engine left behind."""
    identities = sorted(p for p in lfw.iterdir() if p.is_dir())[:4]
    with _file_engine(home, "scan") as engine:
        items = [EnrolItem(p.name, images=[sorted(p.iterdir())[0]]) for p in identities]
        assert len(engine.enrol_many(items).enrolled) == 4
        embeddings = [engine.embed_image(sorted(p.iterdir())[0])[0] for p in identities]
        engine.identify(image=sorted(identities[0].iterdir())[1])
        engine.remove(identities[1].name)
        secret = engine.parts.key_store.load_secret(engine.profile.engine_id, "he-secret-v1")
        public = engine.key_service.public_context
    files = [p for p in home.rglob("*") if p.is_file()]
    blob = b"".join(p.read_bytes() for p in files)
    # SQLite splits large blobs over pages, so the scan looks for short pieces; it does
    # find pieces of what is really stored (the public context)...
    assert public[100:164] in blob
    # ...and none of the secret key (past its leading, public, parameter header), nor of
    # any embedding.
    for start in range(256, len(secret) - 64, 997):
        assert bytes(secret[start : start + 64]) not in blob, "secret key bytes found on disk"
    for vector in embeddings:
        for dtype in ("<f8", "<f4", ">f8", ">f4"):
            assert vector[:4].astype(dtype).tobytes() not in blob, "embedding found on disk"
