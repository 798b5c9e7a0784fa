"""``frip bench scale``: one gallery scored by the executors side by side, in one run.

One engine of ``--registrants`` synthetic 128-d unit embeddings (the sface dimension),
TenSEAL preset ``fast`` with the fast scorer, one partition, a key store in memory, is
enrolled once (enrolment rate: ``enrol_many`` in chunks, encrypted on this process's core
with ``--enrol-workers 1`` (the local executor), else in that many worker processes of the
processes executor), then reopened on each executor in turn (its
profile's ``[executor]`` changed, as an operator would): ``local``, ``processes``
(2 workers) and ``ray`` with 1, 2 and 4 shards. For each: identify p50/p99 of
``--probes`` timed identifies near enrolled subjects (after one untimed warm-up that loads
the blocks), every decision checked against the local executor's (same subject, same
score). For Ray: its overhead per identify against the processes executor (p50 minus
p50, 2 shards vs 2 workers), and the restart time of a shard killed with SIGKILL (seconds
until the engine answers again, the shard having reloaded its blocks from the store).

The Ray cluster is started here on this machine (a head node with ``--cpus`` CPUs, no
dashboard, under a temporary folder) unless ``--address`` names one. Threads are pinned
to one per process. Writes ``bench-scale.json``, ``.md`` (which shows the command that
was run) and ``.png`` under ``--output``.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from frip_engine.decision import Decision
from frip_engine.engine import Engine, EnrolItem
from frip_engine.errors import WorkerLostError
from frip_engine.profile import Profile, load_profile, save_profile
from frip_eval.plots import pyplot
from frip_eval.threads import pin_threads

DIMENSION = 128  # sface
PROFILE: dict[str, Any] = {
    "engine": {"name": "scale"},
    "extractor": {"plugin": "sface"},
    "he": {"plugin": "tenseal", "preset": "fast", "scorer": "fast"},
    "key_store": {"plugin": "memory"},
}
RESTART_LIMIT_S = 600.0


def _vectors(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, DIMENSION))
    unit: np.ndarray = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    return unit


def _probes(gallery: np.ndarray, count: int) -> tuple[list[int], np.ndarray]:
    """``count`` gallery indices and a probe near each (the same 'person', with noise)."""
    rng = np.random.default_rng(7)
    picks = [int(i) for i in rng.choice(len(gallery), size=count, replace=False)]
    noisy = gallery[picks] + 0.02 * rng.standard_normal((count, DIMENSION)) / np.sqrt(DIMENSION)
    return picks, noisy / np.linalg.norm(noisy, axis=1, keepdims=True)


def _enrol(
    engine: Engine, vectors: np.ndarray, chunk: int, console: Console, offset: int = 0
) -> float:
    """Enrol every row in chunks of ``chunk``, row ``i`` as subject ``s{offset + i}``; the
    elapsed seconds."""
    start = time.perf_counter()
    for first in range(0, len(vectors), chunk):
        rows = vectors[first : first + chunk]
        report = engine.enrol_many(
            [EnrolItem(f"s{offset + first + i}", embeddings=[v]) for i, v in enumerate(rows)]
        )
        if report.failed:
            raise RuntimeError(f"benchmark enrolment failed: {list(report.failed.items())[:2]}")
        console.print(f"  enrolled {offset + first + len(rows):,}")
    return time.perf_counter() - start


@dataclass(frozen=True)
class ScaleRun:
    """One ``frip bench scale`` run: gallery size, timed probes, the shard counts of the
    ray rows, enrolment chunk, a Ray address (None: start a one-node cluster of ``cpus``
    CPUs here), processes encrypting the enrolment, and where the pages go."""

    registrants: int
    probes: int
    shards: list[int]
    chunk: int
    address: str | None
    cpus: int
    enrol_workers: int
    output: Path

    def command_line(self) -> str:
        """The ``frip bench scale`` command that reproduces this run."""
        words = ["--registrants", str(self.registrants), "--probes", str(self.probes)]
        for count in self.shards:
            words += ["--shards", str(count)]
        words += ["--chunk", str(self.chunk)]
        words += ["--address", self.address] if self.address else ["--cpus", str(self.cpus)]
        words += ["--enrol-workers", str(self.enrol_workers), "--output", str(self.output)]
        return f"frip bench scale {shlex.join(words)}"


def _reopen(home: Path, executor: dict[str, Any]) -> Engine:
    """The engine reopened with ``[executor]`` = ``executor``."""
    path = home / "engines" / "scale" / "profile.toml"
    profile = load_profile(path)
    profile.sections["executor"] = executor
    save_profile(profile, path)
    return Engine.open("scale", home)


def _timed(engine: Engine, probes: np.ndarray) -> tuple[list[float], list[Decision]]:
    """Milliseconds per identify and the decisions, after one untimed warm-up."""
    engine.identify(embedding=probes[0])
    timings, decisions = [], []
    for probe in probes:
        start = time.perf_counter()
        decisions.append(engine.identify(embedding=probe))
        timings.append((time.perf_counter() - start) * 1000)
    return timings, decisions


def _restart_seconds(engine: Engine, probe: np.ndarray) -> float:
    """Kill the shard of the engine's ray executor that holds the most blocks (SIGKILL to
    its process, which runs on this machine) and return the seconds until the engine
    answers again, that shard having reloaded its blocks."""
    import ray

    actors = engine._executor()._actors  # type: ignore[attr-defined]
    held = ray.get([actor.held.remote() for actor in actors])
    _, _, pid, _ = max(held, key=lambda answer: len(answer[3]))
    os.kill(pid, signal.SIGKILL)
    start = time.perf_counter()
    while time.perf_counter() - start < RESTART_LIMIT_S:
        try:
            engine.identify(embedding=probe)
            return time.perf_counter() - start
        except WorkerLostError:
            time.sleep(0.2)
    raise RuntimeError(f"a killed shard did not serve again within {RESTART_LIMIT_S:g} s")


def _row(timings: list[float], decisions: list[Decision], local: list[Decision]) -> dict[str, Any]:
    ordered = sorted(timings)
    return {
        "p50_ms": statistics.median(ordered),
        "p99_ms": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
        "decisions_equal_local": sum(
            (d.subject_id, d.score) == (w.subject_id, w.score)
            for d, w in zip(decisions, local, strict=True)
        ),
        "registrants_covered": min(d.registrants for d in decisions),
    }


def run(plan: ScaleRun, console: Console) -> dict[str, Any]:
    """Measure; write the JSON, Markdown and PNG into ``plan.output``; return the results."""
    from frip_eval import ray_cluster

    pin_threads()
    home = Path(tempfile.mkdtemp(prefix="frip-bench-scale-"))
    cluster = None if plan.address else ray_cluster.start((), head_cpus=plan.cpus)
    where = plan.address or (cluster.address if cluster else "")
    gallery = _vectors(plan.registrants, 0)
    picks, probe_rows = _probes(gallery, plan.probes)
    results: dict[str, Any] = {
        "command": plan.command_line(),
        "registrants": plan.registrants,
        "probes": plan.probes,
        "dimension": DIMENSION,
        "he": PROFILE["he"],
        "chunk": plan.chunk,
        "enrol_cores": plan.enrol_workers,
        "cluster": "given" if plan.address else f"started here: one node, {plan.cpus} CPUs",
        "executors": {},
    }
    try:
        enrolling = {"plugin": "processes", "workers": plan.enrol_workers}
        made = {**PROFILE, "executor": enrolling} if plan.enrol_workers > 1 else PROFILE
        with Engine.create(Profile.from_dict(made), home) as engine:
            console.print(
                f"enrolling {plan.registrants:,} ({plan.enrol_workers} encrypting process(es))"
            )
            seconds = _enrol(engine, gallery, plan.chunk, console)
            results["enrol_per_s"] = plan.registrants / seconds
            results["blocks"] = len(engine.gallery_store.blocks())
            results["gallery_bytes"] = sum(b.size_bytes for b in engine.gallery_store.blocks())
        local: list[Decision] = []
        configs: list[tuple[str, dict[str, Any]]] = [
            ("local", {"plugin": "local"}),
            ("processes-2", {"plugin": "processes", "workers": 2}),
        ]
        configs += [
            (f"ray-{n}", {"plugin": "ray", "shards": n, "address": where, "num_cpus": 0.25})
            for n in plan.shards
        ]
        for label, section in configs:
            console.print(f"{label}: {plan.probes} identifies")
            with _reopen(home, section) as engine:
                timings, decisions = _timed(engine, probe_rows)
                if label == "local":
                    local = decisions
                    found = sum(
                        d.subject_id == f"s{i}" for d, i in zip(decisions, picks, strict=True)
                    )
                    results["rank1_local"] = found / len(picks)
                row = _row(timings, decisions, local)
                if section["plugin"] == "ray":
                    row["restart_s"] = _restart_seconds(engine, probe_rows[0])
            results["executors"][label] = row
            console.print(row)
        rays = [k for k in results["executors"] if k.startswith("ray")]
        base = results["executors"]["processes-2"]["p50_ms"]
        results["ray_overhead_ms"] = {k: results["executors"][k]["p50_ms"] - base for k in rays}
    finally:
        if cluster is not None:
            import ray

            ray.shutdown()
            ray_cluster.stop(cluster)
        shutil.rmtree(home, ignore_errors=True)
    _write(results, plan.output)
    return results


def _write(results: dict[str, Any], output: Path) -> None:
    output.mkdir(parents=True, exist_ok=True)
    (output / "bench-scale.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [
        "# Executors at scale: local, processes, ray",
        "",
        f"`{results['command']}`: {results['dimension']}-d synthetic unit embeddings "
        "(sface), TenSEAL `fast` preset, "
        f"fast scorer, {results['blocks']} blocks ({results['gallery_bytes'] / 1e9:.2f} GB), "
        f"Ray cluster {results['cluster']}; threads pinned to one per process.",
        "",
        f"Enrolment: {results['enrol_per_s']:,.0f} registrants/s (enrol_many in chunks of "
        f"{results['chunk']}, encrypted on {results['enrol_cores']} core(s)). Restart: "
        "seconds from a shard's SIGKILL until "
        "the engine answers again (the shard reloaded its blocks from the store).",
        "",
        "| executor | identify p50 (ms) | p99 (ms) | decisions equal to local | registrants "
        "covered | Ray overhead vs processes-2 (ms) | restart (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, row in results["executors"].items():
        overhead = results["ray_overhead_ms"].get(label)
        cells = [
            label,
            f"{row['p50_ms']:,.1f}",
            f"{row['p99_ms']:,.1f}",
            f"{row['decisions_equal_local']}/{results['probes']}",
            f"{row['registrants_covered']:,}",
            "" if overhead is None else f"{overhead:+,.1f}",
            f"{row['restart_s']:.1f}" if "restart_s" in row else "",
        ]
        lines.append(f"| {' | '.join(cells)} |")
    (output / "bench-scale.md").write_text("\n".join([*lines, ""]))
    plt = pyplot()
    if plt is None:  # no matplotlib: the tables only
        return
    figure, axis = plt.subplots(figsize=(7, 3.5))
    labels = list(results["executors"])
    rows = [results["executors"][k] for k in labels]
    x = np.arange(len(labels))
    axis.bar(x - 0.2, [r["p50_ms"] for r in rows], 0.4, label="p50")
    axis.bar(x + 0.2, [r["p99_ms"] for r in rows], 0.4, label="p99")
    axis.set_xticks(x, labels)
    axis.set_ylabel("identify (ms)")
    axis.set_title(f"{results['registrants']:,} registrants, {results['dimension']}-d")
    axis.legend()
    figure.tight_layout()
    figure.savefig(output / "bench-scale.png", dpi=110)
    plt.close(figure)
