"""The main job on embedded defaults: lfw-dev through an encrypted engine and its plaintext twin.

lfw-dev is read, embedded and split as every measurement does (:mod:`frip_eval.data`):
its 200 multi-image identities are enrolled from their first usable image, their other
images are mated probes and the 120 single-image identities are unknowns; rank-1, FNIR
and FPIR come from :class:`frip_eval.evaluation.SearchScores`, so they are the figures
``frip eval identify`` gives for the same extractor. Every encrypted decision is compared
with the plaintext reference on the same embeddings.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import defaultdict
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import Progress, TaskID
from rich.table import Table

from frip_engine.decision import Decision
from frip_engine.engine import Engine, EnrolItem
from frip_engine.errors import FripError, InputError
from frip_engine.profile import Profile
from frip_eval.data import LfwSplit, find_lfw_dev, lfw_split
from frip_eval.evaluation import decision_scores
from frip_eval.plots import pyplot

DEMO_PASSPHRASE = "frip-demo-only-passphrase"
REJECT_BUDGET = 0.05  # the operating point: at most 5% of mated probes rejected


def run_demo(
    data: Path | None,
    output: Path,
    preset: str,
    console: Console,
    lfw: LfwSplit | None = None,
) -> dict[str, Any]:
    """Run lfw-dev (``data``, else found) through a fresh encrypted engine and its
    plaintext twin under ``output/home``; write ``demo.json`` and ``demo.png`` to
    ``output``, print the tables on ``console`` and return the summary. ``lfw``: lfw-dev
    already embedded by the engine's extractor (else the engine's extractor embeds it);
    InputError when another extractor made it or lfw-dev is not found."""
    root = find_lfw_dev(data) if lfw is None else lfw.dataset.root
    if "FRIP_PASSPHRASE" not in os.environ:
        os.environ["FRIP_PASSPHRASE"] = DEMO_PASSPHRASE
        console.print(
            "FRIP_PASSPHRASE not set: using the demo's throw-away passphrase", style="yellow"
        )
    home = output / "home"
    shutil.rmtree(home, ignore_errors=True)
    output.mkdir(parents=True, exist_ok=True)
    encrypted = Engine.create(
        Profile.from_dict({"engine": {"name": "lfw-demo"}, "he": {"preset": preset}}), home
    )
    reference = Engine.create(_plaintext_profile("lfw-demo-plaintext"), home)
    extractor = encrypted.parts.extractor
    if lfw is None:
        lfw = lfw_split(root, console, extractor)
    elif lfw.embedded.extractor != extractor.name:
        raise InputError(
            f"the demo engine extracts with {extractor.name}, "
            f"these embeddings are {lfw.embedded.extractor}'s"
        )
    console.print(
        f"lfw-dev: {len(lfw.dataset.paths)} images of {len(set(lfw.dataset.labels))} "
        f"identities from {root}\n"
        f"encrypted engine: {encrypted.parts.he_backend.description}"
    )
    enrol = [EnrolItem(k, embeddings=[v]) for k, v in zip(lfw.ids, lfw.gallery, strict=True)]
    for engine in (encrypted, reference):
        with Progress(console=console, transient=True, disable=not console.is_terminal) as bar:
            task = bar.add_task(f"enrolling into {engine.name}", total=len(enrol))
            advance = partial(_advance, bar, task)
            report = engine.enrol_many(enrol, progress=advance)
        if report.failed:
            raise FripError(f"demo enrolment failed: {report.failed}")
    pairs: list[tuple[str | None, Decision, Decision]] = []
    with Progress(console=console, transient=True, disable=not console.is_terminal) as bar:
        task = bar.add_task("identifying (encrypted and plaintext)", total=len(lfw.truth))
        for vector, truth in zip(lfw.probes, lfw.truth, strict=True):
            pairs.append(
                (
                    truth,
                    encrypted.identify(embedding=vector, top_k=5),
                    reference.identify(embedding=vector, top_k=5),
                )
            )
            bar.advance(task)
    stats = encrypted.stats()
    encrypted.close()
    reference.close()
    summary = _summarise(pairs, lfw, stats)
    summary["extraction_ms_per_image"] = 1000 * lfw.per_image
    (output / "demo.json").write_text(json.dumps(summary, indent=2))
    plot = _plot(pairs, summary, output)
    _print(summary, console, output, plot)
    return summary


def _plaintext_profile(name: str) -> Profile:
    """The plaintext reference engine (templates in the clear, memory key store) the
    encrypted decisions are checked against."""
    return Profile.from_dict(
        {
            "engine": {"name": name, "insecure": True},
            "he": {"plugin": "plaintext"},
            "key_store": {"plugin": "memory"},
        }
    )


def _advance(bar: Progress, task: TaskID, _subject: str) -> None:
    bar.advance(task)


# Plaintext scores closer than this cannot be ordered under CKKS (its score error here is
# ~1e-5, `max_score_difference_vs_plaintext`): their order is a tie, not a decision.
CKKS_TIE = 1e-4


def _tie(plain: Decision) -> bool:
    """Whether plaintext's two best candidates are within CKKS_TIE of each other."""
    top = plain.candidates
    return len(top) > 1 and top[0].score - top[1].score < CKKS_TIE


