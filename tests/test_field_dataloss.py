"""Field reports, data lost or silently unusable: key changes under cached key material,
a lost secret key, concurrent writers, a damaged gallery file and masked SQLite errors."""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import near, unit_vectors

from frip_engine.engine import Engine, EnrolItem
from frip_engine.errors import KeyStoreError, StoreError
from frip_engine.keyservice import he_key_id
from frip_engine.parallel import ParallelScorer, WorkerSetup, result
from frip_engine.profile import Profile
from frip_engine.service.db import Database
from frip_engine.writelock import write_lock

COMPACT_WORKERS = {"engine": {"name": "rot", "workers": 2}, "he": {"preset": "compact"}}
COMPACT_SLOTS = 2048


def frip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "frip_engine", *args], capture_output=True, text=True
    )


def _file_engine(
    home: Path, name: str, preset: str = "fast", store: dict[str, Any] | None = None
) -> Engine:
    profile: dict[str, Any] = {"engine": {"name": name}, "he": {"preset": preset}}
    if store is not None:
        profile["gallery_store"] = store
    return Engine.create(Profile.from_dict(profile), home)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------- 1. key change vs caches
def test_rotation_with_workers_stores_new_blocks_under_the_new_key(
    make_engine: Any, home: Path, store: dict[str, Any]
) -> None:
    """The field run: workers started, keys rotated, then a bulk enrolment that the workers
    encrypt (two new blocks). Every block must decrypt under the key it is recorded with."""
    engine = make_engine("rot", **COMPACT_WORKERS, gallery_store=store)
    first = unit_vectors(10)
    engine.enrol_many([EnrolItem(f"s{i}", embeddings=[v]) for i, v in enumerate(first)])
    assert engine.identify(embedding=first[0]).subject_id == "s0"  # the workers start
    assert engine.rotate_he_keys() == 2
    bulk = unit_vectors(COMPACT_SLOTS - 10 + COMPACT_SLOTS + 1, seed=1)
    report = engine.enrol_many([EnrolItem(f"n{i}", embeddings=[v]) for i, v in enumerate(bulk)])
    assert not report.failed and len(report.enrolled) == len(bulk)
    assert [b.used for b in engine.gallery_store.blocks()] == [COMPACT_SLOTS, COMPACT_SLOTS, 1]
    assert all(b.key_version == 2 for b in engine.gallery_store.blocks())
    for index in (0, COMPACT_SLOTS - 10, len(bulk) - 1):  # one subject in each block
        probe = near(bulk[index], 0.1, index)
        assert engine.identify(embedding=probe).subject_id == f"n{index}"
    engine.remove(f"n{len(bulk) - 1}")
    engine.close()
    with Engine.open("rot", home) as again:  # also from a fresh engine object
        assert again.identify(embedding=first[3]).subject_id == "s3"


def test_workers_know_their_key_version_and_refuse_others(make_engine: Any) -> None:
    engine = make_engine("wk", he={"preset": "compact"})
    setup = WorkerSetup(
        "tenseal",
        {"preset": "compact"},
        "sqlite",
        {},
        str(engine.directory),
        engine.key_service.public_context,
        None,
        key_version=1,
    )
    scorer = ParallelScorer(setup, 1)
    try:
        assert scorer.key_version == 1
        rows = unit_vectors(2)
        with pytest.raises(StoreError, match=r"HE key v1.*asked for v2"):
            result(scorer.encrypt(rows, [0, 1], key_version=2))
        fingerprint, data = result(scorer.encrypt(rows, [0, 1], key_version=1))
        assert fingerprint == hashlib.sha256(engine.key_service.public_context).hexdigest()
        assert data
    finally:
        scorer.close()


def test_store_refuses_a_block_made_under_another_public_key(
    make_engine: Any, store: dict[str, Any]
) -> None:
    engine = make_engine("fp", gallery_store=store)
    block = engine.matcher.dump(engine.matcher.encrypt_rows(unit_vectors(1), [0]))
    with pytest.raises(StoreError, match="another public key"):
        engine.gallery_store.commit_block(
            None, 0, 0, 1, engine.matcher.slots, block, context_sha256="0" * 64
        )
    assert engine.gallery_store.blocks() == []


