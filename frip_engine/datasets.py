"""Reading enrolment sets: a folder of ``<identity>/<images>`` or an index CSV."""

from __future__ import annotations

import csv
import unicodedata
from collections import defaultdict
from pathlib import Path

from frip_engine.errors import InputError, MissingFileError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


def folder_identities(root: Path) -> dict[str, list[Path]]:
    """Identity -> sorted image paths, from one sub-folder per identity. Identities are
    the folder names in Unicode NFC (macOS file systems hand out decomposed names)."""
    if not root.exists():
        raise MissingFileError(f"folder {root} does not exist")
    if not root.is_dir():
        raise InputError(f"{root} is not a folder")
    found = {
        unicodedata.normalize("NFC", sub.name): sorted(
            p for p in sub.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES
        )
        for sub in sorted(root.iterdir())
        if sub.is_dir()
    }
    found = {k: v for k, v in found.items() if v}
    if not found:
        raise InputError(f"{root} has no <identity>/<image> sub-folders with images")
    return found


def csv_identities(index: Path) -> dict[str, list[Path]]:
    """Identity -> image paths from a CSV with ``path`` and ``identity`` columns.

    Relative paths are taken relative to the CSV's folder.
    """
    if not index.is_file():
        raise MissingFileError(f"index {index} does not exist")
    found: dict[str, list[Path]] = defaultdict(list)
    try:
        return _read_index(index, found)
    except UnicodeDecodeError as exc:
        raise InputError(f"{index}: not UTF-8 text ({exc.reason})") from exc


def _read_index(index: Path, found: dict[str, list[Path]]) -> dict[str, list[Path]]:
    with index.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or not {"path", "identity"} <= set(reader.fieldnames):
            raise InputError(f"{index}: needs a header with 'path' and 'identity' columns")
        for line, row in enumerate(reader, start=2):
            if not row.get("path") or not row.get("identity"):
                raise InputError(f"{index}:{line}: empty path or identity")
            found[row["identity"]].append(index.parent / row["path"])
    if not found:
        raise InputError(f"{index} lists no images")
    return {k: sorted(v) for k, v in found.items()}
