"""Field report II (issue 14): the linkage service under attack. Each test covers one class
of faults: a client stalling everyone (CPU-bound decoding, slow sockets), a 5xx for a
client's mistake, leaks (file modes, subject existence, unbounded audit rows and echoes,
subject names in logs), and the OpenAPI contract against what the server enforces."""

from __future__ import annotations

import io
import logging
import os
import socket
import stat
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import unit_vectors
from test_service_api import (
    Setup,
    _noise_png,
    auth,
    b64,
    enrol_alice,
    plain,
    setup_fixture,  # noqa: F401  (the fixture "setup")
)

from frip_engine.engine import Engine, EnrolItem
from frip_engine.errors import SubjectError
from frip_engine.service.app import ServiceConfig, create_app
from frip_engine.service.audit import AuditLog
from frip_engine.service.db import Database
from frip_engine.service.vendors import Vendors

httpx = pytest.importorskip("httpx")
starlette_testclient = pytest.importorskip("starlette.testclient")
pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")


def error_of(response: Any) -> tuple[int, str]:
    return response.status_code, response.json()["error"]["code"]


# ---------------------------------------------------------------------------- a live server
@contextmanager
def live(config: ServiceConfig, **limits: Any) -> Iterator[str]:
    """``frip serve``'s own server (uvicorn with the service's connection guard) in a thread
    on a free loopback port; yields its URL."""
    from frip_eval.loadgen import free_port

    from frip_engine.service.server import ConnectionLimits, build_server

    app = create_app(config)
    port = free_port()
    server = build_server(
        app, "127.0.0.1", port, ConnectionLimits(**limits), configure_logging=False
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.02)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def connect(url: str, source: str = "127.0.0.1") -> socket.socket:
    """A raw TCP connection to the server from a chosen loopback address (all of
    127.0.0.0/8 is loopback on Linux: distinct addresses are distinct clients)."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10, source_address=(source, 0))
    return sock


class Health:
    """GET /v1/health from another loopback address (127.0.0.2: another client) on one
    kept-alive connection, timed."""

    def __init__(self, url: str, source: str = "127.0.0.2") -> None:
        transport = httpx.HTTPTransport(local_address=source)
        self.client = httpx.Client(base_url=url, transport=transport, timeout=10)
        self.slowest = 0.0

    def probe(self) -> int:
        start = time.perf_counter()
        status = self.client.get("/v1/health").status_code
        self.slowest = max(self.slowest, time.perf_counter() - start)
        return status

    def close(self) -> None:
        self.client.close()


def health_seconds(url: str, source: str) -> tuple[int, float]:
    """One GET /v1/health on a fresh connection from ``source``: status and seconds."""
    health = Health(url, source)
    try:
        return health.probe(), health.slowest
    finally:
        health.close()


def read_reply(sock: socket.socket, limit: float = 10.0) -> bytes:
    """Everything the server sends until it closes (bounded by ``limit`` seconds)."""
    sock.settimeout(limit)
    data = b""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except (TimeoutError, ConnectionResetError):
            break
        if not chunk:
            break
        data += chunk
    return data


@pytest.fixture
def desk_setup(
    make_engine: Callable[..., Engine], home: Path
) -> Iterator[tuple[Path, dict[str, str]]]:
    """doors (owned by acme, arcface) opted into the linkage of desk, which owns nothing."""
    plain(make_engine, "doors")
    vendors = Vendors(Database(home / "service.sqlite"))
    keys = {"acme": vendors.create("acme", ["doors"]), "desk": vendors.create("desk", [])}
    vendors.link("desk", ["doors"])
    yield home, keys


def _deep_png(side: int) -> bytes:
    """A 16-bit greyscale PNG, side x side, all zeros: tiny on the wire, huge decoded."""
    from PIL import Image

    out = io.BytesIO()
    Image.new("I;16", (side, side)).save(out, format="PNG")
    return out.getvalue()


def _big_jpeg(width: int, height: int) -> bytes:
    """A smooth 8-bit RGB JPEG: small to send, a few hundred MB of work to decode."""
    from PIL import Image

    ramp = np.linspace(0, 255, width, dtype=np.uint8)
    pixels = np.broadcast_to(ramp[None, :, None], (height, width, 3))
    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(out, format="JPEG", quality=50)
    return out.getvalue()


# ---------------------------------------------------------------------------- item 1
def test_image_decoding_never_stalls_the_event_loop(
    desk_setup: tuple[Path, dict[str, str]],
) -> None:
    """Heavy images: refused from their header when their decoded size is over the bound
    (a 16-bit 6300x6300 PNG), decoded off the event loop and one heavy decode at a time
    otherwise; /v1/health answers in under 0.5 s all along."""
    home, keys = desk_setup
    bomb = b64(_deep_png(6300))
    heavy = b64(_big_jpeg(5000, 4000))
    assert len(bomb) < 200_000 and len(heavy) < 2_000_000
    config = ServiceConfig(home, rate=0)
    with live(config) as url:
        answers: list[tuple[int, str]] = []
        times: list[float] = []

        def link(image: str, subject: str) -> None:
            body = {"subject_id": subject, "image": image}
            with httpx.Client(timeout=120) as client:
                started = time.perf_counter()
                response = client.post(f"{url}/v1/linkage", json=body, headers=auth(keys["desk"]))
                times.append(time.perf_counter() - started)
            answers.append(error_of(response))

        for images in ([bomb] * 3, [heavy] * 3):
            answers.clear()
            workers = [
                threading.Thread(target=link, args=(image, f"s{i}"))
                for i, image in enumerate(images)
            ]
            for worker in workers:
                worker.start()
            health = Health(url)
            assert health.probe() == 200  # connected before the load starts
            health.slowest = 0.0
            while any(w.is_alive() for w in workers):
                assert health.probe() == 200
                time.sleep(0.05)
            health.close()
            for worker in workers:
                worker.join()
            slowest = health.slowest
            kind = "16-bit 6300x6300 PNG" if images[0] is bomb else "5000x4000 JPEG"
            print(f"\n3 x {kind}: /v1/health slowest {slowest:.3f} s, uploads {max(times):.2f} s")
            assert slowest < 0.5, f"/v1/health took {slowest:.2f} s during heavy decodes"
            if images[0] is bomb:  # refused from the header, before any decoding
                assert answers == [(422, "bad_image")] * 3
                assert max(times) < 2.0, times
            else:  # decoded (a gradient: no face), one at a time
                assert answers == [(422, "linkage_failed")] * 3


# ---------------------------------------------------------------------------- item 2
def test_slow_clients_are_cut_off_and_cannot_starve_others(
    desk_setup: tuple[Path, dict[str, str]],
) -> None:
    """Sockets that send nothing, or trickle their headers, or their body, are answered 408
    and closed at the deadline; one address cannot hold more than its share; /v1/health
    from another address answers in under 0.5 s while 12 slow sockets are open."""
    home, keys = desk_setup
    limits = {
        "max_connections": 8,
        "per_client": 4,
        "header_timeout": 1.5,
        "body_timeout": 1.5,
        "keep_alive": 1.0,
    }
    with live(ServiceConfig(home, rate=0), **limits) as url:
        silent = [connect(url) for _ in range(12)]  # 8 more than the address may hold
        trickle = connect(url, "127.0.0.3")
        trickle.sendall(b"GET /v1/health HTTP/1.1\r\n")
        body_owed = connect(url, "127.0.0.4")
        body_owed.sendall(
            b"POST /v1/linkage HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {keys['desk']}\r\n".encode()
            + f"X-Request-Id: {uuid.uuid4().hex}\r\n".encode()
            + f"X-Request-Time: {time.time()}\r\nContent-Length: 1000\r\n\r\n{{".encode()
        )
        try:
            started = time.monotonic()
            slowest = 0.0
            while time.monotonic() - started < 1.2:  # the attack is on
                status, seconds = health_seconds(url, "127.0.0.2")  # a new connection each
                assert status == 200
                slowest = max(slowest, seconds)
                trickle.sendall(b"X")  # one byte at a time, never a whole header
                time.sleep(0.1)
            print(f"\n14 slow sockets: /v1/health slowest {slowest:.3f} s")
            assert slowest < 0.5, f"/v1/health took {slowest:.2f} s during the attack"
            replies = [read_reply(sock, 5.0) for sock in (*silent, trickle, body_owed)]
            statuses = [reply[:12] for reply in replies]
            assert statuses.count(b"HTTP/1.1 429") == 8  # over the per-address cap, at once
            assert statuses.count(b"HTTP/1.1 408") == 6, replies  # the rest, at the deadline
            assert all(b'"request_timeout"' in r for r in replies if r.startswith(b"HTTP/1.1 408"))
            assert time.monotonic() - started < 4.0
            # a keep-alive connection left idle is closed by the server
            idle = connect(url, "127.0.0.5")
            idle.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
            reply = read_reply(idle, 5.0)
            assert reply.startswith(b"HTTP/1.1 200") and b'"ok"' in reply  # then closed
            # the service is whole again for the attacking address too
            assert health_seconds(url, "127.0.0.1")[0] == 200
        finally:
            for sock in (*silent, trickle, body_owed):
                sock.close()


def test_an_idle_kept_alive_connection_is_closed_without_an_unasked_408(
    desk_setup: tuple[Path, dict[str, str]],
) -> None:
    """After a response, a kept-alive connection that sends nothing more is closed quietly
    (a 408 there answers a request the client never made); a fresh silent one gets 408."""
    home, _ = desk_setup
    limits = {"header_timeout": 0.8, "body_timeout": 5.0, "keep_alive": 30.0}
    with live(ServiceConfig(home, rate=0), **limits) as url:
        kept = connect(url)
        kept.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
        kept.settimeout(5)
        first = b""
        while b"\r\n\r\n" not in first or not first.endswith(b"}"):  # headers and body
            chunk = kept.recv(65536)
            assert chunk, first
            first += chunk
        assert first.startswith(b"HTTP/1.1 200"), first
        silent = connect(url, "127.0.0.3")
        try:
            assert read_reply(kept, 5.0) == b""  # closed after ~0.8 s, nothing sent
            assert read_reply(silent, 5.0).startswith(b"HTTP/1.1 408")
        finally:
            kept.close()
            silent.close()


def test_a_client_over_its_connection_cap_reads_the_429_not_a_reset(
    desk_setup: tuple[Path, dict[str, str]],
) -> None:
    """A client over its address's connection cap sends its request (as httpx does, after
    connecting, before reading) and reads ``429 too_many_connections``: the server keeps
    the refused connection open to drain what the client sends, so the kernel sends no
    reset that would throw the reply away."""
    home, _ = desk_setup
    limits = {"max_connections": 8, "per_client": 2, "header_timeout": 5.0}
    with live(ServiceConfig(home, rate=0), **limits) as url:
        held = [connect(url) for _ in range(2)]  # the address's share, silent
        request = (
            b"POST /v1/engines/doors/identify HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n" + b" " * 100_000
        )
        over: list[socket.socket] = []
        try:
            over = [connect(url) for _ in range(4)]
            time.sleep(0.3)  # refused meanwhile; the clients send as httpx does, then read
            for sock in over:
                sock.sendall(request)
            replies = [read_reply(sock, 5.0) for sock in over]
            assert all(r.startswith(b"HTTP/1.1 429") for r in replies), [r[:40] for r in replies]
            assert all(b'"too_many_connections"' in r for r in replies)
        finally:
            for sock in (*held, *over):
                sock.close()


def test_frip_serve_runs_with_the_connection_guard(home: Path) -> None:
    """The real command: with --max-connections 8 one address holds 2 connections (a
    quarter), and a silent one is answered 408 at --header-timeout."""
    from frip_eval.loadgen import ServerProcess

    server = ServerProcess(home, args=("--max-connections", "8", "--header-timeout", "1"))
    url = server.start()
    try:
        silent = [connect(url) for _ in range(3)]
        started = time.monotonic()
        replies = [read_reply(sock, 5.0)[:12] for sock in silent]
        assert sorted(replies) == [b"HTTP/1.1 408", b"HTTP/1.1 408", b"HTTP/1.1 429"]
        assert time.monotonic() - started < 3.0
        assert health_seconds(url, "127.0.0.1")[0] == 200  # the address is free again
    finally:
        for sock in silent:
            sock.close()
        server.stop()


# ---------------------------------------------------------------------------- item 3
def test_integers_from_a_request_are_bounded_before_sqlite_or_numpy(setup: Setup) -> None:
    s, key = setup, setup.keys["acme"]
    enrol_alice(s, unit_vectors(1)[0])
    probe = unit_vectors(1, seed=3)[0].tolist()
    huge = "99999999999999999999999"
    for query in (f"after={huge}", f"limit={huge}", f"after=-{huge}", "after=1e3", "limit=0"):
        response = s.client.get(f"/v1/audit?{query}", headers=auth(key))
        assert error_of(response) == (400, "bad_request"), query
    for fan_out in (10**30, 2**63, 2**31):
        body = {"embedding": probe, "probe_clusters": fan_out}
        response = s.post("/v1/engines/doors/identify", body)
        assert error_of(response) == (400, "bad_request"), fan_out
    assert (
        s.post("/v1/engines/doors/identify", {"embedding": probe, "top_k": 2**64}).json()["error"][
            "code"
        ]
        == "bad_request"
    )
    declared = {**auth(key), "Content-Type": "application/json", "Content-Length": "9" * 5000}
    too_big = s.client.post("/v1/engines/doors/identify", content=b"{}", headers=declared)
    assert error_of(too_big) == (413, "payload_too_large")
    top = s.client.get(f"/v1/audit?after={2**63 - 1}", headers=auth(key))
    assert top.status_code == 200 and top.json()["events"] == []


# ---------------------------------------------------------------------------- item 4
def test_a_huge_finite_component_is_a_direction_like_any_other(setup: Setup) -> None:
    """[1e200, 0, ...]: enrolled, identified and verified (the norm must not overflow;
    needs embeddings.normalise to scale before it squares)."""
    s = setup
    huge = [1e200] + [0.0] * 511
    made = s.post("/v1/engines/doors/subjects", {"subject_id": "big", "embeddings": [huge]})
    assert made.status_code == 201, made.text
    hit = s.post("/v1/engines/doors/identify", {"embedding": huge})
    assert hit.status_code == 200 and hit.json()["subject_id"] == "big", hit.text
    same = s.post("/v1/engines/doors/verify", {"subject_id": "big", "embedding": huge})
    assert same.status_code == 200 and same.json()["matched"], same.text


def test_unusable_embeddings_are_422_bad_embedding_on_every_route(setup: Setup) -> None:
    """Zero, infinite (JSON 1e400) and cancelling embeddings are 422 bad_embedding on
    enrol, identify and verify alike (never 400 bad_subject, never a 5xx)."""
    s = setup
    dim = 512
    enrol_alice(s, unit_vectors(1)[0])
    for vector in ([0.0] * dim, [-0.0] * dim):
        enrol = {"subject_id": "z", "embeddings": [vector]}
        assert error_of(s.post("/v1/engines/doors/subjects", enrol)) == (422, "bad_embedding")
        ident = s.post("/v1/engines/doors/identify", {"embedding": vector})
        assert error_of(ident) == (422, "bad_embedding")
        check = s.post("/v1/engines/doors/verify", {"subject_id": "alice", "embedding": vector})
        assert error_of(check) == (422, "bad_embedding")
    for raw in (b"1e400", b"-1e400"):  # JSON numbers that parse as infinities
        vector = b"[" + raw + b"," + b",".join([b"0"] * (dim - 1)) + b"]"
        for path, body in (
            ("/v1/engines/doors/identify", b'{"embedding": ' + vector + b"}"),
            ("/v1/engines/doors/subjects", b'{"subject_id": "i", "embeddings": [' + vector + b"]}"),
        ):
            response = s.client.post(
                path,
                content=body,
                headers={**auth(s.keys["acme"]), "Content-Type": "application/json"},
            )
            assert error_of(response) == (422, "bad_embedding"), (path, response.text)
    many = {"subject_id": "m", "embeddings": unit_vectors(11).tolist()}  # one over the bound
    assert error_of(s.post("/v1/engines/doors/subjects", many)) == (400, "bad_request")
    # two embeddings that cancel out are the embeddings' fault, not the subject id's
    v = unit_vectors(1)[0]
    cancel = {"subject_id": "c", "embeddings": [v.tolist(), (-v).tolist()]}
    assert error_of(s.post("/v1/engines/doors/subjects", cancel)) == (422, "bad_embedding")


# ---------------------------------------------------------------------------- item 5
def test_an_abandoned_upload_is_no_500_and_leaves_its_request_id_free(
    make_engine: Callable[..., Engine], home: Path, caplog: Any
) -> None:
    plain(make_engine, "doors")
    key = Vendors(Database(home / "service.sqlite")).create("acme", ["doors"])
    vector = unit_vectors(1)[0].tolist()
    request_id = uuid.uuid4().hex
    with live(ServiceConfig(home, rate=0)) as url, caplog.at_level(logging.INFO):
        sock = connect(url)
        head = {**auth(key, request_id), "Content-Type": "application/json"}
        lines = "".join(f"{k}: {v}\r\n" for k, v in head.items())
        sock.sendall(
            f"POST /v1/engines/doors/subjects HTTP/1.1\r\nHost: x\r\n{lines}"
            "Content-Length: 100000\r\n\r\n".encode()
            + b'{"subject_id": "alice", "embeddings": [['
        )
        time.sleep(0.3)
        sock.close()  # the client gives up halfway through the body
        deadline = time.monotonic() + 10
        with httpx.Client(base_url=url, timeout=30) as client:
            while "client_disconnected" not in client.get("/v1/metrics").text:
                assert time.monotonic() < deadline, "the abandoned upload was not counted"
                time.sleep(0.05)
            metrics = client.get("/v1/metrics").text
            body = {"subject_id": "alice", "embeddings": [vector]}
            retry = client.post(
                "/v1/engines/doors/subjects", json=body, headers=auth(key, request_id)
            )
            assert retry.status_code == 201, retry.text  # the id was not spent
            shown = client.get("/v1/engines/doors/subjects/alice", headers=auth(key))
            assert shown.status_code == 200
    assert 'status="500"' not in metrics and "internal_error" not in metrics
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]


def test_after_a_5xx_the_same_request_id_may_be_retried(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    from frip_engine.errors import StoreError

    s, key = setup, setup.keys["acme"]
    request_id = uuid.uuid4().hex
    body = {"subject_id": "alice", "embeddings": [unit_vectors(1)[0].tolist()]}
    commit = Engine.commit_enrolment  # the service's enrolments commit here

    def full_disk(engine: Engine, *args: Any, **kwargs: Any) -> Any:
        raise StoreError("the disk is full")

    monkeypatch.setattr(Engine, "commit_enrolment", full_disk)
    failed = s.client.post("/v1/engines/doors/subjects", json=body, headers=auth(key, request_id))
    assert error_of(failed) == (500, "store_error")
    monkeypatch.setattr(Engine, "commit_enrolment", commit)
    again = s.client.post("/v1/engines/doors/subjects", json=body, headers=auth(key, request_id))
    assert again.status_code == 201, again.text
    replay = s.client.post("/v1/engines/doors/subjects", json=body, headers=auth(key, request_id))
    assert error_of(replay) == (409, "replayed_request")


# ---------------------------------------------------------------------------- item 6
def test_http_errors_keep_their_headers(setup: Setup) -> None:
    for method, path, allowed in (
        ("PUT", "/v1/health", {"GET"}),
        ("PATCH", "/v1/engines/doors/subjects/alice", {"GET", "DELETE"}),
        ("DELETE", "/v1/engines/doors/identify", {"POST"}),
        ("POST", "/v1/audit", {"GET"}),
    ):
        response = setup.client.request(method, path)
        assert error_of(response) == (405, "method_not_allowed"), path
        shown = {m.strip() for m in response.headers["Allow"].split(",")}
        assert shown - {"HEAD"} == allowed, (path, shown)


# ---------------------------------------------------------------------------- item 7
def test_everything_under_frip_home_is_private_whatever_the_umask(
    make_engine: Callable[..., Engine], home: Path, lfw: Path
) -> None:
    old = os.umask(0)  # the most permissive umask there is
    try:
        plain(make_engine, "doors")
        make_engine("sealed", he={"preset": "fast"}, key_store={"plugin": "file"})
        vendors = Vendors(Database(home / "service.sqlite"))
        key = vendors.create("acme", ["doors", "sealed"])
        v = unit_vectors(2)
        with starlette_testclient.TestClient(create_app(ServiceConfig(home, rate=0))) as c:
            for engine, vector in zip(("doors", "sealed"), v, strict=True):
                body = {"subject_id": "a", "embeddings": [vector.tolist()], "attributes": {"k": 1}}
                made = c.post(f"/v1/engines/{engine}/subjects", json=body, headers=auth(key))
                assert made.status_code == 201, made.text
            image = b64((lfw / "Adam_Sandler" / "Adam_Sandler_0001.jpg").read_bytes())
            linked = c.post(
                "/v1/linkage", json={"subject_id": "adam", "image": image}, headers=auth(key)
            )
            assert linked.status_code == 201, linked.text
            # while the service runs, its -wal and -shm files exist: check them too
            found = _modes(home)
            assert any(p.name.endswith("-wal") for p in found), sorted(found)
    finally:
        os.umask(old)
    found.update(_modes(home))
    loose = {str(p.relative_to(home)): oct(mode) for p, mode in found.items() if mode & 0o077}
    assert loose == {}, loose
    dirs = {p: m for p, m in found.items() if p.is_dir()}
    assert dirs and all(m == 0o700 for m in dirs.values()), dirs
    names = {p.name for p in found}
    assert {"gallery.sqlite", "profile.toml", "audit.sqlite", "service.sqlite"} <= names


def _modes(root: Path) -> dict[Path, int]:
    return {p: stat.S_IMODE(p.stat().st_mode) for p in root.rglob("*") if p.exists()}


# ---------------------------------------------------------------------------- item 8
def test_linkage_answers_the_same_whether_or_not_the_subject_exists(
    setup: Setup, lfw: Path, home: Path
) -> None:
    """A desk linked into engines it may not read learns nothing of who is enrolled there:
    a face-less image, a bad image or an engine's failure read the same for either id."""
    s = setup
    vendors = Vendors(Database(home / "service.sqlite"))
    s.keys["desk"] = vendors.create("desk", [])
    vendors.link("desk", ["doors", "lobby"])
    enrol_alice(s, unit_vectors(1)[0])  # 'alice' exists in doors, 'nobody' nowhere
    images = {
        "no face": b64(_noise_png()),
        "not an image": b64(b"GIF89a-not-really"),
    }
    for what, image in images.items():
        answers = []
        for subject in ("alice", "nobody"):
            body = {"subject_id": subject, "image": image, "engines": ["doors", "lobby"]}
            response = s.post("/v1/linkage", body, key="desk")
            answers.append((response.status_code, response.json()))
        for _, answer in answers:
            answer["error"].pop("request_id", None)
        texts = [str(a).replace("alice", "X").replace("nobody", "X") for a in answers]
        assert texts[0] == texts[1], (what, answers)
        assert answers[0][0] == 422


