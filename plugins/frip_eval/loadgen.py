"""Run the service as a real process and put a bounded concurrent load on it.

Shared by the loopback tests and ``benchmarks/bench_service.py``, so both measure the
same thing: ``ServerProcess`` starts ``python -m frip_engine serve`` on a free loopback
port and waits for /v1/health; ``run_load`` drives it with reader clients (identify and
verify, 4:1 by default, or identify only; embedding probes near enrolled templates, or
face images of enrolled people) on one engine and writer clients (embedding enrolments,
K in flight each) on another or the same engine, for a fixed time, and reports
throughput, latency percentiles, errors, the mean batch size the service reported and
the mean Table II breakdown of identify as the client saw it. ``serve_options`` tells
which options the ``frip serve`` being run accepts (e.g. whether it can batch).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def headers(key: str) -> dict[str, str]:
    """Authorization plus a fresh request id and time, as every write request needs."""
    return {
        "Authorization": f"Bearer {key}",
        "X-Request-Id": uuid.uuid4().hex,
        "X-Request-Time": f"{time.time():.3f}",
    }


def serve_options() -> set[str]:
    """The long options (``--batch-max``, ...) that ``frip serve --help`` of the frip_engine
    importable here lists: a benchmark runs only what the tree it measures can do."""
    command = [sys.executable, "-m", "frip_engine", "serve", "--help"]
    env = {**os.environ, "COLUMNS": "200", "TERM": "dumb", "NO_COLOR": "1"}
    shown = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    if shown.returncode != 0:
        raise RuntimeError(f"frip serve --help failed: {shown.stderr[-2000:]}")
    return set(re.findall(r"--[a-z][a-z0-9-]*", shown.stdout))


class ServerProcess:
    """``frip serve`` in a child process on 127.0.0.1; stopped or SIGKILLed by the caller."""

    def __init__(
        self,
        home: Path,
        args: tuple[str, ...] = (),
        tls: tuple[Path, Path] | None = None,
        log: Path | None = None,
    ) -> None:
        self.home = home
        self.port = free_port()
        self.args = args
        self.tls = tls
        self.log = log or home / f"server-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None
        scheme = "https" if tls else "http"
        self.url = f"{scheme}://127.0.0.1:{self.port}"

    def start(self, timeout: float = 90.0, verify: Any = True) -> str:
        import httpx

        command = [sys.executable, "-m", "frip_engine", "serve", "--port", str(self.port)]
        command += ["--home", str(self.home), "--no-access-log", *self.args]
        if self.tls:
            command += ["--tls-cert", str(self.tls[0]), "--tls-key", str(self.tls[1])]
        from frip_engine.private import private_dir, private_file

        private_dir(self.home)
        with open(private_file(self.log), "ab") as sink:
            self.process = subprocess.Popen(
                command, stdout=sink, stderr=subprocess.STDOUT, env=dict(os.environ)
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited early: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/v1/health", verify=verify, timeout=2).status_code == 200:
                    return self.url
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.kill()
        raise RuntimeError(f"server did not answer in {timeout} s: {self.log.read_text()[-2000:]}")

    def stop(self) -> int:
        """SIGTERM (graceful: engines closed), then wait; returns the exit status."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)


def near(vector: np.ndarray, noise: float, rng: np.random.Generator) -> np.ndarray:
    """A probe of the same synthetic 'person': the template plus noise, renormalised."""
    moved = vector + noise * rng.standard_normal(vector.shape) / np.sqrt(vector.size)
    return np.asarray(moved / np.linalg.norm(moved))


@dataclass
class Sample:
    op: str
    seconds: float
    status: int
    ok: bool
    timings: dict[str, float] = field(default_factory=dict)
    batch_size: float | None = None  # probes scored together with this one, as reported


