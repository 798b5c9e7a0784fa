"""Measuring extractors: verification (1:1), identification (1:N) and throughput.

Verification follows ISO/IEC 19795-1: FMR/FNMR over genuine and impostor comparisons,
EER, FNMR at FMR 1% and 0.1%, ROC and DET curves (scikit-learn's ``roc_curve`` and
``DetCurveDisplay``). Identification: rank-1, the CMC, and FNIR at FPIR for a gallery of
one image per identity, mated searches from the identity's other images and non-mated
searches from identities not enrolled. A face that cannot be extracted counts against the
extractor (a genuine comparison or mated search that fails, an impostor or non-mated
search that is rejected), so a detector cannot improve its figures by giving up.

The data set, its embeddings and the split come from :mod:`frip_eval.data`; every rank-1,
FNIR and FPIR (here, in calibration, the demo and the benchmarks) is read from one
:class:`SearchScores`. Embeddings live in memory only, for one run; the outputs are
metrics, curves sampled at a few hundred points and plots, never embeddings or per-image
scores.
"""

from __future__ import annotations

import csv
import json
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from frip_engine.decision import Decision
from frip_engine.errors import InputError, MissingFileError
from frip_engine.images import load_image
from frip_eval.data import (
    Dataset,
    Embedded,
    Protocol,
    embed_dataset,
    embed_with,
    identification_protocol,
    make_extractor,
)
from frip_eval.plots import pyplot
from frip_eval.threads import pin_opencv

FMR_TARGETS = (0.01, 0.001)
FPIR_TARGETS = (0.01, 0.05, 0.1)
CMC_RANKS = 20
CURVE_POINTS = 300
FAILED = -1.0  # the score a comparison with an unextractable image gets


