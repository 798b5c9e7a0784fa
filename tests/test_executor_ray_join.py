"""Joining a Ray cluster, without one: an ``[executor] address`` that is not a Ray
cluster's (a closed port, a TCP server that is not Ray's: an HTTP server, one that never
answers) fails within a stated time with one ExecutorConnectError line, and Ray's C++
log lines never reach the user's stderr; an address that cannot be one is refused when
the engine is created; an engine on Ray whose key store the cluster exposes is warned
about. Skipped, saying why, where Ray is not installed."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from frip_engine import plugins
from frip_engine.engine import Engine
from frip_engine.errors import ExecutorConnectError, ProfileError
from frip_engine.profile import Profile, executor_warnings


def _server(answer: bytes | None) -> Iterator[str]:
    """A TCP server on a free loopback port that is not Ray's: each connection gets
    ``answer`` then is closed, or (None) is held open in silence."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            if answer is None:
                held.append(conn)
                continue
            with conn:
                conn.settimeout(1.0)
                try:
                    conn.recv(4096)
                    conn.sendall(answer)
                except OSError:
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        listener.close()
        for conn in held:
            conn.close()


@pytest.fixture
def http_port() -> Iterator[str]:
    yield from _server(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")


@pytest.fixture
def silent_port() -> Iterator[str]:
    yield from _server(None)


@pytest.fixture
def closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


@pytest.mark.parametrize("kind", ["closed_port", "http_port", "silent_port"])
def test_an_address_that_is_not_a_ray_cluster_fails_fast_in_one_line(
    kind: str,
    request: pytest.FixtureRequest,
    make_engine: Callable[..., Engine],
    capfd: pytest.CaptureFixture[str],
) -> None:
    pytest.importorskip("ray", reason="Ray is not installed (pip install -e '.[ray]')")
    from frip_plugins.executors.ray import CONNECT_SECONDS

    address = request.getfixturevalue(kind)
    setup = make_engine("nowhere")._worker_setup()
    started = time.monotonic()
    with pytest.raises(ExecutorConnectError) as raised:
        plugins.create("executor", "ray", setup=setup, address=address)
    assert time.monotonic() - started < CONNECT_SECONDS + 3
    message = str(raised.value)
    assert "\n" not in message and f"no Ray cluster answers at {address}" in message
    assert f"{CONNECT_SECONDS:g} s" in message or kind == "closed_port"
    err = capfd.readouterr().err
    assert "rpc_client" not in err and "GCS" not in err, err


@pytest.mark.parametrize(
    "address",
    [
        "",
        "no port",
        "http://127.0.0.1:6379",
        "user@h:6379",
        "h/x:1",
        "127.0.0.1:-1",
        "127.0.0.1:0",
        "h:65536",
        ":6379",
        "h:",
        6379,
    ],
)
def test_an_address_that_cannot_be_a_cluster_is_refused_at_create(address: Any, home: Path) -> None:
    data = {
        "engine": {"name": "badaddr"},
        "key_store": {"plugin": "memory"},
        "executor": {"plugin": "ray", "address": address},
    }
    with pytest.raises(ProfileError, match="address") as raised:
        Engine.create(Profile.from_dict(data), home)
    assert str(raised.value).count("[executor]") == 1, raised.value
    assert not (home / "engines" / "badaddr").exists()


@pytest.mark.parametrize(
    "address", ["auto", "10.0.0.1:6379", "head.example:6379", "[::1]:6379", "ray://h:10001"]
)
def test_addresses_of_every_form_pass_the_check(address: str) -> None:
    from frip_plugins.executors.ray import RayExecutor

    RayExecutor.check_params({"address": address})


@pytest.mark.parametrize(
    ("key_store", "warned"), [("memory", True), ("file", True), ("pkcs11", False)]
)
def test_a_key_store_the_cluster_exposes_is_warned_about(key_store: str, warned: bool) -> None:
    profile = Profile.from_dict(
        {
            "engine": {"name": "w"},
            "key_store": {"plugin": key_store},
            "executor": {"plugin": "ray", "address": "127.0.0.1:6379"},
        }
    )
    found = executor_warnings(profile)
    assert bool(found) == warned, found
    if warned:
        (line,) = found
        assert "\n" not in line and "pkcs11" in line and "authenticate" in line
        assert key_store in line
    local = Profile.from_dict({"engine": {"name": "l"}, "key_store": {"plugin": "file"}})
    assert executor_warnings(local) == []


def test_engine_create_and_cluster_status_warn_once_in_one_line(
    home: Path, tmp_path: Path, closed_port: str
) -> None:
    pytest.importorskip("ray", reason="Ray is not installed (pip install -e '.[ray]')")
    profile = tmp_path / "ray.toml"
    profile.write_text(
        '[engine]\nname = "onray"\n[he]\npreset = "compact"\n[key_store]\nplugin = "file"\n'
        f'[executor]\nplugin = "ray"\naddress = "{closed_port}"\n'
    )
    warning = "warning: executor 'ray' with the 'file' key store"
    created = _frip("engine", "create", "onray", "--profile", str(profile))
    assert created.returncode == 0, created.stderr
    assert created.stderr.count(warning) == 1, created.stderr
    status = _frip("cluster", "status", "onray")
    assert status.returncode == ExecutorConnectError.exit_code, status.stderr
    lines = status.stderr.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith(warning), lines
    assert "no Ray cluster answers" in lines[1]


def _frip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "frip_engine", *args], capture_output=True, text=True
    )


def test_a_key_service_without_placement_is_pinned_hard_to_its_node() -> None:
    """Soft affinity let Ray restart a killed key service on any node; hard keeps it
    beside its node's shards (test_executor_ray checks it on a cluster)."""
    pytest.importorskip("ray", reason="Ray is not installed (pip install -e '.[ray]')")
    from frip_plugins.executors._ray_keyservice import options

    node = "ab" * 28
    chosen = options(None, node, 0.001)["scheduling_strategy"]
    assert (chosen.node_id, chosen.soft) == (node, False)
    assert options("rack_a", None, 0.001)["resources"] == {"rack_a": 0.001}
