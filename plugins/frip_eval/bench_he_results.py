"""Reading a ``frip bench he`` results dict, and the paper's figures it is compared with.

Shared by the measuring code (:mod:`frip_eval.bench_he`, which derives ratios and
targets) and the report (:mod:`frip_eval.bench_he_report`); it imports neither.
"""

from __future__ import annotations

from typing import Any

# The paper's published Table II figures, as quoted in /work/shared/DESIGN.md (seconds ->
# ms; Azure 2 vCPU; its RTT includes the network and feature extraction). DESIGN.md gives
# probe encryption once (0.005 s) for every N and the RTT only at 120 registrants.
PAPER_TABLE_II: dict[int, dict[str, float]] = {
    100: {"probe_encryption": 5.0, "distance_derivation": 1612.0},
    110: {"probe_encryption": 5.0},
    120: {"probe_encryption": 5.0, "distance_derivation": 1962.0, "rtt": 3100.0},
    130: {"probe_encryption": 5.0},
    140: {"probe_encryption": 5.0, "distance_derivation": 2320.0},
}
PAPER_CIPHERTEXT_BYTES = 334_300  # per registrant, also from DESIGN.md


def ok_configs(results: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for c in results["configs"] if c.get("status") == "ok"]


def point_at(series: list[dict[str, Any]], n: int) -> dict[str, Any] | None:
    return next((p for p in series if p["registrants"] == n), None)


def bulk_rate(config: dict[str, Any]) -> tuple[float, int]:
    """Registrants/s of the largest enrolment step, and the workers it ran with."""
    step = max(config["enrolment"], key=lambda s: s["to"] - s["from"])
    return float(step["per_second"]), int(step.get("workers", 1))


def stored_kb(config: dict[str, Any]) -> float:
    storage = config["storage"]
    full = storage["stored_bytes_per_registrant_full_blocks"]
    return float(full if full is not None else storage["stored_bytes_per_registrant"]) / 1000


def synthetic_checks(config: dict[str, Any]) -> list[dict[str, Any]]:
    """A config's decision comparisons on synthetic galleries: every N and the workers run."""
    checks = [p["decisions"] for p in config.get("points", [])]
    if "workers_point" in config:
        checks.append(config["workers_point"]["decisions"])
    return checks


def decision_totals(config: dict[str, Any]) -> tuple[int, int, int, int]:
    """(synthetic equal, synthetic total, lfw-dev equal, lfw-dev total) for one config."""
    checks = synthetic_checks(config)
    lfw = config["lfw"]["decisions"]
    return (
        sum(c["equal"] for c in checks),
        sum(c["total"] for c in checks),
        lfw["equal"],
        lfw["total"],
    )
