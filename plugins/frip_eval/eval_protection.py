"""Evaluating PE-MIU template protection (plaintext scoring) on a labelled image set.

Per extractor: (1) verification EER and FNMR at FMR 1% / 0.1% unprotected vs each block
size, with the metric helpers of :mod:`frip_eval.evaluation`; (2) gender prediction
accuracy of cross-validated SVMs (poly, RBF, sigmoid) on a gender-balanced sample of
unprotected vs protected templates, folds grouped by identity so no person is in both
training and test; (3) the permutation complexity distribution with ``min_complexity`` at
its default (every block moves) and at 0 (any permutation); (4) unlinkability D_sys
(Gomez-Barrero et al. 2018) between two independently protected versions of templates.

Images whose face could not be extracted are left out (this evaluates the protection, not
the extractor). Every image is protected once per block size, with its own permutation;
the same pairs are compared unprotected and protected. Outputs: JSON, a Markdown report
and a PNG; never embeddings.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from frip_engine import pemiu
from frip_engine.errors import InputError
from frip_eval.data import Dataset, Embedded, embed_with
from frip_eval.evaluation import verification_metrics
from frip_eval.plots import pyplot

KERNELS = ("poly", "rbf", "sigmoid")
DEFAULT_BLOCK_SIZES = (16, 32, 64, 128)


def read_genders(index: Path, dataset: Dataset) -> list[str]:
    """The ``gender`` column of an index CSV, aligned with ``dataset.paths`` ('' if absent)."""
    by_path: dict[Path, str] = {}
    with index.open(encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            if row.get("path"):
                by_path[(index.parent / row["path"]).resolve()] = (row.get("gender") or "").strip()
    return [by_path.get(p.resolve(), "") for p in dataset.paths]


def protect_matrix(
    matrix: np.ndarray, block_size: int, extractor: str, min_complexity: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Every row protected with its own fresh permutation; the rows and their complexities."""
    templates = [pemiu.protect(row, block_size, extractor, min_complexity) for row in matrix]
    rows = np.array([t.vector for t in templates]).reshape(matrix.shape)
    return rows, np.array([t.complexity for t in templates], dtype=int)


