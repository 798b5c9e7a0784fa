"""``frip bench cluster``: latency and accuracy of routed search against exhaustive search.

Gallery: lfw-dev's 200 multi-image identities (enrolled from their first usable image,
as every measurement splits lfw-dev: :mod:`frip_eval.data`) plus
synthetic distractors drawn from a Gaussian fitted to lfw-dev's own embeddings, up to N
registrants. Probes: the 400 other images of enrolled people (mated) and the 120
single-image people (unknown). Accuracy is measured over every probe with the plaintext
reference backend (whose decisions equal TenSEAL's: checked again here on the timed
probes); latency is measured with TenSEAL on a sample of probes, in the same run.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from frip_engine.engine import Engine, EnrolItem
from frip_engine.profile import Profile
from frip_eval.data import LfwSplit, distractors, lfw_split
from frip_eval.evaluation import decision_scores
from frip_eval.plots import pyplot
from frip_eval.threads import pin_threads

FanOut = int | str


def _profile(name: str, clusterer: dict[str, Any], he: dict[str, Any]) -> Profile:
    engine: dict[str, Any] = {"name": name}
    if he["plugin"] == "plaintext":
        engine["insecure"] = True
    return Profile.from_dict(
        {"engine": engine, "he": he, "clusterer": clusterer, "key_store": {"plugin": "memory"}}
    )


def _enrol(engine: Engine, gallery: np.ndarray, console: Console) -> float:
    items = [EnrolItem(f"g{i}", embeddings=[v]) for i, v in enumerate(gallery)]
    start = time.perf_counter()
    with Progress(console=console, transient=True, disable=not console.is_terminal) as bar:
        task = bar.add_task(f"enrolling {len(items):,} into {engine.name}", total=len(items))
        report = engine.enrol_many(items, progress=lambda _s: bar.advance(task))
    if report.failed:
        raise RuntimeError(f"benchmark enrolment failed: {list(report.failed.items())[:3]}")
    return len(items) / (time.perf_counter() - start)


def _accuracy(
    engine: Engine, probes: list[tuple[np.ndarray, str | None]], fan_out: FanOut, lfw: LfwSplit
) -> dict[str, Any]:
    decisions = [engine.identify(embedding=p, probe_clusters=fan_out) for p, _ in probes]
    mated = [(d, t) for d, (_, t) in zip(decisions, probes, strict=True) if t is not None]
    unknown = [d for d, (_, t) in zip(decisions, probes, strict=True) if t is None]
    scores = decision_scores(mated, unknown, lfw.failed_mated, lfw.failed_non_mated)
    return {
        "rank1": scores.rank1,
        "fnir": scores.fnir(engine.threshold),
        "fpir": scores.fpir(engine.threshold),
        "top1": [d.candidates[0].subject_id for d in decisions],
        "blocks_scored": float(np.mean([d.blocks_scored for d in decisions])),
    }


def _latency(
    engine: Engine, reference: Engine, probes: list[np.ndarray], fan_out: FanOut
) -> dict[str, Any]:
    engine.identify(embedding=probes[0], probe_clusters="all")  # load every block once
    times, same = [], 0
    stages: dict[str, list[float]] = {}
    for probe in probes:
        decision = engine.identify(embedding=probe, probe_clusters=fan_out)
        plain = reference.identify(embedding=probe, probe_clusters=fan_out)
        same += (decision.subject_id, decision.candidates[0].subject_id) == (
            plain.subject_id,
            plain.candidates[0].subject_id,
        )
        times.append(decision.timings["total"])
        for stage, seconds in decision.timings.items():
            stages.setdefault(stage, []).append(seconds)
    return {
        "latency_ms_mean": 1000 * float(np.mean(times)),
        "latency_ms_p50": 1000 * float(np.median(times)),
        "stages_ms": {k: 1000 * float(np.mean(v)) for k, v in stages.items()},
        "he_equals_plaintext": f"{same}/{len(probes)}",
    }


def run(
    sizes: list[int],
    fan_outs: list[FanOut],
    timed_probes: int,
    data: Path | None,
    output: Path,
    preset: str,
    console: Console,
    lfw: LfwSplit | None = None,
) -> dict[str, Any]:
    """Measure every size x clusterer x fan-out; write ``cluster.json``, ``.md`` and
    ``.png`` to ``output`` and return the results. ``lfw``: lfw-dev already embedded by the
    default extractor (else it is embedded here, from ``data`` or found)."""
    pin_threads()
    if lfw is None:
        lfw = lfw_split(data, console)
    output.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="frip-bench-"))
    home = work / "home"
    real, per_image = lfw.everything, lfw.per_image
    subject_of = {k: f"g{i}" for i, k in enumerate(lfw.ids)}  # the gallery's ids
    probes: list[tuple[np.ndarray, str | None]] = [
        (vector, None if who is None else subject_of[who])
        for vector, who in zip(lfw.probes, lfw.truth, strict=True)
    ]
    timed = [p for p, t in probes if t is not None][:timed_probes]
    results: dict[str, Any] = {"preset": preset, "probes": len(probes), "scenarios": []}
    try:
        for size in sizes:
            gallery = np.vstack(
                [
                    lfw.gallery,
                    distractors(real, size - len(lfw.ids), seed=size),
                ]
            )
            setups: list[tuple[str, dict[str, Any]]] = [
                ("exhaustive", {"plugin": "single"}),
                ("faiss k-means <= 1 block", {"plugin": "faiss"}),
            ]
            if size <= 1000:
                setups.append(
                    (
                        "paper: 5 kmeans <= 120",
                        {"plugin": "kmeans", "clusters": 5, "max_size": 120},
                    )
                )
            baseline: list[str] | None = None
            for label, clusterer in setups:
                tag = f"n{size}-{len(results['scenarios'])}"
                plain = Engine.create(
                    _profile(f"p-{tag}", clusterer, {"plugin": "plaintext"}), home
                )
                he = Engine.create(
                    _profile(f"h-{tag}", clusterer, {"plugin": "tenseal", "preset": preset}), home
                )
                _enrol(plain, gallery, console)
                rate = _enrol(he, gallery, console)
                sizes_used = sorted((b.used for b in he.gallery_store.blocks()), reverse=True)
                outs = fan_outs if clusterer["plugin"] != "single" else ["all"]
                for fan_out in outs:
                    accuracy = _accuracy(plain, probes, fan_out, lfw)
                    top1 = accuracy.pop("top1")
                    if baseline is None:
                        baseline = top1
                    row = {
                        "registrants": size,
                        "setup": label,
                        "probe_clusters": fan_out,
                        "partitions": len(sizes_used),
                        "cluster_sizes": sizes_used,
                        "enrol_per_second": rate,
                        "decisions_equal_exhaustive": _agreement(top1, baseline),
                        **accuracy,
                        **_latency(he, plain, timed, fan_out),
                    }
                    results["scenarios"].append(row)
                    console.print(
                        f"N={size:,} {label} p={fan_out}: rank-1 {row['rank1']:.4f}, "
                        f"{row['latency_ms_mean']:.0f} ms, {row['blocks_scored']:.1f} blocks"
                    )
                plain.close()
                he.close()
                shutil.rmtree(home / "engines" / f"h-{tag}", ignore_errors=True)
                shutil.rmtree(home / "engines" / f"p-{tag}", ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["extraction_ms_per_image"] = 1000 * per_image
    _ratios(results)
    (output / "cluster.json").write_text(json.dumps(results, indent=2))
    (output / "cluster.md").write_text(_markdown(results))
    _plot(results, output / "cluster.png")
    _print(results, console, output)
    return results


def _agreement(top1: list[str], baseline: list[str]) -> str:
    return f"{sum(a == b for a, b in zip(top1, baseline, strict=True))}/{len(top1)}"


def _ratios(results: dict[str, Any]) -> None:
    """Speed-up and rank-1 change of every routed row against exhaustive search at its N."""
    exhaustive = {r["registrants"]: r for r in results["scenarios"] if r["setup"] == "exhaustive"}
    for row in results["scenarios"]:
        base = exhaustive[row["registrants"]]
        row["speedup_vs_exhaustive"] = base["latency_ms_mean"] / row["latency_ms_mean"]
        row["rank1_change_points"] = 100 * (row["rank1"] - base["rank1"])


def _markdown(results: dict[str, Any]) -> str:
    lines = [
        f"Routed vs exhaustive search (TenSEAL `{results['preset']}` latency, "
        f"{results['probes']} lfw-dev probes for accuracy).",
        "",
        "| N | setup | p | partitions | rank-1 | change (points) | FNIR | FPIR | latency ms "
        "| speed-up | same top-1 as exhaustive | HE = plaintext |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["scenarios"]:
        lines.append(
            f"| {r['registrants']:,} | {r['setup']} | {r['probe_clusters']} | {r['partitions']} | "
            f"{r['rank1']:.4f} | {r['rank1_change_points']:+.2f} | "
            f"{r['fnir']:.4f} | {r['fpir']:.4f} | "
            f"{r['latency_ms_mean']:.0f} | {r['speedup_vs_exhaustive']:.1f}x | "
            f"{r['decisions_equal_exhaustive']} | {r['he_equals_plaintext']} |"
        )
    return "\n".join(lines) + "\n"


def _plot(results: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    if plt is None:
        return
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    series = sorted({(r["registrants"], r["setup"]) for r in results["scenarios"]})
    for size, setup in series:
        rows = [r for r in results["scenarios"] if (r["registrants"], r["setup"]) == (size, setup)]
        rows.sort(key=lambda r: r["latency_ms_mean"])
        left.plot(
            [r["latency_ms_mean"] for r in rows],
            [r["rank1"] for r in rows],
            "s" if setup == "exhaustive" else "o-",
            label=f"N={size:,}, {setup}",
        )
        for r in rows:
            left.annotate(
                f"p={r['probe_clusters']}", (r["latency_ms_mean"], r["rank1"]), fontsize=7
            )
    left.set_xscale("log")
    left.set_xlabel("identify latency, ms (TenSEAL, log scale)")
    left.set_ylabel("rank-1 on lfw-dev mated probes")
    left.set_title("routed search: latency vs accuracy")
    left.legend(fontsize=7)
    largest = max(results["scenarios"], key=lambda r: (r["registrants"], r["partitions"]))
    right.bar(range(len(largest["cluster_sizes"])), largest["cluster_sizes"])
    right.set_xlabel("cluster (largest first)")
    right.set_ylabel("registrants")
    right.set_title(f"cluster sizes at N={largest['registrants']:,} ({largest['setup']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _print(results: dict[str, Any], console: Console, output: Path) -> None:
    table = Table(title="frip bench cluster")
    for column in (
        "N",
        "setup",
        "p",
        "parts",
        "rank-1",
        "Δ pts",
        "ms",
        "speed-up",
        "=exh",
        "HE=plain",
    ):
        table.add_column(column, no_wrap=True)
    for r in results["scenarios"]:
        table.add_row(
            f"{r['registrants']:,}",
            r["setup"],
            str(r["probe_clusters"]),
            str(r["partitions"]),
            f"{r['rank1']:.4f}",
            f"{r['rank1_change_points']:+.2f}",
            f"{r['latency_ms_mean']:.0f}",
            f"{r['speedup_vs_exhaustive']:.1f}x",
            r["decisions_equal_exhaustive"],
            r["he_equals_plaintext"],
        )
    console.print(table, width=max(console.width, 130))
    console.print(
        f"saved {output / 'cluster.json'}, {output / 'cluster.md'}, {output / 'cluster.png'}"
    )