def _reader(
    url: str,
    key: str,
    engine: str,
    gallery: dict[str, np.ndarray],
    deadline: float,
    seed: int,
    samples: list[Sample],
    verify: Any,
    verify_every: int,
    images: dict[str, list[str]] | None,
) -> None:
    """Identify (and every ``verify_every``-th request verify, 0: never) until ``deadline``:
    an embedding near a random subject's template, or one of its ``images`` (base64)."""
    import httpx

    rng = np.random.default_rng(seed)
    names = sorted(images or gallery)
    with httpx.Client(base_url=url, timeout=120, verify=verify) as client:
        count = 0
        while time.monotonic() < deadline:
            subject = names[int(rng.integers(len(names)))]
            body: dict[str, Any]
            if images:
                pictures = images[subject]
                body = {"image": pictures[int(rng.integers(len(pictures)))]}
            else:
                body = {"embedding": near(gallery[subject], 0.2, rng).tolist()}
            op = (
                "verify"
                if verify_every and count % verify_every == verify_every - 1
                else "identify"
            )
            if op == "verify":
                body["subject_id"] = subject
            start = time.perf_counter()
            try:
                response = client.post(
                    f"/v1/engines/{engine}/{op}", json=body, headers=headers(key)
                )
            except httpx.HTTPError:
                samples.append(Sample(op, time.perf_counter() - start, 0, False))
                continue
            seconds = time.perf_counter() - start
            data = response.json() if response.status_code == 200 else {}
            right = data.get("matched") is True and data.get("subject_id") == subject
            timings = data.get("timings", {})
            size = timings.get("batch_size", data.get("batch_size"))
            samples.append(Sample(op, seconds, response.status_code, right, timings, size))
            count += 1


def _writer(
    url: str,
    key: str,
    engine: str,
    deadline: float,
    seed: int,
    samples: list[Sample],
    verify: Any,
    inflight: int = 1,
) -> None:
    """Enrol new subjects (one random embedding each) until ``deadline``, keeping
    ``inflight`` requests outstanding on one client (a registration desk syncing, an
    importer): each of ``inflight`` streams sends its next as soon as its last is answered."""
    import httpx

    with httpx.Client(base_url=url, timeout=120, verify=verify) as client:
        streams = [
            threading.Thread(
                target=_enrol_stream, args=(client, engine, key, deadline, f"{seed}.{j}", samples)
            )
            for j in range(inflight)
        ]
        for stream in streams:
            stream.start()
        for stream in streams:
            stream.join()