# ---------------------------------------------------------------------------- item 9
def test_unauthenticated_and_refused_callers_can_make_the_service_write_little(
    make_engine: Callable[..., Engine], home: Path
) -> None:
    plain(make_engine, "doors")
    key = Vendors(Database(home / "service.sqlite")).create("acme", ["doors"])
    with starlette_testclient.TestClient(create_app(ServiceConfig(home))) as c:
        for i in range(150):  # bad keys, from one address, as fast as it goes
            c.get("/v1/engines", headers={"Authorization": f"Bearer frip_{i:012x}_" + "A" * 43})
        long = "e" * 5000
        refused = c.get(f"/v1/engines/{long}", headers=auth(key))
        assert error_of(refused) == (403, "engine_forbidden")
        assert len(refused.text) < 600 and long[:100] not in refused.text
        unknown = c.post("/v1/engines/doors/identify", json={"x" * 5000: 1}, headers=auth(key))
        assert error_of(unknown) == (400, "bad_request") and len(unknown.text) < 1000
    log = AuditLog(home)
    rows = log.query(frozenset(), "unauthenticated", limit=1000)
    log.close()
    print(f"\n150 bad keys: {len(rows)} audit rows")
    assert 0 < len(rows) <= 25, len(rows)  # a bounded trickle, not one fsync per request
    assert sum(r["outcome"].get("suppressed", 0) for r in rows) + len(rows) >= 100


