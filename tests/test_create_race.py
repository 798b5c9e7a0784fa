"""Several processes creating one engine at the same moment (open_engine(create=True) at
start-up of several workers of an application): one creates it, the others open what it
created, and nothing anyone else made is ever deleted."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path
from typing import Any

from conftest import PASSPHRASE, unit_vectors

from frip_engine import open_engine
from frip_engine.errors import ProfileError


def _create(home: str, name: str, start: Any, answers: Any) -> None:
    os.environ["FRIP_PASSPHRASE"] = PASSPHRASE
    start.wait()  # every process calls open_engine at the same moment
    try:
        with open_engine(name, create=True, home=Path(home)) as engine:
            answers.put(("ok", engine.profile.engine_id))
    except Exception as exc:  # reported to the test, which shows it
        answers.put(("error", f"{type(exc).__name__}: {exc}"))


def test_concurrent_creates_end_with_one_engine_that_everyone_opened(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    processes = 3
    for attempt in range(3):  # the race is narrow: try it a few times
        name = f"race{attempt}"
        start, answers = context.Barrier(processes), context.Queue()
        workers = [
            context.Process(target=_create, args=(str(tmp_path), name, start, answers))
            for _ in range(processes)
        ]
        for worker in workers:
            worker.start()
        results = [answers.get(timeout=300) for _ in workers]
        for worker in workers:
            worker.join(timeout=60)
        assert [r[0] for r in results] == ["ok"] * processes, results
        assert len({r[1] for r in results}) == 1, results  # one engine, opened by all
        os.environ["FRIP_PASSPHRASE"] = PASSPHRASE
        with open_engine(name, home=tmp_path) as engine:  # whole and usable afterwards
            (vector,) = unit_vectors(1, seed=attempt)
            engine.enrol("alice", embeddings=[vector])
            assert engine.identify(embedding=vector).subject_id == "alice"


def test_a_folder_left_by_an_interrupted_create_is_named_not_waited_on(tmp_path: Path) -> None:
    leftover = tmp_path / "engines" / "half"
    leftover.mkdir(parents=True)
    (leftover / "gallery.sqlite").write_bytes(b"")
    os.environ["FRIP_PASSPHRASE"] = PASSPHRASE
    try:
        open_engine("half", create=True, home=tmp_path)
    except ProfileError as exc:
        assert "interrupted" in str(exc) and str(leftover) in str(exc)
    else:
        raise AssertionError("a folder holding no engine was taken for one")
    assert (leftover / "gallery.sqlite").exists()  # not deleted: it is not ours
