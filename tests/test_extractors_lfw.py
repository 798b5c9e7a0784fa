"""Every extractor on real faces through the encrypted engine and its plaintext twin.

A subset of lfw-dev keeps this quick; `frip eval identify` reports the full-set figures.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from frip_eval.data import Dataset, embed_dataset, identification_protocol, make_extractor
from frip_eval.evaluation import compare_backends, identification_metrics


@pytest.fixture(scope="module")
def subset() -> Dataset:
    root = Path(__file__).resolve().parents[2] / "shared" / "data" / "lfw-dev"
    full = Dataset.load(index=root / "index.csv")
    counts: dict[str, int] = {}
    for label in full.labels:
        counts[label] = counts.get(label, 0) + 1
    several = sorted(k for k, n in counts.items() if n > 1)[::16][:12]
    singles = sorted(k for k, n in counts.items() if n == 1)[::15][:8]
    keep = set(several) | set(singles)
    rows = [(p, k) for p, k in zip(full.paths, full.labels, strict=True) if k in keep]
    return Dataset(full.root, [p for p, _ in rows], [k for _, k in rows])


@pytest.mark.parametrize("name", ["arcface", "sface", "facenet"])
def test_encrypted_decisions_equal_plaintext_for_each_extractor(
    name: str, subset: Dataset, home: Path
) -> None:
    embedded = embed_dataset(make_extractor(name, threads=1), subset.paths)
    assert len(subset.paths) == 12 * 3 + 8 and not embedded.failures
    protocol = identification_protocol(subset.labels, embedded.ok)
    metrics = identification_metrics(embedded, protocol, embedded.threshold)
    assert metrics["rank1"] >= 0.95
    assert metrics["at_threshold"]["fpir"] <= 1 / 8
    check = compare_backends(embedded, protocol, name)
    assert check["decisions_compared"] == 24 + 8
    assert check["decisions_equal"] == check["decisions_compared"]
    assert check["max_score_difference"] < 1e-3
