"""Key store ``pkcs11``: the HE secret key sealed inside a PKCS#11 token (SoftHSM2, an HSM).

Each engine gets its own AES-256 key-encryption key in the token, created SENSITIVE and
not EXTRACTABLE, so its value never leaves the token. The HE secret key blob is sealed
and opened with CKM_AES_GCM inside the token, with the engine id and key id bound
as associated data; the sealed blob lives beside the engine as ``secret-key.p11.json``.

Module path, token label and PIN come from the profile or the environment
(``FRIP_PKCS11_MODULE``, ``FRIP_PKCS11_TOKEN``, ``FRIP_PKCS11_PIN``), or the PIN from a
prompt on a terminal: never from the command line. SoftHSM is not thread-safe under
python-pkcs11, so one process-wide lock guards every call, and a process forked after
the library was loaded refuses to use it (start workers with spawn or forkserver).
"""

from __future__ import annotations

import base64
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from frip_engine.errors import KeyStoreError
from frip_engine.hookspecs import hookimpl
from frip_engine.plugins import Requirement
from frip_plugins.sealed_file import read_sealed, secret_input, write_sealed

FORMAT = "frip-pkcs11-keystore-1"
DEFAULT_FILE = "secret-key.p11.json"
DEFAULT_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
_LOCK = threading.RLock()
_LIBRARIES: dict[str, Any] = {}
_STATE = {"loaded_in_pid": 0}


def _aad(engine_id: str, key_id: str) -> bytes:
    return f"frip-engine:{engine_id}:{key_id}".encode()


def _library(module: str) -> Any:
    import pkcs11

    if _STATE["loaded_in_pid"] and _STATE["loaded_in_pid"] != os.getpid():
        raise KeyStoreError(
            "the PKCS#11 library was loaded before this process was forked; start worker "
            "processes with the 'spawn' or 'forkserver' method"
        )
    if module not in _LIBRARIES:
        if not Path(module).is_file():
            raise KeyStoreError(f"PKCS#11 module {module} does not exist (set FRIP_PKCS11_MODULE)")
        try:
            _LIBRARIES[module] = pkcs11.lib(module)
        except pkcs11.PKCS11Error as exc:
            raise KeyStoreError(f"cannot load PKCS#11 module {module}: {exc}") from exc
        _STATE["loaded_in_pid"] = os.getpid()
    return _LIBRARIES[module]