def _summarise(
    pairs: list[tuple[str | None, Decision, Decision]],
    lfw: LfwSplit,
    stats: dict[str, Any],
) -> dict[str, Any]:
    mated = [(e, t) for t, e, _ in pairs if t is not None]
    unknown = [e for t, e, _ in pairs if t is None]
    threshold = pairs[0][1].threshold
    scores = decision_scores(mated, unknown, lfw.failed_mated, lfw.failed_non_mated)
    # A mated probe passes at threshold x when its best candidate is right and scores >= x.
    genuine, impostor = scores.mate_score, scores.best_non_mated
    operating = float(np.quantile(genuine, REJECT_BUDGET, method="lower"))
    # Every decision (matched, whom) must be equal; the best candidate of each probe too,
    # except where plaintext's two best are closer than CKKS can tell apart (a tie).
    ties = [
        _tie(r) and e.candidates[0].subject_id != r.candidates[0].subject_id for _, e, r in pairs
    ]
    same = [
        (e.matched, e.subject_id) == (r.matched, r.subject_id)
        and (e.candidates[0].subject_id == r.candidates[0].subject_id or tie)
        for (_, e, r), tie in zip(pairs, ties, strict=True)
    ]
    max_diff = max(abs(e.candidates[0].score - r.candidates[0].score) for _, e, r in pairs)
    timings: dict[str, list[float]] = defaultdict(list)
    for _, e, _ in pairs:
        for stage, seconds in e.timings.items():
            timings[stage].append(seconds)
    return {
        "registrants": len({t for _, t in mated}) and pairs[0][1].registrants,
        "mated_probes": len(mated),
        "unknown_probes": len(unknown),
        "extraction_failures": lfw.failures,
        "threshold": threshold,
        "rank1": scores.rank1,
        "fnir_at_threshold": scores.fnir(threshold),
        "false_accepts_at_threshold": int(np.sum(impostor >= threshold)),
        "operating_threshold_5pct_reject": operating,
        "false_accepts_at_operating_threshold": int(np.sum(impostor >= operating)),
        "max_unknown_score": float(impostor.max()),
        "decisions_equal_plaintext": int(sum(same)),
        "decisions_compared": len(same),
        "top1_ties_within_ckks_noise": int(sum(ties)),
        "max_score_difference_vs_plaintext": float(max_diff),
        "timings_ms": {
            stage: {
                "mean": 1000 * float(np.mean(v)),
                "p50": 1000 * float(np.median(v)),
                "p95": 1000 * float(np.quantile(v, 0.95)),
            }
            for stage, v in timings.items()
        },
        "gallery": {k: stats[k] for k in ("he", "subjects", "blocks", "gallery_bytes")},
        "scores": {
            "genuine": genuine[np.isfinite(genuine)].tolist(),
            "unknown": impostor[np.isfinite(impostor)].tolist(),
        },
    }