def test_an_engine_object_follows_a_rotation_made_elsewhere(make_engine: Any, home: Path) -> None:
    """A long-lived engine (a service) must not keep the retired key after `keys rotate-he`
    elsewhere: it neither writes under it nor stays unusable until restarted."""
    first = make_engine("follow", engine={"name": "follow", "workers": 2})
    v = unit_vectors(40)
    first.enrol_many([EnrolItem(f"a{i}", embeddings=[x]) for i, x in enumerate(v[:20])])
    assert first.identify(embedding=v[0]).subject_id == "a0"  # workers hold key v1
    with Engine.open("follow", home) as second:
        second.rotate_he_keys()
    report = first.enrol_many([EnrolItem(f"b{i}", embeddings=[x]) for i, x in enumerate(v[20:])])
    assert not report.failed
    assert first.key_version == 2
    assert first.identify(embedding=v[25]).subject_id == "b5"
    assert first.identify(embedding=v[3]).subject_id == "a3"


# ---------------------------------------------------------------- 2. lost secret key
def test_enrolment_is_refused_when_the_secret_key_file_is_gone(home: Path) -> None:
    v = unit_vectors(3)
    with _file_engine(home, "lost") as engine:
        engine.enrol(EnrolItem("a", embeddings=[v[0]]))
        key_file = engine.directory / "secret-key.frip"
    key_file.unlink()
    np.save(home.parent / "p.npy", v[1])
    run = frip("enrol", "lost", "--subject", "x", "--embedding", str(home.parent / "p.npy"))
    assert run.returncode == KeyStoreError.exit_code, run.stdout + run.stderr
    assert "secret-key.frip" in run.stderr and "backup" in run.stderr
    assert "Traceback" not in run.stderr
    with Engine.open("lost", home) as engine:
        assert [s.subject_id for s in engine.gallery_store.subjects()] == ["a"]
        with pytest.raises(KeyStoreError, match=r"secret-key\.frip is missing.*backup"):
            engine.identify(embedding=v[0])
        with pytest.raises(KeyStoreError, match=r"secret-key\.frip"):
            engine.remove("a")
        with pytest.raises(KeyStoreError, match=r"secret-key\.frip"):
            engine.rotate_kek()
        with pytest.raises(KeyStoreError, match=r"secret-key\.frip"):
            engine.rotate_he_keys()
    status = frip("keys", "status", "lost")
    assert status.returncode == KeyStoreError.exit_code, status.stdout + status.stderr
    assert he_key_id(1) in status.stderr and "secret-key.frip" in status.stderr


