"""The service under load: one sweep over gallery sizes, probe kinds, client counts,
concurrent enrolment and batching on/off, saved as JSON, a Markdown table and a PNG.

``run`` builds one throw-away home per gallery size: an engine ``bench`` (TenSEAL CKKS,
``fast`` preset and scorer, file key store) holding synthetic unit embeddings enrolled through the
Python API, plus, for image probes, lfw-dev people enrolled from their first image (their
other images are the probes; the images are read from where they are, never copied).
For each batching configuration ``frip serve`` runs as a child process on loopback
(``--batch-max 1`` is off; a ``frip serve`` without ``--batch-max`` runs unbatched only,
and the report says so), and ``frip_eval.loadgen.run_load`` puts ``clients`` identifying
clients on ``bench``, alone and with ``writers`` more clients enrolling embeddings into the
same engine. Every figure of one report comes from the same run, so compare them as
ratios (batching on / off, with enrolment / read-only) rather than with other machines.
"""

from __future__ import annotations

import base64
import csv
import json
import os
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENGINE = "bench"
# enrolment requests each writer client keeps outstanding by default (a registration desk
# syncing, an importer): with one each, two clients make groups of <= 2 subjects
WRITER_INFLIGHT = 8
PINNED = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")
# no rate limit, and room for 64 clients plus writers on one loopback address
SERVE_ARGS = ("--rate", "0", "--max-connections", "512", "--max-connections-per-client", "256")


@dataclass
class Plan:
    """What one sweep measures (see the module docstring)."""

    registrants: list[int]
    probes: list[str]  # "embedding" and/or "image"
    clients: list[int]
    writers: int  # 0: read-only runs only; else each client count also runs with them
    seconds: float  # per run
    batch_max: int
    batch_wait_ms: float | None  # None: the server's default
    image_people: int  # lfw-dev people enrolled (and probed) for image probes
    lfw: Path
    warmup: float = 2.0
    workers: int = 1  # the engine's scoring processes ([engine] workers)
    cache: Path | None = None  # built galleries kept here and copied per run (None: rebuilt)
    # enrolments each writer keeps outstanding; one run with writers per value
    writer_inflight: list[int] = field(default_factory=lambda: [WRITER_INFLIGHT])


def pin_threads() -> dict[str, str]:
    """One BLAS/OpenMP/numba thread for this process and the server it starts (call before
    numpy loads); returns the settings, for the report."""
    for name in PINNED:
        os.environ[name] = "1"
    return {name: os.environ[name] for name in PINNED}


def batching_configs(
    options: set[str], batch_max: int, wait_ms: float | None
) -> list[tuple[str, tuple[str, ...]]]:
    """(label, extra ``frip serve`` arguments) per configuration the server can run."""
    if "--batch-max" not in options:
        return [("off (server cannot batch)", ())]
    on: tuple[str, ...] = ("--batch-max", str(batch_max))
    if wait_ms is not None and "--batch-wait-ms" in options:
        on += ("--batch-wait-ms", str(wait_ms))
    return [("off", ("--batch-max", "1")), ("on", on)]


