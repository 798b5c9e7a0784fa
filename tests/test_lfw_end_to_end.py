"""The issue's bar on real faces: lfw-dev through the encrypted engine and its plaintext twin."""

from __future__ import annotations

import json
from pathlib import Path

from frip_eval.data import LfwSplit
from frip_eval.demo import run_demo
from rich.console import Console


def test_lfw_dev_encrypted_equals_plaintext_and_meets_the_bar(
    home: Path, lfw: Path, lfw_dev_split: LfwSplit, tmp_path: Path
) -> None:
    summary = run_demo(lfw, tmp_path / "demo", "fast", Console(quiet=True), lfw_dev_split)
    assert summary["registrants"] == 200
    assert summary["mated_probes"] + len(summary["extraction_failures"]) >= 400
    assert summary["unknown_probes"] == 120
    # every encrypted decision (top-1 and threshold) equals the plaintext one
    assert summary["decisions_equal_plaintext"] == summary["decisions_compared"] == 520
    assert summary["max_score_difference_vs_plaintext"] < 1e-3
    assert summary["rank1"] >= 0.98
    # no unknown accepted where at most 5% of mated probes are rejected
    assert summary["false_accepts_at_operating_threshold"] == 0
    saved = json.loads((tmp_path / "demo" / "demo.json").read_text())
    assert saved["rank1"] == summary["rank1"]
    assert (tmp_path / "demo" / "demo.png").stat().st_size > 10_000
