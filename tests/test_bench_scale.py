"""``frip bench scale``'s page (issue 17): it shows the command that was run, and the
benchmark writes into a folder the user names (docs/ only when asked)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from frip_eval import bench_scale
from typer.testing import CliRunner

from frip_engine.cli import app


def _results(command: str) -> dict[str, Any]:
    row = {"p50_ms": 10.0, "p99_ms": 20.0, "decisions_equal_local": 3, "registrants_covered": 300}
    return {
        "command": command,
        "registrants": 300,
        "probes": 3,
        "dimension": 128,
        "blocks": 1,
        "gallery_bytes": 17_000_000,
        "cluster": "started here: one node, 2 CPUs",
        "enrol_per_s": 1000.0,
        "enrol_cores": 1,
        "chunk": 100,
        "executors": {"local": row, "ray-1": {**row, "restart_s": 1.0}},
        "ray_overhead_ms": {"ray-1": 0.0},
    }


def test_the_page_shows_the_command_that_was_run(tmp_path: Path) -> None:
    plan = bench_scale.ScaleRun(300, 3, [1, 3], 100, None, 2, 1, tmp_path / "out")
    command = plan.command_line()
    assert command == (
        "frip bench scale --registrants 300 --probes 3 --shards 1 --shards 3 --chunk 100 "
        f"--cpus 2 --enrol-workers 1 --output {tmp_path / 'out'}"
    )
    bench_scale._write(_results(command), tmp_path)
    page = (tmp_path / "bench-scale.md").read_text()
    assert f"`{command}`" in page
    assert "--output docs" not in page


def test_the_default_output_is_not_docs() -> None:
    # through the mounted CLI: importing frip_eval.commands directly, before the CLI has
    # loaded its plugins, would mount a half-imported module (no `frip eval` for later tests)
    result = CliRunner().invoke(app, ["bench", "scale", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "[default: results/bench]" in result.output
