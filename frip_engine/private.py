"""Files and folders private to their owner: 0600 files, 0700 folders, whatever the umask.

Everything under ``$FRIP_HOME`` goes through here: a gallery lists who is enrolled and
when, so no other local user may read it. The umask is process-wide (and the caller's),
so modes are given on creation and set again with chmod, which the umask does not touch.
SQLite creates a database's -wal and -shm files with the mode of the database file itself,
so a database made with ``private_file`` before it is opened keeps them private too.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from frip_engine.errors import ProfileError

FILE_MODE = 0o600
DIR_MODE = 0o700


def private_dir(path: Path) -> Path:
    """Make ``path`` and its missing parents as 0700 folders; existing ones are left as
    they are (the home folder itself may be one its owner chose). Returns ``path``."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    for folder in missing:
        folder.chmod(DIR_MODE)
    return path


def private_file(path: Path) -> Path:
    """Create ``path`` empty if missing, and take group and other access away from it
    either way (raises OSError if it cannot). Returns ``path``."""
    private_dir(path.parent)
    fd = os.open(path, os.O_RDONLY | os.O_CREAT, FILE_MODE)
    try:
        mode = stat.S_IMODE(os.fstat(fd).st_mode)
        if mode & 0o077:
            os.fchmod(fd, mode & 0o700)
    finally:
        os.close(fd)
    return path


def write_private(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` as a 0600 file, replacing its contents."""
    private_dir(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        os.fchmod(handle.fileno(), FILE_MODE)
        handle.write(text)


def engine_file(path: str | None, engine_dir: str, default: str, what: str) -> Path:
    """Where an engine keeps a file its profile may place (``what``: "[key_store] path").

    No ``path``: ``default`` in the engine folder. A relative path is taken inside the
    engine folder (never the folder a command runs from, which changes between runs) and
    may not leave it. An absolute path (``~`` expanded) is used as given, but its folder
    must already exist: nothing is created outside the engine folder. Raises ProfileError.
    """
    folder = Path(engine_dir)
    if not path:
        return folder / default
    try:
        if "\x00" in path:
            raise ValueError("it holds a NUL character")
        given = Path(path).expanduser()
        if not given.is_absolute():
            if ".." in given.parts:
                raise ProfileError(
                    f"{what} {path!r}: a relative path is taken inside the engine folder and "
                    "may not leave it ('..'); give an absolute path for a file elsewhere"
                )
            given = folder / given
        elif not given.parent.is_dir():
            raise ProfileError(
                f"{what} {given}: the folder {given.parent} does not exist; create it "
                "(readable only by you) or choose another path"
            )
        if given.is_dir():
            raise ProfileError(f"{what} {given} is a folder; name a file in it")
    except (ValueError, RuntimeError, OSError) as exc:  # NUL, unknown ~user, name too long
        raise ProfileError(f"{what} {path[:80]!r}: not a usable file path ({exc})") from None
    return given
