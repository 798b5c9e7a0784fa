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
and reported, never scored. Writing or mapping a block's file removes its other revisions'
files, and a starting shard removes the files of blocks the store no longer holds or holds
at a newer revision (:meth:`ResidueCache.prune`), so superseded revisions never pile up.
Each engine's directory holds ``engine.json`` (the engine directory and host it was
written for), so that :func:`inspect` can name the engine and ``frip cluster status`` can
flag the files of an engine deleted since as orphaned (:func:`remove_engine` removes them).
Matchers whose loaded blocks are not residue blocks are not cached."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import stat
import tempfile
from contextlib import suppress
from pathlib import Path
from typing import Any

import numpy as np

from frip_engine.errors import BackendError

ENV = "FRIP_RESIDUE_DIR"  # the node's default cache directory, where it is set
MARKER = "engine.json"
_NAME = re.compile(r"b(\d+)-r(\d+)-k(\d+)-([0-9a-f]+)\.npy")


def shared_dir() -> Path:
    """``frip-residues-<uid>`` in the node's temp dir: the default without ``$FRIP_RESIDUE_DIR``."""
    return Path(tempfile.gettempdir()) / f"frip-residues-{os.getuid()}"


def default_dir() -> Path:
    """The node's default cache directory: ``$FRIP_RESIDUE_DIR`` where the node's
    environment sets it (a test suite's or benchmark's own directory), else
    :func:`shared_dir`."""
    return Path(os.environ.get(ENV) or shared_dir())


def engines_under(root: Path, base: Path) -> list[str]:
    """The engine directories under ``base`` that have residue files in ``root`` (as their
    ``engine.json`` names them)."""
    found = []
    for marker in root.glob(f"*/{MARKER}") if root.is_dir() else []:
        with suppress(OSError, ValueError, KeyError):
            engine_dir = Path(json.loads(marker.read_text())["engine_dir"])
            if engine_dir.is_relative_to(base):
                found.append(str(engine_dir))
    return found


def engine_dir_name(engine_dir: str) -> str:
    """The name of an engine's directory in a cache: a SHA-256 of its engine directory."""
    return hashlib.sha256(engine_dir.encode()).hexdigest()[:32]


class ResidueCache:
    """One engine's residue files of one key version and public context under ``root``
    (created 0700; a directory that is not the caller's own or is open to others is
    refused with BackendError). Opening it deletes the engine's files of other keys."""

    def __init__(self, root: Path, engine_dir: str, fingerprint: str, key_version: int) -> None:
        self.dir = root / engine_dir_name(engine_dir)
        for path in (root, self.dir):
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
            info = path.stat()
            if info.st_uid != os.getuid() or info.st_mode & 0o077:
                raise BackendError(f"residue cache {path} is not private to this user")
        marker = {"engine_dir": engine_dir, "host": socket.gethostname()}
        with_marker = self.dir / MARKER
        if not with_marker.exists() or json.loads(with_marker.read_text()) != marker:
            _atomic(with_marker, lambda f: f.write(json.dumps(marker).encode()))
        self._key = f"k{key_version}-{fingerprint[:16]}"
        for path in self.dir.glob("b*"):
            if not path.stem.endswith(self._key):
                path.unlink(missing_ok=True)
        self.damaged: list[str] = []  # files found damaged, deleted

    def prune(self, revisions: dict[int, int]) -> None:
        """Remove the files of blocks not in ``revisions`` (block id -> the store's
        revision, of this key version) or of an older revision than the store's."""
        for path in self.dir.glob("b*-r*"):
            block, _, rest = path.name[1:].partition("-r")
            revision = rest.split("-", 1)[0]
            if not (block.isdigit() and revision.isdigit()):
                continue
            if int(revision) < revisions.get(int(block), int(revision) + 1):
                path.unlink(missing_ok=True)

    def _drop_others(self, block_id: int, keep: Path) -> None:
        """Remove ``block_id``'s files other than ``keep`` (and its sidecar): its other
        revisions (this key's only: the others' are gone)."""
        for old in self.dir.glob(f"b{block_id}-r*"):
            if old.stem != keep.stem:
                old.unlink(missing_ok=True)

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
            self._drop_others(block_id, path)
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
        self._drop_others(block_id, path)


