"""Micro-batching in ``frip serve`` (issue 16): identify requests for one engine that queue
while its thread is busy are scored together with ``Engine.identify_many``; each caller
gets the decision a lone request gets (or its own 4xx), and ``batch_size`` says how many
probes were scored together. The engine is made busy deterministically: its thread is
held until every request of a round is queued."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
from conftest import PASSPHRASE, near, unit_vectors
from frip_eval.loadgen import free_port, headers

from frip_engine.engine import Engine, EnrolItem
from frip_engine.profile import Profile
from frip_engine.service.app import ServiceConfig, create_app
from frip_engine.service.db import Database
from frip_engine.service.state import Service
from frip_engine.service.vendors import Vendors

httpx = pytest.importorskip("httpx")

GALLERY = unit_vectors(12, seed=5)
SUBJECTS = [f"r{i:02d}" for i in range(len(GALLERY))]
IDENTIFY = "/v1/engines/doors/identify"


@dataclass
class Live:
    url: str
    service: Service
    key: str


@contextmanager
def live(home: Path, key: str, **config: Any) -> Iterator[Live]:
    """``frip serve``'s app and server in a thread on a free loopback port."""
    from frip_engine.service.server import ConnectionLimits, build_server

    app = create_app(ServiceConfig(home, rate=0, access_log=False, **config))
    port = free_port()
    server = build_server(app, "127.0.0.1", port, ConnectionLimits(), configure_logging=False)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.02)
    try:
        yield Live(f"http://127.0.0.1:{port}", app.state.service, key)
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """One engine, 'doors' (plaintext reference, file key store), and acme's key."""
    root = tmp_path_factory.mktemp("batch") / "frip-home"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FRIP_HOME", str(root))
        patch.setenv("FRIP_PASSPHRASE", PASSPHRASE)
        profile = {"engine": {"name": "doors", "insecure": True}, "he": {"plugin": "plaintext"}}
        with Engine.create(Profile.from_dict(profile), root) as engine:
            engine.enrol_many(
                [EnrolItem(s, embeddings=[v]) for s, v in zip(SUBJECTS, GALLERY, strict=True)]
            )
        key = Vendors(Database(root / "service.sqlite")).create("acme", ["doors"])
        yield root, key


@pytest.fixture(scope="module")
def batching(home: tuple[Path, str]) -> Iterator[Live]:
    with live(*home, batch_max=32, batch_wait_ms=5.0) as server:
        yield server


@pytest.fixture(scope="module")
def unbatched(home: tuple[Path, str]) -> Iterator[Live]:
    with live(*home, batch_max=1) as server:
        yield server


def post(server: Live, body: dict[str, Any], path: str = IDENTIFY) -> Any:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        return client.post(path, json=body, headers=headers(server.key))


def concurrently(server: Live, bodies: list[dict[str, Any]], path: str = IDENTIFY) -> list[Any]:
    """Send every body at once while the engine's thread is held, release it once all of
    them are queued, and return the responses in order."""
    assert post(server, {"embedding": GALLERY[0].tolist()}).status_code == 200  # opens doors
    slot = server.service.engines().opened("doors")
    assert slot is not None
    gate = threading.Event()
    held = slot.executor.submit(gate.wait)  # the engine is busy with a slow first call
    try:
        with ThreadPoolExecutor(len(bodies)) as senders:
            sent = [senders.submit(post, server, body, path) for body in bodies]
            deadline = time.monotonic() + 60
            while slot.queued() < len(bodies):
                assert time.monotonic() < deadline, f"only {slot.queued()} queued"
                time.sleep(0.01)
            gate.set()
            return [future.result() for future in sent]
    finally:
        gate.set()
        held.result()


def lone(server: Live, body: dict[str, Any]) -> Any:
    """The unbatched answer: one request on an idle engine."""
    response = post(server, body)
    if response.status_code == 200:
        assert response.json()["batch_size"] == 1
        assert response.json()["timings"]["batch_size"] == 1
    return response


def same_decision(batched: dict[str, Any], alone: dict[str, Any]) -> None:
    for field in ("matched", "subject_id", "threshold", "candidates", "registrants"):
        assert batched[field] == alone[field], field
    assert batched["score"] == pytest.approx(alone["score"], abs=1e-9)


def probes(n: int, seed: int) -> list[dict[str, Any]]:
    """Near-copies of registrants, and a stranger every third probe."""
    strangers = unit_vectors(n, seed=seed + 100)
    return [
        {"embedding": (strangers[i] if i % 3 == 2 else near(GALLERY[i], 0.2, seed + i)).tolist()}
        for i in range(n)
    ]


