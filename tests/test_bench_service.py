"""benchmarks/bench_service.py's sweep at a tiny size: the report's shape and 0 errors,
never its timings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from frip_eval.bench_service import PINNED, Plan, batching_configs, run

pytest.importorskip("httpx")


def test_batching_runs_only_where_the_server_can_batch() -> None:
    assert batching_configs({"--port"}, 16, 5.0) == [("off (server cannot batch)", ())]
    both = batching_configs({"--batch-max", "--batch-wait-ms"}, 16, 5.0)
    assert both == [
        ("off", ("--batch-max", "1")),
        ("on", ("--batch-max", "16", "--batch-wait-ms", "5.0")),
    ]
    assert batching_configs({"--batch-max"}, 16, None)[1] == ("on", ("--batch-max", "16"))


def test_tiny_service_benchmark(
    home: Path, lfw: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in PINNED:  # run() pins them; restore them after the test
        monkeypatch.setenv(name, "1")
    plan = Plan(
        registrants=[50],
        probes=["embedding"],
        clients=[2],
        writers=2,
        writer_inflight=[1, 3],
        seconds=2.0,
        batch_max=8,
        batch_wait_ms=None,
        image_people=0,
        lfw=lfw,
        warmup=0.5,
        cache=tmp_path / "cache",
    )
    output = tmp_path / "docs"
    run(plan, output, "test")
    saved = json.loads((output / "bench-service.json").read_text())
    assert saved["errors"] == 0
    (engine,) = saved["engines"]  # built into the cache, timed alone in this process
    assert engine["registrants"] == 50 and engine["reused"] is False
    assert engine["alone"]["identify_ms"] > 0 and engine["alone"]["batch"] == 8
    assert engine["alone"]["identify_many_per_s"] > 0
    # what the enrolment target is up against: d fresh encryptions of zero per group
    bound = engine["encryption_bound"]
    assert bound["encryptions_per_group"] == 512 and bound["ms_per_encryption"] > 0
    cores = len(saved["machine"]["cores_used"])
    groups = cores * 1000 / (512 * bound["ms_per_encryption"])
    assert bound["cores"] == cores and bound["groups_per_s"] == pytest.approx(groups)
    # 2 writers with K enrolments in flight each: at most 2K per group
    assert bound["writer_inflight"] == [1, 3]
    assert bound["enrolments_per_s"] == pytest.approx([2 * groups, 6 * groups])
    assert saved["threads"] == {name: "1" for name in PINNED}
    assert saved["machine"]["cores_used"] and saved["machine"]["cpus"] >= 1
    labels = [c["batching"] for c in saved["configs"]]
    assert labels == (["off", "on"] if saved["batching_available"] else [labels[0]])
    runs = saved["runs"]
    loads = {(0, 0), (2, 1), (2, 3)}  # (writers, requests in flight per writer)
    assert {(r["batching"], r["writers"], r["writer_inflight"]) for r in runs} == {
        (b, w, k) for b in labels for w, k in loads
    }
    for row in runs:
        assert row["registrants"] == 50 and row["clients"] == 2 and row["probes"] == "embedding"
        assert row["errors"] == 0 and row["identify"]["errors"] == 0
        assert row["identify"]["requests"] > 0 and row["identify"]["wrong_decisions"] == 0
        assert row["identify"]["p50_ms"] <= row["identify"]["p99_ms"]
        assert row["mean_batch_size"] is None or row["mean_batch_size"] >= 1
        assert row["cpu_s"]["server"] > 0 and row["cpu_s"]["load_generator"] > 0
        if row["writers"]:
            assert row["enrol"]["requests"] > 0 and row["enrol"]["errors"] == 0
            assert row["enrol"]["groups"] >= 1 and row["enrol"]["mean_group"] >= 1
            assert row["p99_vs_read_only"] is not None
        else:
            assert row["enrol"] is None
        if row["batching"] == "on":
            assert row["throughput_vs_batching_off"] is not None
    table = (output / "bench-service.md").read_text()
    assert table.count("\n| 50 | embedding | 2 |") == len(runs)
    assert "The engine alone" in table
    assert "Encryption bound" in table and "enrolments/s" in table
    if not saved["batching_available"]:
        assert "only the unbatched configuration ran" in table

    # again from the cache: the gallery is copied, not enrolled again (the writers of the
    # first run enrolled into their copy only)
    plan.writers, plan.seconds, plan.warmup = 0, 0.5, 0.2
    run(plan, output, "test")
    again = json.loads((output / "bench-service.json").read_text())
    assert again["errors"] == 0 and again["engines"][0]["reused"] is True
    assert all(r["identify"]["wrong_decisions"] == 0 for r in again["runs"])
