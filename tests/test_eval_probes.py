"""The privacy evaluation of probe modes: its attackers and proxies on synthetic data."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from conftest import unit_vectors

pytest.importorskip("sklearn")

from frip_eval.eval_probes import (
    attacks,
    forced_permutation,
    invariant_features,
    markdown,
    reversibility,
    share_view,
)

from frip_engine import pemiu


def test_order_invariant_features_do_not_change_under_a_block_shuffle() -> None:
    rows = unit_vectors(5, seed=1)
    shuffled = np.array([pemiu.protect(r, 32, "arcface").vector for r in rows])
    assert np.allclose(invariant_features(rows, 32), invariant_features(shuffled, 32))
    assert not np.allclose(rows, shuffled)


def test_forced_permutations_move_exactly_that_many_blocks() -> None:
    rng = np.random.default_rng(0)
    for blocks, moved in ((4, 0), (4, 2), (16, 3), (32, 32)):
        order = forced_permutation(blocks, moved, rng)
        assert sorted(order.tolist()) == list(range(blocks))
        assert pemiu.complexity(order) == moved


def _gendered(n: int = 160) -> tuple[np.ndarray, list[str], list[str]]:
    """Synthetic faces whose gender shows in one direction; two images per person."""
    rng = np.random.default_rng(3)
    people = unit_vectors(n // 2, seed=4)
    sex = ["female" if i % 2 else "male" for i in range(n // 2)]
    people[:, :16] += np.where(np.array(sex) == "female", 0.1, -0.1)[:, None]
    rows = np.repeat(people, 2, axis=0) + 0.02 * rng.standard_normal((n, 512))
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    return rows, [f"p{i // 2}" for i in range(n)], [s for s in sex for _ in range(2)]


@pytest.fixture(scope="module")
def attacked() -> dict[str, Any]:
    rows, labels, sex = _gendered()
    return attacks(rows, labels, sex, [32], reid_probes=40)


def test_a_curious_matcher_learns_from_plain_probes_and_nothing_from_one_share(
    attacked: dict[str, Any],
) -> None:
    rows, _, _ = _gendered()
    found = attacked["modes"]
    assert max(found["plain"]["gender"].values()) > 0.75
    assert found["plain"]["rank1_cosine"] > 0.9
    assert found["pe-miu-32"]["rank1_pemiu_comparator"] > 0.9  # the comparator undoes it
    assert max(found["shared"]["gender"].values()) < 0.62
    assert found["shared"]["rank1_cosine"] < 0.1 and found["shared"]["rank1_invariant"] < 0.1
    assert "gender" not in found["encrypted"]
    view = share_view(rows[:50])
    assert (
        np.all(np.abs(view) <= 0.5)
        and abs(np.corrcoef(view.ravel(), rows[:50].ravel())[0, 1]) < 0.05
    )


def test_reversibility_proxy_and_report(attacked: dict[str, Any]) -> None:
    rows, labels, _ = _gendered()
    found = reversibility(rows, labels, [128], templates=100, pairs=5_000)
    table = found["block_sizes"]["128"]
    assert table["0"]["1%"] == 1.0  # an unmoved template is its own original
    assert table["4"]["0.1%"] <= table["2"]["0.1%"]
    summary = {
        "extractor": "synthetic",
        "dataset": {"used": len(rows), "identities": len(set(labels))},
        "block_sizes": [32],
        "holdings": {"plain": dict.fromkeys(("edge", "matcher", "key service", "store"), "x")},
        "attacks": attacked,
        "published_gender": {"unprotected": 0.89, "pe-miu": 0.5},
        "reversibility": found,
    }
    text = markdown(summary)
    assert "| shared |" in text and "WIFS 2023" in text and "| 128 |" in text
