"""The JSON file in which key stores keep sealed (encrypted) secret-key blobs.

Only ciphertext goes in; the file is written atomically with mode 0600 so a crash
never leaves half a key file and other users cannot read even the sealed blobs.
"""

from __future__ import annotations

import getpass
import json
import os
import sys
from pathlib import Path
from typing import Any

from frip_engine.errors import KeyStoreError


def secret_input(env: str, prompt: str, what: str) -> str:
    """A passphrase or PIN from the environment, else a terminal prompt; never argv."""
    value = os.environ.get(env)
    if value is None and sys.stdin is not None and sys.stdin.isatty():
        value = getpass.getpass(prompt)
    if not value:
        raise KeyStoreError(f"no {what}: set the environment variable {env} (or run on a terminal)")
    return value


def read_sealed(path: Path, fmt: str, empty: dict[str, Any]) -> dict[str, Any]:
    if not path.is_file():
        return {"format": fmt, **empty}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise KeyStoreError(f"key file {path} is unreadable: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != fmt:
        raise KeyStoreError(f"key file {path} is not a {fmt} file")
    return data


def write_sealed(path: Path, data: dict[str, Any]) -> None:
    """Replace ``path`` atomically and durably: the new file is synced, renamed over the
    old one, and the directory synced, so a crash leaves the old or the new key file,
    never none (a rename not yet on disk would otherwise lose the keys with the crash)."""
    staging = path.with_suffix(".tmp")
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle)
        handle.flush()
        os.fsync(handle.fileno())
    staging.replace(path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
