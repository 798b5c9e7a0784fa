"""Engines and threads: identify from threads (an engine each) while another thread
enrols deltas into their block; an engine used from a thread other than its own is told
so (an InputError), not sent to check a healthy disk."""

from __future__ import annotations

import threading
from collections.abc import Callable

from conftest import near, unit_vectors

import frip_engine
from frip_engine.engine import Engine, EnrolItem
from frip_engine.errors import FripError, InputError

HE = {"plugin": "tenseal", "preset": "compact", "scorer": "fast"}


def test_identify_from_threads_while_another_thread_enrols_into_the_block(
    make_engine: Callable[..., Engine],
) -> None:
    """Identify threads (one engine each) never see a spurious StoreError
    ('changed during this identification; retry') while a writer thread commits deltas
    into the block they score."""
    engine = make_engine("race", he=HE, key_store={"plugin": "file", "scrypt_log2_n": 14})
    vectors = unit_vectors(5, seed=5)
    engine.enrol(EnrolItem("s000", embeddings=[vectors[0]]))
    errors: list[BaseException] = []
    wrong: list[str] = []
    stop = threading.Event()

    def reader() -> None:
        probe = near(vectors[0], 0.3, 9)
        mine = frip_engine.open_engine("race")  # engines are not thread-safe: one each
        while not stop.is_set():
            try:
                d = mine.identify(embedding=probe)
                if d.subject_id != "s000":
                    wrong.append(str(d.subject_id))
            except FripError as exc:
                errors.append(exc)

    readers = [threading.Thread(target=reader) for _ in range(2)]
    for t in readers:
        t.start()
    try:
        for i in range(1, 5):
            engine.enrol(EnrolItem(f"s{i:03d}", embeddings=[vectors[i]]))
    finally:
        stop.set()
        for t in readers:
            t.join()

    assert not errors, f"{len(errors)} identify errors, first: {errors[0]!r}"
    assert not wrong


def test_an_engine_used_from_another_thread_is_not_reported_as_a_damaged_disk(
    make_engine: Callable[..., Engine],
) -> None:
    """Engines are not thread-safe (README), but using one from
    another thread raises StoreError "gallery file ...: SQLite objects created in a thread
    can only be used in that same thread ...; check the disk and the file, then retry"
    (exit 6, 'store unreadable or corrupted'), sending the user to check a healthy disk.
    Expected: an InputError-like error that says the engine belongs to its thread."""
    engine = make_engine("xthread", he=HE)
    engine.enrol(EnrolItem("s000", embeddings=[unit_vectors(1, seed=5)[0]]))
    caught: list[BaseException] = []

    def other() -> None:
        try:
            engine.identify(embedding=unit_vectors(1, seed=6)[0])
        except FripError as exc:
            caught.append(exc)

    thread = threading.Thread(target=other)
    thread.start()
    thread.join()
    assert len(caught) == 1 and isinstance(caught[0], InputError), caught
    assert "opened in another thread" in str(caught[0]), repr(caught[0])
    assert "check the disk" not in str(caught[0]), repr(caught[0])
