"""The postgres gallery store's own faults and promises: its server killed mid-commit or
unreachable, a block altered in SQL, writers on two hosts, passwords kept out of profiles.
The contract it shares with sqlite is tested by the suites parametrized over ``store``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import near, unit_vectors

from frip_engine.engine import Engine, EnrolItem
from frip_engine.errors import ProfileError, StoreError
from frip_engine.profile import Profile

PG = {"gallery_store": {"plugin": "postgres", "timeout": 2}, "he": {"preset": "compact"}}
CLI = {**PG, "key_store": {"plugin": "file"}}  # keys another process can open


def frip(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "frip_engine", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )


def _psql(sql: str, *args: Any) -> list[Any]:
    """Run one statement on the test database (the PG* environment) in the engine's schema."""
    import psycopg

    with psycopg.connect(autocommit=True) as conn:
        cursor = conn.execute(sql, args)  # type: ignore[arg-type]
        return cursor.fetchall() if cursor.description else []


pytestmark = pytest.mark.parametrize("store", ["postgres"], indirect=True)


@pytest.fixture
def pg(store: dict[str, Any]) -> dict[str, Any]:
    """The postgres ``[gallery_store]`` section of this module's tests (a fresh database)."""
    return store


def test_a_password_in_the_profile_or_dsn_is_refused(pg: dict[str, Any], home: Path) -> None:
    for section in (
        {"plugin": "postgres", "password": "hunter2"},
        {"plugin": "postgres", "dsn": "host=localhost password=hunter2"},
        {"plugin": "postgres", "dsn": "postgresql://u:hunter2@localhost/db"},
        # a password slipped into the user name (a URL-encoding mistake): refused too
        {"plugin": "postgres", "dsn": "postgresql://frip_test%3Ahunter2@127.0.0.1:1/db"},
        {"plugin": "postgres", "dsn": "host=127.0.0.1 user=frip_test:hunter2"},
        {"plugin": "postgres", "user": "frip_test:hunter2"},
    ):
        profile = Profile.from_dict({"engine": {"name": "pw"}, "gallery_store": section})
        with pytest.raises(ProfileError, match="PGPASSWORD") as caught:
            Engine.create(profile, home)
        assert "hunter2" not in str(caught.value)
    assert not (home / "pw").exists()


def _saved(directory: Path, vector: np.ndarray) -> str:
    path = directory.parent.parent / "probe.npy"
    np.save(path, vector)
    return str(path)


def test_an_unreachable_server_is_a_store_error_never_a_decision(
    pg: dict[str, Any], make_engine: Any
) -> None:
    engine = make_engine("gone", **CLI)
    v = unit_vectors(1)
    engine.enrol(EnrolItem("a", embeddings=[v[0]]))
    engine.close()
    probe = _saved(engine.directory, v[0])
    run = frip("identify", "gone", "--embedding", probe, env={"PGPORT": "1"})
    assert run.returncode == 6, run.stderr
    assert "cannot be reached" in run.stderr and "Traceback" not in run.stderr
    assert run.stderr.count("\n") == 1 and "error connecting" not in run.stderr, run.stderr
    assert frip("identify", "gone", "--embedding", probe).returncode == 0


def test_schema_version_is_checked(pg: dict[str, Any], make_engine: Any, home: Path) -> None:
    make_engine("ver", **PG).close()
    assert _psql("SELECT version FROM frip_ver.schema_migrations") == [(1,)]
    _psql("INSERT INTO frip_ver.schema_migrations (version, description) VALUES (99, 'x')")
    with pytest.raises(StoreError, match="schema version 99"):
        Engine.open("ver", home)


