"""``frip bench store``: the gallery stores side by side, in one run.

For each store (``sqlite``, ``postgres``): enrolment throughput (subjects/s) filling an
engine with N synthetic unit embeddings through ``enrol_many`` in chunks, then identify
latency (median and p95 of timed probes, near enrolled subjects) on that gallery; and
the enrolment throughput of 1 and of W writer processes enrolling into one engine at once
(each its own chunks of synthetic subjects). Every engine: TenSEAL preset ``fast`` with
the fast scorer, one worker, threads pinned to one. PostgreSQL is reached through
``--dsn`` or the PG* environment (its password from PGPASSWORD / .pgpass / PGPASSFILE).
Writes ``bench-store.json``, ``bench-store.md`` and ``bench-store.png`` under ``docs``.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from frip_engine.engine import Engine, EnrolItem
from frip_engine.profile import Profile
from frip_eval.plots import pyplot
from frip_eval.threads import pin_threads

HE = {"plugin": "tenseal", "preset": "fast", "scorer": "fast"}
DIMENSION = 512
BENCH_PASSPHRASE = "frip-bench-store-synthetic-only"


def _vectors(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, DIMENSION)).astype(np.float64)
    unit: np.ndarray = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    return unit


def _store_section(store: str, dsn: str | None, tag: str) -> dict[str, Any]:
    if store == "sqlite":
        return {"plugin": "sqlite"}
    section: dict[str, Any] = {"plugin": "postgres", "schema": f"frip_bench_{tag}"}
    if dsn:
        section["dsn"] = dsn
    return section


def _create(home: Path, name: str, store: dict[str, Any]) -> Engine:
    profile = {
        "engine": {"name": name},
        "he": HE,
        "key_store": {"plugin": "file", "scrypt_log2_n": 14},
        "gallery_store": store,
    }
    return Engine.create(Profile.from_dict(profile), home)


def _enrol(engine: Engine, vectors: np.ndarray, prefix: str, chunk: int) -> float:
    """Enrol every row in chunks; the elapsed seconds."""
    start = time.perf_counter()
    for first in range(0, len(vectors), chunk):
        rows = vectors[first : first + chunk]
        items = [EnrolItem(f"{prefix}{first + i}", embeddings=[v]) for i, v in enumerate(rows)]
        report = engine.enrol_many(items)
        if report.failed:
            raise RuntimeError(f"benchmark enrolment failed: {list(report.failed.items())[:2]}")
    return time.perf_counter() - start


def _latency(engine: Engine, vectors: np.ndarray, probes: int) -> dict[str, float]:
    rng = np.random.default_rng(7)
    picks = rng.choice(len(vectors), size=probes + 1, replace=False)
    timings = []
    for n, index in enumerate(picks):
        probe = vectors[index] + 0.02 * rng.standard_normal(DIMENSION) / np.sqrt(DIMENSION)
        start = time.perf_counter()
        decision = engine.identify(embedding=probe / np.linalg.norm(probe))
        if n:  # the first identify loads the blocks
            timings.append((time.perf_counter() - start) * 1000)
        if decision.subject_id != f"s{index}":
            raise RuntimeError(f"identify found {decision.subject_id}, expected s{index}")
    timings.sort()
    return {
        "median_ms": statistics.median(timings),
        "p95_ms": timings[min(len(timings) - 1, int(0.95 * len(timings)))],
    }


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process so far (all its threads)."""
    used = resource.getrusage(resource.RUSAGE_SELF)
    return used.ru_utime + used.ru_stime