def test_concurrent_identifications_are_scored_together_with_lone_decisions(
    batching: Live,
) -> None:
    bodies = probes(6, seed=1)
    alone = [lone(batching, body).json() for body in bodies]
    answered = concurrently(batching, bodies)
    assert [r.status_code for r in answered] == [200] * 6, [r.text for r in answered]
    for response, expected in zip(answered, alone, strict=True):
        data = response.json()
        same_decision(data, expected)
        assert data["batch_size"] == 6 and data["timings"]["batch_size"] == 6
        assert data["timings"]["batch_wait"] >= 0 and data["timings"]["queue_wait"] > 0
    assert any(r.json()["matched"] for r in answered)
    assert not all(r.json()["matched"] for r in answered)


def test_requests_with_other_options_are_batched_only_with_their_own(batching: Live) -> None:
    bodies = [{**body, "top_k": 1 + i % 2} for i, body in enumerate(probes(6, seed=2))]
    bodies[5]["threshold"] = 0.9
    alone = [lone(batching, body).json() for body in bodies]
    answered = concurrently(batching, bodies)
    assert [r.status_code for r in answered] == [200] * 6
    for response, expected in zip(answered, alone, strict=True):
        same_decision(response.json(), expected)
    sizes = [r.json()["batch_size"] for r in answered]
    assert sizes == [3, 2, 3, 2, 3, 1]  # top_k 1; top_k 2; top_k 2 with threshold 0.9


def test_a_bad_probe_in_a_batch_fails_alone_with_its_own_4xx(batching: Live) -> None:
    good = probes(4, seed=3)
    bad = [{"embedding": [0.5, 0.25, 0.125]}, {"embedding": [0.0] * 512}]
    bodies = [good[0], bad[0], good[1], good[2], bad[1], good[3]]
    alone = [lone(batching, body) for body in bodies]
    assert [r.status_code for r in alone] == [200, 422, 200, 200, 422, 200]
    answered = concurrently(batching, bodies)
    for response, expected in zip(answered, alone, strict=True):
        assert response.status_code == expected.status_code, response.text
        if response.status_code == 200:
            same_decision(response.json(), expected.json())
            assert response.json()["batch_size"] == 4  # the good probes, scored together
        else:
            assert response.json()["error"]["code"] == expected.json()["error"]["code"]
            assert response.json()["error"]["code"] == "bad_embedding"


def test_only_queued_requests_wait_for_a_batch_to_fill(home: tuple[Path, str]) -> None:
    """A lone request to an idle engine never waits, however long --batch-wait-ms; queued
    ones wait no longer once --batch-max of them are in."""
    with live(*home, batch_max=3, batch_wait_ms=10_000.0) as patient:
        start = time.perf_counter()
        alone = lone(patient, probes(1, seed=6)[0])
        assert alone.status_code == 200 and time.perf_counter() - start < 5
        assert alone.json()["timings"]["queue_wait"] < 1
        start = time.perf_counter()
        answered = concurrently(patient, probes(6, seed=6))
        assert time.perf_counter() - start < 5
        assert [r.json()["batch_size"] for r in answered] == [3] * 6


def test_batch_max_1_turns_batching_off(unbatched: Live) -> None:
    bodies = probes(4, seed=4)
    answered = concurrently(unbatched, bodies)
    assert [r.status_code for r in answered] == [200] * 4
    assert [r.json()["batch_size"] for r in answered] == [1] * 4
    assert [r.json()["timings"]["batch_size"] for r in answered] == [1] * 4


