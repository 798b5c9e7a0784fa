"""The linkage service's HTTP API, in process (Starlette's TestClient): every bad input a
clear 4xx with a stable code, vendor isolation without leaks, attributes sealed at rest,
the audit log, linkage with real faces through several extractors and a vendor adapter."""

from __future__ import annotations

import base64
import io
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import near, unit_vectors
from frip_adapter_acme import AcmeV1Adapter

from frip_engine.engine import Engine, EnrolItem
from frip_engine.errors import (
    CorruptionError,
    EngineInUseError,
    InputError,
    StoreError,
    StoreUnavailableError,
)
from frip_engine.service.app import ROUTES, ServiceConfig, create_app
from frip_engine.service.audit import AuditLog, Event
from frip_engine.service.db import Database
from frip_engine.service.errors import HTTP_ERRORS
from frip_engine.service.vendors import Vendors
from frip_engine.uselock import EngineUse

starlette_testclient = pytest.importorskip("starlette.testclient")
pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")

Client = Any


def _img(lfw: Path, name: str, n: int) -> Path:
    return lfw / name / f"{name}_{n:04d}.jpg"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def auth(key: str, request_id: str | None = None, sent: float | None = None) -> dict[str, str]:
    return {
        "Authorization": f"Bearer {key}",
        "X-Request-Id": request_id or uuid.uuid4().hex,
        "X-Request-Time": str(time.time() if sent is None else sent),
    }


def plain(make_engine: Callable[..., Engine], name: str, extractor: str = "arcface") -> Engine:
    """A plaintext-reference engine (the HTTP layer is the same whatever the backend)."""
    return make_engine(
        name,
        engine={"name": name, "insecure": True},
        he={"plugin": "plaintext"},
        extractor={"plugin": extractor},
    )


class Setup:
    def __init__(self, home: Path, client: Client, keys: dict[str, str]) -> None:
        self.home, self.client, self.keys = home, client, keys

    def post(self, path: str, body: Any, key: str = "acme", **kw: Any) -> Any:
        return self.client.post(path, json=body, headers=auth(self.keys[key]), **kw)


@pytest.fixture(name="setup")
def setup_fixture(make_engine: Callable[..., Engine], home: Path) -> Iterator[Setup]:
    plain(make_engine, "doors")
    plain(make_engine, "lobby", "sface")
    plain(make_engine, "gate")
    vendors = Vendors(Database(home / "service.sqlite"))
    keys = {
        "acme": vendors.create("acme", ["doors", "lobby"]),
        "globex": vendors.create("globex", ["gate"], adapter="acme-v1"),
    }
    config = ServiceConfig(home, max_body_bytes=256 * 1024, rate=0)
    with starlette_testclient.TestClient(create_app(config)) as client:
        yield Setup(home, client, keys)


def enrol_alice(s: Setup, vector: np.ndarray, **extra: Any) -> None:
    body = {"subject_id": "alice", "embeddings": [vector.tolist()], **extra}
    response = s.post("/v1/engines/doors/subjects", body)
    assert response.status_code == 201, response.text


