#!/usr/bin/env python3
"""Build (once) and install the Pyfhel wheel for the ``pyfhel`` HE backend, offline from GitHub.

Why: Pyfhel 3.5.0 ships no cp311 wheel, and its sdist's SEAL build fetches Microsoft GSL,
zlib and zstd from GitHub. This script downloads the sdist from PyPI (``pip download``),
checks its sha256, turns those SEAL dependencies off in the sdist's
``[cpplibraries.SEAL.cmake_opts]`` (no Debian packages needed, so it works as non-root;
SEAL then cannot zstd-compress serialised objects, which gains ~6% on one 60-bit limb, and
the engine stores ciphertexts uncompressed anyway) and builds a wheel into a cache
directory. The next run, on this machine or in another clone, reuses that wheel.

The cache is ``$FRIP_WHEEL_CACHE`` or ``${XDG_CACHE_HOME:-~/.cache}/frip-engine/wheels``:
outside the repository so ``make clean``, ``git clean`` and fresh clones keep it, and a CI
runner can cache the directory with a key on this file's hash.

Run with the target environment's interpreter: ``.venv/bin/python
scripts/build_pyfhel_wheel.py --install``. On failure it prints why, writes the reason to
``<venv>/frip-pyfhel-build-failed.txt`` (the ``pyfhel`` plugin shows it in
``frip plugins``) and exits with status 1.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
from pathlib import Path

VERSION = "3.5.0"
SDIST = f"pyfhel-{VERSION}.tar.gz"
SDIST_SHA256 = "0375b83b5a83026924f59db25c4efa9f27e1e8a66d004658f4d24195986a04b6"
# Bump when the patch changes, so a wheel built with other options is never reused.
BUILD_ID = "frip1"
# SEAL options that would download code at configure time, all off.
CMAKE_OPTS = {
    "SEAL_BUILD_DEPS": "OFF",
    "SEAL_USE_MSGSL": "OFF",
    "SEAL_USE_ZLIB": "OFF",
    "SEAL_USE_ZSTD": "OFF",
}
FAILURE_NOTE = "frip-pyfhel-build-failed.txt"  # read by frip_plugins.he_backends.pyfhel


class BuildError(Exception):
    """A step failed; the message says which and where the log is."""


def cache_dir() -> Path:
    root = os.environ.get("FRIP_WHEEL_CACHE")
    if root:
        base = Path(root)
    else:
        xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        base = Path(xdg) / "frip-engine" / "wheels"
    return base / f"pyfhel-{VERSION}-{BUILD_ID}"


def compatible_wheel(directory: Path) -> Path | None:
    """A cached wheel for this interpreter and platform, if one was built."""
    python = f"cp{sys.version_info.major}{sys.version_info.minor}"
    platform = sysconfig.get_platform().replace("-", "_").replace(".", "_")
    for wheel in sorted(directory.glob(f"[Pp]yfhel-{VERSION}-{python}-{python}-*.whl")):
        if wheel.stem.endswith(platform):
            return wheel
    return None


def run(command: list[str], log: Path, what: str) -> None:
    with log.open("a") as out:
        out.write(f"\n$ {' '.join(command)}\n")
        out.flush()
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, check=False)
    if done.returncode:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise BuildError(f"{what} failed (exit {done.returncode}); log: {log}\n{tail}")


def fetch_sdist(directory: Path, log: Path) -> Path:
    """The sdist from PyPI (kept in the cache), checked against the pinned sha256."""
    sdist = directory / SDIST
    if not sdist.is_file():
        with tempfile.TemporaryDirectory() as tmp:
            pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary"]
            run([*pip, "Pyfhel", f"Pyfhel=={VERSION}", "-d", tmp], log, "downloading the sdist")
            shutil.move(str(Path(tmp) / SDIST), sdist)
    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
    if digest != SDIST_SHA256:
        sdist.unlink()
        raise BuildError(f"{SDIST} has sha256 {digest}, expected {SDIST_SHA256}")
    return sdist


def patch_cmake_opts(pyproject: Path) -> None:
    """Set CMAKE_OPTS in the ``[cpplibraries.SEAL.cmake_opts]`` table, failing loudly if the
    sdist's layout is not the one this patch was written for."""
    text = pyproject.read_text()
    header = "[cpplibraries.SEAL.cmake_opts]"
    start = text.find(header)
    if start < 0:
        raise BuildError(f"{pyproject} has no {header} table")
    body_start = start + len(header)
    end = text.find("\n  #-->", body_start)
    end = end if end >= 0 else len(text)
    body = text[body_start:end]
    for key, value in CMAKE_OPTS.items():
        line = re.compile(rf"^(\s*){key}\s*=\s*'[A-Z]+'.*$", re.MULTILINE)
        if line.search(body):
            body = line.sub(rf"\g<1>{key} = '{value}'", body)
        else:
            body = f"\n    {key} = '{value}'" + body
    pyproject.write_text(text[:body_start] + body + text[end:])
    patched = pyproject.read_text()
    for key, value in CMAKE_OPTS.items():
        if f"{key} = '{value}'" not in patched:
            raise BuildError(f"patching {key} in {pyproject} failed")


def build(directory: Path, log: Path) -> Path:
    sdist = fetch_sdist(directory, log)
    with tempfile.TemporaryDirectory(prefix="frip-pyfhel-") as tmp:
        with tarfile.open(sdist) as archive:
            archive.extractall(tmp, filter="data")
        source = Path(tmp) / f"pyfhel-{VERSION}"
        patch_cmake_opts(source / "pyproject.toml")
        out = Path(tmp) / "wheel"
        pip = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(out)]
        run([*pip, str(source)], log, "building the wheel")
        built = compatible_wheel(out)
        if built is None:
            raise BuildError(f"the build made no wheel for this interpreter; log: {log}")
        target = directory / built.name
        shutil.copy2(built, directory / (built.name + ".part"))
        os.replace(directory / (built.name + ".part"), target)  # never a half-written wheel
    return target


def install(wheel: Path, log: Path, force: bool) -> None:
    pip = [sys.executable, "-m", "pip", "install", "--no-index", "--find-links"]
    again = ["--force-reinstall", "--no-deps"] if force else []
    run([*pip, str(wheel.parent), *again, f"Pyfhel=={VERSION}"], log, "installing the wheel")


def installed() -> bool:
    try:
        return importlib.metadata.version("Pyfhel") == VERSION
    except importlib.metadata.PackageNotFoundError:
        return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--install", action="store_true", help="install it into this Python")
    parser.add_argument("--force", action="store_true", help="rebuild even if cached")
    args = parser.parse_args()
    note = Path(sys.prefix) / FAILURE_NOTE
    directory = cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    log = directory / "build.log"
    try:
        wheel = None if args.force else compatible_wheel(directory)
        if wheel is None:
            print(f"building Pyfhel {VERSION} from its sdist into {directory} (about 3-4 min)")
            log.write_text("")
            started = time.monotonic()
            wheel = build(directory, log)
            print(f"built {wheel.name} in {time.monotonic() - started:.0f} s")
        else:
            print(f"using cached {wheel}")
        if args.install and (args.force or not installed()):
            install(wheel, log, args.force)
    except (BuildError, OSError, tarfile.TarError) as exc:
        reason = f"Pyfhel {VERSION} wheel build failed: {exc}"
        print(f"\nfrip: {reason}\n", file=sys.stderr)
        if args.install:
            note.write_text(reason.splitlines()[0] + "\n")
        return 1
    note.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
