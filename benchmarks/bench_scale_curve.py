"""Scaling curve of the ray executor over 1, 2 and 3 Ray nodes on this one machine, at a
fixed gallery per node (issue 17; the measured half of docs/scale.md's 10,000,000 plan).

A head node (the coordinator: this process, no shard) and worker nodes started one by one
with ``frip_eval.ray_cluster`` (one CPU each, custom resource ``node<i>``). For n nodes the
engine holds ``n * --per-node`` synthetic 128-d registrants (TenSEAL ``fast``, fast scorer;
enrolled in chunks of 4096, encrypted in 2 worker processes) and is reopened on the ray
executor with n shards pinned one per node (``placement``); ``--probes`` timed identifies
near enrolled subjects give p50/p99, every decision checked against the local executor's
on the same gallery. All nodes share this machine's cores, so the curve measures what
adding a node costs the coordinator (fan-out, merge, Ray), not what a node's own cores add.

    PYTHONPATH=.:plugins python benchmarks/bench_scale_curve.py --per-node 50000 \\
        --probes 20 --output docs

writes ``bench-scale-curve.json`` and ``.md`` under ``--output``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from frip_eval import ray_cluster
from frip_eval.bench_scale import PROFILE, _enrol, _probes, _reopen, _row, _timed, _vectors
from frip_eval.threads import pin_threads
from rich.console import Console

from frip_engine.engine import Engine
from frip_engine.profile import Profile


def run(per_node: int, probes: int, nodes: list[int], output: Path) -> dict[str, Any]:
    import ray
    from frip_plugins.executors.ray import _connect

    pin_threads()
    console = Console(markup=False, highlight=False)
    home = Path(tempfile.mkdtemp(prefix="frip-scale-curve-"))
    gallery = _vectors(per_node * max(nodes), 0)
    cluster = ray_cluster.start((), head_cpus=1)
    results: dict[str, Any] = {
        "command": f"python benchmarks/bench_scale_curve.py --per-node {per_node} --probes "
        f"{probes} --nodes {' '.join(map(str, nodes))} --output {output}",
        "per_node": per_node,
        "probes": probes,
        "cpus_on_machine": os.cpu_count(),
        "points": [],
    }
    try:
        _connect(cluster.address)
        made = Profile.from_dict({**PROFILE, "executor": {"plugin": "processes", "workers": 2}})
        Engine.create(made, home).close()
        enrolled, started = 0, 0
        for count in nodes:
            while started < count:
                cluster.start_worker(f"node{started}")
                started += 1
            cluster.wait_nodes(1 + started)
            with _reopen(home, {"plugin": "processes", "workers": 2}) as engine:
                target = per_node * count
                seconds = _enrol(engine, gallery[enrolled:target], 4096, console, enrolled)
                rate = (target - enrolled) / seconds
                enrolled = target
            _, probe_rows = _probes(gallery[:enrolled], probes)
            with _reopen(home, {"plugin": "local"}) as engine:
                local_ms, local = _timed(engine, probe_rows)
            section = {
                "plugin": "ray",
                "shards": count,
                "address": cluster.address,
                "placement": [f"node{i}" for i in range(count)],
                "num_cpus": 0.25,
            }
            with _reopen(home, section) as engine:
                timings, decisions = _timed(engine, probe_rows)
            point = {
                "nodes": count,
                "registrants": enrolled,
                "enrol_per_s": rate,
                "local_p50_ms": sorted(local_ms)[len(local_ms) // 2],
                **_row(timings, decisions, local),
                "load_average": os.getloadavg()[0],
            }
            results["points"].append(point)
            console.print(point)
            _write(results, output)  # each point as it is measured
    finally:
        ray.shutdown()
        ray_cluster.stop(cluster)
        shutil.rmtree(home, ignore_errors=True)
    return results


def _write(results: dict[str, Any], output: Path) -> None:
    output.mkdir(parents=True, exist_ok=True)
    (output / "bench-scale-curve.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [
        "# Ray executor: 1-3 nodes on one machine, fixed gallery per node",
        "",
        f"`{results['command']}`: {results['per_node']:,} registrants per node (128-d, "
        f"TenSEAL `fast`, fast scorer), one shard per node pinned by placement, the head "
        f"node coordinating; all nodes share this machine's {results['cpus_on_machine']} "
        "cores (and three other helpers' work).",
        "",
        "| nodes | registrants | ray p50 (ms) | ray p99 (ms) | local p50 (ms) | decisions "
        "equal to local | registrants covered | load average |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for p in results["points"]:
        lines.append(
            f"| {p['nodes']} | {p['registrants']:,} | {p['p50_ms']:,.0f} | {p['p99_ms']:,.0f} "
            f"| {p['local_p50_ms']:,.0f} | {p['decisions_equal_local']}/{results['probes']} "
            f"| {p['registrants_covered']:,} | {p['load_average']:.1f} |"
        )
    (output / "bench-scale-curve.md").write_text("\n".join([*lines, ""]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-node", type=int, default=50_000)
    parser.add_argument("--probes", type=int, default=20)
    parser.add_argument("--nodes", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--output", type=Path, default=Path("results/bench"))
    args = parser.parse_args()
    run(args.per_node, args.probes, args.nodes, args.output)


if __name__ == "__main__":
    main()
