"""The PE-MIU evaluation: its pieces on synthetic data, and the CLI on a few lfw-dev faces."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from frip_eval.eval_protection import (
    balanced_sample,
    comparison_pairs,
    complexity_distribution,
    dsys,
    gender_accuracy,
    unlinkability,
    verification_table,
)
from typer.testing import CliRunner

from frip_engine.cli import app
from frip_engine.errors import InputError
from tests.conftest import near, unit_vectors


def _people(n: int, per: int, dimension: int = 128) -> tuple[np.ndarray, list[str]]:
    centres = unit_vectors(n, dimension, seed=5)
    rows = [near(c, 0.4, seed=i * per + j) for i, c in enumerate(centres) for j in range(per)]
    return np.array(rows), [f"p{i}" for i in range(n) for _ in range(per)]


def test_gender_signal_is_learnt_in_the_clear_and_hidden_by_permutation() -> None:
    from frip_eval.eval_protection import protect_matrix

    rng = np.random.default_rng(0)
    n = 240
    genders = ["female" if i % 2 else "male" for i in range(n)]
    groups = [f"id{i // 2}" for i in range(n)]  # pairs share an identity -> grouped folds
    # gender along one direction spread over every feature, zero-sum within each block so a
    # permutation-invariant statistic (sum of features) carries none of it
    w = rng.standard_normal((16, 16))
    w = (w - w.mean(axis=1, keepdims=True)).ravel()
    sign = np.where(np.array(genders) == "female", 2.5, -2.5)
    x = rng.standard_normal((n, 256)) + np.outer(sign, w / np.linalg.norm(w))
    clear = gender_accuracy(x, genders, groups)
    assert min(clear.values()) > 0.8 and max(clear.values()) > 0.95
    protected = gender_accuracy(protect_matrix(x, 16, "arcface")[0], genders, groups)
    assert max(protected.values()) < 0.75  # measured 0.58-0.66 over repeated runs


def test_balanced_sample_and_its_refusal() -> None:
    genders = ["male"] * 30 + ["female"] * 12 + [""] * 3
    sample = balanced_sample(genders)
    picked = [genders[i] for i in sample]
    assert picked.count("male") == picked.count("female") == 12
    with pytest.raises(InputError, match="at least 10"):
        balanced_sample(["male"] * 30 + ["female"] * 3)


def test_pairs_keep_every_genuine_and_sample_impostors() -> None:
    labels = [f"p{i // 3}" for i in range(30)]
    a, b, genuine = comparison_pairs(labels, max_impostors=50)
    assert genuine.sum() == 10 * 3 and (~genuine).sum() == 50
    assert all((labels[i] == labels[j]) == g for i, j, g in zip(a, b, genuine, strict=True))


def test_verification_complexity_and_unlinkability_on_synthetic_people() -> None:
    matrix, labels = _people(25, 4)
    table = verification_table(matrix, labels, [16, 32], None, "arcface")
    assert set(table) == {"unprotected", "16", "32"}
    for row in table.values():
        assert row["eer"] < 0.05
    assert abs(table["32"]["eer"] - table["unprotected"]["eer"]) < 0.02
    dist = complexity_distribution(matrix, 16, "arcface")  # 8 blocks
    assert dist["default"]["min"] == 8 and dist["default"]["counts"][8] == len(matrix)
    assert dist["none"]["min"] < 8
    linkage = unlinkability(matrix, labels, 32, "arcface")
    assert linkage["same_image"] > 0.9  # the comparator undoes the permutation
    assert 0.0 <= linkage["same_person"] <= 1.0


def _subset(lfw: Path, tmp_path: Path, per_gender: int = 8, per_person: int = 3) -> Path:
    """Index CSV of a few people of each gender, pointing at the originals (nothing copied)."""
    with (lfw / "index.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    by_person: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        by_person.setdefault(row["identity"], []).append(row)
    chosen: list[dict[str, str]] = []
    for gender in ("male", "female"):
        people = [
            p for p, r in sorted(by_person.items()) if len(r) >= 2 and r[0]["gender"] == gender
        ]
        for person in people[:per_gender]:
            chosen += by_person[person][:per_person]
    index = tmp_path / "subset.csv"
    with index.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "identity", "gender"])
        for row in chosen:
            writer.writerow([str(lfw / row["path"]), row["identity"], row["gender"]])
    return index


def test_eval_protection_command_on_lfw_faces(lfw: Path, tmp_path: Path) -> None:
    index = _subset(lfw, tmp_path)
    output = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        [
            "eval",
            "protection",
            "--index",
            str(index),
            "-e",
            "arcface",
            "-b",
            "32",
            "-b",
            "128",
            "--he",
            "--output",
            str(output),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((output / "protection.json").read_text())
    entry = summary["extractors"]["arcface"]
    assert set(entry["verification"]) == {"unprotected", "32", "128"}
    assert entry["verification"]["unprotected"]["eer"] < 0.1
    assert entry["verification"]["32"]["eer"] <= entry["verification"]["unprotected"]["eer"] + 0.05
    assert entry["complexity"]["32"]["default"]["min"] == 16
    assert set(entry["gender_svm"]["unprotected"]) == {"poly", "rbf", "sigmoid"}
    cost = entry["he_cost"]  # --he: the pe-miu probe mode under CKKS against the plain one
    assert cost["registrants"] == entry["images_used"] and cost["plain"]["score_s"] > 0
    for size in ("32", "128"):
        assert cost[size]["score_s"] > 0 and cost[size]["max_score_difference"] < 1e-3
    report = (output / "protection.md").read_text()
    assert "generator network" in report and "Encrypted gallery (TenSEAL fast" in report
    assert (output / "protection.png").stat().st_size > 0


def test_eval_protection_refuses_a_block_size_not_dividing_the_dimension(
    lfw: Path, tmp_path: Path
) -> None:
    index = _subset(lfw, tmp_path, per_gender=5, per_person=2)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "frip_engine",
            "eval",
            "protection",
            "--index",
            str(index),
            "-e",
            "arcface",
            "-b",
            "48",
            "--output",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2, result.stderr
    assert "does not divide" in result.stderr
    assert not (tmp_path / "o").exists()


def test_dsys_bounds_and_formula() -> None:
    rng = np.random.default_rng(0)
    same = rng.normal(0, 1, 20000)
    assert dsys(same, rng.normal(0, 1, 20000)) < 0.05  # unlinkable
    assert dsys(rng.normal(5, 0.1, 1000), same) == pytest.approx(1.0)  # fully linkable
    # two bins: mated 3/4 - 1/4, non-mated 1/4 - 3/4 -> LR 3 in the upper bin only:
    # D(s) = 2*3/4 - 1 = 0.5 there, D_sys = 3/4 * 0.5
    mated = np.r_[np.zeros(1), np.ones(3)]
    non_mated = np.r_[np.zeros(3), np.ones(1)]
    assert dsys(mated, non_mated, bins=2) == pytest.approx(0.375)
    with pytest.raises(InputError):
        dsys(np.empty(0), same)