def remove_engine(root: Path, engine_dir: str) -> int:
    """Remove every residue file of the engine at ``engine_dir`` under ``root`` (its
    whole directory there); the bytes removed (0 if it had none)."""
    return remove_folder(root, engine_dir_name(engine_dir))


def remove_folder(root: Path, folder: str) -> int:
    """Remove the engine directory ``folder`` (a name :func:`inspect` reports) under
    ``root`` with its residue files; the bytes removed (0 if there is none)."""
    where = root / folder
    if folder != where.name or not where.is_dir():
        return 0
    removed = sum(f.stat().st_size for f in where.iterdir() if f.is_file())
    shutil.rmtree(where, ignore_errors=True)
    return removed


def inspect(root: Path, current: dict[str, str]) -> list[dict[str, Any]]:
    """Every residue file under ``root``, checked: one row per file, in name order, with
    ``engine`` (the engine directory its ``engine.json`` names, else its cache directory's
    name), ``folder`` (its cache directory's name), ``engine_host`` (the host that engine
    directory is on; empty without an ``engine.json``), ``file``, ``block``,
    ``revision``, ``key_version`` (None for a file whose name is not a residue file's),
    ``bytes`` and ``problem``: empty when the file is sound, else why it is DAMAGED (its
    sidecar missing or unreadable, its size not its header's, its SHA-256 not its
    sidecar's, its mode not 0600 or its owner not this user, or its key version and
    context not the engine's current one, where ``current`` (cache directory name ->
    ``k<key version>-<fingerprint[:16]>``) names it). Reads every file once to hash it.
    Nothing is deleted."""
    rows: list[dict[str, Any]] = []
    for engine in sorted(p for p in root.glob("*") if p.is_dir()) if root.is_dir() else []:
        try:
            marker = json.loads((engine / MARKER).read_text())
        except (OSError, ValueError):
            marker = {}
        for path in sorted(engine.iterdir()):
            sidecar = path.suffix == ".json" and path.with_suffix(".npy").exists()
            if path.name == MARKER or sidecar:
                continue
            found = _NAME.fullmatch(path.name)
            try:
                size = path.stat().st_size
                problem = _check(path, found, current.get(engine.name))
            except FileNotFoundError:  # removed meanwhile (a shard pruned or rewrote it)
                continue
            rows.append(
                {
                    "engine": marker.get("engine_dir", engine.name),
                    "folder": engine.name,
                    "engine_host": marker.get("host", ""),
                    "file": path.name,
                    "block": int(found[1]) if found else None,
                    "revision": int(found[2]) if found else None,
                    "key_version": int(found[3]) if found else None,
                    "bytes": size,
                    "problem": problem,
                }
            )
    return rows


def _check(path: Path, found: re.Match[str] | None, expected: str | None) -> str:
    """Why the file ``path`` (its name parsed into ``found``) is damaged, or empty if it
    is a sound residue file (of key ``expected``, where given)."""
    if found is None:
        partial = " (an interrupted or unfinished write)" if path.name.startswith(".tmp-") else ""
        return f"not a residue file{partial}"
    key = f"k{found[3]}-{found[4]}"
    if expected is not None and key != expected:
        return f"key version or context {key} is not the engine's current {expected}"
    info = path.stat()
    if info.st_uid != os.getuid() or stat.S_IMODE(info.st_mode) != 0o600:
        return f"mode {stat.S_IMODE(info.st_mode):04o}, owner uid {info.st_uid}: not 0600, ours"
    try:
        meta = dict(json.loads(path.with_suffix(".json").read_text()))
        residues = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, TypeError) as exc:
        return f"unreadable or sidecar missing ({type(exc).__name__})"
    if residues.offset + residues.nbytes != info.st_size:
        return f"{info.st_size} bytes, its header says {residues.offset + residues.nbytes}"
    if hashlib.sha256(np.ascontiguousarray(residues).data).hexdigest() != meta.get("sha256"):
        return "SHA-256 is not its sidecar's"
    return ""


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