def _enrol_stream(
    client: Any, engine: str, key: str, deadline: float, name: str, samples: list[Sample]
) -> None:
    """One closed loop of enrolments until ``deadline`` (a sample each)."""
    import httpx

    # fresh OS entropy: a seeded stream could repeat a gallery's own synthetic vectors
    # (or an earlier run's), and a duplicate registrant makes readers' answers ambiguous
    rng = np.random.default_rng()
    count = 0
    while time.monotonic() < deadline:
        vector = rng.standard_normal(512)
        subject = f"w{name}-{count}-{uuid.uuid4().hex[:12]}"  # new in every run
        body = {"subject_id": subject, "embeddings": [vector.tolist()]}
        start = time.perf_counter()
        try:
            response = client.post(
                f"/v1/engines/{engine}/subjects", json=body, headers=headers(key)
            )
        except httpx.HTTPError:
            samples.append(Sample("enrol", time.perf_counter() - start, 0, False))
            continue
        ok = response.status_code == 201
        samples.append(Sample("enrol", time.perf_counter() - start, response.status_code, ok))
        count += 1


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) used so far by process ``pid`` and its living
    descendants (its worker processes), from Linux's /proc; 0.0 where /proc is absent."""
    tick = os.sysconf("SC_CLK_TCK")
    table: dict[int, tuple[int, int]] = {}  # pid -> (parent pid, CPU ticks)
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # ended meanwhile
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        table[int(entry.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    tree, todo = set(), [pid]
    while todo:
        current = todo.pop()
        if current in table and current not in tree:
            tree.add(current)
            todo += [child for child, (parent, _) in table.items() if parent == current]
    return sum(table[p][1] for p in tree) / tick


def _summary(samples: list[Sample], seconds: float) -> dict[str, Any]:
    latencies = np.array([s.seconds for s in samples]) * 1000 if samples else np.zeros(1)
    errors = sum(1 for s in samples if not 200 <= s.status < 300)
    return {
        "requests": len(samples),
        "errors": errors,
        "wrong_decisions": sum(1 for s in samples if 200 <= s.status < 300 and not s.ok),
        "throughput_per_s": len(samples) / seconds,
        "p50_ms": float(np.percentile(latencies, 50)),
        "p95_ms": float(np.percentile(latencies, 95)),
        "p99_ms": float(np.percentile(latencies, 99)),
        "max_ms": float(latencies.max()),
    }


def _mean_batch(samples: list[Sample]) -> float | None:
    """Mean probes per scoring pass the service reported, None when it reports none."""
    sizes = [s.batch_size for s in samples if s.batch_size is not None]
    return float(np.mean(sizes)) if sizes else None


def run_load(
    url: str,
    key: str,
    read_engine: str,
    gallery: dict[str, np.ndarray],
    write_engine: str | None = None,
    clients: int = 16,
    writers: int = 2,
    seconds: float = 20.0,
    verify: Any = True,
    *,
    verify_every: int = 5,
    images: dict[str, list[str]] | None = None,
    writer_inflight: int = 1,
) -> dict[str, Any]:
    """``clients`` concurrent clients for ``seconds``: ``writers`` of them enrol into
    ``write_engine`` (which may be ``read_engine``), the rest identify/verify against
    ``read_engine``'s ``gallery`` (every ``verify_every``-th request a verify, 0: none),
    with embedding probes, or with ``images`` (subject -> base64 face images) when given;
    each writer keeps ``writer_inflight`` enrolments outstanding.

    Returns the clients, writers, writer_inflight (0 without writers), elapsed seconds
    (with the last requests' tails), the ``total`` and ``by_operation`` summaries
    (requests, errors = non-2xx or no answer, wrong_decisions, throughput_per_s,
    p50/p95/p99/max ms), ``identify_batch_size`` (mean reported batch size, or None) and
    ``identify_mean_ms`` (mean timings per stage)."""
    samples: list[list[Sample]] = [[] for _ in range(clients)]
    writers = writers if write_engine else 0
    deadline = time.monotonic() + seconds
    threads = []
    for i in range(clients):
        if i < writers:
            assert write_engine is not None
            args: tuple[Any, ...] = (url, key, write_engine, deadline, i, samples[i], verify)
            args += (writer_inflight,)
            threads.append(threading.Thread(target=_writer, args=args))
        else:
            args = (
                url,
                key,
                read_engine,
                gallery,
                deadline,
                i,
                samples[i],
                verify,
                verify_every,
                images,
            )
            threads.append(threading.Thread(target=_reader, args=args))
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started  # includes the last requests' tails
    flat = [s for group in samples for s in group]
    identified = [s for s in flat if s.op == "identify" and s.timings]
    table: dict[str, float] = {}
    if identified:
        for name in identified[0].timings:
            if name == "batch_size":  # a count, not seconds: identify_batch_size has it
                continue
            table[name] = float(np.mean([s.timings.get(name, 0.0) for s in identified])) * 1000
        rtt = float(np.mean([s.seconds for s in identified])) * 1000
        table["rtt"] = rtt
        table["client_and_wire"] = rtt - table["server_total"]
    return {
        "clients": clients,
        "writers": writers,
        "writer_inflight": writer_inflight if writers else 0,
        "seconds": elapsed,
        "total": _summary(flat, elapsed),
        "by_operation": {
            op: _summary([s for s in flat if s.op == op], elapsed)
            for op in sorted({s.op for s in flat})
        },
        "identify_batch_size": _mean_batch([s for s in flat if s.op == "identify"]),
        "identify_mean_ms": table,
    }