def read_pairs(path: Path, dataset: Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Comparison pairs as index arrays (a, b) into the dataset and whether each is genuine.

    Accepts a CSV with ``path_a,path_b`` columns (paths relative to the dataset's root; an
    optional ``same`` column overrides the labels) or LFW's ``pairs.txt`` lines
    (``name i j`` genuine, ``name i other j`` impostor).
    """
    if not path.is_file():
        raise MissingFileError(f"pairs file {path} does not exist")
    where = {p.resolve(): i for i, p in enumerate(dataset.paths)}
    text = path.read_text(encoding="utf-8")
    rows: list[tuple[Path, Path, bool | None]] = []
    if text.lstrip().lower().startswith("path_a"):
        for line, row in enumerate(csv.DictReader(text.splitlines()), start=2):
            if not row.get("path_a") or not row.get("path_b"):
                raise InputError(f"{path}:{line}: empty path_a or path_b")
            same = row.get("same")
            flag = None if same in (None, "") else same.strip().lower() in ("1", "true", "yes")
            rows.append((dataset.root / row["path_a"], dataset.root / row["path_b"], flag))
    else:
        for line, raw in enumerate(text.splitlines(), start=1):
            parts = raw.split()
            if len(parts) == 3:
                name, n_a, n_b = parts
                rows.append((_lfw(dataset.root, name, n_a), _lfw(dataset.root, name, n_b), True))
            elif len(parts) == 4:
                name_a, n_a, name_b, n_b = parts
                rows.append(
                    (_lfw(dataset.root, name_a, n_a), _lfw(dataset.root, name_b, n_b), False)
                )
            elif len(parts) not in (0, 1, 2):  # header lines of pairs.txt have 1-2 numbers
                raise InputError(f"{path}:{line}: not a pair line: {raw.strip()!r}")
    if not rows:
        raise InputError(f"{path} lists no pairs")
    a_idx: list[int] = []
    b_idx: list[int] = []
    genuine: list[bool] = []
    for image_a, image_b, flag in rows:
        for image in (image_a, image_b):
            if image.resolve() not in where:
                raise InputError(f"{path}: {image} is not one of the dataset's images")
        ia, ib = where[image_a.resolve()], where[image_b.resolve()]
        a_idx.append(ia)
        b_idx.append(ib)
        genuine.append(dataset.labels[ia] == dataset.labels[ib] if flag is None else flag)
    return np.array(a_idx), np.array(b_idx), np.array(genuine, dtype=bool)


def _lfw(root: Path, name: str, number: str) -> Path:
    try:
        return root / name / f"{name}_{int(number):04d}.jpg"
    except ValueError as exc:
        raise InputError(f"pairs: {number!r} is not an image number") from exc


# ----------------------------------------------------------------------------- verification
def comparison_scores(
    embedded: Embedded, labels: Sequence[str], pairs: tuple[np.ndarray, ...] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Genuine and impostor cosine scores: the given pairs, or every pair of images."""
    if pairs is None:
        a, b = np.triu_indices(len(labels), k=1)
        names = np.asarray(labels)
        genuine = names[a] == names[b]
    else:
        a, b, genuine = pairs
    scores = np.einsum("ij,ij->i", embedded.matrix[a], embedded.matrix[b])
    scores[~(embedded.ok[a] & embedded.ok[b])] = FAILED
    return scores[genuine], scores[~genuine]


def verification_metrics(genuine: np.ndarray, impostor: np.ndarray) -> dict[str, Any]:
    """EER, FNMR at FMR targets, and the ROC/DET curves, from scikit-learn's roc_curve."""
    from sklearn.metrics import roc_curve

    if not len(genuine) or not len(impostor):
        raise InputError("verification needs genuine and impostor comparisons")
    labels = np.r_[np.ones(len(genuine)), np.zeros(len(impostor))]
    fmr, tmr, thresholds = roc_curve(labels, np.r_[genuine, impostor], drop_intermediate=False)
    fnmr = 1.0 - tmr
    eer, eer_threshold = _eer(fmr, fnmr, thresholds)
    at: dict[str, dict[str, float]] = {}
    for target in FMR_TARGETS:
        allowed = np.nonzero(fmr <= target)[0]
        best = allowed[np.argmin(fnmr[allowed])]
        at[f"{target:g}"] = {
            "fnmr": float(fnmr[best]),
            "fmr": float(fmr[best]),
            "threshold": float(thresholds[best]),
        }
    sample = _sample(fmr)
    return {
        "genuine_comparisons": len(genuine),
        "impostor_comparisons": len(impostor),
        "eer": eer,
        "eer_threshold": eer_threshold,
        "fnmr_at_fmr": at,
        "roc": {
            "fmr": fmr[sample].tolist(),
            "fnmr": fnmr[sample].tolist(),
            "threshold": np.clip(thresholds[sample], -1.0, 1.0).tolist(),
        },
    }


def _eer(fmr: np.ndarray, fnmr: np.ndarray, thresholds: np.ndarray) -> tuple[float, float]:
    """Where FNMR and FMR cross, interpolated linearly between the two bracketing points."""
    gap = fnmr - fmr  # falls from >= 0 to <= 0 as the threshold falls
    after = int(np.argmax(gap <= 0))
    if after == 0:
        return float(fmr[0]), float(np.clip(thresholds[0], -1.0, 1.0))
    before = after - 1
    span = gap[before] - gap[after]
    t = gap[before] / span if span else 0.0
    eer = fmr[before] + t * (fmr[after] - fmr[before])
    threshold = thresholds[before] + t * (thresholds[after] - thresholds[before])
    return float(eer), float(np.clip(threshold, -1.0, 1.0))


def _sample(fmr: np.ndarray) -> np.ndarray:
    """Curve points to keep: log-spaced in FMR (where the operating points are) and even."""
    n = len(fmr)
    smallest = max(float(fmr[fmr > 0].min()) if np.any(fmr > 0) else 1.0, 1e-9)
    targets = np.logspace(np.log10(smallest), 0, CURVE_POINTS // 2)
    logs = np.clip(np.searchsorted(fmr, targets, side="right") - 1, 0, n - 1)
    even = np.linspace(0, n - 1, min(n, CURVE_POINTS // 2)).round().astype(int)
    return np.unique(np.r_[logs, even, np.clip(logs + 1, 0, n - 1)])


# ----------------------------------------------------------------------------- identification
@dataclass(frozen=True)
class SearchScores:
    """Open-set search outcomes, the one source of rank-1, the CMC, FNIR and FPIR: per
    mated search the mate's score (-inf where the face could not be extracted) and whether
    the mate ranked first, and where the whole gallery was ranked the mate's rank (inf
    where extraction failed); per non-mated search the best score over the gallery (-inf
    where extraction failed: the search is rejected)."""

    mate_score: np.ndarray  # (mated,) float64
    top1_hit: np.ndarray  # (mated,) bool
    best_non_mated: np.ndarray  # (non_mated,) float64
    mate_rank: np.ndarray | None = None  # (mated,) float64, 1 = first; None: rank 1 only

    @property
    def rank1(self) -> float:
        """Mated searches whose mate is the first candidate, whatever its score."""
        return float(np.mean(self.top1_hit))

    def cmc(self, ranks: int) -> list[float]:
        """Mated searches whose mate ranks within 1, 2, ..., ``ranks``. InputError when the
        searches did not rank the whole gallery."""
        if self.mate_rank is None:
            raise InputError("a CMC needs the mate's rank, and these searches know rank 1 only")
        return [float(np.mean(self.mate_rank <= r)) for r in range(1, ranks + 1)]

    def fnir(self, threshold: float) -> float:
        """Mated searches whose mate is not the first candidate at or above ``threshold``."""
        return float(np.mean(~(self.top1_hit & (self.mate_score >= threshold))))

    def fpir(self, threshold: float) -> float:
        """Non-mated searches whose best candidate scores at or above ``threshold`` (0 when
        there are none)."""
        if not len(self.best_non_mated):
            return 0.0
        return float(np.mean(self.best_non_mated >= threshold))

    def failed_where(self, mated: np.ndarray, non_mated: np.ndarray) -> SearchScores:
        """These outcomes with the searches flagged in the (mated,) and (non_mated,) bool
        masks failed: a face that could not be extracted misses its mate and is rejected."""
        mate_score = np.where(mated, -np.inf, self.mate_score)
        rank = None if self.mate_rank is None else np.where(mated, np.inf, self.mate_rank)
        best = np.where(non_mated, -np.inf, self.best_non_mated)
        return SearchScores(mate_score, self.top1_hit & ~mated, best, rank)


def cosine_searches(
    gallery: np.ndarray, mated: np.ndarray, truth: np.ndarray, non_mated: np.ndarray
) -> SearchScores:
    """Exhaustive cosine searches of the (g, d) unit-row ``gallery``: the (m, d) ``mated``
    probes, each with its mate's gallery row in the (m,) ``truth``, and the (n, d)
    ``non_mated`` probes. A mate ties with a rival at rank 1."""
    scores = mated @ gallery.T
    mate_score = scores[np.arange(len(truth)), truth]
    rank = 1.0 + np.sum(scores > mate_score[:, None], axis=1)
    best = (non_mated @ gallery.T).max(axis=1) if len(non_mated) else np.empty(0)
    return SearchScores(mate_score, rank == 1, best, rank)


def protocol_searches(embedded: Embedded, protocol: Protocol) -> SearchScores:
    """The protocol's cosine searches over ``embedded`` (failed extractions count)."""
    matrix = embedded.matrix
    scores = cosine_searches(
        matrix[protocol.gallery],
        matrix[protocol.mated],
        np.asarray(protocol.mated_truth, dtype=int),
        matrix[protocol.non_mated],
    )
    return scores.failed_where(~embedded.ok[protocol.mated], ~embedded.ok[protocol.non_mated])


def decision_scores(
    mated: Sequence[tuple[Decision, str]],
    non_mated: Sequence[Decision],
    failed_mated: int = 0,
    failed_non_mated: int = 0,
) -> SearchScores:
    """The search outcomes of engine decisions: ``mated`` pairs a decision with the
    subject id it should find. A mate's score is known only where it ranks first; a mate
    ranked lower gets -inf, which FNIR counts as missed at every threshold, as it is.
    ``failed_mated`` and ``failed_non_mated`` searches could not be made (no face was
    extracted): missed and rejected, as in :func:`protocol_searches`."""
    hit = [bool(d.candidates) and d.candidates[0].subject_id == t for d, t in mated]
    mate = [d.candidates[0].score if ok else -np.inf for (d, _), ok in zip(mated, hit, strict=True)]
    best = [d.candidates[0].score if d.candidates else -np.inf for d in non_mated]
    return SearchScores(
        np.array(mate + [-np.inf] * failed_mated, dtype=np.float64),
        np.array(hit + [False] * failed_mated, dtype=bool),
        np.array(best + [-np.inf] * failed_non_mated, dtype=np.float64),
    )


def identification_metrics(
    embedded: Embedded, protocol: Protocol, threshold: float
) -> dict[str, Any]:
    """Rank-1, CMC, FNIR at FPIR targets and at ``threshold`` (rank-1 decisions)."""
    scores = protocol_searches(embedded, protocol)
    best_non_mated = scores.best_non_mated
    cmc = scores.cmc(min(CMC_RANKS, len(protocol.gallery)))
    at_fpir: dict[str, dict[str, float]] = {}
    if len(best_non_mated):
        for target in FPIR_TARGETS:
            t = threshold_at_fpir(best_non_mated, target)
            at_fpir[f"{target:g}"] = {
                "fnir": scores.fnir(t),
                "fpir": scores.fpir(t),
                "threshold": t,
            }
    grid = np.linspace(-0.2, 1.0, CURVE_POINTS)
    return {
        "gallery": len(protocol.gallery),
        "mated_searches": len(protocol.mated),
        "non_mated_searches": len(protocol.non_mated),
        "rank1": scores.rank1,
        "cmc": cmc,
        "fnir_at_fpir": at_fpir,
        "at_threshold": {
            "threshold": threshold,
            "fnir": scores.fnir(threshold),
            "fpir": scores.fpir(threshold),
        },
        "max_non_mated_score": float(best_non_mated.max()) if len(best_non_mated) else None,
        "curve": {
            "threshold": grid.tolist(),
            "fnir": [scores.fnir(t) for t in grid],
            "fpir": [scores.fpir(t) for t in grid],
        },
    }


def threshold_at_fpir(best_non_mated: np.ndarray, target: float) -> float:
    """The lowest threshold at which at most ``floor(target * n)`` of the ``n`` non-mated
    searches (their best scores; -inf for a search that failed) return a candidate, a
    candidate being returned when its score is >= the threshold. At least -1."""
    if not len(best_non_mated):
        raise InputError("a threshold at an FPIR needs non-mated searches")
    ordered = np.sort(np.asarray(best_non_mated, dtype=np.float64))[::-1]
    allowed = int(np.floor(target * len(ordered) + 1e-9))
    t = float(np.nextafter(ordered[allowed], np.inf)) if allowed < len(ordered) else -1.0
    return max(t, -1.0)


def compare_backends(
    embedded: Embedded, protocol: Protocol, extractor: str, preset: str = "fast"
) -> dict[str, Any]:
    """Run the protocol through a TenSEAL engine and its plaintext twin; compare decisions.

    Both engines are throw-away (temporary home, in-memory key store); the templates are
    enrolled from the embeddings and every search is decided by each engine's key service.
    """
    from frip_engine.engine import Engine, EnrolItem
    from frip_engine.profile import Profile

    def profile(name: str, encrypted: bool) -> Profile:
        data: dict[str, Any] = {
            "engine": {"name": name, "insecure": not encrypted},
            "extractor": {"plugin": extractor},
            "key_store": {"plugin": "memory"},
            "he": {"plugin": "tenseal", "preset": preset} if encrypted else {"plugin": "plaintext"},
        }
        return Profile.from_dict(data)

    probes = [i for i in protocol.mated + protocol.non_mated if embedded.ok[i]]
    items = [
        EnrolItem(label, embeddings=[embedded.matrix[i]])
        for i, label in zip(protocol.gallery, protocol.gallery_labels, strict=True)
    ]
    with tempfile.TemporaryDirectory(prefix="frip-eval-") as home:
        encrypted = Engine.create(profile("eval-tenseal", True), Path(home))
        reference = Engine.create(profile("eval-plaintext", False), Path(home))
        try:
            for engine in (encrypted, reference):
                report = engine.enrol_many(items)
                if report.failed:
                    raise InputError(f"evaluation enrolment failed: {report.failed}")
            same = 0
            largest = 0.0
            seconds = 0.0
            for i in probes:
                tick = time.perf_counter()
                a = encrypted.identify(embedding=embedded.matrix[i])
                seconds += time.perf_counter() - tick
                b = reference.identify(embedding=embedded.matrix[i])
                first_a = a.candidates[0].subject_id if a.candidates else None
                first_b = b.candidates[0].subject_id if b.candidates else None
                same += (a.matched, a.subject_id, first_a) == (b.matched, b.subject_id, first_b)
                if a.score is not None and b.score is not None:
                    largest = max(largest, abs(a.score - b.score))
            description = encrypted.parts.he_backend.description
        finally:
            encrypted.close()
            reference.close()
    return {
        "he": description,
        "decisions_compared": len(probes),
        "decisions_equal": same,
        "max_score_difference": largest,
        "identify_ms_mean": 1000 * seconds / len(probes) if probes else None,
    }


# ----------------------------------------------------------------------------- runs
def throughput(embedded: Embedded) -> dict[str, Any]:
    n = len(embedded.ok)
    return {
        "images": n,
        "failures": len(embedded.failures),
        "images_per_second": embedded.images_per_second,
        "ms_per_image": {k: 1000 * v / n for k, v in embedded.seconds.items()} if n else {},
        "ms_per_image_total": 1000 * embedded.total_seconds / n if n else None,
    }


def run_verify(
    dataset: Dataset,
    extractors: Sequence[str],
    pairs_file: Path | None = None,
    threads: int = 1,
    progress: Callable[[str, int], None] | None = None,
) -> dict[str, Any]:
    pairs = read_pairs(pairs_file, dataset) if pairs_file else None
    results: dict[str, Any] = {}
    for name in extractors:
        embedded = embed_with(name, dataset, threads, progress)
        genuine, impostor = comparison_scores(embedded, dataset.labels, pairs)
        results[name] = {
            "dimension": embedded.dimension,
            "threshold": embedded.threshold,
            "verification": verification_metrics(genuine, impostor),
            "throughput": throughput(embedded),
            "failures": embedded.failures,
        }
    return _summary("verify", dataset, results, pairs_file)


def run_identify(
    dataset: Dataset,
    extractors: Sequence[str],
    threads: int = 1,
    he_check: bool = True,
    progress: Callable[[str, int], None] | None = None,
) -> dict[str, Any]:
    from frip_engine.calibration import lookup

    results: dict[str, Any] = {}
    for name in extractors:
        embedded = embed_with(name, dataset, threads, progress)
        protocol = identification_protocol(dataset.labels, embedded.ok)
        calibrated = lookup(name, "none", None)  # an unprotected engine's default threshold
        threshold = calibrated.threshold if calibrated else embedded.threshold
        entry: dict[str, Any] = {
            "dimension": embedded.dimension,
            "threshold": threshold,
            "identification": identification_metrics(embedded, protocol, threshold),
            "throughput": throughput(embedded),
            "failures": embedded.failures,
        }
        if he_check:
            entry["encrypted_vs_plaintext"] = compare_backends(embedded, protocol, name)
        results[name] = entry
    return _summary("identify", dataset, results, None)


def _summary(
    mode: str, dataset: Dataset, results: dict[str, Any], pairs: Path | None
) -> dict[str, Any]:
    return {
        "mode": mode,
        "dataset": {
            "root": str(dataset.root),
            "images": len(dataset.paths),
            "identities": len(set(dataset.labels)),
            "pairs": str(pairs) if pairs else "all pairs of images",
        },
        "extractors": results,
    }


def write_outputs(summary: dict[str, Any], output: Path) -> list[Path]:
    """``<mode>.json`` and ``<mode>.png`` in ``output``; returns the files written."""
    output.mkdir(parents=True, exist_ok=True)
    json_path = output / f"{summary['mode']}.json"
    json_path.write_text(json.dumps(summary, indent=2))
    written = [json_path]
    plot = plot_verify if summary["mode"] == "verify" else plot_identify
    png = plot(summary, output / f"{summary['mode']}.png")
    if png:
        written.append(png)
    return written


def plot_verify(summary: dict[str, Any], path: Path) -> Path | None:
    """ROC (FNMR against FMR, log FMR) and DET (probit axes, scikit-learn's) per extractor."""
    plt = pyplot()
    if plt is None:
        return None
    from sklearn.metrics import DetCurveDisplay

    fig, (roc, det) = plt.subplots(1, 2, figsize=(12, 5))
    lowest = 1.0
    for name, entry in summary["extractors"].items():
        curve = entry["verification"]["roc"]
        v = entry["verification"]
        label = f"{name} (EER {v['eer']:.3%}, FNMR@FMR1% {v['fnmr_at_fmr']['0.01']['fnmr']:.3%})"
        fmr = np.maximum(np.asarray(curve["fmr"]), 1e-6)
        tmr = 1 - np.asarray(curve["fnmr"])
        roc.plot(fmr, tmr, label=label)
        lowest = min(lowest, float(tmr[fmr >= 1e-5].min()))
        DetCurveDisplay(fpr=np.asarray(curve["fmr"]), fnr=np.asarray(curve["fnmr"])).plot(
            ax=det, name=name
        )
    roc.set_xscale("log")
    roc.set_xlim(1e-5, 1)
    roc.set_ylim(max(0.0, lowest - 0.02), 1.005)
    roc.set_xlabel("FMR (false match rate)")
    roc.set_ylabel("1 - FNMR (true match rate)")
    roc.set_title("ROC")
    roc.legend(fontsize=8, loc="lower right")
    from scipy.stats import norm

    det.set_xlim(norm.ppf(1e-5), norm.ppf(0.5))
    det.set_ylim(norm.ppf(1e-3), norm.ppf(0.5))
    ticks = [1e-5, 1e-4, 1e-3, 1e-2, 0.05, 0.2, 0.5]
    labels = [f"{100 * t:g}%" for t in ticks]
    det.set_xticks(norm.ppf(ticks), labels)
    det.set_yticks(norm.ppf(ticks[2:]), labels[2:])
    det.set_xlabel("FMR (probit scale)")
    det.set_ylabel("FNMR (probit scale)")
    det.set_title("DET")
    fig.suptitle(_title(summary))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_identify(summary: dict[str, Any], path: Path) -> Path | None:
    """CMC and FNIR against FPIR per extractor."""
    plt = pyplot()
    if plt is None:
        return None
    fig, (cmc, fnir) = plt.subplots(1, 2, figsize=(12, 5))
    for name, entry in summary["extractors"].items():
        m = entry["identification"]
        ranks = np.arange(1, len(m["cmc"]) + 1)
        cmc.plot(
            ranks, m["cmc"], marker="o", markersize=3, label=f"{name} (rank-1 {m['rank1']:.4f})"
        )
        fpir, missed = np.asarray(m["curve"]["fpir"]), np.asarray(m["curve"]["fnir"])
        shown = fpir > 0  # FPIR 0 has no place on a log axis; fnir_at_fpir has it
        fnir.step(fpir[shown], missed[shown], where="post", label=name)
    cmc.xaxis.get_major_locator().set_params(integer=True)
    cmc.set_xlabel("rank")
    cmc.set_ylabel("identification rate")
    cmc.set_title("CMC")
    cmc.legend(fontsize=8, loc="lower right")
    fnir.set_xscale("log")
    fnir.set_xlabel("FPIR (non-mated searches with a candidate above threshold)")
    fnir.set_ylabel("FNIR (mated searches missed at rank 1)")
    fnir.set_title("FNIR vs FPIR")
    fnir.legend(fontsize=8)
    fig.suptitle(_title(summary))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _title(summary: dict[str, Any]) -> str:
    data = summary["dataset"]
    return f"{Path(data['root']).name}: {data['images']} images, {data['identities']} identities"


# ----------------------------------------------------------------------------- benchmark
def benchmark(
    dataset: Dataset,
    extractors: Sequence[str],
    threads: int = 1,
    batch_size: int | None = None,
    progress: Callable[[str, int], None] | None = None,
) -> dict[str, Any]:
    """Images per second per extractor (decode + detect + align + embed), with the split."""
    pin_opencv(threads)
    results: dict[str, Any] = {}
    for name in extractors:
        params: dict[str, Any] = {}
        if batch_size is not None:
            params["batch_size"] = batch_size
        extractor = make_extractor(name, threads=threads, **params)
        warm = load_image(dataset.paths[0])
        extractor.extract(warm)  # first inference allocates; not part of the figure
        step = (lambda n, _name=name: progress(_name, n)) if progress else None
        embedded = embed_dataset(extractor, dataset.paths, step)
        results[name] = {
            "dimension": embedded.dimension,
            "batch_size": getattr(extractor, "batch_size", None),
            **throughput(embedded),
        }
    return {
        "mode": "bench-extract",
        "threads": threads,
        "dataset": {"root": str(dataset.root), "images": len(dataset.paths)},
        "extractors": results,
    }
