"""Evaluation metrics against brute-force counts, the protocols, and the eval/bench commands."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from frip_eval.data import Dataset, Embedded, identification_protocol
from frip_eval.evaluation import (
    comparison_scores,
    identification_metrics,
    read_pairs,
    verification_metrics,
)

from frip_engine.errors import InputError, MissingFileError


def _brute(genuine: np.ndarray, impostor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """FMR and FNMR at every candidate threshold, by counting (accept when score >= t)."""
    thresholds = np.r_[np.unique(np.r_[genuine, impostor]), np.inf]
    fmr = np.array([np.mean(impostor >= t) for t in thresholds])
    fnmr = np.array([np.mean(genuine < t) for t in thresholds])
    return fmr, fnmr


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_verification_metrics_match_brute_force_counts(seed: int) -> None:
    rng = np.random.default_rng(seed)
    genuine = np.clip(rng.normal(0.6, 0.15, 400), -1, 1)
    impostor = np.clip(rng.normal(0.1, 0.12, 5000), -1, 1)
    metrics = verification_metrics(genuine, impostor)
    fmr, fnmr = _brute(genuine, impostor)
    for target, key in ((0.01, "0.01"), (0.001, "0.001")):
        expected = fnmr[fmr <= target].min()
        assert metrics["fnmr_at_fmr"][key]["fnmr"] == pytest.approx(expected)
        assert metrics["fnmr_at_fmr"][key]["fmr"] <= target
        t = metrics["fnmr_at_fmr"][key]["threshold"]
        assert np.mean(genuine < t) == pytest.approx(expected)
    # the EER lies where the two monotone error curves cross, so between these two counts
    low = np.max(np.minimum(fmr, fnmr))
    high = np.min(np.maximum(fmr, fnmr))
    assert low - 1e-9 <= metrics["eer"] <= high + 1e-9
    assert 0.01 < metrics["eer"] < 0.1
    assert metrics["genuine_comparisons"] == 400 and metrics["impostor_comparisons"] == 5000


def test_separated_scores_have_no_error_and_overlapping_ones_half() -> None:
    clean = verification_metrics(np.array([0.8, 0.9, 0.7]), np.array([0.1, 0.2, 0.3, 0.0]))
    assert clean["eer"] == 0.0 and clean["fnmr_at_fmr"]["0.001"]["fnmr"] == 0.0
    same = np.linspace(0, 1, 101)
    coin = verification_metrics(same, same)
    assert coin["eer"] == pytest.approx(0.5, abs=0.011)
    with pytest.raises(InputError, match="genuine and impostor"):
        verification_metrics(np.array([]), same)


def _embedded(matrix: np.ndarray, ok: np.ndarray | None = None) -> Embedded:
    rows = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
    flags = np.ones(len(rows), dtype=bool) if ok is None else ok
    return Embedded("synthetic", rows.shape[1], 0.5, rows * flags[:, None], flags, {}, {}, 1.0)


def test_identification_ranks_fnir_and_fpir_on_a_constructed_gallery() -> None:
    # identities A, B, C with two images each, D and E with one (non-mated searches)
    labels = ["A", "A", "B", "B", "C", "C", "D", "E"]
    e = np.eye(4)
    matrix = np.array(
        [
            e[0],  # A enrolled
            e[0] + 0.2 * e[3],  # A probe: rank 1, score ~0.98
            e[1],  # B enrolled
            0.6 * e[1] + 0.8 * e[2],  # B probe: closer to C -> rank 2
            e[2],  # C enrolled
            e[2] + 0.9 * e[3],  # C probe: rank 1, score ~0.74
            0.3 * e[0] + e[3],  # D: best non-mated score ~0.29
            0.8 * e[1] + 0.6 * e[3],  # E: best non-mated score 0.8
        ]
    )
    embedded = _embedded(matrix)
    protocol = identification_protocol(labels, embedded.ok)
    assert [labels[i] for i in protocol.gallery] == ["A", "B", "C"]
    assert protocol.non_mated == [6, 7]
    m = identification_metrics(embedded, protocol, threshold=0.5)
    assert m["rank1"] == pytest.approx(2 / 3)
    assert m["cmc"] == pytest.approx([2 / 3, 1.0, 1.0])
    # at 0.5: A and C found above it, B missed at rank 1; E (0.8) is a false positive
    assert m["at_threshold"]["fnir"] == pytest.approx(1 / 3)
    assert m["at_threshold"]["fpir"] == pytest.approx(1 / 2)
    # FPIR <= 10% of two searches means none may pass: threshold just above E's 0.8
    at = m["fnir_at_fpir"]["0.1"]
    assert at["fpir"] == 0.0 and at["threshold"] == pytest.approx(0.8, abs=1e-9)
    assert at["fnir"] == pytest.approx(2 / 3)  # only A (0.98) passes
    assert m["max_non_mated_score"] == pytest.approx(0.8)


def test_an_unextractable_image_counts_against_the_extractor() -> None:
    labels = ["A", "A", "A", "B", "B", "C"]
    rng = np.random.default_rng(4)
    base = rng.standard_normal((3, 16))
    matrix = np.stack([base[0], base[0], base[0], base[1], base[1], base[2]])
    ok = np.array([False, True, True, True, True, False])
    embedded = _embedded(matrix, ok)
    protocol = identification_protocol(labels, ok)
    assert protocol.gallery == [1, 3]  # A's first usable image is enrolled instead
    assert protocol.mated == [0, 2, 4]  # A's failed image still searches, and misses
    m = identification_metrics(embedded, protocol, threshold=0.5)
    assert m["rank1"] == pytest.approx(2 / 3)
    assert m["at_threshold"]["fpir"] == 0.0  # C failed: no false positive from it
    genuine, impostor = comparison_scores(embedded, labels)
    assert len(genuine) == 3 + 1 and len(impostor) == 15 - 4
    assert np.sum(genuine == -1.0) == 2  # comparisons with A's failed image fail


def test_pairs_files_csv_and_lfw_formats(tmp_path: Path) -> None:
    root = tmp_path / "data"
    paths = [root / "Ann" / "Ann_0001.jpg", root / "Ann" / "Ann_0002.jpg"]
    paths.append(root / "Bob" / "Bob_0001.jpg")
    dataset = Dataset(root, paths, ["Ann", "Ann", "Bob"])
    lfw = tmp_path / "pairs.txt"
    lfw.write_text("1 2\nAnn 1 2\nAnn 2 Bob 1\n")
    a, b, genuine = read_pairs(lfw, dataset)
    assert a.tolist() == [0, 1] and b.tolist() == [1, 2] and genuine.tolist() == [True, False]
    table = tmp_path / "pairs.csv"
    with table.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path_a", "path_b"])
        writer.writerow(["Ann/Ann_0001.jpg", "Bob/Bob_0001.jpg"])
        writer.writerow(["Ann/Ann_0002.jpg", "Ann/Ann_0001.jpg"])
    a, b, genuine = read_pairs(table, dataset)
    assert a.tolist() == [0, 1] and b.tolist() == [2, 0] and genuine.tolist() == [False, True]
    stranger = tmp_path / "bad.txt"
    stranger.write_text("Zed 1 2\n")
    with pytest.raises(InputError, match="not one of the dataset's images"):
        read_pairs(stranger, dataset)
    with pytest.raises(MissingFileError, match="does not exist"):
        read_pairs(tmp_path / "none.txt", dataset)


def _subset_index(lfw: Path, tmp_path: Path, identities: int, singles: int) -> Path:
    """An index CSV of a few lfw-dev people, pointing at the originals (nothing copied)."""
    with (lfw / "index.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["identity"]] = counts.get(row["identity"], 0) + 1
    several = sorted(k for k, n in counts.items() if n > 1)[:identities]
    alone = sorted(k for k, n in counts.items() if n == 1)[:singles]
    index = tmp_path / "subset.csv"
    with index.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "identity"])
        for row in rows:
            if row["identity"] in several or row["identity"] in alone:
                writer.writerow([str(lfw / row["path"]), row["identity"]])
    return index


def _frip(*args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "frip_engine", *args], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr + result.stdout
    return result


def test_eval_and_bench_commands_on_a_small_lfw_subset(
    lfw: Path, tmp_path: Path, home: Path
) -> None:
    index = _subset_index(lfw, tmp_path, identities=8, singles=6)  # 30 images
    out = tmp_path / "eval"
    verify = json.loads(
        _frip(
            "eval", "verify", "--index", str(index), "-e", "sface", "--output", str(out), "--json"
        ).stdout
    )
    v = verify["extractors"]["sface"]["verification"]
    assert verify["dataset"]["images"] == 30
    assert v["genuine_comparisons"] == 8 * 3 and v["impostor_comparisons"] == 30 * 29 // 2 - 24
    assert 0.0 <= v["eer"] < 0.05 and v["fnmr_at_fmr"]["0.01"]["fnmr"] < 0.1
    saved = json.loads((out / "verify.json").read_text())
    assert len(saved["extractors"]["sface"]["verification"]["roc"]["fmr"]) > 10
    assert (out / "verify.png").stat().st_size > 20_000

    identify = json.loads(
        _frip(
            "eval", "identify", "--index", str(index), "-e", "sface", "--output", str(out), "--json"
        ).stdout
    )
    entry = identify["extractors"]["sface"]
    m = entry["identification"]
    assert (m["gallery"], m["mated_searches"], m["non_mated_searches"]) == (8, 16, 6)
    assert m["rank1"] >= 0.9
    check = entry["encrypted_vs_plaintext"]
    assert check["decisions_equal"] == check["decisions_compared"] == 22
    assert check["max_score_difference"] < 1e-3
    assert (out / "identify.png").stat().st_size > 20_000

    bench = json.loads(
        _frip(
            "bench", "extract", "--index", str(index), "-e", "sface", "--output", str(out), "--json"
        ).stdout
    )
    speed = bench["extractors"]["sface"]
    assert speed["images"] == 30 and speed["failures"] == 0 and speed["images_per_second"] > 0
    assert set(speed["ms_per_image"]) == {"decode", "detect", "align", "embed"}
    parts = sum(speed["ms_per_image"].values())
    assert parts <= speed["ms_per_image_total"] * 1.01


def test_eval_refuses_an_unavailable_extractor_with_the_fix(lfw: Path, tmp_path: Path) -> None:
    index = _subset_index(lfw, tmp_path, identities=2, singles=0)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "frip_engine",
            "eval",
            "verify",
            "--index",
            str(index),
            "-e",
            "facenet-pytorch",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 4
    assert "torchvision" in result.stderr and "pip install" in result.stderr
