"""Shared fixtures: a throw-away engine home, engine factories, real and synthetic faces."""

from __future__ import annotations

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


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "frip-home"
    monkeypatch.setenv("FRIP_HOME", str(root))
    monkeypatch.setenv("FRIP_PASSPHRASE", PASSPHRASE)
    return root


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