def _people(lfw: Path, count: int) -> dict[str, list[Path]]:
    """The first ``count`` lfw-dev people with 3 images: identity -> image paths."""
    groups: dict[str, list[Path]] = {}
    with open(lfw / "index.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            groups.setdefault(row["identity"], []).append(lfw / row["path"])
    chosen = [name for name in sorted(groups) if len(groups[name]) >= 3][:count]
    return {name: sorted(groups[name]) for name in chosen}


def extraction_rate(lfw: Path, images: int = 20) -> float:
    """Faces per second one core extracts (the default extractor, arcface, one thread):
    ``images`` lfw-dev images read, decoded and embedded in this process, after one
    warm-up image."""
    from frip_engine import plugins
    from frip_engine.images import load_image

    paths = [p for paths in _people(lfw, images).values() for p in paths][: images + 1]
    extractor = plugins.create("extractor", "arcface")
    extractor.extract(load_image(paths[0].read_bytes()))
    started = time.perf_counter()
    for path in paths[1:]:
        extractor.extract(load_image(path.read_bytes()))
    return (len(paths) - 1) / (time.perf_counter() - started)


def synthetic_gallery(count: int) -> dict[str, Any]:
    """``count`` synthetic unit embeddings (d = 512, seed 0): id -> float64 (512,)."""
    import numpy as np

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((count, 512))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return {f"r{i:06d}": vectors[i] for i in range(count)}


def _probe_images(people: dict[str, list[Path]], enrolled: list[str]) -> dict[str, list[str]]:
    """The enrolled people's other images: id -> base64 JPEGs."""
    return {
        name: [base64.b64encode(p.read_bytes()).decode() for p in people[name][1:]]
        for name in enrolled
    }


def build_home(
    home: Path, registrants: int, people: dict[str, list[Path]], workers: int = 1
) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """Create engine ``bench`` (``workers`` scoring processes) in ``home`` with
    ``registrants`` subjects: the ``people`` (from their first image) and synthetic unit
    embeddings for the rest. Returns the synthetic gallery (id -> vector) and the people's
    other images (id -> base64 JPEG)."""
    from frip_engine import open_engine
    from frip_engine.engine import EnrolItem

    gallery = synthetic_gallery(registrants - len(people))
    enrolled: list[str] = []
    he = {"preset": "fast", "scorer": "fast"}  # the fast scorer: the serving setup
    with open_engine(ENGINE, create=True, home=home, he=he, workers=workers) as engine:
        names = list(gallery)
        for start in range(0, len(names), 4096):  # one block at a time bounds the memory
            chunk = names[start : start + 4096]
            engine.enrol_many([EnrolItem(s, embeddings=[gallery[s]]) for s in chunk])
        if people:
            report = engine.enrol_many([EnrolItem(n, images=[p[0]]) for n, p in people.items()])
            enrolled = [name for name in people if name in report.enrolled]
    return gallery, _probe_images(people, enrolled)


def gallery_home(
    plan: Plan, folder: Path, registrants: int, people: dict[str, list[Path]]
) -> tuple[Path, dict[str, Any], dict[str, list[str]], bool]:
    """A home in ``folder`` holding engine ``bench`` as :func:`build_home` makes it, the
    synthetic gallery, the probe images, and whether it came from ``plan.cache``. With a
    cache, a gallery is built once per (registrants, people, workers) into the cache and
    copied for each run (runs with writers enrol into their copy); a cache entry without
    its ``built.json`` (an interrupted build) is built again."""
    home = folder / "home"
    if plan.cache is None:
        gallery, images = build_home(home, registrants, people, plan.workers)
        return home, gallery, images, False
    cached = plan.cache / f"{registrants}-people{len(people)}-workers{plan.workers}"
    done = cached / "built.json"
    reused = done.exists()
    if not reused:
        shutil.rmtree(cached, ignore_errors=True)
        _, images = build_home(cached, registrants, people, plan.workers)
        done.write_text(json.dumps({"enrolled": sorted(images)}))
    leave = shutil.ignore_patterns("built.json", "service.sqlite*", "audit.sqlite*", "server-*.log")
    shutil.copytree(cached, home, ignore=leave)  # the gallery only: no vendor, no log
    enrolled = json.loads(done.read_text())["enrolled"]
    return (
        home,
        synthetic_gallery(registrants - len(people)),
        _probe_images(people, enrolled),
        reused,
    )


def in_process(home: Path, gallery: dict[str, Any], batch: int, repeats: int = 5) -> dict[str, Any]:
    """The engine alone, in this process, on the benchmark's gallery (what the service adds
    is the rest): mean ms of ``repeats`` identify calls after one warm-up (blocks loaded),
    and one ``identify_many`` of ``batch`` probes (ms and probes/s). Probes are the
    gallery's own vectors with noise, as the load generator sends them."""
    import numpy as np

    from frip_engine import open_engine
    from frip_eval.loadgen import near

    rng = np.random.default_rng(7)
    names = sorted(gallery)
    probes = [
        near(gallery[names[int(rng.integers(len(names)))]], 0.2, rng)
        for _ in range(batch + repeats + 1)
    ]
    with open_engine(ENGINE, home=home) as engine:
        engine.identify(embedding=probes[0])
        started = time.perf_counter()
        for probe in probes[1 : repeats + 1]:
            engine.identify(embedding=probe)
        one = (time.perf_counter() - started) / repeats
        started = time.perf_counter()
        engine.identify_many(embeddings=probes[repeats + 1 :])
        many = time.perf_counter() - started
    return {
        "identify_ms": one * 1000,
        "batch": batch,
        "identify_many_ms": many * 1000,
        "identify_many_per_s": batch / many,
    }


def encryption_bound(
    home: Path, writers: int, inflight: list[int], samples: int = 32
) -> dict[str, Any] | None:
    """What the enrolment target is up against, measured in this run (None where the
    engine adds no enrolment deltas): a group's delta takes one fresh encryption of zero
    per feature ciphertext (``encryptions_per_group`` = d), whatever the group's size, so
    the cores this process may use make at most ``groups_per_s`` = cores / (d x one
    encryption's seconds, timed here over ``samples``), and ``writers`` clients keeping
    K enrolments (one subject each) in flight at most ``writers`` x K x that
    enrolments/s (a group holds at most K subjects per writer): ``enrolments_per_s``, one
    per K of ``inflight``. Commits, transfers and the identify load come on top: a
    ceiling, not a forecast."""
    from frip_engine import open_engine
    from frip_engine.slots import delta_matcher

    with open_engine(ENGINE, home=home) as engine:
        matcher = delta_matcher(engine.matcher)
        if matcher is None:
            return None
        per_group = engine.parts.dimension
        matcher.encrypt_zeros(1)  # warm-up
        started = time.perf_counter()
        matcher.encrypt_zeros(samples)
        seconds = (time.perf_counter() - started) / samples
    cores = len(os.sched_getaffinity(0))
    groups = cores / (per_group * seconds)
    return {
        "encryptions_per_group": per_group,
        "ms_per_encryption": seconds * 1000,
        "cores": cores,
        "groups_per_s": groups,
        "writers": writers,
        "writer_inflight": list(inflight),
        "enrolments_per_s": [writers * k * groups for k in inflight],
    }


def block_revisions(home: Path) -> int:
    """The sum of the bench engine's block revisions, read from its gallery store (no
    key needed): every commit of an enrolment group moves one block's by one, so the
    difference over a run counts the groups committed."""
    from frip_engine import plugins
    from frip_engine.engine import PROFILE_FILE
    from frip_engine.profile import engine_dir, load_profile

    directory = engine_dir(ENGINE, home)
    profile = load_profile(directory / PROFILE_FILE)
    store = plugins.create(
        "gallery_store", profile.plugin("gallery_store"), **profile.params("gallery_store")
    )
    try:
        store.bind(str(directory))
        return sum(info.revision for info in store.blocks())
    finally:
        store.close()


def _row(
    result: dict[str, Any],
    registrants: int,
    probes: str,
    batching: str,
    clients: int,
    cpu: dict[str, float],
    groups: int,
) -> dict[str, Any]:
    """One run's row; ``cpu``: CPU seconds the server (with its worker processes) and the
    load generator used during the run; ``groups``: enrolment groups committed in it."""
    ops = result["by_operation"]
    identify = ops.get("identify", {})
    enrol = ops.get("enrol")
    keys = ("requests", "errors", "wrong_decisions", "throughput_per_s", "p50_ms", "p99_ms")
    return {
        "registrants": registrants,
        "probes": probes,
        "clients": clients,
        "writers": result["writers"],
        "writer_inflight": result["writer_inflight"],
        "batching": batching,
        "seconds": result["seconds"],
        "errors": result["total"]["errors"],
        "identify": {k: identify.get(k, 0) for k in keys},
        "mean_batch_size": result["identify_batch_size"],
        "enrol": None
        if enrol is None
        else {
            "requests": enrol["requests"],
            "errors": enrol["errors"],
            "ack_p99_ms": enrol["p99_ms"],
            "per_s": enrol["throughput_per_s"],
            "groups": groups,
            "mean_group": (enrol["requests"] - enrol["errors"]) / groups if groups else None,
        },
        "identify_mean_ms": result["identify_mean_ms"],
        "cpu_s": cpu,
    }


def _measure(
    plan: Plan,
    home: Path,
    registrants: int,
    gallery: dict[str, Any],
    images: dict[str, list[str]],
    config: tuple[str, tuple[str, ...]],
    key: str,
) -> list[dict[str, Any]]:
    from frip_eval.loadgen import ServerProcess, run_load, tree_cpu_seconds

    label, extra = config
    server = ServerProcess(home, args=(*SERVE_ARGS, *extra))
    url = server.start()
    rows = []
    print(f"\n{registrants:,} registrants, batching {label}\n" + "\n".join(HEADER), flush=True)
    try:
        for kind in plan.probes:
            shots = images if kind == "image" else None
            if kind == "image" and not images:
                raise RuntimeError(f"no lfw-dev person in {plan.lfw} could be enrolled")
            run_load(
                url, key, ENGINE, gallery, None, 1, 0, plan.warmup, verify_every=0, images=shots
            )
            if plan.writers:  # the first enrolment starts the engine's encryption worker
                run_load(url, key, ENGINE, gallery, ENGINE, 1, 1, plan.warmup, verify_every=0)
            loads = [(0, 1)] + [(plan.writers, k) for k in plan.writer_inflight if plan.writers]
            assert server.process is not None
            for clients in plan.clients:
                for writers, inflight in loads:
                    cpu = (tree_cpu_seconds(server.process.pid), time.process_time())
                    revisions = block_revisions(home)
                    result = run_load(
                        url,
                        key,
                        ENGINE,
                        gallery,
                        ENGINE if writers else None,
                        clients + writers,
                        writers,
                        plan.seconds,
                        verify_every=0,
                        images=shots,
                        writer_inflight=inflight,
                    )
                    used = {
                        "server": tree_cpu_seconds(server.process.pid) - cpu[0],
                        "load_generator": time.process_time() - cpu[1],
                    }
                    groups = block_revisions(home) - revisions
                    rows.append(_row(result, registrants, kind, label, clients, used, groups))
                    print(_line(rows[-1]), flush=True)
    finally:
        server.stop()
    return rows


def _ratios(rows: list[dict[str, Any]]) -> None:
    """Within-run ratios on each row: throughput and p99 against the same load with
    batching off, and identify p99 against the same load without enrolment."""

    def same(row: dict[str, Any], **changed: Any) -> dict[str, Any] | None:
        keys = ("registrants", "probes", "clients", "writers", "writer_inflight", "batching")
        want = {k: row[k] for k in keys}
        want.update(changed)
        return next((r for r in rows if all(r[k] == v for k, v in want.items())), None)

    for row in rows:
        off = same(row, batching="off") if row["batching"] == "on" else None
        alone = same(row, writers=0, writer_inflight=0) if row["writers"] else None
        mine = row["identify"]
        row["throughput_vs_batching_off"] = (
            mine["throughput_per_s"] / off["identify"]["throughput_per_s"]
            if off and off["identify"]["throughput_per_s"]
            else None
        )
        row["p99_vs_batching_off"] = (
            mine["p99_ms"] / off["identify"]["p99_ms"]
            if off and off["identify"]["p99_ms"]
            else None
        )
        row["p99_vs_read_only"] = (
            mine["p99_ms"] / alone["identify"]["p99_ms"]
            if alone and alone["identify"]["p99_ms"]
            else None
        )


def _fmt(value: float | None, pattern: str) -> str:
    return "-" if value is None else format(value, pattern)


def _line(row: dict[str, Any]) -> str:
    """One Markdown table row (the columns of HEADER)."""
    identify, enrol = row["identify"], row["enrol"] or {}
    cells = [
        f"{row['registrants']:,}",
        row["probes"],
        str(row["clients"]),
        f"{row['writers']} x {row['writer_inflight']}" if row["writers"] else "0",
        row["batching"],
        f"{identify['throughput_per_s']:.1f}",
        f"{identify['p50_ms']:.0f}",
        f"{identify['p99_ms']:.0f}",
        str(row["errors"]),
        str(identify["wrong_decisions"]),
        _fmt(row["mean_batch_size"], ".2f"),
        _fmt(enrol.get("ack_p99_ms"), ".0f"),
        _fmt(enrol.get("per_s"), ".2f"),
        _fmt(enrol.get("mean_group"), ".1f"),
        _fmt(row.get("throughput_vs_batching_off"), ".2f"),
        _fmt(row.get("p99_vs_batching_off"), ".2f"),
        _fmt(row.get("p99_vs_read_only"), ".2f"),
        f"{row['cpu_s']['server'] / row['seconds']:.2f}",
        f"{row['cpu_s']['load_generator'] / row['seconds']:.2f}",
    ]
    return "| " + " | ".join(cells) + " |"


HEADER = [
    "| registrants | probes | clients | enrolling | batching | identify/s | p50 ms | p99 ms "
    "| errors | wrong | mean batch | enrol ack p99 ms | enrol/s | mean group | identify/s vs off "
    "| p99 vs off | p99 vs read-only | server cores | client cores |",
    "|---:|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
]


def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: setup, command, the table, and what could not run."""
    machine = report["machine"]
    lines = [
        "# The linkage service under load",
        "",
        f"`frip serve` on loopback, engine `{ENGINE}` (TenSEAL CKKS, fast preset and "
        f"scorer, {report['plan'].get('workers', 1)} scoring process(es)), synthetic "
        "unit-embedding galleries; image probes are lfw-dev faces of people enrolled from "
        "another image. Each row is one run of "
        f"{report['plan']['seconds']:g} s; `enrolling` clients (`writers x K`: K "
        "enrolments in flight each) enrol embeddings into the same engine meanwhile. "
        "`mean group`: enrolments acknowledged per group committed (block revisions "
        "moved). `server cores` and `client cores`: CPU seconds per second of the run of the "
        "server with its worker processes, and of the load generator. Errors are non-2xx "
        "answers or none. Ratios compare rows "
        "of this run only; `wrong` counts answers that did not name the probe's person (face "
        "recognition can miss; synthetic embedding probes should not). The server embeds "
        "image probes in its edge worker processes (one per core) before they queue for "
        "the engine, and encrypts each group of enrolments in a worker process while the "
        "engine's thread keeps identifying.",
        "",
        f"Machine: {machine['platform']}, {machine['cpus']} CPUs, cores used "
        f"{machine['cores_used']} (server and clients share them); threads pinned: "
        + ", ".join(f"{k}={v}" for k, v in report["threads"].items())
        + f"; load before/after {machine['load']}.",
        "",
        f"Command: `{report['command']}`",
        "",
    ]
    rate = report.get("extraction_per_core_per_s")
    if rate:
        lines += [
            f"One core extracts {rate:.1f} faces/s (arcface, one thread, lfw-dev images, "
            "decoding included; `extraction_rate`): the ceiling of image probes per "
            "second per core the edge workers get.",
            "",
        ]
    for engine in report.get("engines", []):
        alone = engine["alone"]
        if alone:
            lines += [
                f"The engine alone, in the benchmark's process on the same gallery of "
                f"{engine['registrants']:,} before its server started (`in_process`): identify "
                f"{alone['identify_ms']:.0f} ms; identify_many of {alone['batch']} probes "
                f"{alone['identify_many_ms']:.0f} ms ({alone['identify_many_per_s']:.1f} "
                "probes/s). What the service adds is the rest of each row's latency.",
                "",
            ]
        bound = engine.get("encryption_bound")
        if bound:
            lines += [
                f"Encryption bound ({engine['registrants']:,} registrants, measured in this "
                f"run): a group of enrolments is one delta of d = "
                f"{bound['encryptions_per_group']} fresh encryptions of zero whatever its size, "
                f"{bound['ms_per_encryption']:.2f} ms each on one core here, so "
                f"{bound['cores']} cores make at most {bound['groups_per_s']:.2f} groups/s, and "
                f"{bound['writers']} clients keeping K enrolments of one subject in flight "
                f"each (at most {bound['writers']} x K per group) at most "
                + ", ".join(
                    f"{per_s:.2f} enrolments/s with K = {k}"
                    for k, per_s in zip(
                        bound["writer_inflight"], bound["enrolments_per_s"], strict=True
                    )
                )
                + ", before commits and the identify load take their share: compare the "
                "`enrol/s` column with this.",
                "",
            ]
    if not report["batching_available"]:
        lines += [f"**{report['batching_note']}**", ""]
    lines += HEADER + [_line(row) for row in report["runs"]] + [""]
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> bool:
    """Throughput and identify p99 against clients, one line per (gallery, probes,
    enrolling, batching); False when matplotlib is missing."""
    from frip_eval.plots import pyplot

    plt = pyplot()
    if plt is None:
        return False
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 5))
    series: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for row in report["runs"]:
        key = (row["registrants"], row["probes"], row["writers"], row["writer_inflight"])
        series.setdefault((*key, row["batching"]), []).append(row)
    for (registrants, probes, writers, inflight, batching), rows in series.items():
        rows.sort(key=lambda r: r["clients"])
        label = f"{registrants:,} {probes}, batching {batching}" + (
            f", +{writers} enrolling x {inflight}" if writers else ""
        )
        style = {
            "linestyle": "-" if batching == "on" else "--",
            "marker": "s" if writers else "o",
        }
        x = [r["clients"] for r in rows]
        left.plot(x, [r["identify"]["throughput_per_s"] for r in rows], label=label, **style)
        right.plot(x, [r["identify"]["p99_ms"] / 1000 for r in rows], label=label, **style)
    clients = sorted({row["clients"] for row in report["runs"]})
    for axis, title in ((left, "identify/s"), (right, "identify p99, s")):
        axis.set_xscale("log", base=2)
        axis.set_xticks(clients, [str(c) for c in clients])
        axis.set_xlabel("identifying clients")
        axis.set_title(title)
        axis.grid(True, alpha=0.3)
    right.set_yscale("log")
    handles, labels = left.get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=2, fontsize=7)
    figure.tight_layout(rect=(0, 0.04 * (len(series) + 1) / 2 + 0.04, 1, 1))
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def run(plan: Plan, output: Path, command: str) -> dict[str, Any]:
    """Measure ``plan`` and write ``output``/bench-service.{json,md,png}; returns the report
    (its ``runs`` hold one row per run, and ``errors`` their sum)."""
    from frip_engine.service.db import Database
    from frip_engine.service.vendors import Vendors
    from frip_eval.loadgen import serve_options

    threads = pin_threads()
    os.environ.setdefault("FRIP_PASSPHRASE", "bench-passphrase-not-secret")
    rate = extraction_rate(plan.lfw) if "image" in plan.probes else None
    options = serve_options()
    configs = batching_configs(options, plan.batch_max, plan.batch_wait_ms)
    load_before = os.getloadavg()
    rows: list[dict[str, Any]] = []
    engines: list[dict[str, Any]] = []
    for registrants in plan.registrants:
        count = min(plan.image_people, registrants) if "image" in plan.probes else 0
        people = _people(plan.lfw, count) if count else {}
        with tempfile.TemporaryDirectory(prefix="frip-bench-service-") as folder:
            started = time.perf_counter()
            home, gallery, images, reused = gallery_home(plan, Path(folder), registrants, people)
            how = "copied from the cache" if reused else "enrolled"
            print(f"{registrants:,} registrants {how} in {time.perf_counter() - started:.0f} s")
            engine_alone = in_process(home, gallery, plan.batch_max) if gallery else None
            bound = (
                encryption_bound(home, plan.writers, plan.writer_inflight) if plan.writers else None
            )
            engines.append(
                {
                    "registrants": registrants,
                    "reused": reused,
                    "alone": engine_alone,
                    "encryption_bound": bound,
                }
            )
            key = Vendors(Database(home / "service.sqlite")).create("bench", [ENGINE])
            for config in configs:
                rows += _measure(plan, home, registrants, gallery, images, config, key)
    _ratios(rows)
    report: dict[str, Any] = {
        "benchmark": "linkage service under load",
        "command": command,
        "plan": {
            k: (str(v) if isinstance(v, Path) else v)
            for k, v in plan.__dict__.items()
            if k not in ("lfw", "cache")
        },
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "cores_used": sorted(os.sched_getaffinity(0)),
            "load": [list(load_before), list(os.getloadavg())],
        },
        "threads": threads,
        "extraction_per_core_per_s": rate,
        "batching_available": "--batch-max" in options,
        "batching_note": ""
        if "--batch-max" in options
        else "This frip serve has no --batch-max: only the unbatched configuration ran.",
        "configs": [{"batching": label, "serve_args": list(args)} for label, args in configs],
        "errors": sum(row["errors"] for row in rows),
        "engines": engines,
        "runs": rows,
    }
    output.mkdir(parents=True, exist_ok=True)
    (output / "bench-service.json").write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(report)
    (output / "bench-service.md").write_text(table)
    drawn = plot(report, output / "bench-service.png")
    print("\n" + table)
    print(f"wrote {output}/bench-service.json, .md" + (", .png" if drawn else ""))
    return report
