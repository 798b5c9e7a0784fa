"""Key store ``memory``: secrets in this process only, for tests and throw-away engines."""

from __future__ import annotations

from typing import Any

from frip_engine.errors import KeyStoreError
from frip_engine.hookspecs import hookimpl

_SECRETS: dict[tuple[str, int], bytes] = {}


class MemoryKeyStore:
    name = "memory"

    def bind(self, engine_dir: str) -> None:
        """Nothing is written anywhere."""

    def describe(self) -> str:
        return "memory (this process only; the engine is unusable after it exits)"

    def store_secret(self, engine_id: str, version: int, secret: bytes | bytearray) -> None:
        _SECRETS[(engine_id, version)] = bytes(secret)

    def init(self, engine_id: str) -> None:
        """Nothing to prepare."""

    def delete_secret(self, engine_id: str, version: int) -> None:
        _SECRETS.pop((engine_id, version), None)

    def rotate_kek(self, engine_id: str) -> str:
        return "nothing to rotate: the memory store has no key-encryption key"

    def status(self, engine_id: str) -> dict[str, Any]:
        versions = sorted(v for e, v in _SECRETS if e == engine_id)
        return {"store": "memory", "wrapped_versions": versions}

    def load_secret(self, engine_id: str, version: int) -> bytearray:
        try:
            return bytearray(_SECRETS[(engine_id, version)])
        except KeyError:
            raise KeyStoreError(
                f"engine {engine_id} key v{version} is not in this process's memory key store "
                "(memory keys do not outlive the process that made them)"
            ) from None


@hookimpl
def register_key_stores(register: Any) -> None:
    register("memory", MemoryKeyStore, summary="in-process only, for tests")
