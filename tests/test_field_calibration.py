"""Issue 13 item 8: thresholds calibrated per (extractor, protection, block size).

The class of fault: a threshold calibrated for one comparison (plain cosine) or one
population (lfw-dev's 200 people) used for another (PE-MIU's best-assignment scores, a
population of thousands).
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import LFW_DEV, REPO, unit_vectors
from frip_eval.calibrate import calibrate, search_scores, write_profile_threshold
from frip_eval.data import Embedded, identification_protocol

from frip_engine import pemiu, plugins
from frip_engine.calibration import engine_threshold, load_table, lookup
from frip_engine.engine import Engine, EnrolItem
from frip_engine.errors import InputError, ProfileError
from frip_engine.profile import Profile

BUILT_IN_EXTRACTORS = ("arcface", "sface", "facenet", "facenet-pytorch")
DEFAULT_PEMIU_BLOCK = 32


# ----------------------------------------------------------------------------- the routine
def _synthetic() -> tuple[Embedded, list[str]]:
    """Two enrolled people (A on axis 0, B on axis 1) with one mated search each, and 100
    strangers whose best score against the gallery is exactly 0.00, 0.01, ..., 0.99."""
    d = 128
    rows: list[np.ndarray] = []
    labels: list[str] = []

    def unit(*pairs: tuple[int, float]) -> np.ndarray:
        v = np.zeros(d)
        for axis, value in pairs:
            v[axis] = value
        return v / np.linalg.norm(v)

    rows += [unit((0, 1.0)), unit((0, 0.9), (2, np.sqrt(1 - 0.81)))]  # A: mate scores 0.9
    labels += ["A", "A"]
    rows += [unit((1, 1.0)), unit((1, 1.0))]  # B: mate scores 1.0
    labels += ["B", "B"]
    for k in range(100):
        s = k / 100
        rows.append(unit((0, s), (3 + k, np.sqrt(1 - s * s))))  # best: A at s, B at 0
        labels.append(f"stranger{k:03d}")
    matrix = np.array(rows)
    embedded = Embedded("synthetic", d, 0.5, matrix, np.ones(len(rows), bool), {}, {}, 0.0)
    return embedded, labels


def test_threshold_is_the_fpir_quantile_of_non_mated_best_scores() -> None:
    embedded, labels = _synthetic()
    record, scores = calibrate(embedded, labels, "none", None, fpir=0.05, dataset="synthetic")
    # at most 5 of 100 strangers may pass: 0.95..0.99 pass, 0.94 must not
    assert 0.94 - 1e-9 < record.threshold <= 0.94 + 1e-6
    assert record.fpir == pytest.approx(0.05)
    assert record.fnir == pytest.approx(0.5)  # A's mate (0.9) is below, B's (1.0) above
    assert (record.gallery, record.mated, record.non_mated) == (2, 2, 100)
    assert scores.fpir(record.threshold) == pytest.approx(0.05)
    tighter, _ = calibrate(embedded, labels, "none", None, fpir=0.011)
    assert 0.98 - 1e-9 < tighter.threshold <= 0.98 + 1e-6  # floor(1.1) = 1 stranger allowed
    assert tighter.fpir == pytest.approx(0.01)


def test_pemiu_calibration_uses_the_block_assignment_comparator() -> None:
    """Best assignment can only raise a score above the plain cosine of the same pair, so
    the pe-miu threshold is at least the plain one, and a mate still scores 1."""
    rng = np.random.default_rng(3)
    people = rng.standard_normal((40, 128))
    strangers = rng.standard_normal((200, 128))
    rows = np.vstack([people, people + 0.3 * rng.standard_normal(people.shape), strangers])
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    labels = [f"p{i}" for i in range(40)] * 2 + [f"s{i}" for i in range(200)]
    embedded = Embedded("synthetic", 128, 0.5, rows, np.ones(len(rows), bool), {}, {}, 0.0)
    plain, _ = calibrate(embedded, labels, "none", None, fpir=0.01)
    protected, scores = calibrate(embedded, labels, "pe-miu", 16, fpir=0.01)
    assert protected.threshold > plain.threshold + 0.05
    assert protected.block_size == 16 and plain.block_size is None
    assert float(scores.best_non_mated.max()) <= 1.0


def test_pruned_pemiu_searches_equal_every_comparison() -> None:
    """The pruned search gives exactly what comparing every search with every registrant
    gives (the best assignment does not depend on the permutations drawn)."""
    rng = np.random.default_rng(5)
    people = rng.standard_normal((30, 64))
    rows = np.vstack([people, people + 2.5 * rng.standard_normal(people.shape)])
    rows = np.vstack([rows, rng.standard_normal((40, 64))])
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    labels = [f"p{i}" for i in range(30)] * 2 + [f"s{i}" for i in range(40)]
    embedded = Embedded("synthetic", 64, 0.5, rows, np.ones(len(rows), bool), {}, {}, 0.0)
    protocol = identification_protocol(labels, embedded.ok)
    found = search_scores(embedded, protocol, "pe-miu", 8)
    gallery = rows[protocol.gallery]

    def every(probe: np.ndarray) -> np.ndarray:
        return pemiu.compare_many(np.repeat(probe[None], len(gallery), 0), gallery, 8)

    full = np.array([every(rows[i]) for i in protocol.mated])
    truth = np.asarray(protocol.mated_truth)
    mate = full[np.arange(len(truth)), truth]
    np.testing.assert_allclose(found.mate_score, mate, atol=1e-12)
    np.testing.assert_array_equal(found.top1_hit, full.argmax(axis=1) == truth)
    assert 0 < found.top1_hit.sum() < len(truth)  # the noise makes some searches miss
    best = np.array([every(rows[i]).max() for i in protocol.non_mated])
    np.testing.assert_allclose(found.best_non_mated, best, atol=1e-12)


def unit_rows(n: int) -> np.ndarray:
    rows = np.random.default_rng(n).standard_normal((n, 8))
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


# ----------------------------------------------------------------------------- the table
def _built_ins_here() -> list[str]:
    available = []
    for name in BUILT_IN_EXTRACTORS:
        if plugins.registry().get("extractor", name).available:
            available.append(name)
        else:
            print(f"{name}: not installed here, so it cannot be created nor calibrated")
    return available


def test_table_has_every_built_in_extractor_with_each_protection() -> None:
    table = load_table()
    for name in _built_ins_here():
        dimension = int(plugins.create("extractor", name).dimension)
        for protection, size in [("none", None)] + [
            ("pe-miu", b) for b in (16, 32, 64, 128) if dimension // b >= 2
        ]:
            entry = table.get((name, protection, size))
            assert entry is not None, f"{name}/{protection}/{size} is not calibrated"
            assert -1.0 < entry.threshold < 1.0
            assert entry.dataset == "lfw-large" and entry.non_mated >= 1000
            assert entry.fpir <= entry.fpir_target and 0.0 <= entry.fnir < 0.5
            assert entry.command.startswith("python benchmarks/calibrate_thresholds.py")
            assert entry.date.startswith("20")
        # the best assignment never lowers a score, and with small blocks it lifts impostors
        plain = table[(name, "none", None)].threshold
        shuffled = [e.threshold for k, e in table.items() if k[:2] == (name, "pe-miu")]
        assert min(shuffled) >= plain and table[(name, "pe-miu", 16)].threshold > plain


def test_engine_default_threshold_comes_from_the_table(make_engine: Any) -> None:
    engine = make_engine("pe", protection={"plugin": "pe-miu", "block_size": 32})
    entry = lookup("arcface", "pe-miu", 32)
    assert entry is not None
    assert engine.threshold == entry.threshold
    assert engine.threshold != engine.parts.extractor.threshold  # not the plain cosine's
    stats = engine.stats()
    assert stats["threshold"] == entry.threshold
    assert (
        "lfw-large" in stats["threshold_source"] and "pe-miu block 32" in stats["threshold_source"]
    )
    plain = make_engine("plain")
    assert plain.threshold == lookup("arcface", "none", None).threshold  # type: ignore[union-attr]


def test_stats_warn_when_the_gallery_outgrows_the_calibration(make_engine: Any) -> None:
    """FPIR grows with the number enrolled: a threshold calibrated with 748 people enrolled
    is flagged once the gallery holds more."""
    entry = lookup("arcface", "none", None)
    assert entry is not None
    engine = make_engine(
        "big", engine={"name": "big", "insecure": True}, he={"plugin": "plaintext"}
    )
    vectors = unit_vectors(entry.gallery + 1, 512, seed=11)
    items = [EnrolItem(f"s{i}", embeddings=[v]) for i, v in enumerate(vectors)]
    engine.enrol_many(items[:10])
    assert "WARNING" not in engine.stats()["threshold_source"]
    engine.enrol_many(items[10:])
    source = engine.stats()["threshold_source"]
    assert f"calibrated with {entry.gallery} enrolled" in source and "recalibrate" in source


def test_uncalibrated_combination_is_refused_at_create_unless_the_profile_sets_one(
    home: Path,
) -> None:
    data: dict[str, Any] = {
        "engine": {"name": "odd"},
        "key_store": {"plugin": "memory"},
        "protection": {"plugin": "pe-miu", "block_size": 8},
    }
    with pytest.raises(ProfileError, match=r"frip eval calibrate -e arcface --protection pe-miu"):
        Engine.create(Profile.from_dict(data), home)
    assert not (home / "engines" / "odd").exists()
    data["engine"]["threshold"] = 0.5
    with Engine.create(Profile.from_dict(data), home) as engine:
        assert engine.threshold == 0.5
        assert engine.stats()["threshold_source"] == "profile: [engine] threshold"


def test_explicit_threshold_wins_over_the_table() -> None:
    assert engine_threshold(0.7, "arcface", "none", None) == (0.7, "profile: [engine] threshold")
    with pytest.raises(ProfileError, match="no calibrated threshold"):
        engine_threshold(None, "no-such-extractor", "none", None)


# ----------------------------------------------------------------------------- the field case
def _lfw_dev() -> dict[str, list[Path]]:
    found: dict[str, list[Path]] = defaultdict(list)
    with (LFW_DEV / "index.csv").open(encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            found[row["identity"]].append(LFW_DEV / row["path"])
    return {k: sorted(v) for k, v in sorted(found.items())}


def test_andy_lau_is_not_accepted_with_pemiu_and_70_enrolled(make_engine: Any) -> None:
    """The field report: 70 lfw-dev people enrolled with pe-miu (arcface, block 32) from
    their first two images; Andy_Lau_0001 (not enrolled) was accepted as Daisy_Fuentes at
    0.3445 > 0.34, the plain-cosine threshold. Block re-alignment takes the best of all
    assignments, so the score does not depend on the fresh permutations."""
    people = _lfw_dev()
    assert "Andy_Lau" in people and len(people["Andy_Lau"]) == 1
    enrolled = [k for k, v in people.items() if len(v) >= 3][:70]
    assert "Daisy_Fuentes" in enrolled
    engine = make_engine("field", protection={"plugin": "pe-miu", "block_size": 32})
    report = engine.enrol_many([EnrolItem(k, images=people[k][:2]) for k in enrolled])
    assert len(report.enrolled) == 70, report.failed
    decision = engine.identify(image=people["Andy_Lau"][0])
    best = decision.candidates[0]
    assert best.subject_id == "Daisy_Fuentes" and best.score == pytest.approx(0.3445, abs=1e-3)
    assert not decision.matched, f"accepted as {decision.subject_id} at {decision.score}"
    assert engine.threshold > 0.3445 > engine.parts.extractor.threshold
    mate = engine.identify(image=people["Daisy_Fuentes"][2])  # her own third image
    assert mate.matched and mate.subject_id == "Daisy_Fuentes"


# ----------------------------------------------------------------------------- the CLI
def _small_index(tmp_path: Path, people: int = 30) -> Path:
    """An index over lfw-dev's images (paths absolute), 20 with several images and
    ``people - 20`` with one."""
    found = _lfw_dev()
    several = [k for k, v in found.items() if len(v) > 1][:20]
    single = [k for k, v in found.items() if len(v) == 1][: people - 20]
    index = tmp_path / "my.csv"
    with index.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "identity"])
        for k in several + single:
            for path in found[k]:
                writer.writerow([str(path), k])
    return index


def test_cli_eval_calibrate_on_a_small_index_prints_and_writes_the_threshold(
    tmp_path: Path, home: Path
) -> None:
    index = _small_index(tmp_path)
    profile = tmp_path / "profile.toml"
    profile.write_text(
        '[engine]\nname = "mine"\n[protection]\nplugin = "pe-miu"\nblock_size = 32\n'
    )
    command = [
        sys.executable,
        "-m",
        "frip_engine",
        "eval",
        "calibrate",
        "-e",
        "arcface",
        "--protection",
        "pe-miu",
        "--block-size",
        "32",
        "--index",
        str(index),
        "--fpir",
        "0.1",
        "--write-profile",
        str(profile),
        "--json",
    ]
    cache, own_home = tmp_path / "cache", tmp_path / "home"
    env = {"XDG_CACHE_HOME": str(cache), "HOME": str(own_home)}
    result = subprocess.run(
        command, capture_output=True, text=True, cwd=REPO, env=_env(env), timeout=600
    )
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["extractor"] == "arcface" and record["block_size"] == 32
    assert record["non_mated"] == 10 and record["gallery"] == 20
    assert record["fpir"] <= 0.1 and -1.0 < record["threshold"] < 1.0
    saved = Profile.from_toml(profile.read_text())
    assert saved.threshold == record["threshold"]
    assert saved.plugin("protection") == "pe-miu"  # the rest of the profile is kept
    written = [p for p in [*cache.rglob("*"), *own_home.rglob("*")] if p.is_file()]
    assert written == []  # no embedding written anywhere, in the clear or otherwise
    # a wrong combination is refused with the reason, no traceback
    bad = subprocess.run(
        [*command[:10], "48", "--index", str(index)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=_env(env),
        timeout=600,
    )
    assert bad.returncode == 2 and "block_size 48" in bad.stderr
    assert "Traceback" not in bad.stderr


def _env(extra: dict[str, str]) -> dict[str, str]:
    import os

    return {**os.environ, **extra}


def test_write_profile_refuses_a_profile_of_another_combination(tmp_path: Path) -> None:
    record = lookup("arcface", "pe-miu", 32)
    assert record is not None
    profile = tmp_path / "p.toml"
    text = '[engine]\nname = "x"\n[protection]\nplugin = "pe-miu"\nblock_size = 16\n'
    profile.write_text(text)
    with pytest.raises(InputError, match="calibrate with the profile's own combination"):
        write_profile_threshold(profile, record)
    assert profile.read_text() == text  # untouched
    profile.write_text('[engine]\nname = "x"\n[protection]\nplugin = "pe-miu"\n')
    write_profile_threshold(profile, record)  # block size 32 is the default
    assert Profile.from_toml(profile.read_text()).threshold == record.threshold