def test_a_wrong_or_missing_passphrase_refuses_every_write(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key the caller cannot unwrap is as unusable to it as a lost one: an enrolment made
    with a mistyped passphrase must not go through (it would be found out only at identify)."""
    v = unit_vectors(3)
    with _file_engine(home, "typo") as engine:
        engine.enrol(EnrolItem("a", embeddings=[v[0]]))
    np.save(home.parent / "p.npy", v[1])
    monkeypatch.setenv("FRIP_PASSPHRASE", "not-the-passphrase")
    run = frip("enrol", "typo", "--subject", "x", "--embedding", str(home.parent / "p.npy"))
    assert run.returncode == KeyStoreError.exit_code, run.stdout + run.stderr
    assert "passphrase" in run.stderr and "Traceback" not in run.stderr
    with Engine.open("typo", home) as engine:
        with pytest.raises(KeyStoreError, match="passphrase"):
            engine.enrol(EnrolItem("y", embeddings=[v[2]]))
        assert [s.subject_id for s in engine.gallery_store.subjects()] == ["a"]


def test_keys_status_reports_a_damaged_or_unopenable_key_file(home: Path) -> None:
    with _file_engine(home, "damaged") as engine:
        key_file = engine.directory / "secret-key.frip"
    assert frip("keys", "status", "damaged").returncode == 0
    key_file.write_text('{"format": "frip-file-keystore-1", "keys": {"he-secret-v1": {}}}')
    status = frip("keys", "status", "damaged")
    assert status.returncode == KeyStoreError.exit_code, status.stdout + status.stderr
    assert "damaged" in status.stderr


def test_memory_keys_in_a_new_process_refuse_writes(home: Path) -> None:
    """Another key store: the memory store's key is gone once its process ends."""
    profile = {"engine": {"name": "mem"}, "key_store": {"plugin": "memory"}}
    Engine.create(Profile.from_dict(profile), home).close()
    from frip_plugins.key_stores import memory as keystore_memory

    keystore_memory._SECRETS.clear()  # what a new process sees
    with Engine.open("mem", home) as engine:
        with pytest.raises(KeyStoreError, match="missing from memory"):
            engine.enrol_many([EnrolItem("x", embeddings=[unit_vectors(1)[0]])])
        assert engine.gallery_store.blocks() == []
        assert engine.key_status()["problems"]


def test_a_sealed_key_file_write_is_durable(tmp_path: Path, monkeypatch: Any) -> None:
    """File and directory are synced: a crash right after the rename keeps the key file."""
    import os

    from frip_plugins.key_stores._sealed_file import write_sealed

    synced: list[str] = []
    real = os.fsync

    def record(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", record)
    write_sealed(tmp_path / "secret-key.frip", {"format": "f", "keys": {}})
    assert str(tmp_path) in synced and str(tmp_path / "secret-key.tmp") in synced


# ---------------------------------------------------------------- 3. concurrent writers
def _enrol_processes(home: Path, name: str, vectors: np.ndarray, offset: int) -> None:
    paths = []
    for i, vector in enumerate(vectors):
        paths.append(home.parent / f"{name}-{offset + i}.npy")
        np.save(paths[-1], vector)
    children = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "frip_engine",
                "enrol",
                name,
                "--subject",
                f"s{offset + i}",
                "--embedding",
                str(path),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i, path in enumerate(paths)
    ]
    for child in children:
        out, err = child.communicate(timeout=300)
        assert child.returncode == 0, out + err


def test_concurrent_enrol_processes_pack_like_one_writer(home: Path, store: dict[str, Any]) -> None:
    _file_engine(home, "conc", "compact", store).close()
    v = unit_vectors(6)
    _enrol_processes(home, "conc", v[:3], 0)  # into an empty engine
    _enrol_processes(home, "conc", v[3:], 3)  # into a non-empty one
    with Engine.open("conc", home) as engine:
        assert [b.used for b in engine.gallery_store.blocks()] == [6]
        for i in range(6):
            assert engine.identify(embedding=near(v[i], 0.1, i)).subject_id == f"s{i}"


def test_concurrent_enrol_threads_pack_like_one_writer(
    make_engine: Any, home: Path, store: dict[str, Any]
) -> None:
    make_engine("threads", he={"preset": "compact"}, gallery_store=store)
    v = unit_vectors(12)
    outcomes: list[Any] = []

    def work(k: int) -> None:
        items = [EnrolItem(f"t{k}-{i}", embeddings=[v[4 * k + i]]) for i in range(4)]
        try:
            with Engine.open("threads", home) as engine:  # its own connection, in its thread
                outcomes.append(engine.enrol_many(items).failed)
        except Exception as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes == [{}, {}, {}]
    with Engine.open("threads", home) as engine:
        assert [b.used for b in engine.gallery_store.blocks()] == [12]
        assert engine.identify(embedding=v[9]).subject_id == "t2-1"


def test_a_subject_enrolled_by_another_writer_meanwhile_is_reported(
    make_engine: Any, home: Path
) -> None:
    first = make_engine("dup")
    v = unit_vectors(2)

    def meanwhile(_subject: str) -> None:  # after `first` read the slot map
        with Engine.open("dup", home) as second:
            second.enrol(EnrolItem("same", embeddings=[v[0]]))

    report = first.enrol_many([EnrolItem("same", embeddings=[v[1]])], progress=meanwhile)
    assert report.failed["same"] == "subject 'same' is already enrolled"
    assert first.identify(embedding=v[0]).subject_id == "same"


def test_readers_never_wait_for_a_writer_and_a_stuck_writer_is_reported(
    make_engine: Any,
) -> None:
    engine = make_engine("busy", he={"preset": "compact"})
    v = unit_vectors(2)
    engine.enrol(EnrolItem("a", embeddings=[v[0]]))
    with write_lock(engine.directory, "busy"):  # another writer, mid-enrolment
        assert engine.identify(embedding=v[0]).subject_id == "a"
        with (
            pytest.raises(StoreError, match=r"busy.*nothing was written"),
            write_lock(engine.directory, "busy", wait=0.2),
        ):
            pass
    engine.enrol(EnrolItem("b", embeddings=[v[1]]))  # the lock is free again


# ---------------------------------------------------------------- 4. damaged gallery file
def _corrupt_third(path: Path) -> None:
    data = bytearray(path.read_bytes())
    start = len(data) // 3 // 4096 * 4096
    for i in range(start, min(start + 4096, len(data))):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))