def test_limits_track_a_bounded_number_of_sources() -> None:
    from frip_engine.service.limits import MAX_TRACKED, RateLimiter, RefusalBudget

    limiter = RateLimiter(rate=1e6, burst=1)  # buckets refill at once: all may be dropped
    for i in range(3 * MAX_TRACKED):
        limiter.take(f"address:10.0.{i // 256}.{i % 256}")
    assert len(limiter._buckets) <= MAX_TRACKED
    budget: RefusalBudget[int] = RefusalBudget(rate=1e-9, burst=1)
    for i in range(2 * MAX_TRACKED):
        budget.admit(f"a{i}", i)
        budget.admit(f"a{i}", i)  # the second of each source is over its budget
    pending = budget.drain()
    assert len(pending) <= MAX_TRACKED + 1 and sum(n for _, n in pending) == 2 * MAX_TRACKED


def test_default_logs_hold_no_subject_names(
    make_engine: Callable[..., Engine], home: Path, caplog: Any
) -> None:
    plain(make_engine, "doors")
    key = Vendors(Database(home / "service.sqlite")).create("acme", ["doors"])
    marker = "Zq9-private-person"
    with (
        caplog.at_level(logging.DEBUG),
        live(ServiceConfig(home, rate=0)) as url,
        httpx.Client(base_url=url, timeout=30) as client,
    ):
        client.get(f"/v1/engines/doors/subjects/{marker}", headers=auth(key))
        client.delete(f"/v1/engines/doors/subjects/{marker}", headers=auth(key))
        client.get(f"/v1/linkage/{marker}", headers=auth(key))
        client.get(f"/v1/audit?engine={marker}", headers=auth(key))
    server = [r for r in caplog.records if r.name.startswith(("frip_engine", "uvicorn"))]
    logged = "\n".join(r.getMessage() for r in server)
    assert "subject_show" in logged or "/v1/engines/{engine}/subjects/{subject_id}" in logged
    assert marker not in logged


