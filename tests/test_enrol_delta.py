"""Delta enrolment (issues 16 and 19): new rows are encrypted alone, as fresh encryptions
of zero plus their encodings, and added to the block's latest revision at commit; slots
are reserved meanwhile, so writers encrypt in parallel and commit in any order."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import BACKENDS, PEMIU, near, needs, unit_vectors
from frip_plugins.he_backends._ckks_layouts import CKKSMatcher

from frip_engine import parallel
from frip_engine.engine import Engine, EnrolItem
from frip_engine.parallel import ZeroStock

FAST_KEYS = {"plugin": "file", "scrypt_log2_n": 14}  # each write unwraps the key once


def _enrol_in_two(engine: Engine, gallery: np.ndarray) -> None:
    """Two enrolments: the second goes into the open block the first made."""
    half = len(gallery) // 2
    for first, last in ((0, half), (half, len(gallery))):
        report = engine.enrol_many(
            [EnrolItem(f"s{i:03d}", embeddings=[gallery[i]]) for i in range(first, last)]
        )
        assert not report.failed


# both libraries, both scorers; pe-miu probes with each library (its scoring is the
# costly part, and the enrolment path it checks is the scorer-independent delta)
CASES = [(backend, "plain") for backend in BACKENDS] + [
    ("tenseal-fast", "pe-miu"),
    ("pyfhel-fast", "pe-miu"),
]


@pytest.mark.parametrize(("backend", "probe"), CASES)
def test_delta_enrolment_decides_as_full_reencryption(
    make_engine: Callable[..., Engine],
    monkeypatch: pytest.MonkeyPatch,
    backend: str,
    probe: str,
) -> None:
    he = BACKENDS[backend]
    needs(he)
    sections: dict[str, Any] = {"he": he}
    if probe == "pe-miu":
        sections["protection"] = PEMIU
    gallery = unit_vectors(10, seed=61)
    gallery[1] = near(gallery[0], 0.3, 62)  # a close pair: the ranking is tight
    delta = make_engine(f"d{backend[:2]}{probe[:2]}", **sections)
    added: list[int] = []
    add_delta = CKKSMatcher.add_delta
    monkeypatch.setattr(
        CKKSMatcher, "add_delta", lambda m, b, d: added.append(1) or add_delta(m, b, d)
    )
    _enrol_in_two(delta, gallery)
    assert added  # the second enrolment was added as a delta
    with monkeypatch.context() as patch:  # the other engine re-encrypts as before
        patch.setattr(CKKSMatcher, "deltas", property(lambda m: False))
        full = make_engine(f"f{backend[:2]}{probe[:2]}", **sections)
        _enrol_in_two(full, gallery)
    assert len(added) == 1
    probes = [near(gallery[i], 0.5, 700 + i) for i in (0, 9)] + list(unit_vectors(1, seed=7))
    for vector in probes:
        one = delta.identify(embedding=vector, top_k=3)
        other = full.identify(embedding=vector, top_k=3)
        assert (one.matched, one.subject_id) == (other.matched, other.subject_id)
        assert [c.subject_id for c in one.candidates] == [c.subject_id for c in other.candidates]
        assert abs(one.score - other.score) < 1e-3  # CKKS noise, not a different value


def test_a_zero_stock_never_hands_out_one_ciphertext_twice() -> None:
    made: list[object] = []

    def make(count: int) -> list[object]:
        fresh = [object() for _ in range(count)]
        made.extend(fresh)  # every one stays referenced: no id is ever reused
        return fresh

    stock = ZeroStock(make, capacity=64, batch=8).start()
    taken: list[object] = []
    lock = threading.Lock()

    def taker() -> None:
        for _ in range(200):
            got = stock.take(5)
            with lock:
                taken.extend(got)

    threads = [threading.Thread(target=taker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stock.stop()
    assert taken and len({id(z) for z in taken}) == len(taken)
    assert len(stock) == 0  # stopping drops what was left


def test_a_worker_uses_each_encryption_of_zero_once(
    make_engine: Callable[..., Engine], monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = make_engine("z", he=BACKENDS["tenseal-fast"])
    matcher = engine.matcher
    stock = ZeroStock(matcher.encrypt_zeros, capacity=2 * 512)
    stock._stock.extend(matcher.encrypt_zeros(2 * 512))  # full, no refill thread
    monkeypatch.setitem(parallel._worker, "matcher", matcher)
    monkeypatch.setitem(parallel._worker, "zeros", stock)
    used: list[Any] = []
    add_plain = type(matcher.ops).add_plain
    monkeypatch.setattr(
        type(matcher.ops), "add_plain", lambda ops, ct, v: used.append(ct) or add_plain(ops, ct, v)
    )
    rows = unit_vectors(3, seed=5)
    first = parallel._encrypt_rows(rows[:2], [0, 1])
    second = parallel._encrypt_rows(rows[2:], [2])
    assert len(used) == 2 * 512 and len({id(ct) for ct in used}) == len(used)
    assert len(stock) == 0
    with engine.key_service.unlocked() as decryptor:  # and they encrypt the rows
        block = matcher.add_delta(first, second)
        values = decryptor.decrypt_block(matcher.dump(block))
    assert np.allclose(values[:, :3], rows.T, atol=1e-3)  # 'compact': 2^26 scale
    assert np.max(np.abs(values[:, 3:])) < 1e-3


def _dense(engine: Engine, expected: set[str]) -> None:
    records = engine.gallery_store.subjects()
    assert {r.subject_id for r in records} == expected  # every one, once
    assert len(records) == len(expected)
    (block,) = engine.gallery_store.blocks()  # packed as one writer would
    assert sorted(r.slot for r in records) == list(range(len(expected)))
    assert all(r.block_id == block.block_id for r in records)


def test_overlapping_groups_commit_in_any_order_densely(
    make_engine: Callable[..., Engine],
) -> None:
    """The service's group commit: a group is planned while another is being encrypted
    (in the worker process, from its stock of encryptions of zero), and they commit in
    the other order; each lands in its own reserved slots of the one open block."""
    engine = make_engine("o", he=BACKENDS["tenseal-fast"])
    vectors = unit_vectors(7, seed=43)
    engine.enrol(EnrolItem("s000", embeddings=[vectors[0]]))
    groups = [[EnrolItem(f"s{j:03d}", embeddings=[vectors[j]]) for j in js] for js in
              ((1, 2), (3, 4), (5, 6))]  # fmt: skip
    plans = [engine.prepare_enrolment(group) for group in groups]
    assert plans[0].deltas
    pending = [engine.encrypt_enrolment(plan) for plan in plans]
    for k in (2, 0, 1):
        report = engine.commit_enrolment(plans[k], pending[k])
        assert not report.failed, report.failed
    _dense(engine, {f"s{j:03d}" for j in range(7)})
    for j in range(7):
        assert engine.identify(embedding=near(vectors[j], 0.2, j)).subject_id == f"s{j:03d}"


def test_concurrent_writer_threads_enrol_everyone_once_densely(home: Path) -> None:
    """Writers on threads of one process, each with its engine object (an engine object
    serves one thread; the store's reservations are seen across objects)."""
    from frip_engine.profile import Profile

    profile = {"engine": {"name": "w"}, "he": BACKENDS["tenseal-fast"], "key_store": FAST_KEYS}
    vectors = unit_vectors(13, seed=44)
    with Engine.create(Profile.from_dict(profile), home) as engine:
        engine.enrol(EnrolItem("s000", embeddings=[vectors[0]]))  # the open block
    errors: list[BaseException] = []

    def writer(w: int) -> None:
        try:
            with Engine.open("w", home) as mine:
                for i in range(1 + 4 * w, 5 + 4 * w, 2):
                    report = mine.enrol_many(
                        [EnrolItem(f"s{j:03d}", embeddings=[vectors[j]]) for j in (i, i + 1)]
                    )
                    assert not report.failed, report.failed
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    with Engine.open("w", home) as engine:
        _dense(engine, {f"s{j:03d}" for j in range(13)})
        for j in (0, 7, 12):
            assert engine.identify(embedding=near(vectors[j], 0.2, j)).subject_id == f"s{j:03d}"


WRITER = """
import json, sys
import numpy as np
from pathlib import Path
from frip_engine.engine import Engine, EnrolItem
home, w = Path(sys.argv[1]), int(sys.argv[2])
vectors = np.array(json.loads(sys.argv[3]))
with Engine.open("p", home) as engine:
    for i in range(0, len(vectors), 2):
        report = engine.enrol_many(
            [EnrolItem(f"w{w}-{i + k}", embeddings=[v]) for k, v in enumerate(vectors[i:i + 2])]
        )
        assert not report.failed, report.failed
"""


def test_concurrent_writer_processes_enrol_everyone_once_densely(
    home: Path, store: dict[str, Any]
) -> None:
    writer_processes_enrol_densely(home, store)


def writer_processes_enrol_densely(
    home: Path, store: dict[str, Any], created: Callable[[], None] | None = None
) -> None:
    """Three writer processes enrol four subjects each into engine ``p`` (``created`` runs
    once the engine exists, before its first block): everyone once, packed in one block."""
    from frip_engine.profile import Profile

    profile = {
        "engine": {"name": "p"},
        "he": BACKENDS["tenseal-fast"],
        "key_store": FAST_KEYS,
        "gallery_store": store,
    }
    vectors = unit_vectors(13, seed=45)
    with Engine.create(Profile.from_dict(profile), home) as engine:
        if created is not None:
            created()
        engine.enrol(EnrolItem("first", embeddings=[vectors[0]]))
    children = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                WRITER,
                str(home),
                str(w),
                json.dumps(vectors[1 + 4 * w : 5 + 4 * w].tolist()),
            ]
        )
        for w in range(3)
    ]
    assert [child.wait(timeout=240) for child in children] == [0, 0, 0]
    with Engine.open("p", home) as engine:
        _dense(engine, {"first"} | {f"w{w}-{i}" for w in range(3) for i in range(4)})
        probe = near(vectors[6], 0.2, 3)  # writer 1's second subject
        assert engine.identify(embedding=probe).subject_id == "w1-1"
