"""Two engine folders with one engine id (a copied folder, a backup restored beside its
original) on one PKCS#11 token must not destroy each other's keys; a token folder damaged
by a killed SoftHSM write is reported by ``frip keys status``. Real SoftHSM2 token."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SOFTHSM_PIN, unit_vectors

from frip_engine.engine import Engine, EnrolItem, duplicate_engines
from frip_engine.errors import KeyStoreError, ProfileError
from frip_engine.profile import Profile


@pytest.fixture
def token_env(softhsm: dict[str, str], home: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("FRIP_PKCS11_PIN", SOFTHSM_PIN)
    return "frip-a"


def _live_and_copy(home: Path) -> None:
    """Engine 'live' on token frip-a with one subject, and 'copy', a copy of its folder."""
    profile = {
        "engine": {"name": "live"},
        "key_store": {"plugin": "pkcs11", "token_label": "frip-a"},
    }
    with Engine.create(Profile.from_dict(profile), home) as live:
        live.enrol_many([EnrolItem("s0", embeddings=[unit_vectors(1, seed=3)[0]])])
    shutil.copytree(home / "engines" / "live", home / "engines" / "copy")


def test_key_rotations_refused_while_another_folder_holds_the_engine_id(
    token_env: str, home: Path
) -> None:
    _live_and_copy(home)
    assert duplicate_engines(home) == {"copy": ["live"], "live": ["copy"]}
    with Engine.open("copy", home) as copy:
        for rotation in (
            copy.rotate_kek,
            copy.rotate_he_keys,
            lambda: copy.move_keys({"plugin": "pkcs11", "token_label": "frip-b"}),
        ):
            with pytest.raises(KeyStoreError, match=r"'copy' and 'live'.*move the copy out"):
                rotation()
        assert "duplicate engine id" in " ".join(copy.key_status()["problems"])
    with Engine.open("live", home) as live:  # its key is still there and still opens
        problems = live.key_status()["problems"]
        assert problems and all("duplicate engine id" in p for p in problems)
        assert live.identify(embedding=unit_vectors(1, seed=3)[0]).subject_id == "s0"
    shutil.rmtree(home / "engines" / "copy")  # moved out: rotations work again
    with Engine.open("live", home) as live:
        assert live.key_status()["problems"] == []
        live.rotate_kek()
        assert live.identify(embedding=unit_vectors(1, seed=3)[0]).subject_id == "s0"


def test_cli_flags_duplicate_engine_ids(token_env: str, home: Path) -> None:
    _live_and_copy(home)

    def frip(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "frip_engine", *args, "--home", str(home)]
        return subprocess.run(command, capture_output=True, text=True)

    listed = frip("engine", "list", "--json")
    assert listed.returncode == 0 and json.loads(listed.stdout) == ["copy", "live"]
    assert "same engine id" in listed.stderr and "'copy'" in listed.stderr
    status = frip("keys", "status", "live")
    assert status.returncode == 5 and "duplicate engine id" in status.stderr
    rotated = frip("keys", "rotate-kek", "copy")
    assert rotated.returncode == 5 and "move the copy out" in rotated.stderr


def test_pkcs11_rotate_kek_keeps_a_kek_another_sealed_file_names(
    token_env: str, home: Path
) -> None:
    """At the key store itself (below the engine's refusal): two sealed files naming one
    KEK; each rotation destroys only the key its own file named, and only once no other
    sealed file beside it names that key."""
    from frip_plugins.key_stores.pkcs11 import PKCS11KeyStore

    folders = [home / "engines" / name for name in ("a", "b")]
    stores = []
    for folder in folders:
        folder.mkdir(parents=True)
        store = PKCS11KeyStore(token_label="frip-a")
        store.bind(str(folder))
        stores.append(store)
    stores[0].init("same-id")
    stores[0].store_secret("same-id", "k", b"secret bytes")
    shutil.copy(folders[0] / "secret-key.p11.json", folders[1] / "secret-key.p11.json")
    stores[1].rotate_kek("same-id")  # 'a' still names generation 1: it stays
    assert stores[0].load_secret("same-id", "k") == b"secret bytes"
    stores[0].rotate_kek("same-id")  # 'b' names generation 2: it stays; 1 goes
    assert stores[1].load_secret("same-id", "k") == b"secret bytes"
    assert stores[0].load_secret("same-id", "k") == b"secret bytes"
    labels = [stores[i].status("same-id")["kek_label"] for i in (0, 1)]
    assert labels == ["frip-kek-same-id-3", "frip-kek-same-id-2"]
    assert _labels("frip-a", "frip-kek-same-id-") == sorted(labels)
    assert stores[0].status("same-id")["kek_leftovers"] == []
    _labels("frip-a", "frip-kek-same-id-", make="frip-kek-same-id-7")  # a killed init's
    stores[1].rotate_kek("same-id")  # generation 8; 2 goes, the leftover 7 stays, reported
    assert stores[1].status("same-id")["kek_leftovers"] == ["frip-kek-same-id-7"]
    assert _labels("frip-a", "frip-kek-same-id-") == [
        labels[0],
        *(f"frip-kek-same-id-{g}" for g in (7, 8)),
    ]


def _labels(token: str, prefix: str, make: str = "") -> list[str]:
    """The labels starting with ``prefix`` of the secret keys on ``token``, after making
    an AES key labelled ``make`` there, if given."""
    import pkcs11
    from pkcs11 import Attribute, KeyType, ObjectClass

    lib = pkcs11.lib("/usr/lib/softhsm/libsofthsm2.so")
    with lib.get_token(token_label=token).open(user_pin=SOFTHSM_PIN, rw=True) as session:
        if make:
            session.generate_key(KeyType.AES, 256, label=make, store=True)
        keys = session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY})
        return sorted(k[Attribute.LABEL] for k in keys if k[Attribute.LABEL].startswith(prefix))


def test_keys_status_reports_zero_byte_softhsm_object_files(
    softhsm: dict[str, str], home: Path, tmp_path: Path
) -> None:
    """A kill -9 in SoftHSM's file store leaves 0-byte ``*.object`` files, or an empty
    ``token.object`` (the token is then 'not initialised'): ``frip keys status`` says so
    (exit 5, with advice). A token directory of its own: the session's tokens stay whole."""
    tokens = tmp_path / "tokens"
    tokens.mkdir()
    conf = tmp_path / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\n")
    env = {**os.environ, "SOFTHSM2_CONF": str(conf), "FRIP_PKCS11_PIN": SOFTHSM_PIN}
    init = ["softhsm2-util", "--init-token", "--free", "--label", "dmg", "--so-pin", "13579"]
    subprocess.run([*init, "--pin", SOFTHSM_PIN], check=True, capture_output=True, env=env)

    def frip(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "frip_engine", *args, "--home", str(home)]
        return subprocess.run(command, capture_output=True, text=True, env=env)

    assert frip("engine", "create", "e").returncode == 0
    moved = frip("keys", "init", "e", "--key-store", "pkcs11", "--option", "token_label=dmg")
    assert moved.returncode == 0, moved.stderr
    assert frip("keys", "status", "e").returncode == 0
    (token,) = [p for p in tokens.iterdir() if p.is_dir()]
    (token / "0badc0de-0000-0000-0000-000000000000.object").touch()  # a write killed midway
    status = frip("keys", "status", "e")
    assert status.returncode == 5, status.stdout
    assert "0 bytes" in status.stderr and "0badc0de" in status.stderr
    (token / "token.object").write_bytes(b"")
    status = frip("keys", "status", "e")
    assert status.returncode == 5 and "token.object is empty" in status.stderr, status.stderr
    assert "backup" in status.stderr


def test_create_refuses_an_engine_id_another_engine_has(home: Path) -> None:
    store = {"plugin": "memory"}
    with Engine.create(Profile.from_dict({"engine": {"name": "a"}, "key_store": store}), home) as a:
        taken = {"engine": {"name": "b", "id": a.profile.engine_id}, "key_store": store}
        with pytest.raises(ProfileError, match="'a' already has engine id"):
            Engine.create(Profile.from_dict(taken), home)
    assert not (home / "engines" / "b").exists()