# ---------------------------------------------------------------------------- item 10
CONTRACT_EXAMPLES = 30  # per operation and mode: 14 operations x (positive, negative)


def test_the_contract_holds_for_generated_requests(
    make_engine: Callable[..., Engine], home: Path, capsys: Any
) -> None:
    """Property-based contract test (schemathesis over /openapi.json): every generated
    request is answered without a 5xx, with a documented status, content type and a body
    that matches its schema."""
    import requests
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    plain(make_engine, "doors")
    vendors = Vendors(Database(home / "service.sqlite"))
    key = vendors.create("acme", ["doors"])
    vendors.create("desk", [])
    vendors.link("desk", ["doors"])
    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
    ]
    totals = {"examples": 0, "failures": 0}
    statuses: dict[int, int] = {}
    with live(ServiceConfig(home, rate=0)) as url, requests.Session() as session:
        schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
        modes = (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)
        for result in schema.get_all_operations():
            operation = result.ok()
            for mode in modes:

                @settings(
                    max_examples=CONTRACT_EXAMPLES,
                    deadline=None,
                    database=None,
                    phases=[Phase.explicit, Phase.generate],
                    suppress_health_check=list(HealthCheck),
                )
                @given(case=operation.as_strategy(generation_mode=mode))
                def check(case: Any) -> None:
                    totals["examples"] += 1
                    if "engine" in (case.path_parameters or {}):
                        case.path_parameters["engine"] = "doors"  # the one engine to reach
                    realistic = totals["examples"] % 2 == 0
                    if realistic and isinstance(case.body, dict):  # past the dimension check
                        _real_vectors(case.body, totals["examples"])
                    extra = auth(key)  # a fresh X-Request-Id and a current X-Request-Time
                    response = case.call(base_url=url, session=session, headers=extra)
                    statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                    try:
                        case.validate_response(response, checks=checks)
                        positive = case.meta is None or case.meta.generation.mode.is_positive
                        if positive and response.status_code == 400:  # the schema said less
                            raise AssertionError(f"{case.operation.label}: {response.text}")
                    except Exception:
                        totals["failures"] += 1
                        raise

                try:
                    check()
                except Unsatisfiable:  # nothing to get wrong: no parameters and no body
                    assert mode is schemathesis.GenerationMode.NEGATIVE, operation.label
    with capsys.disabled():
        print(f"\nschemathesis contract run: {totals}, statuses {dict(sorted(statuses.items()))}")
    assert totals["failures"] == 0 and totals["examples"] >= 20 * CONTRACT_EXAMPLES
    assert any(200 <= s < 300 for s in statuses)  # it reached the handlers, not only refusals


