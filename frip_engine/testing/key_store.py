"""The key store suite: the secret never reaches disk in the clear (and what is written is
private to its owner), is bound to its engine and key version, outlives the store object,
and a tampered store is refused."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from frip_engine.contracts import KeyStore
from frip_engine.errors import KeyStoreError
from frip_engine.testing.base import Conformance, refused

ENGINE_ID = "conformance-engine"
KEY_ID = "he-secret-v1"


def written_files(root: Path) -> dict[Path, bytes]:
    """Every regular file under ``root`` and its bytes."""
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def clear_copies(secret: bytes, blob: bytes) -> list[str]:
    """How a piece of ``secret`` appears in ``blob`` in the clear: raw, hex or base64
    (empty: it does not). Pieces of 32 bytes (48 for base64, which is 3-byte aligned)."""
    found = []
    for start in range(0, len(secret) - 48, 97):
        piece = secret[start : start + 32]
        if piece in blob:
            found.append(f"raw bytes at secret offset {start}")
        if piece.hex().encode() in blob or piece.hex().upper().encode() in blob:
            found.append(f"hex at secret offset {start}")
        aligned = start - start % 3
        if base64.b64encode(secret[aligned : aligned + 48]) in blob:
            found.append(f"base64 at secret offset {aligned}")
    return found


class KeyStoreConformance(Conformance):
    """``environment``: variables the store needs (a passphrase, a PIN), set for each test;
    ``params``: its factory's keys (e.g. a cheap KDF cost for tests). The store is bound to
    a fresh engine folder in ``tmp_path``; every file under ``tmp_path`` is scanned."""

    kind: ClassVar[str] = "key_store"
    environment: ClassVar[dict[str, str]] = {}

    @pytest.fixture
    def engine_dir(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
        for name, value in self.environment.items():
            monkeypatch.setenv(name, value)
        folder = tmp_path / "engine"
        folder.mkdir(mode=0o700)
        return folder

    def open_store(self, engine_dir: Path) -> Any:
        """A new store object bound to ``engine_dir`` (what ``Engine.open`` does)."""
        store = self.make()
        assert isinstance(store, KeyStore), "the component does not satisfy KeyStore"
        store.bind(str(engine_dir))
        return store

    @pytest.fixture
    def secret(self) -> bytes:
        return np.random.default_rng(5).bytes(4096)  # what an HE secret context looks like

    @pytest.fixture
    def stored(self, engine_dir: Path, secret: bytes) -> Iterator[Any]:
        store = self.open_store(engine_dir)
        store.init(ENGINE_ID)
        store.store_secret(ENGINE_ID, KEY_ID, bytearray(secret))
        yield store
        store.delete_secret(ENGINE_ID, KEY_ID)

    def test_the_secret_round_trips_and_survives_a_reopen(
        self, stored: Any, engine_dir: Path, secret: bytes
    ) -> None:
        loaded = stored.load_secret(ENGINE_ID, KEY_ID)
        assert isinstance(loaded, bytearray), "load_secret returns a bytearray (wiped after use)"
        assert bytes(loaded) == secret, "load_secret returned other bytes than were stored"
        again = self.open_store(engine_dir).load_secret(ENGINE_ID, KEY_ID)
        assert bytes(again) == secret, "a new store object loaded other bytes than were stored"
        status = stored.status(ENGINE_ID)
        assert KEY_ID in status["sealed_keys"], f"status()['sealed_keys'] lacks {KEY_ID}: {status}"
        assert isinstance(stored.describe(), str), "describe() returns no str"

    def test_the_secret_is_never_written_in_the_clear(
        self, stored: Any, tmp_path: Path, secret: bytes
    ) -> None:
        stored.load_secret(ENGINE_ID, KEY_ID)
        stored.rotate_kek(ENGINE_ID)
        for path, blob in written_files(tmp_path).items():
            found = clear_copies(secret, blob)
            assert not found, f"{path} holds the secret in the clear: {found[:3]}"

    def test_what_it_writes_is_private_to_its_owner(self, stored: Any, tmp_path: Path) -> None:
        for path in written_files(tmp_path):
            mode = path.stat().st_mode & 0o777
            assert not mode & 0o077, f"{path} is readable by others (mode {oct(mode)})"

    def test_the_secret_is_bound_to_its_engine_and_key_version(self, stored: Any) -> None:
        with refused(KeyStoreError, "loading another engine's key"):
            stored.load_secret("another-engine", KEY_ID)
        with refused(KeyStoreError, "loading a key version never stored"):
            stored.load_secret(ENGINE_ID, "he-secret-v2")

    def test_a_tampered_store_is_refused(
        self, stored: Any, engine_dir: Path, tmp_path: Path, secret: bytes
    ) -> None:
        files = {path: blob for path, blob in written_files(tmp_path).items() if blob}
        if not files:
            pytest.skip(f"{stored.name} wrote no file under its engine folder: nothing to tamper")
        for path, blob in files.items():
            position = len(blob) // 2  # inside the sealed secret, the bulk of what is written
            damaged = bytearray(blob)  # one character changed, keeping base64/JSON valid
            damaged[position] = ord("A") if blob[position] != ord("A") else ord("B")
            path.write_bytes(bytes(damaged))
            try:
                loaded = self.open_store(engine_dir).load_secret(ENGINE_ID, KEY_ID)
            except KeyStoreError:
                continue
            finally:
                path.write_bytes(blob)
            assert bytes(loaded) == secret, (
                f"{path} altered at byte {position}: load_secret returned other bytes "
                "instead of raising KeyStoreError"
            )
