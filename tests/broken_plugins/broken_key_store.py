"""A key store that writes the secret key in the clear (hex in a JSON file)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from frip_engine.errors import KeyStoreError
from frip_engine.testing import KeyStoreConformance


class ClearKeyStore:
    name = "clear"

    def bind(self, engine_dir: str) -> None:
        self.path = Path(engine_dir) / "keys.json"

    def _keys(self) -> dict[str, str]:
        return json.loads(self.path.read_text()) if self.path.exists() else {}

    def init(self, engine_id: str) -> None:
        pass

    def store_secret(self, engine_id: str, key_id: str, secret: bytes | bytearray) -> None:
        self.path.write_text(json.dumps({**self._keys(), f"{engine_id}/{key_id}": secret.hex()}))

    def load_secret(self, engine_id: str, key_id: str) -> bytearray:
        try:
            return bytearray.fromhex(self._keys()[f"{engine_id}/{key_id}"])
        except KeyError:
            raise KeyStoreError(f"no key {key_id}") from None

    def delete_secret(self, engine_id: str, key_id: str) -> None:
        keys = self._keys()
        keys.pop(f"{engine_id}/{key_id}", None)
        self.path.write_text(json.dumps(keys))

    def rotate_kek(self, engine_id: str) -> str:
        return "nothing to rotate"

    def status(self, engine_id: str) -> dict[str, Any]:
        return {"sealed_keys": [k.split("/")[1] for k in self._keys()]}

    def describe(self) -> str:
        return f"clear {self.path}"


class TestClearKeyStore(KeyStoreConformance):
    def make(self, **overrides: Any) -> Any:
        return ClearKeyStore()
