"""`frip bench cluster` on a small gallery: its invariants, not its timings."""

from __future__ import annotations

import json
from pathlib import Path

from frip_eval.bench_cluster import run
from frip_eval.data import LfwSplit, distractors
from rich.console import Console


def test_small_cluster_benchmark(
    home: Path, lfw: Path, lfw_dev_split: LfwSplit, tmp_path: Path
) -> None:
    console = Console(quiet=True)
    results = run([400], [1, "all"], 2, lfw, tmp_path / "bench", "fast", console, lfw_dev_split)
    rows = results["scenarios"]
    assert {r["setup"] for r in rows} == {
        "exhaustive",
        "faiss k-means <= 1 block",
        "paper: 5 kmeans <= 120",
    }
    for row in rows:
        assert row["he_equals_plaintext"] == "2/2"
        assert sum(row["cluster_sizes"]) == 400
        if row["probe_clusters"] == "all":  # p = all is exhaustive search, decision for decision
            assert row["decisions_equal_exhaustive"] == "520/520"
            assert row["rank1_change_points"] == 0.0
    paper = [r for r in rows if r["setup"].startswith("paper")]
    assert all(r["partitions"] == 5 and max(r["cluster_sizes"]) <= 120 for r in paper)
    saved = json.loads((tmp_path / "bench" / "cluster.json").read_text())
    assert len(saved["scenarios"]) == len(rows)
    assert "| 400 | exhaustive |" in (tmp_path / "bench" / "cluster.md").read_text()
    assert (tmp_path / "bench" / "cluster.png").stat().st_size > 10_000


def test_distractors_follow_the_real_distribution() -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    real = rng.standard_normal((300, 16)) * np.linspace(0.1, 2.0, 16) + 3.0
    real /= np.linalg.norm(real, axis=1, keepdims=True)
    fake = distractors(real, 5000, seed=1)
    assert np.allclose(np.linalg.norm(fake, axis=1), 1.0)
    assert np.allclose(fake.mean(axis=0), real.mean(axis=0), atol=0.02)