def _noise_png() -> bytes:
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def test_every_bad_input_is_a_clear_4xx_with_a_stable_code(setup: Setup) -> None:
    s, key = setup, setup.keys["acme"]
    v = unit_vectors(2)
    enrol_alice(s, v[0])
    c = s.client
    ident = "/v1/engines/doors/identify"
    used = uuid.uuid4().hex
    assert c.post(ident, json={"embedding": v[0].tolist()}, headers=auth(key, used)).is_success
    vendors = Vendors(Database(s.home / "service.sqlite"))
    revoked = vendors.add_key("acme")
    vendors.revoke(revoked.split("_")[1])
    forged = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    e0, e1 = v[0].tolist(), v[1].tolist()
    subjects = "/v1/engines/doors/subjects"

    def raw(body: bytes, media: str = "application/json") -> Any:
        return c.post(ident, content=body, headers={**auth(key), "Content-Type": media})

    def raw_enrol(body: bytes) -> Any:
        return c.post(
            subjects, content=body, headers={**auth(key), "Content-Type": "application/json"}
        )

    def post(body: Any, path: str = ident) -> Any:
        return s.post(path, body)

    def get(path: str, headers: dict[str, str] | None = None) -> Any:
        return c.get(path, headers=auth(key) if headers is None else headers)

    def bearer(value: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {value}"}

    cases: list[tuple[str, Callable[[], Any], int, str]] = [
        ("malformed JSON", lambda: raw(b"{nope"), 400, "malformed_json"),
        ("JSON not an object", lambda: raw(b"[1]"), 400, "malformed_json"),
        ("NaN in JSON", lambda: raw(b'{"embedding": [NaN]}'), 400, "malformed_json"),
        ("wrong content type", lambda: raw(b"{}", "text/plain"), 415, "unsupported_media_type"),
        ("oversized body", lambda: post({"image": "A" * 300_000}), 413, "payload_too_large"),
        ("non-image upload", lambda: post({"image": b64(b"not a picture")}), 422, "bad_image"),
        ("image with no face", lambda: post({"image": b64(_noise_png())}), 422, "no_face"),
        ("bad base64", lambda: post({"image": "not base64!!"}), 400, "bad_base64"),
        ("embedding of wrong size", lambda: post({"embedding": [0.1]}), 422, "bad_embedding"),
        ("embedding not numbers", lambda: post({"embedding": ["a"]}), 400, "bad_request"),
        ("two probes", lambda: post({"embedding": e0, "image": "AAAA"}), 400, "bad_request"),
        ("unknown field", lambda: post({"embedding": e0, "x": 1}), 400, "bad_request"),
        ("top_k out of range", lambda: post({"embedding": e0, "top_k": 0}), 400, "bad_request"),
        ("template, no adapter", lambda: post({"template": "AAAA"}), 422, "bad_embedding"),
        (
            "bad subject id",
            lambda: post({"subject_id": "../x", "embeddings": [e1]}, subjects),
            400,
            "bad_subject",
        ),
        (
            "subject id with a trailing newline",
            lambda: post({"subject_id": "b\n", "embeddings": [e1]}, subjects),
            400,
            "bad_subject",
        ),
        # an id no engine can hold names no subject (never 'alice' with the newline cut)
        (
            "trailing newline in a path",
            lambda: get(f"{subjects}/alice%0A"),
            404,
            "subject_not_found",
        ),
        (
            "bidi override in a removal's path",
            lambda: c.delete(f"{subjects}/al%E2%80%AEice", headers=auth(key)),
            404,
            "subject_not_found",
        ),
        (
            "5000-char id in a path",
            lambda: get(f"{subjects}/{'a' * 5000}"),
            404,
            "subject_not_found",
        ),
        (
            "huge integer threshold: identify",
            lambda: post({"embedding": e0, "threshold": 10**400}),
            400,
            "bad_request",
        ),
        (
            "huge integer threshold: verify",
            lambda: post(
                {"subject_id": "alice", "embedding": e0, "threshold": -(10**400)},
                "/v1/engines/doors/verify",
            ),
            400,
            "bad_request",
        ),
        (
            "huge integer attribute",
            lambda: post(
                {"subject_id": "b", "embeddings": [e1], "attributes": {"age": 10**400}}, subjects
            ),
            400,
            "bad_request",
        ),
        (
            "integer attribute beyond int64",
            lambda: post(
                {"subject_id": "b", "embeddings": [e1], "attributes": {"age": 2**63}}, subjects
            ),
            400,
            "bad_request",
        ),
        (
            "subject already enrolled",
            lambda: post({"subject_id": "alice", "embeddings": [e1]}, subjects),
            409,
            "subject_exists",
        ),
        (
            "bad attributes",
            lambda: post(
                {"subject_id": "b", "embeddings": [e1], "attributes": {"A!": 3}}, subjects
            ),
            400,
            "bad_request",
        ),
        (
            "unknown subject: verify",
            lambda: post({"subject_id": "nobody", "embedding": e0}, "/v1/engines/doors/verify"),
            404,
            "subject_not_found",
        ),
        ("unknown subject: show", lambda: get(f"{subjects}/nobody"), 404, "subject_not_found"),
        (
            "unknown subject: remove",
            lambda: c.delete(f"{subjects}/nobody", headers=auth(key)),
            404,
            "subject_not_found",
        ),
        (
            "unknown linkage",
            lambda: c.delete("/v1/linkage/nobody", headers=auth(key)),
            404,
            "subject_not_found",
        ),
        ("missing key", lambda: c.post(ident, json={}), 401, "missing_api_key"),
        ("malformed key", lambda: get("/v1/engines", bearer("abc")), 401, "invalid_api_key"),
        ("unknown key", lambda: get("/v1/engines", bearer(forged)), 401, "invalid_api_key"),
        ("revoked key", lambda: get("/v1/engines", auth(revoked)), 401, "api_key_revoked"),
        (
            "another vendor's engine",
            lambda: post({"embedding": e0}, "/v1/engines/gate/identify"),
            403,
            "engine_forbidden",
        ),
        (
            "replayed request",
            lambda: c.post(ident, json={"embedding": e0}, headers=auth(key, used)),
            409,
            "replayed_request",
        ),
        (
            "no request id",
            lambda: c.post(ident, json={}, headers=bearer(key)),
            400,
            "bad_request_id",
        ),
        (
            "stale request time",
            lambda: c.post(ident, json={}, headers=auth(key, sent=time.time() - 3600)),
            400,
            "bad_request_id",
        ),
        ("unknown route", lambda: c.get("/v1/nothing-here"), 404, "route_not_found"),
        ("wrong method", lambda: c.put(ident, json={}), 405, "method_not_allowed"),
        ("bad audit query", lambda: get("/v1/audit?limit=abc"), 400, "bad_request"),
        ("deeply nested JSON", lambda: raw(b"[" * 100_000 + b"]" * 100_000), 400, "malformed_json"),
        (
            "integer too big",
            lambda: raw(b'{"embedding": [1' + b"0" * 400 + b"]}"),
            400,
            "bad_request",
        ),
        (
            "5000-digit integer",
            lambda: raw(b'{"embedding": [1' + b"0" * 5000 + b"]}"),
            400,
            "malformed_json",
        ),
        (
            "infinite attribute",
            lambda: raw_enrol(
                b'{"subject_id": "b", "embeddings": [[0.5]], "attributes": {"age": 1e400}}'
            ),
            400,
            "bad_request",
        ),
        (
            "lone surrogate in an attribute",
            lambda: raw_enrol(
                b'{"subject_id": "b", "embeddings": [[0.5]], "attributes": {"n": "\\ud800"}}'
            ),
            400,
            "bad_request",
        ),
    ]
    spec = c.get("/openapi.json").json()["components"]["schemas"]["Error"]
    documented = set(spec["properties"]["error"]["properties"]["code"]["enum"])
    for what, send, status, code in cases:
        response = send()
        assert response.status_code == status, f"{what}: {response.status_code} {response.text}"
        error = response.json()["error"]
        assert error["code"] == code, f"{what}: {error}"
        assert error["message"] and code in documented, what
        assert "sys." not in error["message"] and "Traceback" not in error["message"], what
    assert c.get("/v1/health").json()["status"] == "ok"  # still serving after all that
    # the first enrolment stands; nothing the refused requests carried was stored
    assert c.get("/v1/engines/doors", headers=auth(key)).json()["subjects"] == 1
    metrics = c.get("/v1/metrics").text
    assert 'frip_errors_total{code="replayed_request"} 1' in metrics
    log = AuditLog(s.home)  # refused attempts are audited, a revoked key by its id
    refused = log.query(frozenset(), "unauthenticated", limit=1000)
    log.close()
    assert (revoked.split("_")[1], "api_key_revoked") in {
        (e["key_id"], e["outcome"]["code"]) for e in refused
    }


def test_a_refused_request_does_not_use_up_its_request_id(setup: Setup) -> None:
    c, key, v = setup.client, setup.keys["acme"], unit_vectors(1)[0].tolist()
    ident, request_id = "/v1/engines/doors/identify", uuid.uuid4().hex
    refused = c.post(ident, json={"embedding": [0.1]}, headers=auth(key, request_id))
    assert refused.status_code == 422
    corrected = c.post(ident, json={"embedding": v}, headers=auth(key, request_id))
    assert corrected.status_code == 200, corrected.text
    replayed = c.post(ident, json={"embedding": v}, headers=auth(key, request_id))
    assert replayed.json()["error"]["code"] == "replayed_request"  # accepted once, then spent


def test_another_vendors_engine_reveals_nothing(setup: Setup) -> None:
    """Whether the engine or the subject exists, a caller without rights sees one answer."""
    s = setup
    enrol_alice(s, unit_vectors(1)[0])
    probe = unit_vectors(1)[0].tolist()

    def seen(response: Any) -> tuple[int, str]:
        error = response.json()["error"]
        return response.status_code, error["code"]

    def bodies(engine: str) -> list[tuple[int, str]]:
        base, other = f"/v1/engines/{engine}", s.keys["globex"]
        out = [seen(s.post(f"{base}/identify", {"embedding": probe}, key="globex"))]
        for subject in ("alice", "nobody"):
            body = {"subject_id": subject, "embedding": probe}
            out.append(seen(s.post(f"{base}/verify", body, key="globex")))
            out.append(seen(s.client.get(f"{base}/subjects/{subject}", headers=auth(other))))
            out.append(seen(s.client.delete(f"{base}/subjects/{subject}", headers=auth(other))))
        return out

    real, missing = bodies("doors"), bodies("no-such-engine")
    assert set(real) == {(403, "engine_forbidden")}
    assert real == missing
    texts = [
        s.post("/v1/engines/doors/verify", {"subject_id": x, "embedding": probe}, key="globex")
        for x in ("alice", "nobody")
    ]
    assert texts[0].json()["error"]["message"] == texts[1].json()["error"]["message"]
    listed = s.client.get("/v1/engines", headers=auth(s.keys["globex"])).json()["engines"]
    assert [e["engine"] for e in listed] == ["gate"]
    # globex's audit view holds only its own refused attempts, and asking for acme's is refused
    events = s.client.get("/v1/audit", headers=auth(s.keys["globex"])).json()["events"]
    assert {(e["actor"], e["action"]) for e in events} == {("globex", "refused")}
    assert s.client.get("/v1/audit?engine=doors", headers=auth(s.keys["globex"])).status_code == 403
    # acme, the owner, sees every attempt on doors: who, which route, why, and no probe
    view = s.client.get("/v1/audit?engine=doors", headers=auth(s.keys["acme"])).json()["events"]
    tried = [e for e in view if e["action"] == "refused"]
    assert len(tried) == len(real) + len(texts) and {e["actor"] for e in tried} == {"globex"}
    assert {e["outcome"]["route"] for e in tried} == {
        "identify",
        "verify",
        "subject_show",
        "remove",
    }
    assert all(set(e["outcome"]) == {"code", "route", "method"} for e in tried)
    # and alice is still there, untouched
    assert s.client.get("/v1/engines/doors/subjects/alice", headers=auth(s.keys["acme"])).is_success


def test_enrol_identify_verify_remove_with_sealed_attributes(setup: Setup) -> None:
    s = setup
    v = unit_vectors(3, seed=4)
    marker = "Zq8-attribute-marker"
    enrol_alice(s, v[0], attributes={"age": 41, "gender": "f", "note": marker})
    body = {"subject_id": "bob", "embeddings": [v[1].tolist()]}
    assert s.post("/v1/engines/doors/subjects", body).status_code == 201
    doors = "/v1/engines/doors"
    hit = s.post(f"{doors}/identify", {"embedding": near(v[0], 0.2, 1).tolist(), "top_k": 2}).json()
    assert hit["matched"] and hit["subject_id"] == "alice" and len(hit["candidates"]) == 2
    miss = s.post("/v1/engines/doors/identify", {"embedding": v[2].tolist()}).json()
    assert not miss["matched"] and miss["subject_id"] is None
    close, far = near(v[1], 0.2, 2).tolist(), v[0].tolist()
    yes = s.post(f"{doors}/verify", {"subject_id": "bob", "embedding": close}).json()
    no = s.post(f"{doors}/verify", {"subject_id": "bob", "embedding": far}).json()
    assert yes["matched"] and not no["matched"]
    shown = s.client.get("/v1/engines/doors/subjects/alice", headers=auth(s.keys["acme"])).json()
    assert shown["attributes"] == {"age": 41, "gender": "f", "note": marker}
    bob = s.client.get(f"{doors}/subjects/bob", headers=auth(s.keys["acme"])).json()
    assert bob["attributes"] == {}
    stored = b"".join(p.read_bytes() for p in s.home.rglob("*") if p.is_file())
    assert marker.encode() not in stored  # sealed with AES-GCM, not in the clear anywhere
    gone = s.client.delete("/v1/engines/doors/subjects/alice", headers=auth(s.keys["acme"]))
    assert gone.json()["removed"]
    after = s.client.get("/v1/engines/doors/subjects/alice", headers=auth(s.keys["acme"]))
    assert after.json()["error"]["code"] == "subject_not_found"
    rows = sqlite3.connect(s.home / "service.sqlite").execute("SELECT count(*) FROM attributes")
    assert rows.fetchone()[0] == 0
    assert s.post(f"{doors}/identify", {"embedding": far}).json()["subject_id"] is None


def test_vendor_template_goes_through_the_engines_adapter(setup: Setup) -> None:
    s, acme = setup, AcmeV1Adapter()
    v = unit_vectors(2, seed=9)
    template = b64(acme.encode(v[0]))
    body = {"subject_id": "carol", "template": template}
    assert s.post("/v1/engines/gate/subjects", body, key="globex").status_code == 201
    probe = b64(acme.encode(near(v[0], 0.2, 3)))
    hit = s.post("/v1/engines/gate/identify", {"template": probe}, key="globex").json()
    assert hit["matched"] and hit["subject_id"] == "carol"
    damaged = bytearray(acme.encode(v[1]))
    damaged[20] ^= 0xFF
    bad = s.post("/v1/engines/gate/identify", {"template": b64(bytes(damaged))}, key="globex")
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "bad_embedding"


def test_linkage_enrols_everywhere_with_each_extractor_and_revocation_erases(
    setup: Setup, lfw: Path, home: Path
) -> None:  # also: ownership, the linkage grant, and a failed revocation asked again
    s = setup
    vendors = Vendors(Database(home / "service.sqlite"))
    with pytest.raises(InputError, match="belongs to vendor 'acme'"):
        vendors.create("desk", ["doors"])  # an engine has exactly one owner
    desk = vendors.create("desk", [])  # a registration desk: owns no engine
    s.keys["desk"] = desk
    image = b64(_img(lfw, "Adam_Sandler", 1).read_bytes())
    body = {"subject_id": "adam", "image": image, "engines": ["doors"]}
    ungranted = s.post("/v1/linkage", body, key="desk")
    assert ungranted.json()["error"]["code"] == "engine_forbidden"
    vendors.link("desk", ["doors", "lobby", "gate"])  # each owner opts its engine in
    decoded: list[np.ndarray] = []
    decode = AcmeV1Adapter.decode

    def spy(adapter: AcmeV1Adapter, payload: bytes) -> np.ndarray:
        decoded.append(decode(adapter, payload).copy())  # a copy: linkage wipes its own
        return decode(adapter, payload)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(AcmeV1Adapter, "decode", spy)
        made = s.post("/v1/linkage", {"subject_id": "adam", "image": image}, key="desk")
    assert made.status_code == 201, made.text
    assert made.json()["enrolled"] == {"doors": "arcface", "lobby": "sface", "gate": "arcface"}
    # gate speaks acme-v1: its template came through the adapter (int8, so not the raw
    # embedding), and only gate's did
    assert len(decoded) == 1
    stored = {"embedding": decoded[0].tolist(), "top_k": 1}
    exact = s.post("/v1/engines/gate/identify", stored, key="globex").json()
    assert exact["subject_id"] == "adam" and exact["score"] > 1 - 1e-9
    raw = s.post("/v1/engines/doors/identify", stored, key="acme").json()
    assert raw["score"] < 1 - 1e-6  # doors holds the unquantised arcface embedding
    again = s.post("/v1/linkage", {"subject_id": "adam", "image": image}, key="desk")
    assert again.json()["error"]["code"] == "subject_exists"
    probe = b64(_img(lfw, "Adam_Sandler", 2).read_bytes())
    owner = {"doors": "acme", "lobby": "acme", "gate": "globex"}
    for engine in owner:  # each owner recognises him with its engine's own extractor
        hit = s.post(f"/v1/engines/{engine}/identify", {"image": probe}, key=owner[engine]).json()
        assert hit["matched"] and hit["subject_id"] == "adam", (engine, hit)
    # the grant lets the desk enrol and erase under consent, and nothing else
    vector = unit_vectors(1)[0].tolist()
    for engine in owner:
        base = f"/v1/engines/{engine}"
        refused = [
            s.post(f"{base}/identify", {"embedding": vector}, key="desk"),
            s.post(f"{base}/verify", {"subject_id": "adam", "embedding": vector}, key="desk"),
            s.post(f"{base}/subjects", {"subject_id": "eve", "embeddings": [vector]}, key="desk"),
            s.client.get(base, headers=auth(desk)),
            s.client.get(f"{base}/subjects/adam", headers=auth(desk)),
            s.client.delete(f"{base}/subjects/adam", headers=auth(desk)),
        ]
        answers = {(r.status_code, r.json()["error"]["code"]) for r in refused}
        assert answers == {(403, "engine_forbidden")}, engine
    assert s.client.get("/v1/engines", headers=auth(desk)).json()["engines"] == []
    record = s.client.get("/v1/linkage/adam", headers=auth(desk)).json()
    assert {e: r["state"] for e, r in record["engines"].items()} == dict.fromkeys(
        ("doors", "gate", "lobby"), "enrolled"
    )
    # other vendors do not see the desk's consent
    assert s.client.get("/v1/linkage/adam", headers=auth(s.keys["acme"])).status_code == 404
    # acme erases adam from doors and enrols someone else under that id: no longer the desk's
    doors_adam = "/v1/engines/doors/subjects/adam"
    assert s.client.delete(doors_adam, headers=auth(s.keys["acme"])).is_success
    enrol = {"subject_id": "adam", "embeddings": [vector]}
    assert s.post("/v1/engines/doors/subjects", enrol).status_code == 201
    remove = Engine.remove

    def failing(engine: Engine, subject_id: str) -> None:
        if engine.name == "lobby":
            raise StoreError("the disk is full")
        remove(engine, subject_id)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Engine, "remove", failing)
        failed = s.client.delete("/v1/linkage/adam", headers=auth(desk))
    assert failed.status_code == 500 and failed.json()["error"]["code"] == "store_error"
    revoked = s.client.delete("/v1/linkage/adam", headers=auth(desk)).json()  # asked again
    assert revoked["removed"] == ["lobby"] and revoked["absent"] == ["doors", "gate"]
    for engine in ("lobby", "gate"):
        body = {"subject_id": "adam", "image": probe}
        gone = s.post(f"/v1/engines/{engine}/verify", body, key=owner[engine])
        assert gone.json()["error"]["code"] == "subject_not_found"
    assert s.client.get(doors_adam, headers=auth(s.keys["acme"])).is_success  # acme's, kept
    assert s.client.get("/v1/linkage/adam", headers=auth(desk)).status_code == 404
    nobody = s.post("/v1/linkage", {"subject_id": "ghost", "image": b64(_noise_png())}, key="desk")
    assert nobody.status_code == 422 and nobody.json()["error"]["code"] == "linkage_failed"
    events = s.client.get("/v1/audit", headers=auth(desk)).json()["events"]
    assert {e["actor"] for e in events} == {"desk"}  # its own events only, not the owners'
    actions = [
        (e["action"], e["engine"], e["outcome"].get("state"))
        for e in events
        if e["subject_id"] == "adam"
    ]
    for engine in ("doors", "lobby", "gate"):
        assert ("linkage_enrol", engine, "enrolled") in actions
    assert ("linkage_revoke", "lobby", "failed") in actions  # the failed attempt is on record
    for engine in ("lobby", "gate"):
        assert ("linkage_revoke", engine, "removed") in actions
    assert ("linkage_revoke", "doors", "detached") in actions
    gate = s.client.get("/v1/audit?engine=gate", headers=auth(s.keys["globex"])).json()["events"]
    assert ("desk", "linkage_enrol") in {(e["actor"], e["action"]) for e in gate}  # owner sees


