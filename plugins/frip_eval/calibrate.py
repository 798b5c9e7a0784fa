"""How a decision threshold is measured, for one (extractor, protection, block size).

Why thresholds are calibrated per combination, and the shipped table the engine reads
them from: :mod:`frip_engine.calibration`. Here: measuring an entry (``frip eval
calibrate`` on a user's images, ``benchmarks/calibrate_thresholds.py`` for the shipped
table, whose report :mod:`frip_eval.calibrate_report` writes) and merging it into a table
or a profile.

Calibration is open-set identification (ISO/IEC 19795-1) on the split every measurement
uses (:func:`frip_eval.data.identification_protocol`): identities with several images
enrol their first usable image, their other images are mated searches, identities with
one image are non-mated searches. The threshold is the smallest score at which at most
``floor(FPIR * non-mated searches)`` non-mated searches return a candidate (a candidate is
returned when the best score is >= the threshold); FNIR is then the share of mated
searches whose best candidate is not the mate or scores below it
(:class:`frip_eval.evaluation.SearchScores`). Under pe-miu every gallery template and
every search is protected with its own fresh permutation and compared by best block
assignment, as the engine does (:func:`frip_engine.pemiu.compare_many`).

Embeddings are held in memory only, never cached on disk (no embedding is ever written
in the clear): one extraction calibrates every protection and block size of an extractor
(:func:`combinations`).
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np

from frip_engine import pemiu
from frip_engine.calibration import TABLE_FILE, Calibration, load_table
from frip_engine.errors import InputError
from frip_eval.data import Dataset, Embedded, Protocol, embed_with, identification_protocol
from frip_eval.eval_protection import DEFAULT_BLOCK_SIZES, protect_matrix
from frip_eval.evaluation import SearchScores, protocol_searches, threshold_at_fpir

DEFAULT_FPIR = 0.01
PROTECTIONS = ("none", "pe-miu")

Progress = Callable[[str, int], None]


# ----------------------------------------------------------------------------- calibrating
def search_scores(
    embedded: Embedded,
    protocol: Protocol,
    protection: str,
    block_size: int | None,
    progress: Callable[[int], None] | None = None,
) -> SearchScores:
    """Run every mated and non-mated search of ``protocol`` against its gallery, scored as
    an engine with this protection scores them (rows of ``embedded.matrix`` are unit or,
    where extraction failed, zero): the cosine for ``none``; for ``pe-miu`` every gallery
    template and every search protected with its own fresh permutation and compared by
    best block assignment (:func:`frip_engine.pemiu.assigned_scores`)."""
    if protection == "none":
        scores = protocol_searches(embedded, protocol)
        if progress:
            progress(len(protocol.mated) + len(protocol.non_mated))
        return scores
    if protection != "pe-miu":
        raise InputError(
            f"calibration knows protections {', '.join(PROTECTIONS)}, not '{protection}'"
        )
    matrix = embedded.matrix
    mate, rival, best = _pemiu_searches(
        matrix[protocol.gallery],
        matrix[protocol.mated],
        np.asarray(protocol.mated_truth, dtype=int),
        matrix[protocol.non_mated],
        block_size,
        embedded.extractor,
        progress,
    )
    scores = SearchScores(mate, ~(rival > mate), best)
    return scores.failed_where(~embedded.ok[protocol.mated], ~embedded.ok[protocol.non_mated])


def _pemiu_searches(
    gallery: np.ndarray,
    mated: np.ndarray,
    truth: np.ndarray,
    non_mated: np.ndarray,
    block_size: int | None,
    extractor: str,
    progress: Callable[[int], None] | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PE-MIU open-set searches: per mated search the mate's score and the best other
    score that beats it (else the mate's), per non-mated search the best score.

    Exact, but pruned: the summed row maxima (and column maxima) of a block-product matrix
    bound its best assignment from above, so a registrant whose bound cannot beat the best
    score found so far is never assigned (about 3x fewer Hungarian solves on lfw-large)."""
    if block_size is None:
        raise InputError("pe-miu calibration needs a block size")
    dimension = gallery.shape[1]
    blocks = pemiu.check_block_size(block_size, dimension)
    if blocks < 2:
        raise InputError(
            f"pe-miu: block size {block_size} makes the {dimension}-d template one block"
        )
    stored = protect_matrix(gallery, block_size, extractor)[0].reshape(-1, blocks, block_size)

    def products(rows: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Per search (freshly protected): its block products with every registrant and
        their upper bounds."""
        for probe in protect_matrix(rows, block_size, extractor)[0]:
            pairs = np.einsum("ib,gjb->gij", probe.reshape(blocks, block_size), stored)
            bound = np.minimum(pairs.max(axis=2).sum(axis=1), pairs.max(axis=1).sum(axis=1))
            yield pairs, bound

    mate = np.empty(len(mated))
    rival = np.empty(len(mated))
    for i, (pairs, bound) in enumerate(products(mated)):
        mate[i] = pemiu.assigned_scores(pairs[[truth[i]]])[0]
        bound[truth[i]] = -np.inf
        rival[i] = _pruned_max(pairs, bound, mate[i])
        if progress:
            progress(1)
    best = np.empty(len(non_mated))
    for i, (pairs, bound) in enumerate(products(non_mated)):
        best[i] = _pruned_max(pairs, bound, -np.inf)
        if progress:
            progress(1)
    return mate, rival, best


def _pruned_max(pairs: np.ndarray, bound: np.ndarray, floor: float, chunk: int = 16) -> float:
    """The largest best-assignment score of the (g, blocks, blocks) ``pairs`` that exceeds
    ``floor``, else ``floor``; ``bound`` holds an upper bound of each one's score."""
    best = floor
    order = np.argsort(-bound)
    for start in range(0, len(order), chunk):
        batch = order[start : start + chunk]
        batch = batch[bound[batch] > best]
        if not len(batch):
            break
        best = max(best, float(pemiu.assigned_scores(pairs[batch]).max()))
    return best


def combinations(dimension: int) -> list[tuple[str, int | None]]:
    """What one extraction of ``dimension``-d templates calibrates: protection ``none``,
    and pe-miu at every block size of :data:`DEFAULT_BLOCK_SIZES` leaving two blocks."""
    runs: list[tuple[str, int | None]] = [("none", None)]
    return runs + [("pe-miu", b) for b in DEFAULT_BLOCK_SIZES if dimension // b >= 2]


def check_fpir(fpir: float) -> None:
    """InputError unless the FPIR target is a fraction in (0, 1)."""
    if not 0.0 < fpir < 1.0:
        raise InputError(f"the FPIR target must be in (0, 1), not {fpir}")


def calibrate(
    embedded: Embedded,
    labels: Sequence[str],
    protection: str = "none",
    block_size: int | None = None,
    fpir: float = DEFAULT_FPIR,
    dataset: str = "",
    command: str = "",
    progress: Callable[[int], None] | None = None,
) -> tuple[Calibration, SearchScores]:
    """The threshold giving ``fpir`` on this data set's open-set searches, with the FNIR
    measured there and the record of how it was measured; also the raw search scores.

    Raises InputError when the set has no mated or no non-mated searches, or when
    ``fpir`` is not in (0, 1).
    """
    check_fpir(fpir)
    protocol = identification_protocol(labels, embedded.ok)
    if not protocol.non_mated:
        raise InputError(
            "calibration needs non-mated searches: identities with exactly one image, "
            "who are not enrolled"
        )
    size = block_size if protection == "pe-miu" else None
    scores = search_scores(embedded, protocol, protection, size, progress)
    exact = threshold_at_fpir(scores.best_non_mated, fpir)
    # rounded up to 6 decimals (a number to read and copy), never below the exact one
    threshold = math.ceil(exact * 1e6) / 1e6
    if threshold < exact:
        threshold = (math.ceil(exact * 1e6) + 1) / 1e6
    finite = scores.best_non_mated[np.isfinite(scores.best_non_mated)]
    record = Calibration(
        extractor=embedded.extractor,
        protection=protection,
        block_size=size,
        threshold=threshold,
        fpir_target=fpir,
        fpir=scores.fpir(threshold),
        fnir=scores.fnir(threshold),
        rank1=scores.rank1,
        max_non_mated=float(finite.max()) if len(finite) else -1.0,
        dataset=dataset,
        identities=len(set(labels)),
        images=len(labels),
        failures=int(np.sum(~embedded.ok)),
        gallery=len(protocol.gallery),
        mated=len(protocol.mated),
        non_mated=len(protocol.non_mated),
        date=dt.date.today().isoformat(),
        command=command,
    )
    return record, scores


def write_table(records: Sequence[Calibration], path: Path = TABLE_FILE) -> Path:
    """Merge ``records`` into the table file (same key replaced), sorted, atomically."""
    merged = dict(load_table(path)) if path.is_file() else {}
    merged.update({r.key: r for r in records})
    ordered = sorted(merged.values(), key=lambda r: (r.extractor, r.protection, r.block_size or 0))
    body = {
        "about": "Decision thresholds per (extractor, protection, pe-miu block size); "
        "written by benchmarks/calibrate_thresholds.py, explained in docs/calibration.md",
        "entries": [asdict(r) for r in ordered],
    }
    staging = path.with_suffix(".json.tmp")
    staging.write_text(json.dumps(body, indent=1) + "\n", encoding="utf-8")
    staging.replace(path)
    load_table.cache_clear()
    return path


def resolve_protection(extractor: str, protection: str, block_size: int | None) -> int | None:
    """Check a combination before any image is read: the pe-miu block size it uses (the
    plugin's default when ``block_size`` is None), None for ``none``. InputError when the
    protection is not one calibration knows or the block size does not fit."""
    from frip_engine import plugins

    if protection not in PROTECTIONS:
        raise InputError(
            f"calibration knows protections {', '.join(PROTECTIONS)}, not '{protection}'"
        )
    dimension = int(plugins.create("extractor", extractor).dimension)
    if protection == "none":
        if block_size is not None:
            raise InputError("--block-size applies to protection pe-miu only")
        return None
    params = {} if block_size is None else {"block_size": block_size}
    made = plugins.create("protection", protection, **params)
    made.output_dimension(dimension)  # InputError when it does not divide into >= 2 blocks
    return int(made.probe_block_size)


def run_calibration(
    dataset: Dataset,
    extractor: str,
    protection: str = "none",
    block_size: int | None = None,
    fpir: float = DEFAULT_FPIR,
    threads: int = 1,
    command: str = "",
    progress: Progress | None = None,
) -> Calibration:
    """Calibrate one combination on a labelled data set (``frip eval calibrate``): the
    data set's embeddings, extracted in memory, then :func:`calibrate`."""
    size = resolve_protection(extractor, protection, block_size)
    check_fpir(fpir)
    embedded = embed_with(extractor, dataset, threads, progress)
    step = (lambda n: progress(f"{extractor} {protection}: searching", n)) if progress else None
    record, _ = calibrate(
        embedded, dataset.labels, protection, size, fpir, dataset.root.name, command, step
    )
    return record


def write_profile_threshold(path: Path, record: Calibration) -> None:
    """Set ``[engine] threshold`` in a profile file to ``record.threshold``, keeping every
    other key. InputError when the profile's extractor, protection or block size is not the
    calibrated one (the threshold would not hold for it); ProfileError when it is no
    valid profile."""
    import tomllib

    import tomli_w

    from frip_engine import plugins
    from frip_engine.profile import Profile, load_profile

    profile = load_profile(path)
    protection = plugins.create(
        "protection", profile.plugin("protection"), **profile.params("protection")
    )
    has = (profile.plugin("extractor"), protection.name, protection.probe_block_size)
    if has != record.key:
        raise InputError(
            f"{path} uses extractor/protection/block size {has}, the calibration is for "
            f"{record.key}: calibrate with the profile's own combination"
        )
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    data.setdefault("engine", {})["threshold"] = record.threshold
    Profile.from_dict(data, str(path))  # still a valid profile
    staging = path.with_suffix(".toml.tmp")
    staging.write_text(tomli_w.dumps(data), encoding="utf-8")
    staging.replace(path)
