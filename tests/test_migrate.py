"""``frip engine migrate`` never swaps the gallery store of an engine another process (or
another open handle) is using: that user would keep writing into the old store, losing
acknowledged enrolments and resurrecting erased subjects (tryout 19, H1)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import unit_vectors

from frip_engine.engine import Engine, EnrolItem
from frip_engine.errors import EngineInUseError
from frip_engine.migrate import migrate_store
from frip_engine.uselock import USE_LOCK_FILE

HOLDER = """
import sys
from frip_engine.engine import Engine
with Engine.open(sys.argv[1]) as engine:
    print("open", flush=True)
    sys.stdin.read()
"""


def frip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "frip_engine", *args], capture_output=True, text=True
    )


@pytest.fixture
def engine_name(make_engine: Any) -> str:
    engine = make_engine("mig", he={"preset": "compact"}, key_store={"plugin": "file"})
    engine.enrol_many([EnrolItem(f"s{i}", embeddings=[x]) for i, x in enumerate(unit_vectors(3))])
    engine.close()
    return "mig"


def test_migrate_is_refused_while_another_process_has_the_engine_open(
    engine_name: str, home: Path
) -> None:
    profile = (home / "engines" / engine_name / "profile.toml").read_text()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, engine_name],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "open\n"
        refused = frip(
            "engine", "migrate", engine_name, "--to", "sqlite", "--option", "path=g2.sqlite"
        )
        assert refused.returncode == EngineInUseError.exit_code, refused.stderr
        assert "another process" in refused.stderr and "frip serve" in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
        with Engine.open(engine_name, home) as engine, pytest.raises(EngineInUseError):
            migrate_store(engine, {"plugin": "sqlite", "path": "g2.sqlite"})
        # nothing changed: same profile, no copy made
        assert (home / "engines" / engine_name / "profile.toml").read_text() == profile
        assert not (home / "engines" / engine_name / "g2.sqlite").exists()
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        assert holder.wait(timeout=60) == 0
    moved = frip("engine", "migrate", engine_name, "--to", "sqlite", "--option", "path=g2.sqlite")
    assert moved.returncode == 0, moved.stderr
    with Engine.open(engine_name, home) as engine:
        assert engine.gallery_store.describe().endswith("g2.sqlite")
        assert len(list(engine.gallery_store.subjects())) == 3


def test_a_second_open_handle_in_this_process_also_blocks_migrate(
    engine_name: str, home: Path
) -> None:
    with Engine.open(engine_name, home) as first, Engine.open(engine_name, home) as second:
        with pytest.raises(EngineInUseError, match="another process"):
            migrate_store(first, {"plugin": "sqlite", "path": "g2.sqlite"})
        assert second.identify(embedding=unit_vectors(3)[1]).subject_id == "s1"
        assert first.identify(embedding=unit_vectors(3)[2]).subject_id == "s2"  # still usable
    with Engine.open(engine_name, home) as only:  # closed handles released their lock
        assert migrate_store(only, {"plugin": "sqlite", "path": "g2.sqlite"})["subjects"] == 3
        assert only.identify(embedding=unit_vectors(3)[0]).subject_id == "s0"


def test_the_engine_cannot_be_opened_while_it_is_being_migrated(
    engine_name: str, home: Path
) -> None:
    import fcntl

    path = home / "engines" / engine_name / USE_LOCK_FILE
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what a migrate in progress holds
        with pytest.raises(EngineInUseError, match="migrate"):
            Engine.open(engine_name, home)
    finally:
        os.close(fd)
    assert path.stat().st_mode & 0o777 == 0o600
    Engine.open(engine_name, home).close()


def test_a_password_option_is_refused_like_a_password_in_the_dsn(engine_name: str) -> None:
    for option in (["--option", "password=x"], ["--dsn", "password=x"]):
        refused = frip("engine", "migrate", engine_name, "--to", "postgres", *option)
        assert refused.returncode == 4, (option, refused.stderr)  # a ProfileError (README)
        assert "PGPASSWORD" in refused.stderr


def test_an_occupied_target_is_named_never_offered_for_deletion(
    engine_name: str, make_engine: Any, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from frip_engine import migrate
    from frip_engine.errors import StoreError

    other = make_engine("other")
    theirs = str(other.directory / "gallery.sqlite")
    with Engine.open(engine_name, home) as engine:
        with pytest.raises(StoreError) as occupied:
            migrate_store(engine, {"plugin": "sqlite", "path": theirs})
        message = str(occupied.value)
        assert "engine 'other'" in message and "delete" not in message, message
        assert "still uses" in message
        # an earlier copy of this engine (a store it moved away from) is named as such
        migrate_store(engine, {"plugin": "sqlite", "path": "g2.sqlite"})
        migrate_store(engine, {"plugin": "sqlite", "path": "g3.sqlite"})
        with pytest.raises(StoreError, match="an earlier copy of this engine") as earlier:
            migrate_store(engine, {"plugin": "sqlite", "path": "g2.sqlite"})
        assert "no longer need" in str(earlier.value)

        # a copy that fails part way is this engine's, made by this run: delete it
        def broken(*args: Any, **kwargs: Any) -> None:
            raise StoreError("the slot map differs after the copy")

        monkeypatch.setattr(migrate, "_verify", broken)
        with pytest.raises(StoreError, match="failed part way") as partial:
            migrate_store(engine, {"plugin": "sqlite", "path": "g4.sqlite"})
        assert "delete the partial copy" in str(partial.value)
        assert engine.gallery_store.describe().endswith("g3.sqlite")  # unchanged
    assert other.identify(embedding=unit_vectors(1)[0]).subject_id is None  # intact, empty


@pytest.mark.parametrize("store", ["postgres"], indirect=True)
def test_another_engines_postgres_schema_is_named_not_offered_for_deletion(
    store: dict[str, Any], engine_name: str, make_engine: Any
) -> None:
    make_engine("doors", gallery_store=store, he={"preset": "compact"})
    refused = frip(
        "engine", "migrate", engine_name, "--to", "postgres", "--dsn", store["dsn"],
        "--option", "schema=frip_doors",
    )  # fmt: skip
    assert refused.returncode == 6, refused.stderr
    assert "engine 'doors'" in refused.stderr and "delete" not in refused.stderr, refused.stderr