def test_a_corrupted_page_is_a_store_error_never_a_raw_sqlite_error(home: Path) -> None:
    v = unit_vectors(6)
    with _file_engine(home, "pages") as engine:
        engine.enrol_many([EnrolItem(f"s{i}", embeddings=[x]) for i, x in enumerate(v[:4])])
        gallery = engine.directory / "gallery.sqlite"
    _corrupt_third(gallery)
    np.save(home.parent / "p.npy", v[5])
    for args in (
        ("enrol", "pages", "--subject", "new", "--embedding", str(home.parent / "p.npy")),
        ("identify", "pages", "--embedding", str(home.parent / "p.npy")),
        ("remove", "pages", "s1"),
        ("keys", "rotate-he", "pages"),
        ("stats", "pages"),
    ):
        run = frip(*args)
        assert "Traceback" not in run.stderr, (args, run.stderr)
        if run.returncode != 0:
            assert run.returncode == StoreError.exit_code, (args, run.stderr)
            assert "pages" in run.stderr and "gallery.sqlite" in run.stderr, (args, run.stderr)


def test_a_malformed_database_inside_a_write_is_a_store_error(make_engine: Any) -> None:
    """Every store call, not only commit_block, turns SQLite's errors into StoreError."""
    engine = make_engine("malformed")
    engine.enrol(EnrolItem("a", embeddings=[unit_vectors(1)[0]]))

    class Broken:
        def __init__(self, db: sqlite3.Connection) -> None:
            self._db = db
            self.in_transaction = False

        def execute(self, sql: str, *args: Any) -> Any:
            if sql.startswith("DELETE FROM staged_blocks") or sql == "COMMIT":
                raise sqlite3.DatabaseError("database disk image is malformed")
            return self._db.execute(sql, *args)

    real = engine.gallery_store._connect()
    engine.gallery_store._db = Broken(real)
    try:
        with pytest.raises(
            StoreError, match=r"malformed\b.*gallery\.sqlite|gallery\.sqlite.*malformed"
        ):
            engine.gallery_store.clear_staging()
        with pytest.raises(StoreError, match="malformed"), engine.gallery_store.snapshot():
            pass
    finally:
        engine.gallery_store._db = real


def test_an_empty_gallery_file_is_reported_and_left_alone(home: Path) -> None:
    with _file_engine(home, "zero") as engine:
        engine.enrol(EnrolItem("a", embeddings=[unit_vectors(1)[0]]))
        gallery = engine.directory / "gallery.sqlite"
    gallery.write_bytes(b"")
    for suffix in ("-wal", "-shm"):
        Path(f"{gallery}{suffix}").unlink(missing_ok=True)
    np.save(home.parent / "p.npy", unit_vectors(1)[0])
    run = frip("identify", "zero", "--embedding", str(home.parent / "p.npy"))
    assert run.returncode == StoreError.exit_code, run.stdout + run.stderr
    said = " ".join(run.stderr.split())  # however the console wraps it
    assert "engine 'zero'" in said and "gallery.sqlite is empty (0 bytes)" in said
    assert "backup" in said
    assert "schema version 0" not in run.stderr
    assert gallery.stat().st_size == 0


