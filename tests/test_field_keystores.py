"""Field reports on key stores and plugin loading under concurrency (issue 13, items 6 and 7)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import SOFTHSM_PIN

from frip_engine.engine import Engine
from frip_engine.errors import KeyStoreError, KeyStoreUnavailableError
from frip_engine.profile import Profile

# --------------------------------------------------------------------------- item 7
# A fresh interpreter (nothing loaded yet): threads race through plugin loading while
# opening one existing engine and creating new ones. Every thread must succeed.
PLUGIN_RACE = """
import json, sys, threading
from pathlib import Path
from frip_engine.engine import Engine
from frip_engine.profile import Profile

home, threads = Path(sys.argv[1]), int(sys.argv[2])
barrier = threading.Barrier(threads)
errors = []

def work(i):
    barrier.wait()
    try:
        if i % 3 == 0:
            Engine.open("shared", home).close()
        elif i % 3 == 1:
            profile = {"engine": {"name": f"new{i}", "insecure": True},
                       "he": {"plugin": "plaintext"}, "key_store": {"plugin": "memory"}}
            Engine.create(Profile.from_dict(profile), home).close()
        else:  # the default HE backend: TenSEAL imported by threads at once
            profile = {"engine": {"name": f"he{i}"}, "he": {"preset": "fast"},
                       "key_store": {"plugin": "memory"}}
            Engine.create(Profile.from_dict(profile), home).close()
    except BaseException as exc:
        errors.append(f"thread {i}: {type(exc).__name__}: {exc}")

workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
for w in workers:
    w.start()
for w in workers:
    w.join()
print(json.dumps(errors))
"""


def _plaintext(name: str) -> Profile:
    return Profile.from_dict(
        {
            "engine": {"name": name, "insecure": True},
            "he": {"plugin": "plaintext"},
            "key_store": {"plugin": "file"},
        }
    )


def test_threads_opening_and_creating_engines_in_a_fresh_process(home: Path) -> None:
    Engine.create(_plaintext("shared"), home).close()
    for attempt in range(3):  # a race: a few fresh processes, each one must be clean
        run = subprocess.run(
            [sys.executable, "-c", PLUGIN_RACE, str(home), "6"],
            capture_output=True,
            text=True,
            env=dict(os.environ),
            timeout=300,
        )
        assert run.returncode == 0, run.stderr[-2000:]
        errors = json.loads(run.stdout.strip().splitlines()[-1])
        assert errors == [], f"attempt {attempt}: {errors}"
        for engine in (home / "engines").iterdir():
            if engine.name != "shared":
                subprocess.run(["rm", "-rf", str(engine)], check=True)


# --------------------------------------------------------------------------- item 6
REPO = Path(__file__).resolve().parents[1]


def test_concurrent_unwraps_rotations_and_cli_processes_never_fail(
    softhsm: dict[str, str], tmp_path: Path
) -> None:
    """Two engines on one SoftHSM token: per engine a rotator and three long-lived readers,
    plus a launcher of one-unwrap processes, all at once (bounded to ~20-40 s here;
    benchmarks/bench_pkcs11.py runs the long version). Not one failure is allowed."""
    run = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "bench_pkcs11.py"),
            *("--readers", "3", "--rotations", "6", "--engines", "2", "--fresh", "1"),
            *("--foreign", "0", "--pause", "0.1", "--max-seconds", "90"),
            *("--output", str(tmp_path), "--doc", str(tmp_path / "bench.md")),
        ],
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert (tmp_path / "pkcs11.json").is_file(), run.stderr[-3000:]
    result = json.loads((tmp_path / "pkcs11.json").read_text())
    roles = result["roles"]
    failures = {role: row["failure_kinds"] for role, row in roles.items() if row["failures"]}
    assert failures == {}, failures
    assert roles["rotator"]["ok"] == 2 * 6  # every rotation went through
    assert roles["reader"]["ok"] >= 20 and roles["fresh"]["ok"] >= 1
    assert run.returncode == 0, run.stderr[-3000:]


FOREIGN_LOGINS = """
import sys, time, pkcs11
lib = pkcs11.lib("/usr/lib/softhsm/libsofthsm2.so")
deadline = time.monotonic() + float(sys.argv[1])
while time.monotonic() < deadline:  # every login rewrites the token's token.object
    try:
        with lib.get_token(token_label="frip-foreign").open(user_pin=sys.argv[2]):
            pass
    except pkcs11.PKCS11Error:
        lib.reinitialize()
    time.sleep(0.01)
