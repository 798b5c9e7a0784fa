"""The key service's batched decisions (issue 16, serving at 100,000 registrants): one
selection per block for all the probes that scored it, from slot arrays the engine keeps
per committed slot map, gives every probe exactly what deciding it alone gives; the
engine's slot map follows every enrolment, erasure and key rotation."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytest
from conftest import near, unit_vectors
from frip_plugins.he_backends.plaintext import PlaintextBackend, PlaintextDecryptor

from frip_engine.engine import EnrolItem
from frip_engine.errors import BackendError, FripError
from frip_engine.keyservice import SCORE_BOUND, KeyService, Occupants

SLOTS = 64


class _Keys:
    """A key store holding one dummy secret (the plaintext backend ignores it)."""

    def load_secret(self, engine_id: str, key_id: str) -> bytearray:
        return bytearray(b"not-a-key")


class _Decryptor(PlaintextDecryptor):
    """Scores as float64 bytes; bytes that are not whole float64s are a damaged ciphertext."""

    def decrypt_scores(self, scores: bytes) -> np.ndarray:
        if len(scores) % 8:
            raise BackendError("damaged score ciphertext")
        return super().decrypt_scores(scores)


class _Backend(PlaintextBackend):
    def decryptor(self, public_context: bytes, secret_context: bytearray) -> _Decryptor:
        return _Decryptor(SLOTS)


def _service() -> KeyService:
    return KeyService(_Backend(SLOTS), _Keys(), "e", 0, b"")  # type: ignore[arg-type]


def _one_by_one(
    scored: Sequence[tuple[int, bytes]], occupants: Mapping[int, Mapping[int, str]], top_k: int
) -> list[tuple[float, str]]:
    """The decision of one probe as the key service made it before batching: each
    block's top k (argpartition, then a stable sort), extended in the probe's block order,
    stably sorted, cut to k."""
    best: list[tuple[float, str]] = []
    for block_id, blob in scored:
        scores = np.frombuffer(blob, dtype=np.float64)
        slots = np.fromiter(occupants[block_id].keys(), dtype=np.int64)
        values = scores[slots]
        if not np.all(np.abs(values) <= SCORE_BOUND):
            raise BackendError("out of bounds")
        top = (
            np.argpartition(-values, top_k - 1)[:top_k]
            if top_k < values.size
            else np.arange(values.size)
        )
        order = top[np.argsort(-values[top], kind="stable")]
        best.extend((float(values[i]), occupants[block_id][int(slots[i])]) for i in order)
    best.sort(key=lambda pair: -pair[0])
    return best[:top_k]


def _gallery(rng: np.random.Generator) -> dict[int, dict[int, str]]:
    """Five blocks with scattered occupied slots (one block empty), in shuffled order."""
    table: dict[int, dict[int, str]] = {}
    for block_id in (3, 7, 8, 11, 20):
        count = 0 if block_id == 8 else int(rng.integers(1, SLOTS))
        slots = rng.permutation(SLOTS)[:count]
        table[block_id] = {int(s): f"b{block_id}s{s}" for s in slots}
    return table


@pytest.mark.parametrize("top_k", [1, 3, 5, 200])
@pytest.mark.parametrize("arrays", [False, True])
def test_a_batch_decides_each_probe_as_alone(top_k: int, arrays: bool) -> None:
    rng = np.random.default_rng(top_k)
    table = _gallery(rng)
    occupants: Mapping[int, Mapping[int, str]] = Occupants(table) if arrays else table
    batch = []
    for probe in range(9):
        blocks = [b for b in table if rng.random() < 0.8] if probe else []  # one scores none
        rng.shuffle(blocks)
        # scores rounded to 0.05: many exact ties, inside a block and across blocks
        batch.append([(b, np.round(rng.uniform(-1, 1, SLOTS) * 20) / 20) for b in blocks if b != 8])
    scored = [[(b, s.tobytes()) for b, s in probe] for probe in batch]
    answers = _service().decide_many(scored, occupants, top_k)
    assert answers[0] == ([], {})
    for probe, answer in zip(scored[1:], answers[1:], strict=True):
        assert not isinstance(answer, FripError)
        candidates, timings = answer
        if not probe:
            assert answer == ([], {})
            continue
        want = _one_by_one(probe, table, top_k)
        assert [(c.score, c.subject_id) for c in candidates] == want
        assert set(timings) == {"decryption", "minimum_selection", "key_unwrap"}
        one = _service().decide(probe, occupants, top_k)[0]
        assert [(c.score, c.subject_id) for c in one] == want


def test_a_probe_that_cannot_be_decided_fails_alone_with_its_first_error() -> None:
    table = {1: {0: "a", 5: "b"}, 2: {1: "c"}, 3: {2: "d"}}
    good = np.full(SLOTS, 0.5)
    wild = good.copy()
    wild[1] = 7.0  # block 2's occupied slot: not a score of unit vectors
    damaged = b"\x00" * 5  # not a whole number of float64s
    batch = [
        [(1, good.tobytes()), (2, wild.tobytes()), (3, damaged)],  # the bound, block 2 first
        [(1, good.tobytes()), (3, damaged), (2, wild.tobytes())],  # the damage comes first
        [(3, good.tobytes()), (1, good.tobytes())],
    ]
    first, second, third = _service().decide_many(batch, Occupants(table), 2)
    assert isinstance(first, BackendError) and "outside [-1, 1]" in str(first)
    assert isinstance(second, BackendError) and "damaged" in str(second)
    assert not isinstance(third, FripError)
    assert [c.subject_id for c in third[0]] == ["d", "a"]  # ties: block order, slot order
    with pytest.raises(BackendError, match="outside"):
        _service().decide(batch[0], table, 1)


def test_pemiu_products_are_assigned_per_probe_as_alone() -> None:
    rng = np.random.default_rng(5)
    products = rng.uniform(-0.2, 0.2, (4, 3, 3, 10))  # probes, blocks, blocks, slots
    occupants = {0: "x", 4: "y", 9: "z"}
    alone = [KeyService._best_in_block(7, p, occupants, 2) for p in products]
    stacked = np.stack(products)
    slots = np.array(list(occupants), dtype=np.int64)
    from frip_engine.keyservice import _best_rows

    assert _best_rows(7, stacked, slots, list(occupants.values()), 2) == alone


def _decided(engine: Any, probe: np.ndarray) -> str | None:
    return engine.identify(embedding=probe, top_k=3).subject_id  # type: ignore[no-any-return]


def test_the_slot_map_follows_enrolment_erasure_and_key_rotation(make_engine: Any) -> None:
    engine = make_engine("cache", he={"plugin": "tenseal", "preset": "compact", "scorer": "fast"})
    gallery = unit_vectors(6, seed=3)
    engine.enrol_many([EnrolItem(f"s{i}", embeddings=[v]) for i, v in enumerate(gallery[:4])])
    first = engine._occupants()
    assert engine._occupants() is first  # nothing committed: the same map, its arrays kept
    first.arrays(next(iter(first)))
    assert _decided(engine, near(gallery[1], 0.3, 1)) == "s1"

    engine.enrol("s4", embeddings=[gallery[4]])
    enrolled = engine._occupants()
    assert enrolled is not first
    assert sorted(s for block in enrolled.values() for s in block.values()) == [
        "s0",
        "s1",
        "s2",
        "s3",
        "s4",
    ]
    assert _decided(engine, near(gallery[4], 0.3, 2)) == "s4"

    engine.remove("s1")
    erased = engine._occupants()
    assert erased is not enrolled
    assert "s1" not in {s for block in erased.values() for s in block.values()}
    assert _decided(engine, near(gallery[1], 0.3, 3)) != "s1"

    engine.rotate_he_keys()
    rotated = engine._occupants()
    assert rotated is not erased
    assert rotated == erased  # same slots, new revisions
    assert _decided(engine, near(gallery[4], 0.3, 4)) == "s4"


def test_another_process_committing_is_followed(make_engine: Any, home: Any) -> None:
    from frip_engine.engine import Engine

    engine = make_engine("follow", he={"plugin": "tenseal", "preset": "compact"})
    gallery = unit_vectors(3, seed=8)
    engine.enrol("a", embeddings=[gallery[0]])
    before = engine._occupants()
    other = Engine.open("follow", home)  # another writer, as a second process would be
    try:
        other.enrol("b", embeddings=[gallery[1]])
    finally:
        other.close()
    after = engine._occupants()
    assert after is not before
    assert _decided(engine, near(gallery[1], 0.2, 5)) == "b"