def counted_groups(slot: Any, monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The subject ids of each group the engine plans from now on (one commit each)."""
    groups: list[list[str]] = []
    prepare = slot.engine.prepare_enrolment

    def counted(items: list[EnrolItem]) -> Any:
        groups.append([item.subject_id for item in items])
        return prepare(items)

    monkeypatch.setattr(slot.engine, "prepare_enrolment", counted)
    return groups


def test_queued_enrolments_are_committed_together_each_told_its_own_result(
    batching: Live, home: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from frip_engine.service.audit import AuditLog

    assert post(batching, {"embedding": GALLERY[0].tolist()}).status_code == 200
    slot = batching.service.engines().opened("doors")
    assert slot is not None
    committed = counted_groups(slot, monkeypatch)  # planned, then committed, together
    new = unit_vectors(4, seed=50)
    bodies = [
        {"subject_id": "n0", "embeddings": [new[0].tolist()], "attributes": {"age": 30}},
        {"subject_id": "r00", "embeddings": [new[1].tolist()]},  # enrolled already: 409
        {"subject_id": "n1", "embeddings": [new[1].tolist()]},
        {"subject_id": "n2", "embeddings": [[0.5, 0.25]]},  # 422, alone
        {"subject_id": "n1", "embeddings": [new[2].tolist()]},  # twice in the batch: one 409
        {"subject_id": "n3", "embeddings": [new[3].tolist()]},
    ]
    answered = concurrently(batching, bodies, "/v1/engines/doors/subjects")
    statuses = [r.status_code for r in answered]
    assert statuses[:2] + statuses[3:4] + statuses[5:] == [201, 409, 422, 201], statuses
    assert sorted([statuses[2], statuses[4]]) == [201, 409]
    codes = [r.json()["error"]["code"] for r in answered if r.status_code >= 400]
    assert sorted(codes) == ["bad_embedding", "subject_exists", "subject_exists"]
    assert [sorted(c) for c in committed] == [["n0", "n1", "n3"]]  # one store transaction
    with httpx.Client(base_url=batching.url, timeout=60) as client:
        shown = client.get("/v1/engines/doors/subjects/n0", headers=headers(batching.key))
        assert shown.json()["attributes"] == {"age": 30}
        assert (
            client.get("/v1/engines/doors/subjects/n2", headers=headers(batching.key)).status_code
            == 404
        )
    kept = new[1] if statuses[2] == 201 else new[2]  # the n1 that was enrolled
    for subject, vector in (("n3", new[3]), ("n1", kept)):
        body = {"subject_id": subject, "embedding": near(vector, 0.2, 9).tolist()}
        checked = post(batching, body, "/v1/engines/doors/verify")
        assert checked.json()["matched"] is True, checked.text
    log = AuditLog(home[0])
    events = log.query(frozenset({"doors"}), "acme", limit=1000)
    log.close()
    outcomes = {e["subject_id"]: e["outcome"]["state"] for e in events if e["action"] == "enrol"}
    assert outcomes == {"n0": "enrolled", "n1": "enrolled", "n3": "enrolled"}


def _five_enrolments_at_once(
    server: Live, prefix: str, seed: int, monkeypatch: pytest.MonkeyPatch
) -> tuple[list[Any], list[list[str]]]:
    """After one identify opens the engine: five enrolments (``prefix`` + 0..4) sent at
    once; their responses and the groups the engine committed them in."""
    assert post(server, {"embedding": GALLERY[0].tolist()}).status_code == 200
    slot = server.service.engines().opened("doors")
    assert slot is not None
    groups = counted_groups(slot, monkeypatch)
    new = unit_vectors(5, seed=seed)
    bodies = [{"subject_id": f"{prefix}{i}", "embeddings": [v.tolist()]} for i, v in enumerate(new)]
    return concurrently(server, bodies, "/v1/engines/doors/subjects"), groups


def test_enrolments_of_several_clients_form_one_group_with_identify_batching_off(
    unbatched: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Enrolment groups have their own limits (--enrol-group-max, default 64), so the
    enrolments queued by several clients meanwhile are committed as one group even where
    identify batching is off; each caller is told its own result."""
    answered, groups = _five_enrolments_at_once(unbatched, "g", 60, monkeypatch)
    assert [r.status_code for r in answered] == [201] * 5
    assert [sorted(g) for g in groups] == [[f"g{i}" for i in range(5)]]


def test_an_enrolment_group_holds_at_most_enrol_group_max(
    home: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with live(*home, enrol_group_max=2, enrol_group_wait_ms=0.0) as server:
        answered, groups = _five_enrolments_at_once(server, "m", 61, monkeypatch)
    assert [r.status_code for r in answered] == [201] * 5
    assert sorted(len(g) for g in groups) == [1, 2, 2]
    assert sorted(s for g in groups for s in g) == [f"m{i}" for i in range(5)]


def test_batch_options_are_checked() -> None:
    from frip_engine.errors import InputError

    for wrong in (
        {"batch_max": 0},
        {"batch_wait_ms": -1.0},
        {"enrol_group_max": 0},
        {"enrol_group_wait_ms": -1.0},
    ):
        with pytest.raises(InputError):
            ServiceConfig(Path("nowhere"), **wrong).check()
    assert ServiceConfig(Path("nowhere")).batch_max > 1  # batching is on by default
    assert np.isfinite(ServiceConfig(Path("nowhere")).batch_wait_ms)


def test_frip_serve_refuses_bad_batch_options(tmp_path: Path) -> None:
    import subprocess
    import sys

    for option in (
        ["--batch-max", "0"],
        ["--batch-wait-ms", "-1"],
        ["--enrol-group-max", "0"],
        ["--enrol-group-wait-ms", "-1"],
        # NaN passes every comparison, inf overflows int(): each refused by name
        ["--max-body-mb", "nan"],
        ["--max-body-mb", "inf"],
        ["--max-body-mb", "1e308"],
        ["--keep-alive", "nan"],
        ["--header-timeout", "inf"],
        ["--replay-window", "nan"],
        ["--rate", "nan"],
        ["--rate", "-1"],
    ):
        command = [sys.executable, "-m", "frip_engine", "serve", "--home", str(tmp_path)]
        result = subprocess.run([*command, *option], capture_output=True, text=True)
        assert result.returncode == 2, result.stderr
        assert option[0] in result.stderr and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_a_slot_answers_each_queued_call_by_its_own_result() -> None:
    """EngineSlot.batch alone: a caller that gave up while queued is left out of its
    batch, an item's own exception reaches its caller only, and a fault of the batch's
    work reaches every caller of that batch."""
    import asyncio

    from frip_engine.service.pool import EngineSlot

    batches: list[list[int]] = []

    def work(engine: Any, items: list[int]) -> list[int | Exception]:
        batches.append(items)
        if -1 in items:
            raise RuntimeError("the engine failed")
        return [ValueError(f"bad {i}") if i == 13 else i * 10 for i in items]

    async def scenario() -> list[Any]:
        executor = ThreadPoolExecutor(max_workers=1)
        slot = EngineSlot("doors", executor, cast(Engine, object()), batch_max=8)
        gate = threading.Event()
        executor.submit(gate.wait)
        calls = [asyncio.ensure_future(slot.batch("k", i, work)) for i in (1, 13, 2, 3)]
        other = [asyncio.ensure_future(slot.batch("other", i, work)) for i in (-1, 4)]
        await asyncio.sleep(0.05)
        calls[3].cancel()  # the client left while queued
        await asyncio.sleep(0.05)
        gate.set()
        answers = await asyncio.gather(*calls[:3], *other, return_exceptions=True)
        executor.shutdown(wait=True)
        return answers

    answers = asyncio.run(scenario())
    assert batches == [[1, 13, 2], [-1, 4]]
    assert [a[0] if isinstance(a, tuple) else repr(a) for a in answers] == [
        10,
        "ValueError('bad 13')",
        20,
        "RuntimeError('the engine failed')",
        "RuntimeError('the engine failed')",
    ]


ENROL = "/v1/engines/doors/subjects"


def encryptor_held(server: Live, seconds: float) -> tuple[Any, int]:
    """Enrol one subject (which starts the engine's encryption worker), then occupy that
    worker for ``seconds``: the next enrolment's encryption waits behind it. Returns the
    engine's slot and the worker's pid."""
    first = {
        "subject_id": f"w{time.monotonic_ns()}",
        "embeddings": [unit_vectors(1, seed=77)[0].tolist()],
    }
    assert post(server, first, ENROL).status_code == 201
    slot = server.service.engines().opened("doors")
    assert slot is not None
    encryptor = slot.engine._encryptor
    assert encryptor is not None
    (pool,) = encryptor._pools
    pool.submit(time.sleep, seconds)
    return slot, next(iter(pool._processes))


def until(condition: Any, what: str) -> None:
    deadline = time.monotonic() + 60
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def test_identify_is_answered_while_an_enrolment_is_encrypted(batching: Live) -> None:
    """Enrolment encryption is off the read path: with an enrolment planned and waiting
    for its encryption (in a worker process), identify requests are answered from the
    committed blocks at once; the enrolment is acknowledged after its commit, and then
    found."""
    slot, _ = encryptor_held(batching, 3.0)
    vector = unit_vectors(1, seed=78)[0]
    with ThreadPoolExecutor(1) as sender:
        enrolling = sender.submit(
            post, batching, {"subject_id": "later", "embeddings": [vector.tolist()]}, ENROL
        )
        until(lambda: slot.answering_later() == 1, "the enrolment was not handed off")
        for body in probes(3, seed=8):
            start = time.perf_counter()
            answered = post(batching, body)
            assert answered.status_code == 200 and time.perf_counter() - start < 2
        probe = {"embedding": near(vector, 0.2, 3).tolist()}
        assert post(batching, probe).json()["subject_id"] != "later"  # not committed yet
        assert not enrolling.done()  # acknowledged only after the commit
        assert enrolling.result().status_code == 201
    assert post(batching, probe).json()["subject_id"] == "later"


def test_an_enrolment_group_whose_encryption_worker_dies_is_absent_and_told_to_retry(
    batching: Live,
) -> None:
    """SIGKILL the encryption worker while a group of enrolments waits for it: every
    caller of the group gets 503 worker_lost (retry), none is stored, and a new worker
    enrols the retry."""
    slot, pid = encryptor_held(batching, 30.0)
    vectors = unit_vectors(2, seed=79)
    bodies = [{"subject_id": f"lost{i}", "embeddings": [v.tolist()]} for i, v in enumerate(vectors)]
    gate = threading.Event()
    held = slot.executor.submit(gate.wait)  # both queue, then are planned as one group
    with ThreadPoolExecutor(len(bodies)) as senders:
        sent = [senders.submit(post, batching, body, ENROL) for body in bodies]
        until(lambda: slot.queued() == len(bodies), "the enrolments did not queue")
        gate.set()
        held.result()
        until(lambda: slot.answering_later() == 1, "the group was not handed off")
        os.kill(pid, signal.SIGKILL)
        answers = [future.result() for future in sent]
    assert [a.status_code for a in answers] == [503, 503], [a.text for a in answers]
    assert {a.json()["error"]["code"] for a in answers} == {"worker_lost"}
    assert all("retry" in a.json()["error"]["message"] for a in answers)
    for body in bodies:
        path = f"{ENROL}/{body['subject_id']}"
        with httpx.Client(base_url=batching.url, timeout=60) as client:
            assert client.get(path, headers=headers(batching.key)).status_code == 404
    assert post(batching, bodies[0], ENROL).status_code == 201


def _later_scenario(at_once: int) -> list[str]:
    """EngineSlot.batch alone, one call per batch: enrolments ``e1``, ``e2`` (each
    answering Later, ``at_once`` of them allowed in flight) and identifies ``i1``..``i4``
    queued behind them. The first identify completes e1's pending work (as a worker
    process would while identifies queue); e2's is complete when it starts. Returns the
    order in which the engine's thread ran things."""
    import asyncio

    from frip_engine.service.pool import EngineSlot, Later

    ran: list[str] = []
    pending: dict[str, Future[Any]] = {}

    def finisher(name: str) -> Any:
        def finish(done: Future[Any]) -> list[str]:
            ran.append(f"finish {name}")
            return [name]

        return finish

    def enrol(engine: Any, items: list[str]) -> Later[str]:
        (name,) = items
        ran.append(name)
        pending[name] = Future()
        if name == "e2":
            pending[name].set_result(None)
        return Later(pending[name], finisher(name), at_once)

    def identify(engine: Any, items: list[str]) -> list[str]:
        ran.extend(items)
        if items == ["i1"]:
            pending["e1"].set_result(None)
        return items

    async def scenario() -> None:
        executor = ThreadPoolExecutor(max_workers=1)
        slot = EngineSlot("doors", executor, cast(Engine, object()), batch_max=1)
        gate = threading.Event()
        executor.submit(gate.wait)
        calls = [asyncio.ensure_future(slot.batch("e", "e1", enrol))]
        await asyncio.sleep(0.02)
        calls.append(asyncio.ensure_future(slot.batch("e", "e2", enrol)))
        await asyncio.sleep(0.02)
        for i in range(1, 5):
            calls.append(asyncio.ensure_future(slot.batch("i", f"i{i}", identify)))
            await asyncio.sleep(0.02)
        gate.set()
        answers = await asyncio.wait_for(asyncio.gather(*calls), 30)
        assert [a[0] for a in answers] == ["e1", "e2", "i1", "i2", "i3", "i4"]
        executor.shutdown(wait=True)

    asyncio.run(scenario())
    return ran


def test_a_later_batch_is_finished_before_batches_queued_meanwhile() -> None:
    """Fairness: once a Later batch's work is done, its finish (the group commit, then the
    acknowledgements) runs on the engine's thread right after the batch running now,
    ahead of the identify batches queued meanwhile (which could keep the engine busy for
    seconds); the next batch of its kind is then the oldest call and runs next."""
    ran = _later_scenario(at_once=1)
    assert ran[:3] == ["e1", "i1", "finish e1"], ran
    assert ran.index("finish e2") < ran.index("i4"), ran


def test_later_batches_of_one_kind_overlap_only_as_far_as_they_allow() -> None:
    """A Later batch that allows 2 at once lets the next batch of its kind start before
    it is finished (a pipeline: the next group is planned and encrypted while this one
    waits and commits); one that allows 1 holds its kind back until it is finished."""
    overlapped = _later_scenario(at_once=2)
    assert overlapped[:2] == ["e1", "e2"], overlapped
    serial = _later_scenario(at_once=1)
    assert serial.index("e2") > serial.index("finish e1"), serial


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """'doors' again, on packed CKKS (TenSEAL, compact preset): enrolments are deltas."""
    root = tmp_path_factory.mktemp("packed") / "frip-home"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FRIP_HOME", str(root))
        patch.setenv("FRIP_PASSPHRASE", PASSPHRASE)
        profile = {
            "engine": {"name": "doors"},
            "he": {"plugin": "tenseal", "preset": "compact", "scorer": "fast"},
            "key_store": {"plugin": "file", "scrypt_log2_n": 14},
        }
        with Engine.create(Profile.from_dict(profile), root) as engine:
            engine.enrol_many(
                [EnrolItem(s, embeddings=[v]) for s, v in zip(SUBJECTS, GALLERY, strict=True)]
            )
        key = Vendors(Database(root / "service.sqlite")).create("acme", ["doors"])
        with live(root, key, batch_max=32, batch_wait_ms=5.0) as server:
            yield server


def test_delta_enrolment_groups_overlap_and_a_subject_in_flight_is_refused(
    packed: Live,
) -> None:
    """Where enrolments are deltas, the next group is planned and encrypted while the one
    before is still in flight (two at once); a subject already in a group in flight is
    refused at once (409, as if enrolled: it is, or its caller is told it is not); both
    groups are then committed and found."""
    slot, _ = encryptor_held(packed, 6.0)
    first, second = unit_vectors(2, seed=81)
    with ThreadPoolExecutor(2) as senders:
        a = senders.submit(post, packed, {"subject_id": "a", "embeddings": [first.tolist()]}, ENROL)
        until(lambda: slot.answering_later() == 1, "the first group was not handed off")
        again = post(packed, {"subject_id": "a", "embeddings": [second.tolist()]}, ENROL)
        assert again.status_code == 409, again.text
        assert again.json()["error"]["code"] == "subject_exists"
        assert not a.done()
        b = senders.submit(
            post, packed, {"subject_id": "b", "embeddings": [second.tolist()]}, ENROL
        )
        until(lambda: slot.answering_later() == 2, "the second group did not start")
        assert not a.done()
        assert a.result().status_code == 201 and b.result().status_code == 201
    for subject, vector in (("a", first), ("b", second)):
        body = {"subject_id": subject, "embedding": near(vector, 0.2, 5).tolist()}
        assert post(packed, body, "/v1/engines/doors/verify").json()["matched"] is True


def test_a_delta_group_commits_off_the_engine_thread_and_is_acknowledged_after(
    packed: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The commit of a delta group (add to the block, serialise, write) runs on the
    engine's committer thread: identify requests are answered from the committed blocks
    while it is held; the enrolment is acknowledged only once it is committed, then
    found."""
    from frip_plugins.gallery_stores._sql import SqlGalleryStore

    release, committing = threading.Event(), threading.Event()
    commit_block = SqlGalleryStore.commit_block

    def held(store: Any, *args: Any, **kwargs: Any) -> int:
        committing.set()
        assert release.wait(60)
        return commit_block(store, *args, **kwargs)

    vector = unit_vectors(1, seed=83)[0]
    probe = {"embedding": near(vector, 0.2, 6).tolist()}
    with ThreadPoolExecutor(1) as sender:
        monkeypatch.setattr(SqlGalleryStore, "commit_block", held)
        enrolled = sender.submit(
            post, packed, {"subject_id": "h", "embeddings": [vector.tolist()]}, ENROL
        )
        until(committing.is_set, "the committer did not reach its write")
        for _ in range(3):  # answered from the committed gallery, h not in it yet
            answered = post(packed, probe)
            assert answered.status_code == 200 and answered.json()["matched"] is False
        assert not enrolled.done()
        release.set()
        assert enrolled.result().status_code == 201
    monkeypatch.undo()
    assert post(packed, probe).json()["subject_id"] == "h"