"""


def test_unwraps_survive_another_program_rewriting_the_token(
    softhsm: dict[str, str], home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A program that knows nothing of frip's locks logs in to the token over and over
    (SoftHSM rewrites token.object each time); this process's unwraps read it meanwhile:
    stale and half-read token state is retried after re-initialising, never reported.

    The token is made for this test only, after this process loaded SoftHSM (which then
    finds it by re-reading the token directory): a program racing SoftHSM's files can
    damage the token's own record, and the other tests' tokens must stay intact."""
    monkeypatch.setenv("FRIP_PKCS11_PIN", SOFTHSM_PIN)
    subprocess.run(
        [
            *("softhsm2-util", "--init-token", "--free", "--label", "frip-foreign"),
            *("--pin", SOFTHSM_PIN, "--so-pin", "13579"),
        ],
        check=True,
        capture_output=True,
    )
    engine = _token_engine(home, "foreign", "frip-foreign")
    store, engine_id = engine.parts.key_store, engine.profile.engine_id
    expected = store.load_secret(engine_id, "he-secret-v1")
    foreign = subprocess.Popen(
        [sys.executable, "-c", FOREIGN_LOGINS, "12", SOFTHSM_PIN], env=dict(os.environ)
    )
    failures: list[str] = []
    unwraps = 0
    try:
        while foreign.poll() is None:
            try:
                assert store.load_secret(engine_id, "he-secret-v1") == expected
                unwraps += 1
            except Exception as exc:
                failures.append(f"{type(exc).__name__}: {exc}")
    finally:
        foreign.wait()
        engine.close()
    assert failures == [], failures[:5]
    assert unwraps >= 20


def _token_engine(home: Path, name: str, token: str) -> Engine:
    profile = {"engine": {"name": name}, "key_store": {"plugin": "pkcs11", "token_label": token}}
    return Engine.create(Profile.from_dict(profile), home)


class _FlakyKey:
    """A token key whose first ``failures`` decryptions raise ``error`` (a stale handle)."""

    def __init__(self, key: Any, failures: list[int], error: type[Exception]) -> None:
        self.key, self.failures, self.error = key, failures, error

    def decrypt(self, *args: Any, **kwargs: Any) -> Any:
        if self.failures[0] > 0:
            self.failures[0] -= 1
            raise self.error()
        return self.key.decrypt(*args, **kwargs)


class _StaleLibrary:
    """A loaded module whose token list is stale (empty) until it is re-initialised."""

    def __init__(self, library: Any, state: dict[str, int]) -> None:
        self.library, self.state = library, state

    def get_tokens(self, **kwargs: Any) -> Any:
        import pkcs11

        if self.state["general_errors"] > 0:
            self.state["general_errors"] -= 1
            raise pkcs11.GeneralError()
        return [] if self.state["stale"] else self.library.get_tokens(**kwargs)


