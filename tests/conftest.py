"""Shared fixtures: a throw-away engine home, engine factories, real and synthetic faces."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

from frip_engine import plugins
from frip_engine.engine import Engine
from frip_engine.profile import Profile

if TYPE_CHECKING:
    from frip_eval.data import LfwSplit

REPO = Path(__file__).resolve().parents[1]
LFW_DEV = REPO.parent / "shared" / "data" / "lfw-dev"
PASSPHRASE = "test-passphrase-not-secret"


@pytest.fixture
def lfw() -> Path:
    """The real faces; they live beside the repo and are never copied into it."""
    assert (LFW_DEV / "index.csv").is_file(), f"lfw-dev is missing: expected it at {LFW_DEV}"
    return LFW_DEV


@pytest.fixture(scope="session")
def lfw_dev_split() -> LfwSplit:
    """lfw-dev embedded by the default extractor and split, once per test session (the
    demo and the benchmarks share it). In memory only: embeddings are biometric data and
    are never written to disk."""
    from frip_eval.data import lfw_split
    from rich.console import Console

    assert (LFW_DEV / "index.csv").is_file(), f"lfw-dev is missing: expected it at {LFW_DEV}"
    return lfw_split(LFW_DEV, Console(quiet=True))


@pytest.fixture(scope="session", autouse=True)
def residue_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The session's own residue cache directory (``$FRIP_RESIDUE_DIR``, which the Ray
    executor's shards honour on every node: the tests' Ray nodes inherit this
    environment), removed with pytest's temp dirs; after the session, no residue file of
    an engine of this session may be in the shared default directory."""
    from frip_plugins.executors._residue_cache import ENV, engines_under, shared_dir

    base = tmp_path_factory.getbasetemp()
    root = base / "residues"
    with pytest.MonkeyPatch.context() as env:
        env.setenv(ENV, str(root))
        yield root
    leaked = engines_under(shared_dir(), base)
    assert not leaked, f"residue files in the shared {shared_dir()} for {leaked}"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "frip-home"
    monkeypatch.setenv("FRIP_HOME", str(root))
    monkeypatch.setenv("FRIP_PASSPHRASE", PASSPHRASE)
    return root


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Any]:
    """One throw-away PostgreSQL server for the session (tests/_postgres.py); the tests
    that need it are skipped, saying why, where it cannot be started."""
    import _postgres

    reason = _postgres.unavailable()
    if reason:
        pytest.skip(reason)
    server = _postgres.start()
    yield server
    _postgres.stop(server)


_databases = itertools.count(1)


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The ``[gallery_store]`` section a parametrized test runs on. For ``postgres``: a
    fresh database on the session's server, named in the section's dsn (worker processes
    come from a forkserver started with an older environment) and in the PG* environment
    variables (for the tests' own connections and child processes); the password is in a
    .pgpass file."""
    if request.param == "sqlite":
        return {"plugin": "sqlite"}
    server = request.getfixturevalue("postgres_server")
    name = f"frip_test_{next(_databases)}"
    server.create_database(name)
    env = server.env(name)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    dsn = (
        f"host={env['PGHOST']} port={env['PGPORT']} dbname={name} user={env['PGUSER']} "
        f"passfile={env['PGPASSFILE']}"
    )
    return {"plugin": "postgres", "dsn": dsn}


def change_blocks_behind_the_engine(engine: Engine, store: dict[str, Any]) -> None:
    """Flip one byte in the middle of every block's ciphertext, in SQL, as a damaged disk
    or someone with database access would; the stored SHA-256 is left as it was."""
    if store["plugin"] == "sqlite":
        import sqlite3

        with sqlite3.connect(engine.directory / "gallery.sqlite") as db:
            for block_id, data in db.execute("SELECT block_id, data FROM blocks").fetchall():
                broken = bytearray(data)
                broken[len(broken) // 2] ^= 0xFF
                db.execute(
                    "UPDATE blocks SET data = ? WHERE block_id = ?", (bytes(broken), block_id)
                )
        return
    import psycopg

    schema = engine.gallery_store.schema  # type: ignore[attr-defined]
    with psycopg.connect(autocommit=True) as conn:  # the PG* environment of ``store``
        conn.execute(
            f'UPDATE "{schema}".blocks SET data = '
            "set_byte(data, length(data) / 2, get_byte(data, length(data) / 2) # 255)"
        )


@pytest.fixture
def fresh_plugins() -> Iterator[None]:
    """Re-read entry points under the test's environment switches, and forget them after."""
    plugins.reset()
    yield
    plugins.reset()


@pytest.fixture
def make_engine(home: Path) -> Iterator[Callable[..., Engine]]:
    made: list[Engine] = []

    def factory(name: str = "t", **sections: Any) -> Engine:
        data: dict[str, Any] = {"engine": {"name": name}, "key_store": {"plugin": "memory"}}
        for section, value in sections.items():
            data[section] = value
        engine = Engine.create(Profile.from_dict(data), home)
        made.append(engine)
        return engine

    yield factory
    for engine in made:
        engine.close()


def unit_vectors(n: int, dimension: int = 512, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, dimension))
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def near(vector: np.ndarray, noise: float, seed: int) -> np.ndarray:
    """A probe that is the same 'person' as ``vector``, with noise."""
    rng = np.random.default_rng(seed)
    moved = vector + noise * rng.standard_normal(vector.shape) / np.sqrt(vector.size)
    return moved / np.linalg.norm(moved)


SOFTHSM_PIN = "2468"
TOKENS = ("frip-a", "frip-b")


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A throw-away SoftHSM2 token directory with two tokens (never the system one).

    SoftHSM reads its configuration once per process, so one directory serves the session.
    """
    import os
    import shutil
    import subprocess

    tool = shutil.which("softhsm2-util")
    if tool is None:
        pytest.skip(
            "SoftHSM2 is not installed (Debian package softhsm2; make test installs it as root)"
        )
    root = tmp_path_factory.mktemp("softhsm")
    (root / "tokens").mkdir()
    conf = root / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {root / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n"
    )
    os.environ["SOFTHSM2_CONF"] = str(conf)
    for label in TOKENS:
        subprocess.run(
            [
                tool,
                "--init-token",
                "--free",
                "--label",
                label,
                "--pin",
                SOFTHSM_PIN,
                "--so-pin",
                "13579",
            ],
            check=True,
            capture_output=True,
        )
    return {"conf": str(conf), "tokens": str(root / "tokens")}


# The HE backends the backend-parametrized tests run on (compact preset: small and fast).
PEMIU = {"plugin": "pe-miu", "block_size": 32}
BACKENDS = {
    "tenseal-fast": {"plugin": "tenseal", "preset": "compact", "scorer": "fast"},
    "tenseal-library": {"plugin": "tenseal", "preset": "compact"},
    "pyfhel-fast": {"plugin": "pyfhel", "preset": "compact", "scorer": "fast"},
    "pyfhel-library": {"plugin": "pyfhel", "preset": "compact"},
}


def needs(he: dict[str, Any]) -> None:
    """Skip, saying why, where ``he`` names a library that is not installed."""
    if he.get("plugin") == "pyfhel":
        pytest.importorskip("Pyfhel", reason="Pyfhel is not installed (make builds it)")