def test_audit_log_is_append_only_chained_and_free_of_biometrics(setup: Setup) -> None:
    s = setup
    v = unit_vectors(2, seed=5)
    enrol_alice(s, v[0])
    s.post("/v1/engines/doors/identify", {"embedding": v[0].tolist()})
    s.client.delete("/v1/engines/doors/subjects/alice", headers=auth(s.keys["acme"]))
    events = s.client.get("/v1/audit?engine=doors", headers=auth(s.keys["acme"])).json()["events"]
    actions = ["enrol_intent", "enrol", "identify", "remove_intent", "remove"]
    assert [e["action"] for e in events] == actions
    assert all(e["actor"] == "acme" and e["at"] and e["request_id"] for e in events)
    assert events[1]["outcome"]["intent"] == events[0]["seq"]  # the outcome closes its intent
    assert events[2]["outcome"]["matched"] is True and events[2]["subject_id"] == "alice"
    text = (s.home / "audit.sqlite").read_bytes()
    for value in v[0][:8]:  # no component of the embedding, in any rendering
        assert repr(float(value))[:10].encode() not in text
    log = AuditLog(s.home)
    assert log.verify() == 5
    db = sqlite3.connect(s.home / "audit.sqlite")
    for statement in ("UPDATE audit SET actor = 'x'", "DELETE FROM audit"):
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            db.execute(statement)
    db.execute("DROP TRIGGER audit_no_update")  # someone goes around the triggers...
    db.execute("UPDATE audit SET subject_id = 'mallory' WHERE seq = 2")
    db.commit()
    with pytest.raises(CorruptionError, match="breaks at row 2"):  # ...and the chain says so
        log.verify()
    log.close()


