"""A shard's node-local cache of its loaded blocks' raw residues (public material only).

A block the fast scorer loaded is its ciphertexts' residues: a uint64 array (d, 2, L, N)
(:class:`frip_plugins.he_backends._fast_scorer.FastBlock`). A shard writes each one it
loads to ``<cache dir>/<engine>/b<block>-r<revision>-k<key version>-<fingerprint>.npy``
(numpy's ``.npy`` format) with a JSON sidecar ``.json`` holding the block's size, SEAL
version and the SHA-256 of the array's bytes; a restarted shard maps the file (numpy
memmap, copy on write) instead of reading and parsing the store's blob. ``<engine>`` is a
SHA-256 of the engine directory, and every file name ends in the key version and
public-context fingerprint, so another engine's or key's file is never used; opening the
cache deletes the engine's files of any other key version or context (a key rotation's old
files). Files are written atomically (temporary file, then rename; the sidecar last) and
are private to their owner (directories 0700, files 0600). A file whose sidecar is
missing, whose hash or shape does not match, or whose residues are out of range is deleted
and reported, never scored. Writing a block's file removes its other revisions' files.
Matchers whose loaded blocks are not residue blocks are not cached."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from frip_engine.errors import BackendError


def default_dir() -> Path:
    """The node's default cache directory: ``frip-residues-<uid>`` in its temp dir."""
    return Path(tempfile.gettempdir()) / f"frip-residues-{os.getuid()}"


class ResidueCache:
    """One engine's residue files of one key version and public context under ``root``
    (created 0700; a directory that is not the caller's own or is open to others is
    refused with BackendError). Opening it deletes the engine's files of other keys."""

    def __init__(self, root: Path, engine_dir: str, fingerprint: str, key_version: int) -> None:
        self.dir = root / hashlib.sha256(engine_dir.encode()).hexdigest()[:32]
        for path in (root, self.dir):
            path.mkdir(mode=0o700, exist_ok=True)
            info = path.stat()
            if info.st_uid != os.getuid() or info.st_mode & 0o077:
                raise BackendError(f"residue cache {path} is not private to this user")
        self._key = f"k{key_version}-{fingerprint[:16]}"
        for path in self.dir.glob("b*"):
            if not path.stem.endswith(self._key):
                path.unlink(missing_ok=True)
        self.damaged: list[str] = []  # files found damaged, deleted

    def _path(self, block_id: int, revision: int) -> Path:
        return self.dir / f"b{block_id}-r{revision}-{self._key}.npy"

    def load(self, matcher: Any, block_id: int, revision: int) -> Any | None:
        """The block mapped from its file, or None (not cached, matcher not a residue
        one, or the file damaged: then it is deleted and named in :attr:`damaged`)."""
        codec = _codec(matcher)
        path = self._path(block_id, revision)
        meta = path.with_suffix(".json")
        if codec is None or not meta.exists():
            return None
        from frip_plugins.he_backends._ckks_layouts import ResidueBlock
        from frip_plugins.he_backends._fast_scorer import FastBlock

        try:
            info = json.loads(meta.read_text())
            residues = np.load(path, mmap_mode="c", allow_pickle=False)
            if hashlib.sha256(memoryview(residues)).hexdigest() != info["sha256"]:
                raise BackendError("hash mismatch")
            fast = FastBlock(codec, residues, int(info["size"]), tuple(info["version"]))
            return ResidueBlock(fast)
        except (OSError, ValueError, KeyError, TypeError, BackendError):
            self.damaged.append(path.name)
            for stale in (path, meta):
                stale.unlink(missing_ok=True)
            return None

    def save(self, block: Any, block_id: int, revision: int) -> None:
        """Write ``block``'s residues (a residue block; others are skipped) atomically,
        then remove the block's files of other revisions."""
        fast = getattr(block, "fast", None)
        if fast is None:
            return
        path = self._path(block_id, revision)
        meta = {
            "size": fast.size,
            "version": list(fast.version),
            "sha256": hashlib.sha256(np.ascontiguousarray(fast.residues).data).hexdigest(),
        }
        _atomic(path, lambda f: np.save(f, fast.residues, allow_pickle=False))
        _atomic(path.with_suffix(".json"), lambda f: f.write(json.dumps(meta).encode()))
        for old in self.dir.glob(f"b{block_id}-r*"):  # this key's only: others are gone
            if old.stem != path.stem:
                old.unlink(missing_ok=True)


def _codec(matcher: Any) -> Any | None:
    """The fast scorer's SEAL codec behind ``matcher``, or None for other matchers."""
    return getattr(getattr(matcher, "layout", None), "codec", None)


def _atomic(path: Path, write: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")  # 0600
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