class PKCS11KeyStore:
    name = "pkcs11"

    def __init__(
        self,
        module: str | None = None,
        token_label: str | None = None,
        pin_env: str = "FRIP_PKCS11_PIN",
        path: str | None = None,
    ) -> None:
        self.module = module or os.environ.get("FRIP_PKCS11_MODULE") or DEFAULT_MODULE
        self.token_label = token_label or os.environ.get("FRIP_PKCS11_TOKEN") or ""
        self.pin_env = pin_env
        self.path = Path(path).expanduser() if path else None

    def bind(self, engine_dir: str) -> None:
        if self.path is None:
            self.path = Path(engine_dir) / DEFAULT_FILE

    def describe(self) -> str:
        return f"pkcs11 token '{self.token_label}' via {self.module} (AES-256-GCM in the token)"

    # ------------------------------------------------------------------ token access
    def _pin(self) -> str:
        return secret_input(self.pin_env, f"PIN for token '{self.token_label}': ", "token PIN")

    @contextmanager
    def _session(self) -> Iterator[Any]:
        import pkcs11

        if not self.token_label:
            raise KeyStoreError("no PKCS#11 token label: set token_label or FRIP_PKCS11_TOKEN")
        with _LOCK:
            lib = _library(self.module)
            try:
                tokens = list(lib.get_tokens(token_label=self.token_label))
            except pkcs11.PKCS11Error as exc:
                raise KeyStoreError(f"cannot list PKCS#11 tokens: {exc}") from exc
            if not tokens:
                raise KeyStoreError(
                    f"no PKCS#11 token labelled '{self.token_label}' in {self.module}"
                )
            if len(tokens) > 1:
                raise KeyStoreError(
                    f"{len(tokens)} tokens are labelled '{self.token_label}'; labels must be "
                    "unique (softhsm2-util --init-token twice makes a second one)"
                )
            try:
                with tokens[0].open(user_pin=self._pin(), rw=True) as session:
                    yield session
            except pkcs11.PinIncorrect:
                raise KeyStoreError(f"wrong PIN for token '{self.token_label}'") from None
            except pkcs11.PinLenRange:
                raise KeyStoreError(f"wrong PIN for token '{self.token_label}'") from None

    def _kek(self, session: Any, label: str) -> Any:
        import pkcs11
        from pkcs11 import KeyType, ObjectClass

        try:
            return session.get_key(
                label=label, key_type=KeyType.AES, object_class=ObjectClass.SECRET_KEY
            )
        except pkcs11.NoSuchKey:
            raise KeyStoreError(
                f"key '{label}' is not on token '{self.token_label}': run 'frip keys init' "
                "or point the engine at the token that holds it"
            ) from None
        except pkcs11.MultipleObjectsReturned:
            raise KeyStoreError(f"token '{self.token_label}' has several keys '{label}'") from None

    def _new_kek(self, session: Any, label: str) -> Any:
        from pkcs11 import Attribute, KeyType

        template = {
            Attribute.SENSITIVE: True,
            Attribute.EXTRACTABLE: False,
            Attribute.TOKEN: True,
            Attribute.PRIVATE: True,
        }
        return session.generate_key(KeyType.AES, 256, label=label, store=True, template=template)

    # ------------------------------------------------------------------ sealed blobs
    def _read(self) -> dict[str, Any]:
        assert self.path is not None, "bind() first"
        return read_sealed(self.path, FORMAT, {"kek_label": "", "kek_generation": 0, "keys": {}})

    def _write(self, data: dict[str, Any]) -> None:
        assert self.path is not None, "bind() first"
        write_sealed(self.path, data)

    @staticmethod
    def _seal(kek: Any, engine_id: str, key_id: str, secret: bytes | bytearray) -> dict[str, str]:
        from pkcs11 import GCMParams, Mechanism

        nonce = os.urandom(12)
        sealed = kek.encrypt(
            bytes(secret),
            mechanism=Mechanism.AES_GCM,
            mechanism_param=GCMParams(nonce, _aad(engine_id, key_id), 128),
        )
        return {
            "nonce": base64.b64encode(nonce).decode(),
            "sealed": base64.b64encode(sealed).decode(),
        }

    def _open(self, kek: Any, engine_id: str, key_id: str, entry: dict[str, str]) -> bytearray:
        import pkcs11
        from pkcs11 import GCMParams, Mechanism

        try:
            nonce = base64.b64decode(entry["nonce"])
            sealed = base64.b64decode(entry["sealed"])
        except (KeyError, ValueError) as exc:
            raise KeyStoreError(f"{self.path} is damaged: {exc}") from exc
        try:
            return bytearray(
                kek.decrypt(
                    sealed,
                    mechanism=Mechanism.AES_GCM,
                    mechanism_param=GCMParams(nonce, _aad(engine_id, key_id), 128),
                )
            )
        except pkcs11.PKCS11Error:
            raise KeyStoreError(
                f"the token refused to unwrap key '{key_id}' from {self.path}: AES-GCM "
                "authentication failed (the sealed key was altered or belongs to another engine)"
            ) from None

    # ------------------------------------------------------------------ contract
    def init(self, engine_id: str) -> None:
        data = self._read()
        if data["kek_label"]:
            raise KeyStoreError(f"engine {engine_id} already has key '{data['kek_label']}'")
        label = f"frip-kek-{engine_id}-1"
        with self._session() as session:
            self._new_kek(session, label)
        data.update(kek_label=label, kek_generation=1, token_label=self.token_label)
        self._write(data)

    def store_secret(self, engine_id: str, key_id: str, secret: bytes | bytearray) -> None:
        data = self._read()
        if not data["kek_label"]:
            raise KeyStoreError(f"engine {engine_id} has no key on the token: run init first")
        if key_id in data["keys"]:
            raise KeyStoreError(f"key '{key_id}' already exists in {self.path}")
        with self._session() as session:
            data["keys"][key_id] = self._seal(
                self._kek(session, data["kek_label"]), engine_id, key_id, secret
            )
        self._write(data)

    def load_secret(self, engine_id: str, key_id: str) -> bytearray:
        data = self._read()
        entry = data["keys"].get(key_id)
        if entry is None:
            raise KeyStoreError(f"key '{key_id}' is not in {self.path}")
        with self._session() as session:
            return self._open(self._kek(session, data["kek_label"]), engine_id, key_id, entry)

    def delete_secret(self, engine_id: str, key_id: str) -> None:
        data = self._read()
        data["keys"].pop(key_id, None)
        self._write(data)

    def rotate_kek(self, engine_id: str) -> str:
        """Re-wrap every stored key under a fresh token key, then destroy the old key."""
        data = self._read()
        old_label = data["kek_label"]
        generation = int(data["kek_generation"]) + 1
        new_label = f"frip-kek-{engine_id}-{generation}"
        with self._session() as session:
            old, new = self._kek(session, old_label), self._new_kek(session, new_label)
            rewrapped = {}
            for key_id, entry in data["keys"].items():
                secret = self._open(old, engine_id, key_id, entry)
                try:
                    rewrapped[key_id] = self._seal(new, engine_id, key_id, secret)
                finally:
                    secret[:] = bytes(len(secret))
            data.update(kek_label=new_label, kek_generation=generation, keys=rewrapped)
            self._write(data)  # the switch: from here on the new key is the one in use
            old.destroy()
        return new_label

    def status(self, engine_id: str) -> dict[str, Any]:
        data = self._read()
        with self._session() as session:
            kek = self._kek(session, data["kek_label"])
            from pkcs11 import Attribute

            sensitive = bool(kek[Attribute.SENSITIVE])
            extractable = bool(kek[Attribute.EXTRACTABLE])
        return {
            "store": "pkcs11",
            "module": self.module,
            "token": self.token_label,
            "kek_label": data["kek_label"],
            "kek_sensitive": sensitive,
            "kek_extractable": extractable,
            "sealed_keys": sorted(data["keys"]),
            "sealed_file": str(self.path),
        }


@hookimpl
def register_key_stores(register: Any) -> None:
    register(
        "pkcs11",
        PKCS11KeyStore,
        summary="PKCS#11 token (SoftHSM2 or an HSM): AES-256-GCM inside the token",
        requires=(Requirement("pkcs11", "python-pkcs11"),),
    )
