"""Key store ``file``: the HE secret key sealed with AES-256-GCM under a scrypt-derived key.

The embedded default for machines without a token. The passphrase comes from an
environment variable (``FRIP_PASSPHRASE`` unless the profile names another) or, on a
terminal, a prompt; never from the command line. The engine id and key id are
bound as associated data, so a sealed key cannot be swapped between engines or keys.
The derived key-encryption key stays in process memory (like an open token session);
the HE secret key itself is unwrapped per operation by the key service.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

from frip_engine.contracts import KeyStore, Register, Requirement
from frip_engine.errors import KeyStoreError, ProfileError
from frip_engine.hookspecs import hookimpl
from frip_engine.private import engine_file
from frip_plugins.key_stores._sealed_file import read_sealed, secret_input, write_sealed

FORMAT = "frip-file-keystore-1"
DEFAULT_FILE = "secret-key.frip"


def _aad(engine_id: str, key_id: str) -> bytes:
    return f"frip-engine:{engine_id}:{key_id}".encode()


class FileKeyStore:
    name = "file"

    def __init__(
        self,
        path: str | None = None,
        passphrase_env: str = "FRIP_PASSPHRASE",
        scrypt_log2_n: int = 15,
    ) -> None:
        if not 14 <= scrypt_log2_n <= 22:
            raise ProfileError("key_store file: scrypt_log2_n must be between 14 and 22")
        self._placed = path  # bind() resolves it against the engine folder
        self.path = Path(path) if path else None  # as given until bound
        self.passphrase_env = passphrase_env
        self.log2_n = scrypt_log2_n
        self._keks: dict[bytes, bytes] = {}

    def bind(self, engine_dir: str) -> None:
        self.path = engine_file(self._placed, engine_dir, DEFAULT_FILE, "[key_store] path")

    def describe(self) -> str:
        kdf = f"scrypt N=2^{self.log2_n}"
        return f"file {self.path} (AES-256-GCM, {kdf}, passphrase from ${self.passphrase_env})"

    def _passphrase(self) -> bytes:
        prompt = f"Passphrase for {self.path}: "
        return secret_input(self.passphrase_env, prompt, "passphrase").encode()

    def _kek(
        self, salt: bytes, passphrase: bytes | None = None, log2_n: int | None = None
    ) -> bytes:
        if salt not in self._keks:
            from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

            cost = 2 ** (log2_n or self.log2_n)  # what the key was sealed with wins
            kdf = Scrypt(salt=salt, length=32, n=cost, r=8, p=1)
            self._keks[salt] = kdf.derive(passphrase or self._passphrase())
        return self._keks[salt]

    def _read(self) -> dict[str, Any]:
        if self.path is None:
            raise KeyStoreError("file key store is not bound to an engine directory")
        return read_sealed(self.path, FORMAT, {"keys": {}})

    def _seal(
        self,
        engine_id: str,
        key_id: str,
        secret: bytes | bytearray,
        passphrase: bytes | None = None,
    ) -> dict[str, Any]:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        salt, nonce = os.urandom(16), os.urandom(12)
        kek = self._kek(salt, passphrase)
        sealed = AESGCM(kek).encrypt(nonce, bytes(secret), _aad(engine_id, key_id))
        return {
            "kdf": {"name": "scrypt", "log2_n": self.log2_n, "r": 8, "p": 1},
            "salt": base64.b64encode(salt).decode(),
            "nonce": base64.b64encode(nonce).decode(),
            "sealed": base64.b64encode(sealed).decode(),
        }

    def init(self, engine_id: str) -> None:
        """Nothing to create ahead: the key is derived from the passphrase on first use."""
        self._read()

    def store_secret(self, engine_id: str, key_id: str, secret: bytes | bytearray) -> None:
        data = self._read()
        if key_id in data["keys"]:
            raise KeyStoreError(f"key '{key_id}' already exists in {self.path}")
        data["keys"][key_id] = self._seal(engine_id, key_id, secret)
        assert self.path is not None
        write_sealed(self.path, data)

    def delete_secret(self, engine_id: str, key_id: str) -> None:
        data = self._read()
        data["keys"].pop(key_id, None)
        assert self.path is not None
        write_sealed(self.path, data)

    def rotate_kek(self, engine_id: str) -> str:
        """Re-seal every key under fresh salts, with the passphrase in
        $FRIP_NEW_PASSPHRASE when set (then use it as the passphrase from now on)."""
        data = self._read()
        secrets = {k: self.load_secret(engine_id, k) for k in data["keys"]}
        new = os.environ.get("FRIP_NEW_PASSPHRASE", "").encode() or None
        try:
            data["keys"] = {k: self._seal(engine_id, k, s, new) for k, s in secrets.items()}
        finally:
            for secret in secrets.values():
                secret[:] = bytes(len(secret))
        assert self.path is not None
        write_sealed(self.path, data)
        return "new scrypt salt" + (" and passphrase" if new else "")

    def status(self, engine_id: str) -> dict[str, Any]:
        return {
            "store": "file",
            "sealed_file": str(self.path),
            "kdf": f"scrypt N=2^{self.log2_n}, r=8, p=1",
            "passphrase_env": self.passphrase_env,
            "sealed_keys": sorted(self._read()["keys"]),
        }

    def load_secret(self, engine_id: str, key_id: str) -> bytearray:
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        entry = self._read()["keys"].get(key_id)
        if entry is None:
            assert self.path is not None
            if not self.path.is_file():
                raise KeyStoreError(
                    f"key file {self.path} is missing, so key '{key_id}' cannot be unwrapped: "
                    "restore the file from a backup"
                )
            raise KeyStoreError(f"key '{key_id}' is not in {self.path}")
        try:
            salt = base64.b64decode(entry["salt"])
            nonce = base64.b64decode(entry["nonce"])
            sealed = base64.b64decode(entry["sealed"])
            log2_n = int(entry["kdf"]["log2_n"])
        except (KeyError, ValueError, TypeError) as exc:
            raise KeyStoreError(f"key file {self.path} is damaged: {exc}") from exc
        try:
            kek = self._kek(salt, log2_n=log2_n)
            return bytearray(AESGCM(kek).decrypt(nonce, sealed, _aad(engine_id, key_id)))
        except ValueError as exc:
            raise KeyStoreError(f"key file {self.path} is damaged: {exc}") from exc
        except InvalidTag:
            self._keks.pop(salt, None)
            raise KeyStoreError(
                f"cannot unwrap the secret key in {self.path}: wrong passphrase, "
                "or the key file was altered or belongs to another engine"
            ) from None


@hookimpl
def register_key_stores(register: Register[KeyStore]) -> None:
    register(
        "file",
        FileKeyStore,
        summary="software: AES-256-GCM under a scrypt-derived key (embedded default)",
        requires=(Requirement("cryptography", "cryptography"),),
    )
