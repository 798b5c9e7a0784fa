"""The linkage service as a real process on loopback: a TLS session with CLI-managed keys
and real faces, a bounded 16-client load, and SIGKILL during a stream of enrolments."""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import sqlite3
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import near, unit_vectors
from frip_eval.loadgen import ServerProcess, headers, run_load

from frip_engine.engine import Engine, EnrolItem
from frip_engine.profile import Profile
from frip_engine.service.audit import AuditLog
from frip_engine.service.db import Database
from frip_engine.service.vendors import Vendors

httpx = pytest.importorskip("httpx")


def frip(*args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "frip_engine", *args], capture_output=True, text=True
    )
    assert result.returncode == code, result.stderr + result.stdout
    return result


def _engine(home: Path, name: str) -> Engine:
    """TenSEAL CKKS with the file key store: the server process can open it too."""
    return Engine.create(
        Profile.from_dict({"engine": {"name": name}, "he": {"preset": "fast"}}), home
    )


def _self_signed(folder: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_tls_session_with_cli_keys_and_real_faces(home: Path, lfw: Path, tmp_path: Path) -> None:
    _engine(home, "doors").close()
    created = frip("vendors", "create", "acme", "--engine", "doors")
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith("frip_")
    key_id = key.split("_")[1]
    taken = frip("vendors", "create", "globex", "--engine", "doors", code=2)
    assert "belongs to vendor 'acme'" in taken.stderr  # one owner per engine
    frip("vendors", "create", "desk")
    frip("vendors", "link", "desk", "--engine", "doors")
    listed = frip("vendors", "list", "--json").stdout
    assert key_id in listed and key.split("_", 2)[2] not in listed
    owners = {v["vendor"]: (v["engines"], v["linkage"]) for v in json.loads(listed)}
    assert owners == {"acme": (["doors"], []), "desk": ([], ["doors"])}
    cert, private = _self_signed(tmp_path)
    trust = ssl.create_default_context(cafile=str(cert))
    server = ServerProcess(home, tls=(cert, private))
    url = server.start(verify=trust)
    try:
        with httpx.Client(base_url=url, verify=trust, timeout=120) as client:
            for name in ("Adam_Sandler", "Andy_Roddick"):
                image = base64.b64encode((lfw / name / f"{name}_0001.jpg").read_bytes()).decode()
                body = {"subject_id": name, "images": [image], "attributes": {"age": 40}}
                made = client.post("/v1/engines/doors/subjects", json=body, headers=headers(key))
                assert made.status_code == 201, made.text
            probe = (lfw / "Adam_Sandler" / "Adam_Sandler_0002.jpg").read_bytes()
            body = {"image": base64.b64encode(probe).decode(), "top_k": 2}
            hit = client.post("/v1/engines/doors/identify", json=body, headers=headers(key))
            data = hit.json()
            assert data["matched"] and data["subject_id"] == "Adam_Sandler"
            assert data["timings"]["feature_extraction"] > 0 and data["timings"]["network"] >= 0
            with pytest.raises((httpx.ConnectError, httpx.RemoteProtocolError)):  # TLS only
                httpx.get(url.replace("https", "http") + "/v1/health", timeout=5)
            frip("vendors", "revoke", key_id)  # takes effect at the running server's next request
            refused = client.get("/v1/engines", headers=headers(key))
            assert refused.status_code == 401
            assert refused.json()["error"]["code"] == "api_key_revoked"
    finally:
        server.stop()  # SIGTERM: graceful, engines closed (uvicorn re-raises the signal)
    assert "Application shutdown complete" in server.log.read_text()
    # two vendors created, a linkage grant, two enrolments (intent and outcome each), one
    # identification, the key revoked, and the refused request that used it
    assert "intact: 10 event(s)" in frip("audit", "verify").stdout


def test_load_16_clients_zero_errors(home: Path) -> None:
    vectors = unit_vectors(64, seed=11)
    gallery = {f"r{i:02d}": vectors[i] for i in range(len(vectors))}
    with _engine(home, "reads") as engine:
        engine.enrol_many([EnrolItem(s, embeddings=[v]) for s, v in gallery.items()])
    _engine(home, "writes").close()
    key = Vendors(Database(home / "service.sqlite")).create("acme", ["reads", "writes"])
    server = ServerProcess(home, args=("--rate", "0"))
    url = server.start()
    try:
        result = run_load(url, key, "reads", gallery, "writes", clients=16, seconds=20)
    finally:
        server.stop()
    print(json.dumps(result, indent=2))
    total = result["total"]
    assert total["errors"] == 0 and total["wrong_decisions"] == 0
    assert set(result["by_operation"]) == {"enrol", "identify", "verify"}
    assert all(op["requests"] > 0 for op in result["by_operation"].values())
    assert total["p50_ms"] <= total["p95_ms"] <= total["p99_ms"]
    assert result["identify_mean_ms"]["server_total"] < result["identify_mean_ms"]["rtt"]
    with Engine.open("writes", home) as engine:  # every acknowledged enrolment is there
        assert engine.stats()["subjects"] == result["by_operation"]["enrol"]["requests"]


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (its workers, their forkserver), from /proc."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.parametrize("streams", [1, 4])  # 4: enrolments queue and commit together
def test_sigkill_during_enrolments_leaves_acknowledged_ones_whole(home: Path, streams: int) -> None:
    """SIGKILL while an enrolment group is in flight (planned, its intent written, being
    encrypted in the worker process or committed): every acknowledged enrolment is whole
    after a restart, every other one whole or absent, and the killed server's worker
    processes (encryption) end with it, so none can write after the kill."""
    _engine(home, "k").close()
    key = Vendors(Database(home / "service.sqlite")).create("acme", ["k"])
    vectors = unit_vectors(40, seed=21)
    server = ServerProcess(home)
    url = server.start()
    acknowledged: list[int] = []
    sent: list[int] = []
    stop = threading.Event()

    def stream(first: int) -> None:
        with httpx.Client(base_url=url, timeout=120) as client:
            for i in range(first, len(vectors), streams):
                if stop.is_set():
                    return
                sent.append(i)
                body = {
                    "subject_id": f"s{i:02d}",
                    "embeddings": [vectors[i].tolist()],
                    "attributes": {"age": 20 + i},
                }
                try:
                    response = client.post(
                        "/v1/engines/k/subjects", json=body, headers=headers(key)
                    )
                except httpx.HTTPError:
                    return  # the server died under this request: not acknowledged
                assert response.status_code == 201, response.text
                acknowledged.append(i)

    writers = [threading.Thread(target=stream, args=(first,)) for first in range(streams)]
    for writer in writers:
        writer.start()
    deadline = time.monotonic() + 120
    while len(acknowledged) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(acknowledged) >= 4, "the server acknowledged too few enrolments in time"
    # kill while the server is inside an enrolment: its intent row is written, its outcome
    # row (written before the response) is not
    audit = sqlite3.connect(f"file:{home / 'audit.sqlite'}?mode=ro", uri=True, timeout=10)
    busy: set[str] = set()
    while not busy and time.monotonic() < deadline and any(w.is_alive() for w in writers):
        rows = audit.execute("SELECT a.subject_id FROM intents i JOIN audit a USING (seq)")
        busy = {r[0] for r in rows} - {f"s{i:02d}" for i in acknowledged}
        if not busy:
            time.sleep(0.002)
    assert server.process is not None
    workers = descendants(server.process.pid)
    server.kill()
    audit.close()
    stop.set()
    for writer in writers:
        writer.join(timeout=60)
    in_flight = sorted(set(sent) - set(acknowledged))
    assert busy, "no enrolment was in flight when the server was killed"
    assert workers, "the server had no worker process encrypting"
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in workers):
        assert time.monotonic() < deadline, "a worker outlived the killed server"
        time.sleep(0.05)
    assert busy <= {f"s{i:02d}" for i in in_flight}, (busy, in_flight)  # and none answered
    restarted = ServerProcess(home)
    url = restarted.start()
    try:
        with httpx.Client(base_url=url, timeout=120) as client:
            present = []
            for i in acknowledged + in_flight:
                subject = f"s{i:02d}"
                shown = client.get(f"/v1/engines/k/subjects/{subject}", headers=headers(key))
                probe = {"subject_id": subject, "embedding": near(vectors[i], 0.2, i).tolist()}
                checked = client.post("/v1/engines/k/verify", json=probe, headers=headers(key))
                if i in acknowledged:
                    assert shown.status_code == 200, (subject, shown.text)
                if shown.status_code == 200:  # present: template, slot map and attributes
                    assert shown.json()["attributes"] == {"age": 20 + i}
                    assert checked.json()["matched"] is True
                    present.append(subject)
                else:  # absent: entirely
                    assert shown.json()["error"]["code"] == "subject_not_found"
                    assert checked.json()["error"]["code"] == "subject_not_found"
            stats = client.get("/v1/engines/k", headers=headers(key)).json()
            assert stats["subjects"] == len(present)
    finally:
        restarted.stop()
    rows = Database(home / "service.sqlite").query("SELECT subject_id, state FROM attributes")
    assert sorted(r["subject_id"] for r in rows) == sorted(present)
    assert {r["state"] for r in rows} == {"committed"}
    log = AuditLog(home)
    assert log.verify() >= 2 * len(acknowledged)  # the chain survived the kill
    events = log.query(frozenset({"k"}), "acme", limit=1000)
    log.close()
    outcomes = {e["subject_id"]: e["outcome"]["state"] for e in events if e["action"] == "enrol"}
    on_record = {s for s, state in outcomes.items() if state in ("enrolled", "recovered")}
    assert on_record == set(present)  # every subject present has its enrolment on record
    for subject in busy:  # the interrupted one was settled at restart, as the engine holds it
        assert outcomes[subject] == ("recovered" if subject in present else "aborted")
    with sqlite3.connect(home / "audit.sqlite") as db:
        assert db.execute("SELECT count(*) FROM intents").fetchone()[0] == 0