def server_cpu(postmaster: int | None) -> float:
    """CPU seconds (user + system) of the PostgreSQL server whose postmaster has pid
    ``postmaster``: the postmaster, its live children (backends, WAL writer,
    checkpointer...) and those that ended (its children's times), from /proc; 0 when
    None (no server on this machine)."""
    if postmaster is None:
        return 0.0
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry) == postmaster:
            total += sum(int(f) for f in fields[11:15])
        elif int(fields[1]) == postmaster:
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def idle_cpu() -> float:
    """CPU seconds all cores of this machine have spent idle or waiting for I/O since boot
    (/proc/stat): over a run, with the run's own CPU, the cores other work left to it."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    return (int(fields[4]) + int(fields[5])) / os.sysconf("SC_CLK_TCK")


def _postmaster(dsn: str | None) -> int | None:
    """The pid of the postmaster serving ``dsn`` (or the PG* environment) when it runs on
    this machine (a backend's parent in /proc), else None."""
    import psycopg

    with psycopg.connect(dsn or "") as conn:  # read while the backend lives: it ends with it
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
        try:
            stat = Path(f"/proc/{row[0] if row else 0}/stat").read_text()
        except OSError:
            return None  # another machine's server
    name, fields = stat.split("(", 1)[1].rsplit(")", 1)
    return int(fields.split()[1]) if name.startswith("postgres") else None


def _writer(home: str, name: str, seed: int, count: int, chunk: int, start: Any, cpu: Any) -> None:
    """One writer process: open engine ``name``, wait at ``start`` (a barrier of every
    writer and the parent), enrol ``count`` subjects of its own, put its CPU seconds
    spent enrolling on ``cpu``."""
    pin_threads()
    with Engine.open(name, Path(home)) as engine:
        vectors = _vectors(count, seed)
        start.wait()
        before = _cpu_seconds()
        _enrol(engine, vectors, f"w{seed}-", chunk)
        cpu.put(_cpu_seconds() - before)


def _writers(
    home: Path, name: str, writers: int, each: int, chunk: int, postmaster: int | None
) -> dict[str, float]:
    """``writers`` processes enrolling ``each`` subjects at once into engine ``name``,
    timed from the moment all have opened the engine (process start and engine open,
    the same for every writer, are left out) to the last commit: subjects per second,
    the writers' and the PostgreSQL server's (``postmaster``, when local) CPU
    milliseconds per subject, the cores both kept busy and the cores other work on this
    machine left to them (busy + idle)."""
    context = multiprocessing.get_context("spawn")
    start, cpu = context.Barrier(writers + 1), context.Queue()
    processes = [
        context.Process(target=_writer, args=(str(home), name, 100 + w, each, chunk, start, cpu))
        for w in range(writers)
    ]
    for process in processes:
        process.start()
    start.wait(timeout=600)
    began, server, idle = time.perf_counter(), server_cpu(postmaster), idle_cpu()
    seconds = [cpu.get(timeout=3600) for _ in processes]
    elapsed = time.perf_counter() - began
    server, idle = server_cpu(postmaster) - server, idle_cpu() - idle
    for process in processes:
        process.join()
        if process.exitcode != 0:
            raise RuntimeError(f"a writer process failed (exit {process.exitcode})")
    return {
        "per_s": writers * each / elapsed,
        "cpu_ms_per_subject": 1000 * sum(seconds) / (writers * each),
        "server_cpu_ms_per_subject": 1000 * server / (writers * each),
        "cores_busy": (sum(seconds) + server) / elapsed,
        "cores_free": (sum(seconds) + server + idle) / elapsed,
    }


def run(
    registrants: int,
    probes: int,
    writers: int,
    writer_subjects: int,
    chunk: int,
    writer_chunk: int,
    dsn: str | None,
    docs: Path,
    console: Console,
) -> dict[str, Any]:
    """Measure both stores; write the JSON, Markdown and PNG into ``docs``; return the results."""
    pin_threads()
    os.environ.setdefault("FRIP_PASSPHRASE", BENCH_PASSPHRASE)  # synthetic data only
    home = Path(tempfile.mkdtemp(prefix="frip-bench-store-"))
    cores = len(os.sched_getaffinity(0))
    results: dict[str, Any] = {
        "registrants": registrants,
        "probes": probes,
        "chunk": chunk,
        "writer_chunk": writer_chunk,
        "writers": writers,
        "writer_subjects": writer_subjects,
        "he": HE,
        "cores": cores,
        "load_average_start": os.getloadavg()[0],
        "stores": {},
    }
    gallery = _vectors(registrants, 0)
    servers = {"sqlite": None, "postgres": _postmaster(dsn)}
    try:
        for store in ("sqlite", "postgres"):
            console.print(f"[bold]{store}[/]: enrolling {registrants:,}")
            tag = f"{os.getpid()}_{store}"
            with _create(
                home, f"fill-{store}", _store_section(store, dsn, f"fill_{tag}")
            ) as engine:
                seconds = _enrol(engine, gallery, "s", chunk)
                row: dict[str, Any] = {
                    "enrol_per_s": registrants / seconds,
                    "enrol_seconds": seconds,
                    **_latency(engine, gallery, probes),
                }
            for count in sorted({1, writers}):
                name = f"w{count}-{store}"
                _create(home, name, _store_section(store, dsn, f"w{count}_{tag}")).close()
                each = writer_subjects // count
                timed = _writers(home, name, count, each, writer_chunk, servers[store])
                for key, value in timed.items():
                    row[f"writers_{count}_{key}"] = value
            row[f"writers_{writers}_over_1"] = (
                row[f"writers_{writers}_per_s"] / row["writers_1_per_s"]
            )
            # CPU-bound ceiling of W writers over 1: one writer (with the server's work for
            # it) kept cores_busy cores busy, W writers can keep at most min(W, the cores
            # other work left them) busy
            row[f"writers_{writers}_cpu_ceiling"] = (
                min(writers, cores, row[f"writers_{writers}_cores_free"])
                / row["writers_1_cores_busy"]
            )
            results["stores"][store] = row
            console.print(row)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    results["load_average_end"] = os.getloadavg()[0]
    sqlite, postgres = results["stores"]["sqlite"], results["stores"]["postgres"]
    results["postgres_vs_sqlite"] = {
        "enrol_throughput": postgres["enrol_per_s"] / sqlite["enrol_per_s"],
        "identify_latency": postgres["median_ms"] / sqlite["median_ms"],
    }
    _write(results, docs)
    return results


def _write(results: dict[str, Any], docs: Path) -> None:
    docs.mkdir(parents=True, exist_ok=True)
    (docs / "bench-store.json").write_text(json.dumps(results, indent=2) + "\n")
    w = results["writers"]
    lines = [
        "# Gallery stores: sqlite vs postgres",
        "",
        f"`frip bench store --registrants {results['registrants']} --writers {w} "
        f"--writer-subjects {results['writer_subjects']} --chunk {results['chunk']} "
        f"--writer-chunk {results['writer_chunk']}`: "
        f"TenSEAL fast preset, fast scorer, synthetic unit embeddings, enrol_many in chunks "
        f"of {results['chunk']}, {results['probes']} timed identifies, threads pinned to one; "
        "PostgreSQL 15 on the same machine (loopback TCP).",
        "",
        f"| store | enrol (subjects/s) | identify median (ms) | identify p95 (ms) | "
        f"1 writer (subjects/s) | {w} writers (subjects/s) | {w} vs 1 |",
        "|---|---|---|---|---|---|---|",
    ]
    for store, row in results["stores"].items():
        lines.append(
            f"| {store} | {row['enrol_per_s']:,.0f} | {row['median_ms']:,.1f} | "
            f"{row['p95_ms']:,.1f} | {row['writers_1_per_s']:,.0f} | "
            f"{row[f'writers_{w}_per_s']:,.0f} | {row[f'writers_{w}_over_1']:.2f}x |"
        )
    ratio = results["postgres_vs_sqlite"]
    lines += [
        "",
        f"postgres / sqlite: enrolment throughput {ratio['enrol_throughput']:.2f}x, identify "
        f"latency {ratio['identify_latency']:.2f}x (target: within 1.5x).",
        "",
        f"Writers: {results['writer_subjects']:,} subjects in all, in chunks of "
        f"{results['writer_chunk']}, timed from the moment every writer process has opened "
        "the engine to the last commit. CPU is user + system time of the writer processes "
        "and of the PostgreSQL server (postmaster, backends, WAL writer, checkpointer; when "
        "it runs on this machine); cores busy is both over the elapsed time. One writer "
        "keeps that many cores busy (it waits in between: for the disk, the server, the "
        f"write lock, or cores other work used); {w} writers can keep at most min({w}, "
        f"cores free) busy, cores free being the {results['cores']} cores less what other "
        "work on the machine used meanwhile (our CPU + idle time over the elapsed time), "
        f"so the ceiling of {w} vs 1 is min({w}, cores free) / (cores busy, 1 writer), "
        "reached only if nothing serialises the writers and a subject costs "
        f"{w} writers no more CPU than one. Load average (1 min) "
        f"{results['load_average_start']:.1f} at the start, "
        f"{results['load_average_end']:.1f} at the end.",
        "",
        f"| store | writers | subjects/s | writer CPU (ms/subject) | server CPU (ms/subject) "
        f"| cores busy | cores free | ceiling {w} vs 1 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for store, row in results["stores"].items():
        for count in sorted({1, w}):
            ceiling = f"{row[f'writers_{w}_cpu_ceiling']:.2f}x" if count == w else ""
            lines.append(
                f"| {store} | {count} | {row[f'writers_{count}_per_s']:,.0f} | "
                f"{row[f'writers_{count}_cpu_ms_per_subject']:.2f} | "
                f"{row[f'writers_{count}_server_cpu_ms_per_subject']:.2f} | "
                f"{row[f'writers_{count}_cores_busy']:.2f} | "
                f"{row[f'writers_{count}_cores_free']:.2f} | {ceiling} |"
            )
    lines.append("")
    (docs / "bench-store.md").write_text("\n".join(lines))
    plt = pyplot()
    if plt is None:  # no matplotlib: the tables only
        return
    figure, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    stores = list(results["stores"])
    rows = [results["stores"][s] for s in stores]
    axes[0].bar(stores, [r["enrol_per_s"] for r in rows])
    axes[0].set_title(f"enrolment, {results['registrants']:,} (subjects/s)")
    axes[1].bar(stores, [r["median_ms"] for r in rows])
    axes[1].set_title("identify median (ms)")
    width = 0.35
    x = np.arange(len(stores))
    axes[2].bar(x - width / 2, [r["writers_1_per_s"] for r in rows], width, label="1 writer")
    axes[2].bar(x + width / 2, [r[f"writers_{w}_per_s"] for r in rows], width, label=f"{w} writers")
    axes[2].set_xticks(x, stores)
    axes[2].set_title("concurrent writers (subjects/s)")
    axes[2].legend()
    figure.tight_layout()
    figure.savefig(docs / "bench-store.png", dpi=110)
    plt.close(figure)