def test_removal_leaves_no_old_ciphertext_in_the_tables(
    pg: dict[str, Any], make_engine: Any
) -> None:
    engine = make_engine("erase", **PG)
    v = unit_vectors(3)
    engine.enrol_many([EnrolItem(f"s{i}", embeddings=[x]) for i, x in enumerate(v)])
    _, before = engine.gallery_store.read_block(1)
    engine.remove("s1")
    files = _psql(
        "SELECT pg_relation_filepath(c.oid) FROM pg_class c JOIN pg_namespace n "
        "ON n.oid = c.relnamespace WHERE n.nspname IN ('frip_erase', 'pg_toast') "
        "AND c.relkind IN ('r', 't')"
    )
    (data_dir,) = _psql("SHOW data_directory")[0]
    blob = b"".join(
        (Path(data_dir) / f).read_bytes() for (f,) in files if (Path(data_dir) / f).exists()
    )
    for start in range(1000, len(before) - 64, len(before) // 17):
        assert before[start : start + 64] not in blob, "the replaced ciphertext is still there"
    assert engine.identify(embedding=v[2]).subject_id == "s2"


KILL_SCRIPT = """
import sys, numpy as np
from pathlib import Path
from frip_engine.engine import Engine, EnrolItem
from frip_engine.errors import StoreError
from frip_engine.profile import Profile
profile = {"engine": {"name": "k"}, "key_store": {"plugin": "file"},
           "he": {"preset": "compact"}, "gallery_store": {"plugin": "postgres", "timeout": 20}}
engine = Engine.create(Profile.from_dict(profile), Path(sys.argv[1]))
vectors = np.load(sys.argv[2])
for i, v in enumerate(vectors):
    try:
        report = engine.enrol_many([EnrolItem(f"s{i:03d}", embeddings=[v])])
    except StoreError:  # the server is gone: not acknowledged
        print(i, "failed", flush=True)
        continue
    print(i, "ok" if report.enrolled else "failed", flush=True)
"""


def test_server_killed_during_commits_keeps_every_acknowledged_subject(
    pg: dict[str, Any], home: Path, tmp_path: Path, postgres_server: Any
) -> None:
    vectors = unit_vectors(400, seed=3)
    np.save(tmp_path / "v.npy", vectors)
    child = subprocess.Popen(
        [sys.executable, "-c", KILL_SCRIPT, str(home), str(tmp_path / "v.npy")],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    acknowledged: set[int] = set()
    try:
        while len(acknowledged) < 5:
            line = child.stdout.readline()
            assert line, "the enrolling process died"
            number, outcome = line.split()
            if outcome == "ok":
                acknowledged.add(int(number))
        postgres_server.kill()  # mid-stream: the next commit is cut off
        time.sleep(0.5)
        postgres_server.start()
        time.sleep(1.0)  # the writer reconnects and goes on
        child.kill()
        for line in child.stdout:
            number, outcome = line.split()
            if outcome == "ok":
                acknowledged.add(int(number))
    finally:
        child.kill()
        child.wait()
    with Engine.open("k", home) as engine:
        present = {s.subject_id for s in engine.gallery_store.subjects()}
        assert {f"s{i:03d}" for i in acknowledged} <= present
        ids = sorted(present)
        probes = np.stack([near(vectors[int(s[1:])], 0.2, int(s[1:])) for s in ids])
        assert [d.subject_id for d in engine.identify_many(embeddings=probes)] == ids
        # nothing half-written: every slot no subject holds still encrypts zeros
        for info in engine.gallery_store.blocks():
            _, data = engine.gallery_store.read_block(info.block_id)
            with engine.key_service.unlocked() as decryptor:
                features = decryptor.decrypt_block(data)
            used = {s.slot for s in engine.gallery_store.subjects() if s.block_id == info.block_id}
            free = [s for s in range(features.shape[1]) if s not in used]
            # (compact's noise is ~2e-4; a template's values are ~0.04 = 1/sqrt(512))
            assert np.max(np.abs(features[:, free])) < 2e-3


def test_migrate_moves_an_engine_both_ways_verified(
    pg: dict[str, Any], make_engine: Any, home: Path
) -> None:
    from frip_engine.migrate import migrate_store

    engine = make_engine("mig", he={"preset": "compact"}, key_store={"plugin": "file"})
    v = unit_vectors(5)
    engine.enrol_many([EnrolItem(f"s{i}", embeddings=[x]) for i, x in enumerate(v)])
    engine.remove("s1")
    dates = {s.subject_id: s.enrolled_at for s in engine.gallery_store.subjects()}
    engine.close()
    refused = frip("engine", "migrate", "mig", "--to", "postgres", "--dsn", "password=x")
    assert refused.returncode == 4 and "PGPASSWORD" in refused.stderr, refused.stderr
    run = frip("engine", "migrate", "mig", "--to", "postgres", "--dsn", pg["dsn"], "--json")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["subjects"] == 4
    assert (engine.directory / "gallery.sqlite").is_file()  # the old store is kept
    with Engine.open("mig", home) as moved:
        assert moved.profile.plugin("gallery_store") == "postgres"
        assert {s.subject_id: s.enrolled_at for s in moved.gallery_store.subjects()} == dates
        assert moved.identify(embedding=v[3]).subject_id == "s3"
        back = migrate_store(moved, {"plugin": "sqlite", "path": "gallery-2.sqlite"})
        assert back["blocks"] == 1 and back["subjects"] == 4
        assert moved.identify(embedding=v[4]).subject_id == "s4"
    with Engine.open("mig", home) as again:
        assert again.gallery_store.describe().endswith("gallery-2.sqlite")
        assert {s.subject_id: s.enrolled_at for s in again.gallery_store.subjects()} == dates
        assert again.identify(embedding=v[0]).subject_id == "s0"


def test_writers_on_two_hosts_pack_like_one_writer(
    pg: dict[str, Any], home: Path, tmp_path: Path
) -> None:
    """Two engine folders (two hosts: their folder write locks do not see each other) on
    one PostgreSQL schema: the store's advisory lock alone keeps the packing."""
    import shutil

    profile = {"engine": {"name": "hosts"}, "gallery_store": pg, **CLI}
    profile["gallery_store"] = {**pg, "timeout": 20}
    Engine.create(Profile.from_dict(profile), home).close()
    other = tmp_path / "other-host"
    folder = next(p for p in home.rglob("profile.toml")).parent
    shutil.copytree(folder, other / folder.relative_to(home))
    v = unit_vectors(4)
    children = []
    for i, vector in enumerate(v):
        np.save(tmp_path / f"{i}.npy", vector)
        where = home if i % 2 else other
        children.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "frip_engine",
                    "enrol",
                    "hosts",
                    "--subject",
                    f"s{i}",
                    "--embedding",
                    str(tmp_path / f"{i}.npy"),
                    "--home",
                    str(where),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    for child in children:
        out, err = child.communicate(timeout=300)
        assert child.returncode == 0, out + err
    with Engine.open("hosts", other) as engine:
        assert [b.used for b in engine.gallery_store.blocks()] == [4]
        for i in range(4):
            assert engine.identify(embedding=near(v[i], 0.1, i)).subject_id == f"s{i}"


def test_one_writer_at_a_time_across_store_objects(pg: dict[str, Any], make_engine: Any) -> None:
    """What keeps writers on several hosts apart: the engine's advisory lock."""
    import threading

    from frip_plugins.gallery_stores.postgres import PostgresGalleryStore

    engine = make_engine("lock", **PG)
    other = PostgresGalleryStore(dsn=pg["dsn"])
    other.bind(str(engine.directory))
    order: list[str] = []

    def second() -> None:
        with other.exclusive():
            order.append("second writer")

    with engine.gallery_store.exclusive():
        thread = threading.Thread(target=second)
        thread.start()
        time.sleep(0.5)
        order.append("first writer done")
    thread.join(30)
    other.close()
    assert order == ["first writer done", "second writer"]


def _store(pg: dict[str, Any], where: Path, **settings: Any) -> Any:
    """A postgres store on this test's database, bound to an engine folder ``where``."""
    from frip_plugins.gallery_stores.postgres import PostgresGalleryStore

    store = PostgresGalleryStore(**{"dsn": pg["dsn"], **settings})
    store.bind(str(where))
    return store


def _refused(store: Any) -> tuple[StoreError, float]:
    """The StoreError ``store``'s first read raises, and how long it took (s)."""
    start = time.monotonic()
    with pytest.raises(StoreError) as caught:
        store.meta()
    store.close()
    return caught.value, time.monotonic() - start


def test_authentication_failures_are_reported_at_once_naming_the_cause(
    pg: dict[str, Any], tmp_path: Path, postgres_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from frip_engine.errors import StoreUnavailableError

    hba = postgres_server.data / "pg_hba.conf"
    original = hba.read_text()
    hba.write_text("host all frip_rejected 127.0.0.1/32 reject\n" + original)
    _psql("SELECT pg_reload_conf()")
    try:
        cases = {
            "no such database": ({"dbname": "no_such_db"}, 'database "no_such_db" does not exist'),
            "pg_hba reject": ({"user": "frip_rejected"}, "pg_hba.conf rejects connection"),
            "no password": ({"user": "no_such_role"}, "no password supplied"),
        }
        for settings, cause in cases.values():
            error, seconds = _refused(_store(pg, tmp_path / "auth", **settings))
            assert cause in str(error) and not isinstance(error, StoreUnavailableError)
            assert seconds < 2 and "\n" not in str(error)
        monkeypatch.setenv("PGPASSWORD", "wrong")
        for user in ("frip_test", "no_such_role"):
            error, seconds = _refused(_store(pg, tmp_path / "auth", user=user))
            assert f'password authentication failed for user "{user}"' in str(error)
            assert seconds < 2 and not isinstance(error, StoreUnavailableError)
    finally:
        monkeypatch.delenv("PGPASSWORD")
        hba.write_text(original)
        _psql("SELECT pg_reload_conf()")


def test_the_cli_reports_an_authentication_failure_in_one_line(
    pg: dict[str, Any], make_engine: Any
) -> None:
    engine = make_engine("pw", **{**CLI, "gallery_store": {**pg, "timeout": 10}})
    engine.close()
    probe = _saved(engine.directory, unit_vectors(1)[0])
    start = time.monotonic()
    run = frip("identify", "pw", "--embedding", probe, env={"PGPASSWORD": "wrong"})
    assert time.monotonic() - start < 8, "spent the pool timeout"
    assert run.returncode == 6, run.stderr
    assert run.stderr.count("\n") == 1, run.stderr
    assert 'password authentication failed for user "frip_test"' in run.stderr
    assert "error connecting" not in run.stderr and "cannot be reached" not in run.stderr


def test_an_outage_fails_fast_and_a_restart_is_survived(
    pg: dict[str, Any], make_engine: Any, postgres_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server restart: the pooled connections (and the pinned ones of snapshots and
    writes) died with it and are replaced before use. While it is down: the first call
    fails within about a second, later ones at once, for DOWN_SECONDS."""
    from frip_plugins.gallery_stores import postgres

    from frip_engine.errors import StoreUnavailableError

    engine = make_engine("outage", **{**PG, "gallery_store": {**pg, "timeout": 10}})
    v = unit_vectors(4)
    engine.enrol(EnrolItem("a", embeddings=[v[0]]))
    postgres_server.stop()
    postgres_server.start()
    engine.enrol(EnrolItem("b", embeddings=[v[1]]))  # the first request after the restart
    assert engine.identify(embedding=v[0]).subject_id == "a"
    monkeypatch.setattr(postgres, "DOWN_SECONDS", 1.0)
    postgres_server.stop()
    try:
        failures = []
        for _ in range(3):
            start = time.monotonic()
            with pytest.raises(StoreUnavailableError) as caught:
                engine.gallery_store.subjects()
            failures.append((time.monotonic() - start, str(caught.value)))
        assert failures[0][0] < 3, failures
        assert all(seconds < 0.1 for seconds, _ in failures[1:]), failures
        assert len({message for _, message in failures}) == 1
        assert "cannot be reached" in failures[0][1]
    finally:
        postgres_server.start()
    time.sleep(1.0)
    engine.enrol(EnrolItem("c", embeddings=[v[2]]))
    assert {s.subject_id for s in engine.gallery_store.subjects()} == {"a", "b", "c"}


def test_a_connection_lost_during_commit_leaves_the_outcome_unknown(
    pg: dict[str, Any], make_engine: Any
) -> None:
    """The server's backend is terminated (pg_terminate_backend) after the transaction's
    statements, so the COMMIT finds the connection gone: nobody can tell whether the
    server committed; before any statement of the write, nothing was written."""
    from frip_engine.errors import CommitOutcomeUnknownError, StoreUnavailableError

    store = make_engine("unknown", **PG).gallery_store
    unknown = pytest.raises(CommitOutcomeUnknownError, match="the commit's outcome is unknown")
    with unknown as caught, store._transaction() as tx:
        (pid,) = tx.execute("SELECT pg_backend_pid()").fetchone()
        tx.execute("UPDATE meta SET value = value WHERE key = 'key_version'")
        _psql("SELECT pg_terminate_backend(%s)", pid)
    assert not isinstance(caught.value, StoreUnavailableError)  # never retried
    nothing = pytest.raises(StoreUnavailableError, match="nothing was written")
    with nothing, store._transaction() as tx:
        (pid,) = tx.execute("SELECT pg_backend_pid()").fetchone()
        _psql("SELECT pg_terminate_backend(%s)", pid)
        tx.execute("UPDATE meta SET value = value WHERE key = 'key_version'")
    assert store.meta()["key_version"]  # the next call gets a new connection


def test_the_store_description_echoes_no_password_or_secret_path(pg: dict[str, Any]) -> None:
    from frip_plugins.gallery_stores.postgres import PostgresGalleryStore

    shown = PostgresGalleryStore(
        dsn="host=db.example port=5433 dbname=g user=frip sslkey=/k/secret.key"
    ).describe()
    assert shown == "postgres host=db.example port=5433 dbname=g user=frip schema None"


def test_slot_reservations_go_on_after_a_server_restart(
    pg: dict[str, Any], make_engine: Any, postgres_server: Any
) -> None:
    """The reserving session (not pooled) died with the restart: the next call makes a
    new one; the dead session's reservations went with it."""
    store = make_engine("resv", **PG).gallery_store
    store.reserve_slots(7, [1, 2])
    postgres_server.stop()
    postgres_server.start()
    store.reserve_slots(8, [3])
    assert store.reserved_slots(8) == {3} and store.reserved_slots(7) == set()