def test_rate_limit_answers_429_with_retry_after(make_engine: Any, home: Path) -> None:
    plain(make_engine, "doors")
    key = Vendors(Database(home / "service.sqlite")).create("acme", ["doors"])
    with starlette_testclient.TestClient(create_app(ServiceConfig(home, rate=0.5, burst=3))) as c:
        codes = [c.get("/v1/engines", headers=auth(key)).status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        limited = c.get("/v1/engines", headers=auth(key))
        assert limited.json()["error"]["code"] == "rate_limited"
        assert int(limited.headers["Retry-After"]) >= 1
        # requests without a valid key are limited per client address
        codes = [c.get("/v1/engines").status_code for _ in range(4)]
        assert codes == [401, 401, 401, 429]


def test_intents_a_crash_left_open_are_settled_when_the_engine_opens(
    make_engine: Any, home: Path
) -> None:
    doors = plain(make_engine, "doors")
    key = Vendors(Database(home / "service.sqlite")).create("acme", ["doors"])
    v = unit_vectors(2, seed=8)
    log = AuditLog(home)

    def intend(action: str, subject: str) -> int:
        opened = Event(actor="acme", action=action, engine="doors", subject_id=subject)
        return log.intend(opened, doors.profile.engine_id)

    left = {intend("enrol", "kept"): ("enrol", "recovered")}  # committed, then the crash
    doors.enrol(EnrolItem("kept", embeddings=[v[0]]))
    left[intend("enrol", "lost")] = ("enrol", "aborted")  # the crash came first
    doors.enrol(EnrolItem("stays", embeddings=[v[1]]))
    left[intend("remove", "stays")] = ("remove", "aborted")
    left[intend("remove", "kept")] = ("remove", "aborted")
    log.close()
    with starlette_testclient.TestClient(create_app(ServiceConfig(home, rate=0))) as c:
        assert c.get("/v1/engines/doors", headers=auth(key)).is_success  # opens the engine
        events = c.get("/v1/audit?engine=doors", headers=auth(key)).json()["events"]
    settled = {
        e["outcome"]["intent"]: (e["action"], e["outcome"]["state"])
        for e in events
        if "intent" in e["outcome"]
    }
    assert settled == left
    assert all(e["key_id"] is None and e["actor"] == "acme" for e in events)
    assert sqlite3.connect(home / "audit.sqlite").execute("SELECT * FROM intents").fetchall() == []


def test_an_unexpected_error_is_a_bare_500_with_its_traceback_in_the_log(
    make_engine: Any, home: Path, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    from frip_engine.service.routes import engines as app

    plain(make_engine, "doors")
    key = Vendors(Database(home / "service.sqlite")).create("acme", ["doors"])
    failure = RuntimeError("internal detail")

    def broken(engine: Engine) -> dict[str, Any]:
        raise failure

    monkeypatch.setattr(app, "_engine_summary", broken)
    config = ServiceConfig(home, rate=0)
    with starlette_testclient.TestClient(create_app(config), raise_server_exceptions=False) as c:
        response = c.get("/v1/engines/doors", headers=auth(key))
    assert response.status_code == 500 and response.json()["error"]["code"] == "internal_error"
    assert "internal detail" not in response.text
    logged = [r for r in caplog.records if r.name == "frip_engine.service"]
    assert logged and logged[-1].exc_info is not None and logged[-1].exc_info[1] is failure


def test_an_unreachable_store_or_an_engine_being_migrated_is_503_retry(
    make_engine: Any, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from frip_engine.service.routes import engines as app

    plain(make_engine, "doors").close()
    key = Vendors(Database(home / "service.sqlite")).create("acme", ["doors"])

    def unreachable(engine: Engine) -> dict[str, Any]:
        raise StoreUnavailableError("the PostgreSQL server cannot be reached", retry_after=7)

    config = ServiceConfig(home, rate=0)
    with starlette_testclient.TestClient(create_app(config)) as c:
        lock = EngineUse(home / "engines" / "doors", "doors")
        with lock.alone("a test's migrate"):  # as `frip engine migrate` holds it
            busy = c.get("/v1/engines/doors", headers=auth(key))
        lock.release()
        assert busy.status_code == 503, busy.text
        assert busy.json()["error"]["code"] == "engine_in_use"
        assert busy.json()["error"]["message"].startswith("temporarily unavailable")
        assert "Retry-After" in busy.headers
        assert c.get("/v1/engines/doors", headers=auth(key)).is_success  # opens once done
        in_use = EngineUse(home / "engines" / "doors", "doors")
        with pytest.raises(EngineInUseError), in_use.alone("migrate"):  # the service has it
            pass
        in_use.release()
        monkeypatch.setattr(app, "_engine_summary", unreachable)
        down = c.get("/v1/engines/doors", headers=auth(key))
    with EngineUse(home / "engines" / "doors", "doors").alone("migrate"):
        pass  # the service released its engines on shutdown
    assert down.status_code == 503 and down.headers["Retry-After"] == "7", down.text
    assert down.json()["error"]["code"] == "store_unavailable"
    assert HTTP_ERRORS[StoreError] == (500, "store_error")  # any other store fault: as before


def test_keys_are_stored_hashed_and_openapi_covers_every_route(setup: Setup) -> None:
    stored = (setup.home / "service.sqlite").read_bytes()
    for key in setup.keys.values():
        assert key.split("_", 2)[2].encode() not in stored
    spec = setup.client.get("/openapi.json").json()
    described = {(p, m.upper()) for p, ops in spec["paths"].items() for m in ops}
    assert described == {(p, m) for p, _, m in ROUTES}
    codes = spec["components"]["schemas"]["Error"]["properties"]["error"]["properties"]["code"]
    assert {code for _, code in HTTP_ERRORS.values()} <= set(codes["enum"])
    audit = spec["paths"]["/v1/audit"]["get"]["parameters"]
    assert {(p["name"], p["in"]) for p in audit} == {
        ("engine", "query"),
        ("after", "query"),
        ("limit", "query"),
    }


def test_identify_over_http_reports_table_ii_with_network_and_decoding(
    make_engine: Any, home: Path
) -> None:
    make_engine("sealed", he={"preset": "fast"})  # TenSEAL CKKS, memory key store
    key = Vendors(Database(home / "service.sqlite")).create("acme", ["sealed"])
    v = unit_vectors(3, seed=7)
    with starlette_testclient.TestClient(create_app(ServiceConfig(home, rate=0))) as c:
        for i in range(2):
            body = {"subject_id": f"s{i}", "embeddings": [v[i].tolist()]}
            assert c.post("/v1/engines/sealed/subjects", json=body, headers=auth(key)).is_success
        response = c.post(
            "/v1/engines/sealed/identify", json={"embedding": v[1].tolist()}, headers=auth(key)
        )
    data = response.json()
    assert data["subject_id"] == "s1" and data["registrants"] == 2
    timings = data["timings"]
    table_ii = {"probe_encryption", "distance_derivation", "minimum_selection", "other", "total"}
    ours = {"network", "request_decoding", "queue_wait", "server_total", "key_unwrap"}
    assert table_ii | ours <= set(timings)
    assert timings["distance_derivation"] > 0 and timings["request_decoding"] > 0
    assert timings["server_total"] >= timings["total"] + timings["request_decoding"]
    assert "encode;dur=" in response.headers["Server-Timing"]
