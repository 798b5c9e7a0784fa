"""The privacy evaluation of probe modes: its attackers and proxies on synthetic data."""

from __future__ import annotations

from pathlib import Path
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


def _summary(attacked: dict[str, Any], reversed_: dict[str, Any]) -> dict[str, Any]:
    """A report's summary on the synthetic faces, without cost and run."""
    rows, labels, _ = _gendered()
    return {
        "extractor": "synthetic",
        "dataset": {"used": len(rows), "identities": len(set(labels))},
        "block_sizes": [32],
        "holdings": {"plain": dict.fromkeys(("edge", "matcher", "key service", "store"), "x")},
        "attacks": attacked,
        "published_gender": {"unprotected": 0.89, "pe-miu": 0.5},
        "reversibility": reversed_,
    }


def test_reversibility_proxy_and_report(attacked: dict[str, Any]) -> None:
    rows, labels, _ = _gendered()
    found = reversibility(rows, labels, [128], templates=100, pairs=5_000)
    table = found["block_sizes"]["128"]
    assert table["0"]["1%"] == 1.0  # an unmoved template is its own original
    assert table["4"]["0.1%"] <= table["2"]["0.1%"]
    summary = _summary(attacked, found)
    text = markdown(summary)
    assert "| shared |" in text and "WIFS 2023" in text and "| 128 |" in text


def _cost_entry(plain: list[float], seconds: list[float], upload: int) -> dict[str, Any]:
    ratios = [s / p for s, p in zip(seconds, plain, strict=True)]
    return {
        "upload_bytes": upload,
        "runs": {"100000": seconds},
        "100000": float(np.median(seconds)),
        "x_plain": {"100000": float(np.median(ratios))},
        "x_plain_range": {"100000": [min(ratios), max(ratios)]},
    }


def test_the_page_is_whole_the_command_and_the_reading_included(
    attacked: dict[str, Any],
) -> None:
    """The CLI writes the whole page: tables, how the figures were produced (the command),
    and the reading of the figures, filled from the run's own numbers."""
    rows, labels, _ = _gendered()
    plain = [0.20, 0.25, 0.30]
    summary = _summary(attacked, reversibility(rows, labels, [32], templates=50, pairs=2_000))
    summary |= {
        "cost": {
            "preset": "fast",
            "slots": 4096,
            "repeats": 3,
            "modes": {
                "plain": _cost_entry(plain, plain, 4129),
                "shared": _cost_entry(plain, [0.3, 0.5, 0.9], 8356),
            },
        },
        "run": {
            "command": "frip eval probes --output docs",
            "date": "2026-11-30 20:00 UTC",
            "cpus": 2,
            "load": [1.0, 1.0, 1.0],
            "load_after": [2.0, 2.0, 2.0],
            "minutes": 30.0,
            "embedded": 160,
        },
    }
    text = markdown(summary)
    assert "## How these figures were produced" in text
    assert "frip eval probes --output docs" in text
    assert "## Reading the figures" in text and "**Shared probes hide the probe" in text
    assert "| shared | 8,356 B | 0.500 | 2.0 (1.5-3.0) |" in text  # median and range
    assert "2.00x (range 1.50-3.00x over 3 rounds; target <= 2x: met)" in text
    assert "target <= 16 KB: met" in text and "**Reversibility proxy**" in text
    summary["cost"]["modes"]["shared"] = _cost_entry(plain, [0.5, 0.7, 0.9], 8356)
    assert "target <= 2x: **not met in this run**" in markdown(summary)
    summary["reused"] = {"path": "docs/probes.json", "date": "2026-11-29 10:00 UTC"}
    summary["run"]["full_command"] = "frip eval probes --output docs --repeats 5"
    text = markdown(summary)
    assert "are those of `docs/probes.json` (run of 2026-11-29 10:00 UTC)" in text
    assert "frip eval probes --output docs --repeats 5\n```" in text
    assert "the embeddings stay in memory" in text
    del summary["attacks"], summary["reversibility"]  # a --cost-only run
    text = markdown(summary)
    assert "**Latency**" in text and "curious matcher learns" not in text


def test_figures_are_reused_only_from_a_full_probes_summary(tmp_path: Path) -> None:
    from frip_eval.eval_probes import run_reusing

    from frip_engine.errors import InputError

    bad = tmp_path / "probes.json"
    for text, message in (
        ("not json", "cannot read"),
        ('{"mode": "probes", "attacks": {}}', "not a full"),
    ):
        bad.write_text(text)
        with pytest.raises(InputError, match=message):
            run_reusing(bad)
    with pytest.raises(InputError, match="cannot read"):
        run_reusing(tmp_path / "absent.json")


def test_cost_times_plain_and_shared_in_rounds() -> None:
    """The latency benchmark: each round times plain and then shared on the same probe;
    each mode's ratio to plain is the median over rounds, with its range."""
    from frip_eval.eval_probes import cost

    found = cost([], registrants=(1_000,), repeats=2, only=["shared"])
    assert list(found["modes"]) == ["plain", "shared"]
    shared = found["modes"]["shared"]
    assert len(shared["runs"]["1000"]) == 2 and shared["1000"] > 0
    lo, hi = shared["x_plain_range"]["1000"]
    assert lo <= shared["x_plain"]["1000"] <= hi
    assert found["modes"]["plain"]["x_plain"]["1000"] == 1.0
    assert shared["upload_bytes"] <= 16 * 1024