def test_read_only_commands_never_write_the_gallery(home: Path) -> None:
    v = unit_vectors(3)
    with _file_engine(home, "ro") as engine:
        engine.enrol_many([EnrolItem(f"s{i}", embeddings=[x]) for i, x in enumerate(v)])
        gallery = engine.directory / "gallery.sqlite"
    with sqlite3.connect(gallery) as db:  # e.g. a copy restored in rollback-journal mode
        db.execute("PRAGMA journal_mode=DELETE")
    db.close()
    before = _sha(gallery)
    np.save(home.parent / "p.npy", v[1])
    assert frip("identify", "ro", "--embedding", str(home.parent / "p.npy")).returncode == 0
    assert frip("stats", "ro").returncode == 0
    assert frip("keys", "status", "ro").returncode == 0
    assert _sha(gallery) == before


# ---------------------------------------------------------------- 5. masked rollback errors
def test_an_automatic_rollback_keeps_the_real_error_in_the_gallery(make_engine: Any) -> None:
    engine = make_engine("full")
    v = unit_vectors(2)
    engine.enrol(EnrolItem("a", embeddings=[v[0]]))
    db = engine.gallery_store._connect()
    (pages,) = db.execute("PRAGMA page_count").fetchone()
    db.execute(f"PRAGMA max_page_count = {pages + 2}")  # SQLite rolls back by itself
    report = engine.enrol_many([EnrolItem("b", embeddings=[v[1]])])
    assert "disk is full" in report.failed["b"], report.failed
    assert "cannot rollback" not in report.failed["b"]
    db.execute("PRAGMA max_page_count = 1073741823")
    assert not db.in_transaction
    engine.enrol(EnrolItem("c", embeddings=[v[1]]))  # the connection still works
    assert {s.subject_id for s in engine.gallery_store.subjects()} == {"a", "c"}


def test_an_automatic_rollback_keeps_the_real_error_in_the_service_database(
    tmp_path: Path,
) -> None:
    db = Database(tmp_path / "service.sqlite")
    db.ensure("CREATE TABLE IF NOT EXISTS t (x BLOB);")
    (pages,) = db.query("PRAGMA page_count")[0]
    db.query(f"PRAGMA max_page_count = {pages + 2}")
    with pytest.raises(sqlite3.OperationalError, match="disk is full"), db.transaction() as tx:
        tx.execute("INSERT INTO t VALUES (zeroblob(100000))")
    with db.transaction() as tx:  # nothing was left open
        tx.execute("INSERT INTO t VALUES (x'00')")
    assert len(db.query("SELECT x FROM t")) == 1
    db.close()


def test_a_failed_commit_does_not_leave_a_transaction_open(tmp_path: Path) -> None:
    """A deferred foreign key fails at COMMIT, and SQLite keeps the transaction open."""
    db = Database(tmp_path / "service.sqlite")
    db.ensure(
        "CREATE TABLE IF NOT EXISTS parent (id INTEGER PRIMARY KEY);"
        "CREATE TABLE IF NOT EXISTS child (parent INTEGER REFERENCES parent(id) "
        "DEFERRABLE INITIALLY DEFERRED);"
    )
    with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"), db.transaction() as tx:
        tx.execute("INSERT INTO child VALUES (7)")
    with db.transaction() as tx:
        tx.execute("INSERT INTO parent VALUES (7)")
    assert len(db.query("SELECT id FROM parent")) == 1 and not db.query("SELECT * FROM child")
    db.close()


# ---------------------------------------------------------------- 5. a killed engine process
_WORKER_SCRIPT = """
import time
from frip_engine.engine import Engine, EnrolItem
from frip_engine.profile import Profile
import numpy as np

if __name__ == "__main__":
    profile = {"engine": {"name": "orphan", "workers": 2}, "he": {"preset": "compact"}}
    engine = Engine.create(Profile.from_dict(profile))
    vectors = np.random.default_rng(0).normal(size=(2049, 512)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    # two new blocks, one encrypted by each worker
    engine.enrol_many([EnrolItem(f"s{i}", embeddings=[v]) for i, v in enumerate(vectors)])
    assert engine.identify(embedding=vectors[0]).subject_id == "s0"
    print("ready", flush=True)
    time.sleep(300)
"""


