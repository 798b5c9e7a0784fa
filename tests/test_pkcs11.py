"""The PKCS#11 key store against a real SoftHSM2 token, and the HE key lifecycle."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import SOFTHSM_PIN, near, unit_vectors

from frip_engine.engine import Engine, EnrolItem
from frip_engine.errors import KeyStoreError
from frip_engine.profile import Profile


@pytest.fixture
def token_env(softhsm: dict[str, str], home: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("FRIP_PKCS11_PIN", SOFTHSM_PIN)
    return "frip-a"


def _engine(home: Path, name: str, token: str = "frip-a") -> Engine:
    profile = {"engine": {"name": name}, "key_store": {"plugin": "pkcs11", "token_label": token}}
    return Engine.create(Profile.from_dict(profile), home)


def _enrolled(
    home: Path, name: str, n: int = 8, token: str = "frip-a"
) -> tuple[Engine, np.ndarray]:
    engine = _engine(home, name, token)
    vectors = unit_vectors(n, seed=hash(name) % 1000)
    report = engine.enrol_many([EnrolItem(f"s{i}", embeddings=[v]) for i, v in enumerate(vectors)])
    assert len(report.enrolled) == n
    return engine, vectors


def _sealed(engine: Engine) -> Path:
    return engine.directory / "secret-key.p11.json"


def test_engine_on_a_token_identifies_and_keeps_the_kek_inside(token_env: str, home: Path) -> None:
    engine, vectors = _enrolled(home, "hsm")
    decision = engine.identify(embedding=near(vectors[2], 0.5, 1))
    assert decision.subject_id == "s2"
    assert decision.timings["key_unwrap"] > 0
    status = engine.key_status()
    assert status["kek_sensitive"] and not status["kek_extractable"]
    assert status["sealed_keys"] == ["he-secret-v1"] and status["token"] == "frip-a"
    import pkcs11
    from pkcs11 import Attribute, KeyType, ObjectClass

    lib = pkcs11.lib("/usr/lib/softhsm/libsofthsm2.so")
    with lib.get_token(token_label="frip-a").open(user_pin=SOFTHSM_PIN) as session:
        kek = session.get_key(
            label=status["kek_label"], key_type=KeyType.AES, object_class=ObjectClass.SECRET_KEY
        )
        with pytest.raises(pkcs11.AttributeSensitive):
            kek[Attribute.VALUE]
    engine.close()


def test_wrong_pin_changes_nothing(token_env: str, home: Path, monkeypatch: Any) -> None:
    engine, vectors = _enrolled(home, "pin")
    monkeypatch.setenv("FRIP_PKCS11_PIN", "0000")
    with pytest.raises(KeyStoreError, match="wrong PIN"):
        engine.identify(embedding=vectors[0])
    monkeypatch.setenv("FRIP_PKCS11_PIN", SOFTHSM_PIN)
    assert engine.identify(embedding=vectors[0]).subject_id == "s0"
    engine.close()


def test_missing_token_key_and_module(token_env: str, home: Path) -> None:
    engine, vectors = _enrolled(home, "missing")
    store = engine.parts.key_store
    store.token_label = "no-such-token"
    with pytest.raises(KeyStoreError, match="no PKCS#11 token labelled 'no-such-token'"):
        engine.identify(embedding=vectors[0])
    store.token_label = "frip-a"
    store.module = "/nonexistent/libsofthsm2.so"
    with pytest.raises(KeyStoreError, match="does not exist"):
        engine.identify(embedding=vectors[0])
    store.module = "/usr/lib/softhsm/libsofthsm2.so"
    data = json.loads(_sealed(engine).read_text())
    data["kek_label"] = "frip-kek-gone"
    _sealed(engine).write_text(json.dumps(data))
    with pytest.raises(KeyStoreError, match="'frip-kek-gone' is not on token"):
        engine.identify(embedding=vectors[0])
    engine.close()


def test_token_unreachable_mid_operation_leaves_no_partial_state(
    token_env: str, home: Path
) -> None:
    engine, vectors = _enrolled(home, "unreachable")
    block_before = engine.gallery_store.read_block(1)
    engine.parts.key_store.token_label = "unplugged-token"
    with pytest.raises(KeyStoreError, match="no PKCS#11 token"):
        engine.remove("s3")  # erasure needs the key: nothing may change without it
    with pytest.raises(KeyStoreError, match="no PKCS#11 token"):
        engine.rotate_he_keys()
    assert engine.gallery_store.read_block(1) == block_before
    assert engine.gallery_store.subject("s3") is not None and engine.key_version == 1
    engine.parts.key_store.token_label = "frip-a"  # the token comes back
    assert engine.identify(embedding=vectors[3]).subject_id == "s3"
    engine.remove("s3")
    assert engine.gallery_store.subject("s3") is None
    engine.close()


def test_tampered_wrapped_key_fails_authentication(token_env: str, home: Path) -> None:
    engine, vectors = _enrolled(home, "tamper")
    data = json.loads(_sealed(engine).read_text())
    sealed = bytearray(base64.b64decode(data["keys"]["he-secret-v1"]["sealed"]))
    sealed[100] ^= 0x01
    data["keys"]["he-secret-v1"]["sealed"] = base64.b64encode(bytes(sealed)).decode()
    _sealed(engine).write_text(json.dumps(data))
    with pytest.raises(KeyStoreError, match="authentication failed"):
        engine.identify(embedding=vectors[0])
    engine.close()


def test_two_engines_share_a_token_without_sharing_keys(token_env: str, home: Path) -> None:
    first, v1 = _enrolled(home, "one")
    second, v2 = _enrolled(home, "two")
    assert first.identify(embedding=v1[3]).subject_id == "s3"
    assert second.identify(embedding=v2[4]).subject_id == "s4"
    assert first.key_status()["kek_label"] != second.key_status()["kek_label"]
    # one engine's sealed key cannot be opened as the other's
    _sealed(second).write_text(_sealed(first).read_text())
    with pytest.raises(KeyStoreError, match=r"authentication failed|another engine"):
        second.identify(embedding=v2[0])
    first.close()
    second.close()


def test_engines_on_different_tokens(token_env: str, home: Path) -> None:
    engine, vectors = _enrolled(home, "other-token", token="frip-b")
    assert engine.identify(embedding=vectors[1]).subject_id == "s1"
    assert engine.key_status()["token"] == "frip-b"
    engine.close()


def test_rotate_kek_rewraps_and_destroys_the_old_key(token_env: str, home: Path) -> None:
    engine, vectors = _enrolled(home, "kek")
    before = engine.key_status()["kek_label"]
    sealed_before = json.loads(_sealed(engine).read_text())["keys"]["he-secret-v1"]["sealed"]
    engine.rotate_kek()
    after = engine.key_status()["kek_label"]
    assert after != before
    assert (
        json.loads(_sealed(engine).read_text())["keys"]["he-secret-v1"]["sealed"] != sealed_before
    )
    assert engine.identify(embedding=vectors[5]).subject_id == "s5"
    assert _keks_on_token(engine) == [after]  # the old key is destroyed
    engine.close()


def _keks_on_token(engine: Engine) -> list[str]:
    """Labels of this engine's KEKs on its token, read with a session of the test's own."""
    import pkcs11
    from pkcs11 import Attribute, ObjectClass

    prefix = f"frip-kek-{engine.profile.engine_id}-"
    token = engine.parts.key_store.token_label
    lib = pkcs11.lib("/usr/lib/softhsm/libsofthsm2.so")
    with lib.get_token(token_label=token).open(user_pin=SOFTHSM_PIN) as session:
        keys = session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY})
        return sorted(k[Attribute.LABEL] for k in keys if k[Attribute.LABEL].startswith(prefix))


def test_rotate_he_reencrypts_everything_and_drops_the_old_key(token_env: str, home: Path) -> None:
    engine, vectors = _enrolled(home, "he")
    old_block = engine.gallery_store.read_block(1)[1]
    probes = [near(v, 0.6, i) for i, v in enumerate(vectors)]
    before = [engine.identify(embedding=p) for p in probes]
    assert engine.rotate_he_keys() == 2
    assert engine.gallery_store.read_block(1)[1] != old_block
    assert engine.key_status()["sealed_keys"] == ["he-secret-v2"]
    engine.close()
    with Engine.open("he", home) as reopened:
        assert reopened.key_version == 2
        after = [reopened.identify(embedding=p) for p in probes]
    # same decisions; scores equal up to CKKS noise (fresh encryptions under the new key)
    assert [d.subject_id for d in after] == [d.subject_id for d in before]
    assert np.allclose([d.score for d in after], [d.score for d in before], atol=1e-4)


ROTATE_SCRIPT = """
import sys
import tempfile
from pathlib import Path
from frip_engine.engine import Engine
engine = Engine.open("killed", Path(sys.argv[1]))
engine.rotate_he_keys(progress=lambda b: print(b, flush=True))
print("switched", flush=True)
"""


def test_rotation_killed_midway_leaves_a_working_engine(
    token_env: str, home: Path, tmp_path: Path
) -> None:
    engine, vectors = _enrolled(home, "killed", n=6)
    engine.close()
    child = subprocess.Popen(
        [sys.executable, "-c", ROTATE_SCRIPT, str(home)],
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
    )
    assert child.stdout is not None
    assert child.stdout.readline().startswith("block"), "rotation did not start"
    child.send_signal(signal.SIGKILL)  # inside the re-encryption of the first block
    child.wait()
    with Engine.open("killed", home) as restarted:
        assert restarted.key_version == 1
        for i, v in enumerate(vectors):
            assert restarted.identify(embedding=near(v, 0.5, i)).subject_id == f"s{i}"
        assert restarted.rotate_he_keys() == 2  # starts over and completes
        assert restarted.identify(embedding=vectors[0]).subject_id == "s0"
        assert restarted.key_status()["sealed_keys"] == ["he-secret-v2"]


def test_no_secret_material_in_the_clear_after_rotation(
    token_env: str, home: Path, tmp_path: Path
) -> None:
    engine, vectors = _enrolled(home, "scan")
    engine.identify(embedding=vectors[0])
    secrets = [engine.parts.key_store.load_secret(engine.profile.engine_id, "he-secret-v1")]
    engine.rotate_he_keys()
    engine.rotate_kek()
    engine.identify(embedding=vectors[1])
    secrets.append(engine.parts.key_store.load_secret(engine.profile.engine_id, "he-secret-v2"))
    engine.close()
    # the engine, this test's temp folder, and loose files in the system temp dir
    temp = Path(tempfile.gettempdir())
    files = [*home.rglob("*"), *tmp_path.rglob("*"), *temp.glob("*")]
    blob = b"".join(_read(p) for p in files if "softhsm" not in str(p))
    for secret in secrets:
        for start in range(256, len(secret) - 64, 997):
            assert bytes(secret[start : start + 64]) not in blob
    for dtype in ("<f8", "<f4"):
        assert vectors[0][:4].astype(dtype).tobytes() not in blob


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes() if path.is_file() else b""
    except OSError:  # another process's temp file vanished or is unreadable
        return b""


def test_no_pkcs11_after_fork(token_env: str, home: Path) -> None:
    engine, vectors = _enrolled(home, "fork")
    engine.identify(embedding=vectors[0])  # the library is loaded in this process now
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: must refuse rather than crash or corrupt the token
        os.close(read)
        try:
            engine.parts.key_store.load_secret(engine.profile.engine_id, "he-secret-v1")
            message = b"used the library after fork"
        except KeyStoreError as exc:
            message = str(exc).encode()
        os.write(write, message)
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    assert b"spawn" in os.read(read, 1000)
    engine.close()


def test_cli_moves_an_engine_from_file_to_token(token_env: str, home: Path, tmp_path: Path) -> None:
    def frip(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "frip_engine", *args], capture_output=True, text=True
        )

    assert frip("engine", "create", "moving").returncode == 0
    np.save(tmp_path / "v.npy", unit_vectors(1)[0])
    assert (
        frip("enrol", "moving", "--subject", "v", "--embedding", str(tmp_path / "v.npy")).returncode
        == 0
    )
    refused = frip(
        "keys", "init", "moving", "--key-store", "pkcs11", "--option", f"pin={SOFTHSM_PIN}"
    )
    assert refused.returncode == 2 and "never taken from the command line" in refused.stderr
    moved = frip(
        "keys", "init", "moving", "--key-store", "pkcs11", "--option", "token_label=frip-b"
    )
    assert moved.returncode == 0, moved.stderr
    status = json.loads(frip("keys", "status", "moving", "--json").stdout)
    assert status["store"] == "pkcs11" and status["token"] == "frip-b"
    assert (
        not (home / "engines" / "moving" / "secret-key.frip").exists()
        or json.loads((home / "engines" / "moving" / "secret-key.frip").read_text())["keys"] == {}
    )
    hit = json.loads(
        frip("identify", "moving", "--embedding", str(tmp_path / "v.npy"), "--json").stdout
    )
    assert hit["subject_id"] == "v"
    assert frip("keys", "rotate-he", "moving").returncode == 0
    assert frip("keys", "rotate-kek", "moving").returncode == 0
    again = json.loads(
        frip("identify", "moving", "--embedding", str(tmp_path / "v.npy"), "--json").stdout
    )
    assert again["subject_id"] == "v"
