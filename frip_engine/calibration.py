"""Decision thresholds calibrated per (extractor, protection, block size): the shipped table.

A cosine threshold is only meaningful for the comparison and the population it was
measured on: PE-MIU's block re-alignment takes the best assignment, which lifts impostor
scores, and a gallery of thousands has higher best-impostor scores than one of dozens. So
the engine's default threshold is looked up in a table shipped with the package
(``frip_engine/calibration.json``, written by ``benchmarks/calibrate_thresholds.py``),
keyed by the engine's extractor, protection and pe-miu block size, and each entry records
how it was measured. A combination the table does not have is refused at ``frip create``
unless the profile sets ``[engine] threshold``; ``frip eval calibrate`` measures one on
the user's own images. How a threshold is measured: :mod:`frip_eval.calibrate`.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from frip_engine.errors import ProfileError

TABLE_FILE = Path(__file__).with_name("calibration.json")


# ----------------------------------------------------------------------------- the table
@dataclass(frozen=True)
class Calibration:
    """One calibrated operating point and how it was measured.

    ``threshold`` is a cosine (PE-MIU score for pe-miu) in [-1, 1]; ``fpir_target`` the
    FPIR it was chosen for; ``fpir`` and ``fnir`` what was measured at it (fractions);
    ``gallery``, ``mated`` and ``non_mated`` count enrolled identities and searches.
    """

    extractor: str
    protection: str
    block_size: int | None
    threshold: float
    fpir_target: float
    fpir: float
    fnir: float
    rank1: float
    max_non_mated: float
    dataset: str
    identities: int
    images: int
    failures: int
    gallery: int
    mated: int
    non_mated: int
    date: str
    command: str

    @property
    def key(self) -> tuple[str, str, int | None]:
        return (self.extractor, self.protection, self.block_size)

    def describe(self) -> str:
        """One line: where the threshold comes from and what it gives."""
        size = f" block {self.block_size}" if self.block_size is not None else ""
        return (
            f"calibrated for {self.extractor} / {self.protection}{size} on {self.dataset} "
            f"({self.gallery} enrolled, {self.mated} mated / {self.non_mated} non-mated "
            f"searches) at FPIR {self.fpir_target:.1%}: FNIR {self.fnir:.2%}, {self.date}"
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def table_key(
    extractor: str, protection: str, block_size: int | None
) -> tuple[str, str, int | None]:
    """The table's key: pe-miu is keyed by its block size, every other protection by None."""
    return (extractor, protection, block_size if protection == "pe-miu" else None)


@functools.cache
def load_table(path: Path = TABLE_FILE) -> dict[tuple[str, str, int | None], Calibration]:
    """The shipped calibrations by (extractor, protection, block size), read once."""
    if not path.is_file():
        return {}
    entries = json.loads(path.read_text(encoding="utf-8"))["entries"]
    table = {}
    for entry in entries:
        item = Calibration.from_dict(entry)
        table[item.key] = item
    return table


def lookup(extractor: str, protection: str, block_size: int | None) -> Calibration | None:
    return load_table().get(table_key(extractor, protection, block_size))


def calibrated_threshold(
    extractor: str, protection: str, block_size: int | None
) -> tuple[float, Calibration]:
    """The shipped threshold for a combination, or a ProfileError saying how to get one."""
    found = lookup(extractor, protection, block_size)
    if found is None:
        size = f" --block-size {block_size}" if block_size is not None else ""
        known = ", ".join(
            f"{e}/{p}" + (f"/{b}" if b is not None else "")
            for e, p, b in sorted(load_table(), key=lambda k: (k[0], k[1], k[2] or 0))
        )
        raise ProfileError(
            f"no calibrated threshold for extractor '{extractor}' with protection "
            f"'{protection}'" + (f" (block size {block_size})" if block_size else "") + ": "
            f"measure one on your images with `frip eval calibrate -e {extractor} "
            f"--protection {protection}{size} --index your.csv`, then give it as "
            "`threshold = ...` in the profile's engine table or `frip engine create "
            f"--threshold ...` (calibrated: {known or 'none'})"
        )
    return found.threshold, found


def engine_threshold(
    profile_threshold: float | None, extractor: str, protection: str, block_size: int | None
) -> tuple[float, str]:
    """An engine's decision threshold and where it comes from: the profile's ``[engine]
    threshold`` when set, else the shipped calibration for its extractor, protection and
    block size; ProfileError when neither exists (there is no silent fallback)."""
    if profile_threshold is not None:
        return profile_threshold, "profile: [engine] threshold"
    value, record = calibrated_threshold(extractor, protection, block_size)
    return value, f"{record.describe()} (frip_engine/calibration.json)"