def _children() -> dict[int, list[int]]:
    """Every process's children, from /proc (pid -> child pids)."""
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
        except (OSError, ValueError):
            continue
        if entry.name.isdigit():
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            tree.setdefault(parent, []).append(int(entry.name))
    return tree


def _descendants(pid: int) -> list[int]:
    tree, found, todo = _children(), [], [pid]
    while todo:
        children = tree.get(todo.pop(), [])
        found += children
        todo += children
    return sorted(found)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to find the worker pids")
@pytest.mark.parametrize("reaped", [True, False], ids=["reaped", "left-a-zombie"])
def test_worker_processes_exit_when_the_engine_process_is_killed(
    tmp_path: Path, home: Path, reaped: bool
) -> None:
    """kill -9 of a process using an engine with workers = 2: its forkserver, resource
    tracker and both workers must exit too (they were left running with no parent), also
    while the killed process is a zombie its parent has not reaped yet."""
    script = tmp_path / "use_engine.py"
    script.write_text(_WORKER_SCRIPT)
    engine = subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    helpers: list[int] = []
    try:
        assert engine.stdout is not None
        line = engine.stdout.readline()
        assert line.strip() == "ready", line + engine.stderr.read() if engine.stderr else ""
        helpers = _descendants(engine.pid)
        assert len(helpers) == 4, helpers  # forkserver, resource tracker, two workers
        engine.kill()
        if reaped:
            engine.wait()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(pid) for pid in helpers):
            time.sleep(0.2)
        assert [pid for pid in helpers if _alive(pid)] == []
    finally:
        engine.kill()
        engine.wait()
        for pid in filter(_alive, helpers):  # none left running after a failure
            os.kill(pid, signal.SIGKILL)


# ---------------------------------------------------------------- 6. retired HE secret keys
def _he_keys(engine: Engine) -> list[str]:
    sealed = engine.parts.key_store.status(engine.profile.engine_id)["sealed_keys"]
    return [key_id for key_id in sealed if key_id.startswith("he-secret-")]


def test_an_old_he_key_left_by_a_killed_rotation_is_reported_and_deleted_by_the_next(
    home: Path,
) -> None:
    """`frip keys rotate-he` killed between its store commit and deleting the old key left
    he-secret-v1 sealed for good, and `keys status` said nothing."""
    engine = _file_engine(home, "ret", "compact")  # a key file, seen by the CLI too
    first = unit_vectors(3)
    engine.enrol_many([EnrolItem(f"s{i}", embeddings=[v]) for i, v in enumerate(first)])
    key_store = engine.parts.key_store
    delete = key_store.delete_secret

    def killed_at_old_key(engine_id: str, key_id: str) -> None:
        if key_id == he_key_id(1):
            raise SystemExit("killed")  # the process dies before the deletion
        delete(engine_id, key_id)

    key_store.delete_secret = killed_at_old_key  # type: ignore[method-assign]
    with pytest.raises(SystemExit):
        engine.rotate_he_keys()
    del key_store.delete_secret  # the next process: an intact key store plugin
    engine.close()
    with Engine.open("ret", home) as after_crash:
        assert after_crash.key_version == 2 and _he_keys(after_crash) == [
            he_key_id(1),
            he_key_id(2),
        ]
        status = after_crash.key_status()
        assert status["problems"] == []
        assert len(status["warnings"]) == 1 and he_key_id(1) in status["warnings"][0]
    shown = frip("keys", "status", "ret")
    assert shown.returncode == 0, shown.stderr  # a warning, not an error
    assert he_key_id(1) in shown.stderr and "frip keys rotate-he ret" in shown.stderr
    with Engine.open("ret", home) as again:
        assert again.rotate_he_keys() == 3
        assert _he_keys(again) == [he_key_id(3)]
        assert again.key_status()["warnings"] == []
        assert again.identify(embedding=near(first[1], 0.1, 1)).subject_id == "s1"
