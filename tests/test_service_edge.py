"""Edge work off the engine path (issue 16): ``frip serve`` decodes and embeds every image
(probe or enrolment) in a pool of worker processes, never on the engine's thread, so an
image probe reaches the engine as its embedding and batches like one. A bad image fails
alone with its own 4xx; a worker killed mid-batch is replaced and its images embedded
again (or failed with a 503 that says retry), never answered with another image's
result."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import LFW_DEV, PASSPHRASE
from frip_eval.loadgen import headers
from test_service_batch import live

from frip_engine.engine import Engine
from frip_engine.errors import NoFaceError, WorkerLostError
from frip_engine.profile import Profile
from frip_engine.service.db import Database
from frip_engine.service.edge import EdgePool, ExtractorSpec
from frip_engine.service.vendors import Vendors

httpx = pytest.importorskip("httpx")

PEOPLE = ["Abdullah", "Adam_Sandler", "Alejandro_Toledo", "Amanda_Bynes"]
IDENTIFY = "/v1/engines/gate/identify"
ENROL = "/v1/engines/gate/subjects"


def face(person: str, number: int = 1) -> bytes:
    return (LFW_DEV / person / f"{person}_{number:04d}.jpg").read_bytes()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """One engine, 'gate' (arcface, plaintext scoring, file key store), and acme's key."""
    root = tmp_path_factory.mktemp("edge") / "frip-home"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FRIP_HOME", str(root))
        patch.setenv("FRIP_PASSPHRASE", PASSPHRASE)
        profile = {"engine": {"name": "gate", "insecure": True}, "he": {"plugin": "plaintext"}}
        Engine.create(Profile.from_dict(profile), root).close()
        key = Vendors(Database(root / "service.sqlite")).create("acme", ["gate"])
        yield root, key


def test_workers_killed_mid_batch_are_replaced_and_never_answer_wrongly() -> None:
    """Eight images in flight in two workers; one worker is SIGKILLed. Each image gets its
    own embedding (as a quiet pool makes it) or WorkerLostError, never another's; the
    pool then has a new worker and answers again. A face-less image fails alone."""
    spec = ExtractorSpec("arcface", "{}")
    images = [face(p, n) for p in PEOPLE for n in (1, 2)]

    async def run(edge: EdgePool, kill: bool) -> list[Any]:
        tasks = [
            asyncio.ensure_future(edge.embed(spec, data, f"images[{i}]"))
            for i, data in enumerate(images)
        ]
        if kill:  # as soon as one image is answered, the others are in flight or queued
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            os.kill(edge.pids(spec)[0], signal.SIGKILL)
        return await asyncio.gather(*tasks, return_exceptions=True)

    async def scenario() -> None:
        edge = EdgePool(workers=2)
        try:
            before = await edge.warm(spec)
            quiet = await run(edge, kill=False)
            assert all(not isinstance(r, BaseException) for r in quiet), quiet
            killed = await run(edge, kill=True)
            for mine, got in zip(quiet, killed, strict=True):
                if isinstance(got, WorkerLostError):
                    assert "retry" in str(got)
                    continue
                assert not isinstance(got, BaseException), got
                np.testing.assert_allclose(got.vector, mine.vector, atol=1e-6)
            after = await edge.warm(spec)
            assert after != before  # the broken pool was replaced
            again = await edge.embed(spec, images[0], "image")
            np.testing.assert_allclose(again.vector, quiet[0].vector, atol=1e-6)
            with pytest.raises(NoFaceError):
                await edge.embed(spec, noise_png(), "image")
        finally:
            edge.close()

    asyncio.run(scenario())