def test_stale_handles_and_token_errors_are_retried_then_mapped(
    softhsm: dict[str, str], home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pkcs11
    from frip_plugins.key_stores import pkcs11 as module

    monkeypatch.setenv("FRIP_PKCS11_PIN", SOFTHSM_PIN)
    engine = _token_engine(home, "flaky", "frip-a")
    store, engine_id = engine.parts.key_store, engine.profile.engine_id
    expected = store.load_secret(engine_id, "he-secret-v1")
    real_kek = module.PKCS11KeyStore._kek

    outcomes = [
        (pkcs11.ObjectHandleInvalid, KeyStoreUnavailableError, "the token failed"),
        (pkcs11.KeyHandleInvalid, KeyStoreUnavailableError, "the token failed"),
        # SoftHSM's answer to a bad AES-GCM tag: once is a glitch, always is tampering
        (pkcs11.GeneralError, KeyStoreError, "authentication failed"),
    ]
    for error, lasting, message in outcomes:
        failures = [2]
        monkeypatch.setattr(
            module.PKCS11KeyStore,
            "_kek",
            lambda self, *a, _f=failures, _e=error: _FlakyKey(real_kek(self, *a), _f, _e),
        )
        assert store.load_secret(engine_id, "he-secret-v1") == expected  # retried twice
        assert failures == [0]
        failures[0] = 1000  # it never recovers: a KeyStoreError with advice, nothing raw
        with pytest.raises(lasting, match=rf"{message}.*{module.ATTEMPTS} attempts") as caught:
            store.load_secret(engine_id, "he-secret-v1")
        unavailable = isinstance(caught.value, KeyStoreUnavailableError)
        assert unavailable == (lasting is KeyStoreUnavailableError)
    monkeypatch.setattr(module.PKCS11KeyStore, "_kek", real_kek)

    # the token list is stale (SoftHSM lost the token in this process) or the listing
    # fails: the library is re-initialised, which re-reads the token directory
    real_library, real_reinitialise = module._library, module._reinitialise
    state = {"stale": 1, "general_errors": 2}

    def reinitialise(path: str) -> None:
        state["stale"] = 0
        real_reinitialise(path)

    monkeypatch.setattr(module, "_library", lambda path: _StaleLibrary(real_library(path), state))
    monkeypatch.setattr(module, "_reinitialise", reinitialise)
    assert store.load_secret(engine_id, "he-secret-v1") == expected
    assert state == {"stale": 0, "general_errors": 0}
    state["general_errors"] = 1000
    with pytest.raises(KeyStoreUnavailableError, match=r"cannot list PKCS#11 tokens: GeneralError"):
        store.load_secret(engine_id, "he-secret-v1")
    engine.close()


def test_a_key_file_older_than_the_token_gets_the_right_advice(
    softhsm: dict[str, str], home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FRIP_PKCS11_PIN", SOFTHSM_PIN)
    engine = _token_engine(home, "restored", "frip-a")
    sealed = engine.directory / "secret-key.p11.json"
    backup = sealed.read_bytes()
    new_label = engine.rotate_kek()
    sealed.write_bytes(backup)  # the key file restored from before the rotation
    with pytest.raises(KeyStoreError) as caught:
        engine.parts.key_store.load_secret(engine.profile.engine_id, "he-secret-v1")
    message = str(caught.value)
    assert "is not on token 'frip-a'" in message and new_label in message
    assert "older backup" in message and "keys init" not in message
    engine.close()


HOLD_LOCK = """
import sys, time
from pathlib import Path
from frip_plugins.key_stores.pkcs11 import FileLock
with FileLock(Path(sys.argv[1]), "the key file").hold(exclusive=True):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def test_an_unwrap_waits_for_a_rotation_in_another_process(
    softhsm: dict[str, str], home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from frip_plugins.key_stores.pkcs11 import FileLock

    monkeypatch.setenv("FRIP_PKCS11_PIN", SOFTHSM_PIN)
    engine = _token_engine(home, "waits", "frip-a")
    store, engine_id = engine.parts.key_store, engine.profile.engine_id
    lock = engine.directory / "secret-key.p11.json.lock"
    rotating = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(lock), "1.5"], stdout=subprocess.PIPE, text=True
    )
    assert rotating.stdout is not None and rotating.stdout.readline() == "held\n"
    start = time.monotonic()
    assert len(store.load_secret(engine_id, "he-secret-v1")) > 0  # waited, then unwrapped
    assert time.monotonic() - start > 0.5
    rotating.wait()
    # a lock held past the bound: "unavailable, retry later", naming the file
    stuck = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(lock), "3"], stdout=subprocess.PIPE, text=True
    )
    assert stuck.stdout is not None and stuck.stdout.readline() == "held\n"
    with (
        pytest.raises(KeyStoreUnavailableError, match="locked by another process"),
        FileLock(lock, "the key file", timeout=0.3).hold(exclusive=False),
    ):
        pass
    stuck.wait()
    engine.close()
