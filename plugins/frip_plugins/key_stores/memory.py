"""Key store ``memory``: secrets in this process only, for tests and throw-away engines."""

from __future__ import annotations

from typing import Any

from frip_engine.contracts import KeyStore, Register
from frip_engine.errors import KeyStoreError
from frip_engine.hookspecs import hookimpl

_SECRETS: dict[tuple[str, str], bytes] = {}


class MemoryKeyStore:
    name = "memory"
    process_local = True  # no other process reaches it (no key-service actor on a node)

    def bind(self, engine_dir: str) -> None:
        """Nothing is written anywhere."""

    def describe(self) -> str:
        return "memory (this process only; the engine is unusable after it exits)"

    def store_secret(self, engine_id: str, key_id: str, secret: bytes | bytearray) -> None:
        _SECRETS[(engine_id, key_id)] = bytes(secret)

    def init(self, engine_id: str) -> None:
        """Nothing to prepare."""

    def delete_secret(self, engine_id: str, key_id: str) -> None:
        _SECRETS.pop((engine_id, key_id), None)

    def rotate_kek(self, engine_id: str) -> str:
        return "nothing to rotate: the memory store has no key-encryption key"

    def status(self, engine_id: str) -> dict[str, Any]:
        return {"store": "memory", "sealed_keys": sorted(k for e, k in _SECRETS if e == engine_id)}

    def load_secret(self, engine_id: str, key_id: str) -> bytearray:
        try:
            return bytearray(_SECRETS[(engine_id, key_id)])
        except KeyError:
            raise KeyStoreError(
                f"engine {engine_id} key '{key_id}' is not in this process's memory key store "
                "(memory keys do not outlive the process that made them)"
            ) from None


@hookimpl
def register_key_stores(register: Register[KeyStore]) -> None:
    register("memory", MemoryKeyStore, summary="in-process only, for tests")