def test_a_worker_that_died_while_idle_is_replaced_at_the_next_call() -> None:
    """A worker killed between requests breaks its pool unseen: the next warm-up and the
    next image start a new pool instead of failing."""
    spec = ExtractorSpec("arcface", "{}")

    async def scenario() -> None:
        edge = EdgePool(workers=1)
        try:
            before = await edge.warm(spec)
            os.kill(before[0], signal.SIGKILL)
            await asyncio.sleep(0.5)  # the pool's manager notices the death
            after = await edge.warm(spec)
            assert after != before
            os.kill(after[0], signal.SIGKILL)
            await asyncio.sleep(0.5)
            got = await edge.embed(spec, face(PEOPLE[0], 1), "image")
            assert got.vector.shape == (512,)
        finally:
            edge.close()

    asyncio.run(scenario())


def test_the_first_image_starts_every_worker() -> None:
    """A pool starts all its workers when it is made, not one per busy moment (Python's
    pool spawns lazily): the second concurrent image never waits for a worker to load
    its models while the service is under load."""
    spec = ExtractorSpec("arcface", "{}")

    async def scenario() -> None:
        edge = EdgePool(workers=2)
        try:
            got = await edge.embed(spec, face(PEOPLE[0], 1), "image")
            assert got.vector.shape == (512,)
            assert len(edge.pids(spec)) == 2
        finally:
            edge.close()

    asyncio.run(scenario())


def noise_png() -> bytes:
    import io

    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 255, (120, 120, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def test_image_probes_batch_off_the_engine_thread(
    home: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Images enrolled and probed over HTTP while the service's own extractor refuses to
    run: every image is embedded in the edge workers. Image probes queued behind a busy
    engine are scored in one batch, each answered as alone; a face-less probe and a
    non-image in the same batch fail alone with their own 422."""
    root, key = home

    def refuse(*_: object) -> None:
        raise AssertionError("an image was embedded in the service process")

    with (
        live(root, key, batch_max=16, batch_wait_ms=50) as server,
        httpx.Client(base_url=server.url, timeout=60) as client,
    ):
        missing = client.get(f"{ENROL}/nobody", headers=headers(key))  # opens the engine
        assert missing.status_code == 404
        slot = server.service.engines().opened("gate")
        assert slot is not None
        monkeypatch.setattr(slot.engine.parts.extractor, "extract", refuse)
        for person in PEOPLE:
            body = {"subject_id": person, "images": [b64(face(person))]}
            sent = client.post(ENROL, json=body, headers=headers(key))
            assert sent.status_code == 201, sent.text
        probes = [b64(face(p, 2)) for p in PEOPLE]
        alone = [client.post(IDENTIFY, json={"image": p}, headers=headers(key)) for p in probes]
        assert [r.json()["subject_id"] for r in alone] == PEOPLE
        bodies = [{"image": p} for p in probes]
        bodies += [{"image": b64(noise_png())}, {"image": b64(b"not a picture")}]
        gate = threading.Event()
        held = slot.executor.submit(gate.wait)  # the engine is busy with a slow call
        try:
            with ThreadPoolExecutor(len(bodies)) as threads:
                sent = [
                    threads.submit(client.post, IDENTIFY, json=b, headers=headers(key))
                    for b in bodies
                ]
                deadline = time.monotonic() + 60
                while slot.queued() < len(probes):  # embedded, waiting for the engine
                    assert time.monotonic() < deadline, f"only {slot.queued()} queued"
                    time.sleep(0.01)
                gate.set()
                answers = [future.result() for future in sent]
        finally:
            gate.set()
            held.result()
    for lone, batched in zip(alone, answers, strict=False):
        assert batched.status_code == 200, batched.text
        got, want = batched.json(), lone.json()
        assert (got["subject_id"], got["matched"]) == (want["subject_id"], want["matched"])
        assert got["score"] == pytest.approx(want["score"], abs=1e-9)
        assert got["timings"]["feature_extraction"] > 0
    assert [a.json()["batch_size"] for a in answers[:4]] == [4] * 4
    codes = [(a.status_code, a.json()["error"]["code"]) for a in answers[4:]]
    assert codes == [(422, "no_face"), (422, "bad_image")]