def _plot(
    pairs: list[tuple[str | None, Decision, Decision]], summary: dict[str, Any], output: Path
) -> Path | None:
    plt = pyplot()
    if plt is None:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    bins = np.linspace(-0.2, 1.0, 61)
    left.hist(
        summary["scores"]["genuine"], bins=bins, alpha=0.7, label="mated probes (correct top-1)"
    )
    left.hist(
        summary["scores"]["unknown"], bins=bins, alpha=0.7, label="unknown people (best score)"
    )
    left.axvline(summary["threshold"], color="k", linestyle="--", label="engine threshold")
    left.axvline(
        summary["operating_threshold_5pct_reject"],
        color="r",
        linestyle=":",
        label="5% reject point",
    )
    left.set_xlabel("cosine score, decrypted from CKKS")
    left.set_ylabel("probes")
    left.set_title(f"lfw-dev: rank-1 {summary['rank1']:.3f}, {summary['registrants']} registrants")
    left.legend(fontsize=8)
    stages = [s for s in summary["timings_ms"] if s != "total"]
    means = [summary["timings_ms"][s]["mean"] for s in stages]
    right.barh(stages, means)
    right.set_xlabel("mean ms per identify")
    right.set_title(f"identify timing, total {summary['timings_ms']['total']['mean']:.1f} ms")
    fig.tight_layout()
    path = output / "demo.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _print(summary: dict[str, Any], console: Console, output: Path, plot: Path | None) -> None:
    table = Table(title="lfw-dev through the encrypted engine", show_header=False)
    rows = [
        ("registrants (CKKS-encrypted)", summary["registrants"]),
        (
            "mated probes / unknown probes",
            f"{summary['mated_probes']} / {summary['unknown_probes']}",
        ),
        ("images with no usable face", len(summary["extraction_failures"])),
        (
            "face detection + alignment + embedding",
            f"{summary['extraction_ms_per_image']:.1f} ms/image",
        ),
        ("rank-1 on mated probes", f"{summary['rank1']:.4f}"),
        ("engine threshold", f"{summary['threshold']:.3f}"),
        ("mated rejected at it (FNIR)", f"{summary['fnir_at_threshold']:.4f}"),
        ("unknowns accepted at it", summary["false_accepts_at_threshold"]),
        (
            "threshold with <= 5% mated rejected",
            f"{summary['operating_threshold_5pct_reject']:.3f}",
        ),
        ("unknowns accepted there", summary["false_accepts_at_operating_threshold"]),
        ("highest unknown score", f"{summary['max_unknown_score']:.3f}"),
        (
            "decisions equal to plaintext",
            f"{summary['decisions_equal_plaintext']} / {summary['decisions_compared']}",
        ),
        (
            "best candidate tied under CKKS noise",
            str(summary["top1_ties_within_ckks_noise"]),
        ),
        ("largest score difference", f"{summary['max_score_difference_vs_plaintext']:.2e}"),
        (
            "gallery",
            f"{summary['gallery']['gallery_bytes'] / 1e6:.1f} MB, {summary['gallery']['he']}",
        ),
    ]
    for key, value in rows:
        table.add_row(key, str(value))
    console.print(table)
    timing = Table(title="identify timing per probe (ms), Table II stages")
    for column in ("stage", "mean", "p50", "p95"):
        timing.add_column(column, justify="right" if column != "stage" else "left")
    for stage, v in summary["timings_ms"].items():
        timing.add_row(stage, f"{v['mean']:.2f}", f"{v['p50']:.2f}", f"{v['p95']:.2f}")
    console.print(timing)
    console.print(f"results: {output / 'demo.json'}" + (f", plot: {plot}" if plot else ""))
