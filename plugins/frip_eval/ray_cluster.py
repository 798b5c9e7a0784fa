"""A throw-away multi-node Ray cluster on this one machine, for the ray executor's tests
and ``frip bench scale``: a head node and worker nodes, each its own ``ray start
--block`` process group (so a node can be killed alone, as a lost machine), with one CPU,
a small object store, no dashboard and no usage statistics, under a temporary folder. Its
nodes' shards keep their residue files in ``residues`` under that folder (removed with
it), unless ``$FRIP_RESIDUE_DIR`` names another directory (the test suite's own): a
benchmark or test run never leaves them in the shared default directory."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from frip_plugins.executors._residue_cache import ENV

OBJECT_STORE_BYTES = 100 * 1024 * 1024
START_SECONDS = 180.0


def unavailable() -> str | None:
    """Why a Ray cluster cannot be started here, or None."""
    try:
        import ray  # noqa: F401
    except ImportError:
        return "Ray is not installed (pip install -e '.[ray]'; make test installs it)"
    return None


def _ray() -> str:
    found = shutil.which("ray", path=str(Path(sys.executable).parent))
    return found or "ray"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Cluster:
    address: str
    temp_dir: Path
    head: subprocess.Popen[bytes]
    workers: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def residue_dir(self) -> Path:
        """Where this cluster's shards keep their residue files (``$FRIP_RESIDUE_DIR``
        of its nodes)."""
        return Path(_residue_env(self.temp_dir)[ENV])

    def start_worker(self, resource: str) -> None:
        """A worker node offering custom resource ``resource`` (1 of it), once it has
        started (nodes of one machine must start one after another: two raylets starting
        at once on one IP address can take each other's registration and time out)."""
        self.workers[resource] = process = _start(
            self.temp_dir,
            [
                f"--address={self.address}",
                "--resources",
                json.dumps({resource: 1}),
            ],
            f"worker-{resource}",
        )
        _wait_started(process, self.temp_dir / f"worker-{resource}.log")

    def kill_worker(self, resource: str) -> None:
        """Kill the worker node offering ``resource``: its raylet and every process of its
        group, at once (SIGKILL), as a machine that is lost."""
        _kill(self.workers.pop(resource), signal.SIGKILL)

    def wait_nodes(self, count: int) -> None:
        """Wait until ``count`` nodes are alive (this process must be connected)."""
        import ray

        deadline = time.monotonic() + START_SECONDS
        while len([n for n in ray.nodes() if n["Alive"]]) < count:  # type: ignore[no-untyped-call]
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Ray test cluster has not {count} nodes")
            time.sleep(0.2)


def _residue_env(temp_dir: Path) -> dict[str, str]:
    """``$FRIP_RESIDUE_DIR`` for the cluster under ``temp_dir``: this process's where set,
    else ``residues`` under ``temp_dir``."""
    return {ENV: os.environ.get(ENV) or str(temp_dir / "residues")}


def _start(temp_dir: Path, args: list[str], log: str, num_cpus: int = 1) -> subprocess.Popen[bytes]:
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", **_residue_env(temp_dir))
    with open(temp_dir / f"{log}.log", "wb") as out:
        return subprocess.Popen(
            [
                _ray(), "start", "--block", "--disable-usage-stats", "--num-cpus", str(num_cpus),
                "--object-store-memory", str(OBJECT_STORE_BYTES), *args,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # its own process group: killed alone
        )  # fmt: skip


def _wait_started(process: subprocess.Popen[bytes], log: Path) -> None:
    """Wait until ``ray start`` logged that its node runs; RuntimeError with the log's
    end if it exited or took longer than START_SECONDS."""
    deadline = time.monotonic() + START_SECONDS
    while b"Ray runtime started" not in log.read_bytes():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"a Ray node did not start: {log.read_text()[-2000:]}")
        time.sleep(0.2)


def _kill(process: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        return
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)


def start(resources: tuple[str, ...], head_cpus: int = 1) -> Cluster:
    """A head node (no custom resource, ``head_cpus`` CPUs) and one worker node (one CPU)
    per name in ``resources``."""
    temp_dir = Path(tempfile.mkdtemp(prefix="rf-", dir="/tmp"))  # short: socket paths
    port = _free_port()
    head = _start(
        temp_dir,
        ["--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={temp_dir}"],
        "head",
        head_cpus,
    )
    cluster = Cluster(f"127.0.0.1:{port}", temp_dir, head)
    try:
        _wait_started(head, temp_dir / "head.log")
        for resource in resources:
            cluster.start_worker(resource)
    except BaseException:
        stop(cluster)
        raise
    return cluster


def stop(cluster: Cluster) -> None:
    """Stop every node this cluster started (its own process groups only), and remove
    its folder."""
    for process in [*cluster.workers.values(), cluster.head]:
        _kill(process, signal.SIGTERM)
    cluster.workers.clear()
    shutil.rmtree(cluster.temp_dir, ignore_errors=True)
