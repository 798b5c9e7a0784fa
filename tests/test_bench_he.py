"""`frip bench he --quick` end to end: the report's structure and its decision checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from frip_eval.bench_he import (
    PAPER_METHOD,
    QUICK_CONFIGS,
    Config,
    Options,
    run,
    synthetic_gallery,
    synthetic_probes,
)
from rich.console import Console


def test_quick_benchmark_end_to_end(home: Path, lfw: Path, tmp_path: Path) -> None:
    missing = Config("no such backend", {"plugin": "no-such-backend"})
    options = Options(
        quick=True,
        data=lfw,
        results=tmp_path / "results",
        docs=tmp_path / "docs",
        configs=(*QUICK_CONFIGS, missing),
    )
    results = run(options, Console(quiet=True))
    saved = json.loads((tmp_path / "results" / "bench-he-quick.json").read_text())
    assert saved["targets"] == results["targets"]
    by_label = {c["label"]: c for c in saved["configs"]}
    assert by_label["no such backend"]["status"].startswith("unavailable: PluginError:")
    assert "no-such-backend" in by_label["no such backend"]["status"]
    sizes = saved["meta"]["sweep_sizes"]
    for label in (QUICK_CONFIGS[0].label, PAPER_METHOD.label):
        config = by_label[label]
        assert config["status"] == "ok", config["status"]
        assert [p["registrants"] for p in config["points"]] == sorted(
            set(sizes) | set(saved["meta"]["table_ii_sizes"])
        )
        for point in config["points"]:
            checked = point["decisions"]
            assert checked["total"] >= point["identifies"] > 0
            assert checked["equal"] == checked["total"], checked["mismatches"]
            assert point["stages_ms"]["total"] > point["stages_ms"]["distance_derivation"] > 0
        lfw_check = config["lfw"]["decisions"]
        assert lfw_check["total"] > 0 and lfw_check["equal"] == lfw_check["total"]
        assert config["storage"]["ram_bytes_per_registrant"] > 0
        assert config["peak_rss_bytes"] > 0
    packed = by_label[QUICK_CONFIGS[0].label]
    assert packed["workers_point"]["workers"] == 2  # the largest packed case, 2 workers too
    assert (
        packed["workers_point"]["decisions"]["equal"]
        == packed["workers_point"]["decisions"]["total"]
    )
    assert by_label[PAPER_METHOD.label]["points"][0]["probe_bytes"] > 100_000  # a ciphertext
    assert packed["points"][0]["probe_bytes"] < 10_000  # 512 floats
    assert {r["config"] for r in saved["table_ii"]} == {QUICK_CONFIGS[0].label, PAPER_METHOD.label}
    for name in ("numpy", "faiss"):
        assert [p["registrants"] for p in saved["baselines"][name]] == [
            p["registrants"] for p in packed["points"]
        ]
    assert saved["ratios"]["fastest_packed_vs_paper_method"]["ratio"] > 1
    decisions = next(t for t in saved["targets"] if t["target"].startswith("every encrypted"))
    assert decisions["value"] == 0 and decisions["met"] is None  # equal, but not at 100k
    text = (tmp_path / "docs" / "bench-he-quick.md").read_text()
    assert "## Table II" in text and "No mismatch." in text and "unavailable" in text
    assert (tmp_path / "docs" / "bench-he-quick.png").stat().st_size > 10_000


def test_planted_near_duplicates_and_probes() -> None:
    rng = np.random.default_rng(0)
    real = rng.standard_normal((200, 32)) + 2.0
    real /= np.linalg.norm(real, axis=1, keepdims=True)
    gallery = synthetic_gallery(real, 500, seed=3)
    assert np.allclose(np.linalg.norm(gallery, axis=1), 1.0)
    twins = np.einsum("ij,ij->i", gallery[0:-1:50], gallery[1::50])
    assert twins.min() > 0.99  # each planted pair is nearly one vector
    probes = synthetic_probes(real, gallery, 120, 6, seed=3)
    targets = [t for _, t in probes]
    assert targets.count(None) == 3 and all(t is None or t < 120 for t in targets)
    for vector, target in probes:
        if target is not None:  # a near-copy: its registrant or the twin is the best match
            assert int(np.argmax(gallery[:120] @ vector)) in {target, target ^ 1}