def _real_vectors(body: dict[str, Any], seed: int) -> None:
    """Swap generated vectors for unit vectors of the engine's dimension (512)."""
    if isinstance(body.get("embedding"), list):
        body["embedding"] = unit_vectors(1, seed=seed)[0].tolist()
    if isinstance(body.get("embeddings"), list) and body["embeddings"]:
        body["embeddings"] = unit_vectors(len(body["embeddings"]), seed=seed).tolist()


def test_subjects_the_cli_may_enrol_can_be_read_verified_and_erased_by_their_vendor(
    setup: Setup,
) -> None:
    """The service names new subjects from a narrow URL-safe alphabet, but a subject the
    core accepts (enrolled from the CLI or the Python API: accents, spaces, brackets) must
    stay reachable by its engine's vendor, above all for erasure; an id no engine can hold
    is simply not found."""
    from urllib.parse import quote

    vectors = unit_vectors(3)
    subjects = ["José María", "[red]x", "O'Neil & co"]
    with Engine.open("doors", setup.home) as engine:
        for subject, vector in zip(subjects, vectors, strict=True):
            engine.enrol(EnrolItem(subject, embeddings=[vector]))
    for subject, vector in zip(subjects, vectors, strict=True):
        path = "/v1/engines/doors/subjects/" + quote(subject, safe="")
        shown = setup.client.get(path, headers=auth(setup.keys["acme"]))
        assert shown.status_code == 200 and shown.json()["subject_id"] == subject, shown.text
        body = {"subject_id": subject, "embedding": vector.tolist()}
        verified = setup.post("/v1/engines/doors/verify", body)
        assert verified.status_code == 200 and verified.json()["matched"], verified.text
        identified = setup.post("/v1/engines/doors/identify", {"embedding": vector.tolist()})
        assert identified.json()["subject_id"] == subject
        gone = setup.client.delete(path, headers=auth(setup.keys["acme"]))
        assert gone.status_code == 200, gone.text
    with Engine.open("doors", setup.home) as engine:
        for path_like in ("[red]x[/red]", ".", ".."):
            with pytest.raises(SubjectError, match="path part"):
                engine.enrol(EnrolItem(path_like, embeddings=[vectors[0]]))
    for odd in ["a\u202eb", " pad", "x" * 129]:
        path = "/v1/engines/doors/subjects/" + quote(odd, safe="")
        assert error_of(setup.client.get(path, headers=auth(setup.keys["acme"]))) == (
            404,
            "subject_not_found",
        )