def comparison_pairs(
    labels: Sequence[str], max_impostors: int | None, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every genuine pair and every (or a fixed random sample of ``max_impostors``) impostor
    pair, as index arrays a, b and the genuine flag."""
    a, b = np.triu_indices(len(labels), k=1)
    names = np.asarray(labels)
    genuine = names[a] == names[b]
    impostor = np.nonzero(~genuine)[0]
    if max_impostors is not None and len(impostor) > max_impostors:
        impostor = np.sort(np.random.default_rng(seed).choice(impostor, max_impostors, False))
    keep = np.sort(np.r_[np.nonzero(genuine)[0], impostor])
    return a[keep], b[keep], genuine[keep]


def pemiu_scores(
    matrix: np.ndarray, a: np.ndarray, b: np.ndarray, block_size: int, chunk: int = 4096
) -> np.ndarray:
    out = np.empty(len(a))
    for start in range(0, len(a), chunk):
        end = start + chunk
        out[start:end] = pemiu.compare_many(matrix[a[start:end]], matrix[b[start:end]], block_size)
    return out


def verification_table(
    matrix: np.ndarray,
    labels: Sequence[str],
    block_sizes: Sequence[int],
    max_impostors: int | None,
    extractor: str,
) -> dict[str, Any]:
    """EER and FNMR at FMR targets: ``unprotected`` and one entry per block size."""
    a, b, genuine = comparison_pairs(labels, max_impostors)
    rows: dict[str, Any] = {}
    plain = np.einsum("ij,ij->i", matrix[a], matrix[b])
    rows["unprotected"] = _slim(verification_metrics(plain[genuine], plain[~genuine]))
    for size in block_sizes:
        protected, _ = protect_matrix(matrix, size, extractor)
        scores = pemiu_scores(protected, a, b, size)
        rows[str(size)] = _slim(verification_metrics(scores[genuine], scores[~genuine]))
    return rows


def _slim(metrics: dict[str, Any]) -> dict[str, Any]:
    at = metrics["fnmr_at_fmr"]
    return {
        "eer": metrics["eer"],
        "fnmr_at_fmr_1%": at["0.01"]["fnmr"],
        "fnmr_at_fmr_0.1%": at["0.001"]["fnmr"],
        "genuine": metrics["genuine_comparisons"],
        "impostor": metrics["impostor_comparisons"],
    }


def balanced_sample(genders: Sequence[str], seed: int = 0) -> np.ndarray:
    """Indices with as many 'male' as 'female' entries (the larger group subsampled)."""
    g = np.asarray(genders)
    male, female = np.nonzero(g == "male")[0], np.nonzero(g == "female")[0]
    n = min(len(male), len(female))
    if n < 10:
        raise InputError("the gender experiment needs at least 10 images of each gender")
    rng = np.random.default_rng(seed)
    return np.sort(np.r_[rng.choice(male, n, False), rng.choice(female, n, False)])


def gender_accuracy(
    matrix: np.ndarray, genders: Sequence[str], groups: Sequence[str], folds: int = 5
) -> dict[str, float]:
    """Mean cross-validated accuracy per SVM kernel (scaled features, identity-grouped folds)."""
    from sklearn.model_selection import StratifiedGroupKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    y = (np.asarray(genders) == "female").astype(int)
    cv = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=0)
    out: dict[str, float] = {}
    for kernel in KERNELS:
        model = make_pipeline(StandardScaler(), SVC(kernel=kernel))
        scores = cross_val_score(model, matrix, y, groups=np.asarray(groups), cv=cv)
        out[kernel] = float(np.mean(scores))
    return out


def complexity_distribution(matrix: np.ndarray, block_size: int, extractor: str) -> dict[str, Any]:
    """Counts of each complexity value with min_complexity at its default and at 0."""
    result: dict[str, Any] = {"blocks": matrix.shape[1] // block_size}
    for label, minimum in (("default", None), ("none", 0)):
        _, values = protect_matrix(matrix, block_size, extractor, minimum)
        counts = np.bincount(values, minlength=result["blocks"] + 1)
        result[label] = {
            "counts": counts.tolist(),
            "min": int(values.min()),
            "mean": float(values.mean()),
            "below_half": int(np.sum(values < result["blocks"] / 2)),
        }
    return result


def dsys(mated: np.ndarray, non_mated: np.ndarray, bins: int = 100, omega: float = 1.0) -> float:
    """Global unlinkability D_sys of Gomez-Barrero et al. 2018 (IEEE TIFS 13(6)).

    With LR(s) = p(s | H_m) / p(s | H_nm) from the mated and non-mated score histograms
    and omega = p(H_m) / p(H_nm) (1: no prior), the local measure is

        D<->(s) = 0                                  if LR(s) * omega <= 1
        D<->(s) = 2 * LR(s) * omega / (1 + LR(s) * omega) - 1   otherwise

    and D_sys = integral of p(s | H_m) * D<->(s) ds, in [0, 1]: 0 fully unlinkable,
    1 fully linkable. Histograms share ``bins`` equal bins over both samples' range.
    """
    mated = np.asarray(mated, dtype=np.float64)
    non_mated = np.asarray(non_mated, dtype=np.float64)
    if not mated.size or not non_mated.size:
        raise InputError("D_sys needs mated and non-mated scores")
    low = float(min(mated.min(), non_mated.min()))
    high = float(max(mated.max(), non_mated.max()))
    if high <= low:
        high = low + 1e-9
    edges = np.linspace(low, high, bins + 1)
    p_m, _ = np.histogram(mated, edges)
    p_nm, _ = np.histogram(non_mated, edges)
    p_m = p_m / p_m.sum()
    p_nm = p_nm / p_nm.sum()
    local = np.zeros(bins)
    seen = p_m > 0
    only_mated = seen & (p_nm == 0)
    both = seen & (p_nm > 0)
    lr = p_m[both] / p_nm[both] * omega
    local[both] = np.where(lr > 1, 2 * lr / (1 + lr) - 1, 0.0)
    local[only_mated] = 1.0  # LR is infinite where no non-mated score falls
    return float(np.sum(p_m * local))


def unlinkability(
    matrix: np.ndarray,
    labels: Sequence[str],
    block_size: int,
    extractor: str,
    max_pairs: int = 20000,
) -> dict[str, float]:
    """D_sys between two independent protections (versions A and B) of the templates.

    Mated: A(x) vs B(y) for the same person — ``same_image`` with y = x, ``same_person``
    with y another image of the person; non-mated: A(x) vs A(z) for different persons (each
    template has its own permutation, so A(z) is as independent of A(x) as B(z) would be).
    """
    first, _ = protect_matrix(matrix, block_size, extractor)
    second, _ = protect_matrix(matrix, block_size, extractor)
    names = np.asarray(labels)
    a, b = np.triu_indices(len(names), k=1)
    same = names[a] == names[b]
    rng = np.random.default_rng(1)
    non = np.nonzero(~same)[0]
    non = rng.choice(non, min(max_pairs, len(non)), False)
    idx = np.arange(len(names))
    non_mated = pemiu_scores(first, a[non], b[non], block_size, 2048)
    # different matrices for a and b: stack them and offset b's indices
    both = np.vstack([first, second])
    mates = np.nonzero(same)[0]
    same_person = pemiu_scores(both, a[mates], b[mates] + len(names), block_size)
    same_image = pemiu_scores(both, idx, idx + len(names), block_size)
    return {
        "same_image": dsys(same_image, non_mated),
        "same_person": dsys(same_person, non_mated) if len(mates) else float("nan"),
    }


def run_protection(
    dataset: Dataset,
    genders: Sequence[str],
    extractors: Sequence[str],
    block_sizes: Sequence[int] = DEFAULT_BLOCK_SIZES,
    max_impostors: int | None = 100_000,
    threads: int = 1,
    progress: Callable[[str, int], None] | None = None,
    embedded: dict[str, Embedded] | None = None,
    he: bool = False,
) -> dict[str, Any]:
    """Every experiment for every extractor; ``embedded`` may supply ready embeddings;
    ``he`` adds the encrypted pe-miu probe mode's cost against the plain probe mode."""
    results: dict[str, Any] = {}
    for name in extractors:
        emb = (embedded or {}).get(name) or embed_with(name, dataset, threads, progress)
        for size in block_sizes:
            pemiu.check_block_size(size, emb.dimension)
        keep = np.nonzero(emb.ok)[0]
        matrix = emb.matrix[keep]
        labels = [dataset.labels[int(i)] for i in keep]
        sex = [genders[int(i)] for i in keep]
        sample = balanced_sample(sex)
        x, y, groups = matrix[sample], [sex[i] for i in sample], [labels[i] for i in sample]
        gender: dict[str, Any] = {
            "samples": len(sample),
            "unprotected": gender_accuracy(x, y, groups),
        }
        for size in block_sizes:
            gender[str(size)] = gender_accuracy(protect_matrix(x, size, name)[0], y, groups)
        results[name] = {
            "dimension": emb.dimension,
            "images_used": len(keep),
            "failures": len(emb.failures),
            "verification": verification_table(matrix, labels, block_sizes, max_impostors, name),
            "gender_svm": gender,
            "complexity": {str(s): complexity_distribution(matrix, s, name) for s in block_sizes},
            "dsys": {str(s): unlinkability(matrix, labels, s, name) for s in block_sizes},
        }
        if he:
            results[name]["he_cost"] = he_cost(matrix, block_sizes, name)
    return {
        "mode": "protection",
        "dataset": {
            "root": str(dataset.root),
            "images": len(dataset.paths),
            "identities": len(set(dataset.labels)),
            "impostor_pairs": "all" if max_impostors is None else f"at most {max_impostors}",
        },
        "block_sizes": list(block_sizes),
        "extractors": results,
        "not_reproduced": "the image-reconstruction attack of Terhoerst et al. 2020 needs a "
        "face generator network, which is not available here",
    }


def he_cost(
    matrix: np.ndarray, block_sizes: Sequence[int], extractor: str, probes: int = 3
) -> dict[str, Any]:
    """One TenSEAL block (fast preset) holding every template, PE-MIU protected: seconds per
    probe for the plain probe mode and the pe-miu mode, and the largest difference between
    the encrypted pe-miu scores and the plaintext comparator's."""
    import time

    from frip_engine import plugins

    backend = plugins.create("he_backend", "tenseal", preset="fast")
    public, secret = backend.keygen()
    plain_matcher, decryptor = backend.matcher(public), backend.decryptor(public, secret)
    n = min(len(matrix), plain_matcher.slots)
    rows = list(range(n))
    out: dict[str, Any] = {"registrants": n, "slots": plain_matcher.slots, "preset": "fast"}

    def timed(matcher: Any, block: Any, probe: Any) -> tuple[float, float, np.ndarray]:
        start = time.perf_counter()
        scored = matcher.score(block, matcher.parse_probe(matcher.encode_probe(probe)))
        middle = time.perf_counter()
        values = decryptor.decrypt_scores(scored)
        if matcher.pemiu_block_size is not None:
            values = pemiu.assigned_scores(np.moveaxis(values[:, :, :n], 2, 0))
        return middle - start, time.perf_counter() - middle, values[:n]

    plain = plain_matcher.encrypt_rows(matrix[:n], rows)
    seconds = [timed(plain_matcher, plain, matrix[i])[:2] for i in range(probes)]
    out["plain"] = {
        "score_s": float(np.median([a for a, _ in seconds])),
        "decrypt_s": float(np.median([b for _, b in seconds])),
    }
    for size in block_sizes:
        matcher = backend.matcher(public, size)  # a pe-miu engine's: this block size only
        stored = protect_matrix(matrix[:n], size, extractor)[0]
        block = matcher.encrypt_rows(stored, rows)
        timings, error = [], 0.0
        for i in range(probes):
            probe = pemiu.protect(matrix[i], size, extractor)
            score_s, decide_s, values = timed(matcher, block, probe)
            expected = pemiu.compare_many(np.repeat(probe.vector[None], n, 0), stored, size)
            error = max(error, float(np.max(np.abs(values - expected))))
            timings.append((score_s, decide_s))
        out[str(size)] = {
            "score_s": float(np.median([a for a, _ in timings])),
            "decrypt_and_assign_s": float(np.median([b for _, b in timings])),
            "max_score_difference": error,
        }
    decryptor.close()
    return out


def markdown(summary: dict[str, Any]) -> str:
    lines = [f"# PE-MIU protection on {summary['dataset']['images']} images", ""]
    for name, entry in summary["extractors"].items():
        lines += [f"## {name} ({entry['images_used']} images used)", ""]
        lines += ["| templates | EER | FNMR@FMR1% | FNMR@FMR0.1% |", "|---|---|---|---|"]
        for key, v in entry["verification"].items():
            label = key if key == "unprotected" else f"pe-miu block {key}"
            lines.append(
                f"| {label} | {100 * v['eer']:.2f}% | {100 * v['fnmr_at_fmr_1%']:.2f}% | "
                f"{100 * v['fnmr_at_fmr_0.1%']:.2f}% |"
            )
        g = entry["gender_svm"]
        lines += [
            "",
            f"Gender SVM accuracy ({g['samples']} balanced images, 5 identity-grouped folds):",
            "",
        ]
        lines += ["| templates | " + " | ".join(KERNELS) + " |", "|---" * (len(KERNELS) + 1) + "|"]
        for key, acc in g.items():
            if key == "samples":
                continue
            label = key if key == "unprotected" else f"pe-miu block {key}"
            lines.append(f"| {label} | " + " | ".join(f"{acc[k]:.3f}" for k in KERNELS) + " |")
        lines += [
            "",
            "| block | blocks | min complexity (default) | min / mean (min_complexity=0) "
            "| templates < half moved (0) | D_sys same image | D_sys same person |",
            "|---|---|---|---|---|---|---|",
        ]
        for size, c in entry["complexity"].items():
            d = entry["dsys"][size]
            lines.append(
                f"| {size} | {c['blocks']} | {c['default']['min']} | {c['none']['min']} / "
                f"{c['none']['mean']:.2f} | {c['none']['below_half']} | {d['same_image']:.3f} | "
                f"{d['same_person']:.3f} |"
            )
        if "he_cost" in entry:
            lines += _he_cost_lines(entry["he_cost"])
        lines.append("")
    lines += [f"Not reproduced: {summary['not_reproduced']}.", ""]
    return "\n".join(lines)


def _he_cost_lines(cost: dict[str, Any]) -> list[str]:
    plain = cost["plain"]["score_s"] + cost["plain"]["decrypt_s"]
    lines = [
        "",
        f"Encrypted gallery (TenSEAL {cost['preset']} preset, one {cost['slots']}-slot block "
        f"holding {cost['registrants']} templates), seconds per probe:",
        "",
        "| probe mode | matcher (score) | key service (decrypt + assign) | x plain | "
        "max score diff vs plaintext |",
        "|---|---|---|---|---|",
        f"| plain | {cost['plain']['score_s']:.3f} | {cost['plain']['decrypt_s']:.3f} | 1.0 | - |",
    ]
    for key, c in cost.items():
        if key.isdigit():
            total = c["score_s"] + c["decrypt_and_assign_s"]
            lines.append(
                f"| pe-miu block {key} | {c['score_s']:.3f} | {c['decrypt_and_assign_s']:.3f} | "
                f"{total / plain:.1f} | {c['max_score_difference']:.1e} |"
            )
    return lines


def write_protection_outputs(summary: dict[str, Any], output: Path) -> list[Path]:
    output.mkdir(parents=True, exist_ok=True)
    json_path = output / "protection.json"
    json_path.write_text(json.dumps(summary, indent=2))
    md_path = output / "protection.md"
    md_path.write_text(markdown(summary))
    written = [json_path, md_path]
    png = plot_protection(summary, output / "protection.png")
    if png:
        written.append(png)
    return written


def plot_protection(summary: dict[str, Any], path: Path) -> Path | None:
    plt = pyplot()
    if plt is None:
        return None
    names = list(summary["extractors"])
    fig, axes = plt.subplots(len(names), 2, figsize=(11, 3.8 * len(names)), squeeze=False)
    for row, name in enumerate(names):
        entry = summary["extractors"][name]
        keys = list(entry["verification"])
        eer = [100 * entry["verification"][k]["eer"] for k in keys]
        ax = axes[row][0]
        ax.bar(keys, eer, color="tab:blue")
        ax.set_title(f"{name}: EER (%) unprotected vs block size")
        ax.set_ylabel("EER %")
        ax = axes[row][1]
        for size, c in entry["complexity"].items():
            counts = np.asarray(c["none"]["counts"], dtype=float)
            ax.plot(
                np.arange(len(counts)) / c["blocks"],
                counts / counts.sum(),
                "o-",
                label=f"block {size}",
            )
        ax.set_title(f"{name}: blocks moved, min_complexity=0\n(default: every block moves)")
        ax.set_xlabel("fraction of blocks moved")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
