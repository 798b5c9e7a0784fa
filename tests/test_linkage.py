"""FRIP function II: one registration image, one template per engine, each its own format."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from frip_engine.engine import Engine
from frip_engine.errors import InputError
from frip_engine.images import load_image
from frip_engine.linkage import enrol_everywhere


def _img(lfw: Path, name: str, n: int) -> Path:
    return lfw / name / f"{name}_{n:04d}.jpg"


@pytest.fixture
def engines(make_engine: Any) -> dict[str, Engine]:
    """Plaintext-reference engines (the linkage is the same whatever the HE backend)."""

    def plain(name: str, extractor: str) -> Engine:
        return make_engine(
            name,
            engine={"name": name, "insecure": True},
            he={"plugin": "plaintext"},
            extractor={"plugin": extractor},
        )

    return {
        "doors": plain("doors", "arcface"),
        "lobby": plain("lobby", "sface"),
        "legacy": plain("legacy", "facenet"),
        "doors-b": plain("doors-b", "arcface"),
    }


def test_one_image_enrols_into_engines_with_different_extractors(
    engines: dict[str, Engine], lfw: Path
) -> None:
    everyone = list(engines.values())
    result = enrol_everywhere(everyone, "adam", _img(lfw, "Adam_Sandler", 1))
    assert result.enrolled == {
        "doors": "arcface",
        "lobby": "sface",
        "legacy": "facenet",
        "doors-b": "arcface",
    }
    assert not result.failed
    assert result.extractions == 3  # the two identical arcface set-ups share one run
    dims = {name: e.stats()["dimension"] for name, e in engines.items()}
    assert dims == {"doors": 512, "lobby": 128, "legacy": 512, "doors-b": 512}
    enrol_everywhere(everyone, "andy", _img(lfw, "Andy_Roddick", 1))
    for engine in everyone:  # each engine recognises the person with its own extractor
        decision = engine.identify(image=_img(lfw, "Adam_Sandler", 2))
        assert decision.matched and decision.subject_id == "adam", engine.name
    # nothing in the report is an embedding
    assert all(not isinstance(v, np.ndarray) for v in asdict(result).values())


def test_the_plaintext_embedding_is_not_kept(
    make_engine: Any, lfw: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from frip_engine import linkage
    from frip_engine.embeddings import mean_template

    held: list[np.ndarray] = []
    wipe = linkage._wipe

    def spy(arrays: list[np.ndarray]) -> None:
        wipe(arrays)
        held.extend(arrays)

    monkeypatch.setattr(linkage, "_wipe", spy)
    sealed = make_engine("sealed", extractor={"plugin": "sface"})  # TenSEAL CKKS
    clear = make_engine(
        "clear",
        engine={"name": "clear", "insecure": True},
        he={"plugin": "plaintext"},
        extractor={"plugin": "sface"},
    )
    image = _img(lfw, "Adam_Sandler", 1)
    plain = sealed.parts.extractor.extract(load_image(image)).embedding
    # as the engine computes it: linkage normalises, enrolment normalises and averages
    template = mean_template([sealed.check_embedding(sealed.check_embedding(plain))])
    values = [template[j : j + 1].astype("<f8").tobytes() for j in range(16)]
    result = enrol_everywhere([sealed, clear], "adam", image)
    assert set(result.enrolled) == {"sealed", "clear"}
    assert held and all(not np.any(a) for a in held)  # overwritten after encryption

    def found(engine: Engine) -> int:
        stored = (engine.directory / "gallery.sqlite").read_bytes()
        return sum(v in stored for v in values)

    assert found(clear) >= 12  # the plaintext reference keeps them (to the last bit or so)
    assert found(sealed) == 0  # the encrypted gallery does not


def test_a_failure_in_one_engine_does_not_stop_the_others(
    engines: dict[str, Engine], lfw: Path
) -> None:
    doors, lobby = engines["doors"], engines["lobby"]
    enrol_everywhere([doors], "adam", _img(lfw, "Adam_Sandler", 1))
    result = enrol_everywhere([doors, lobby], "adam", _img(lfw, "Adam_Sandler", 2))
    assert result.enrolled == {"lobby": "sface"}
    assert "already enrolled" in result.failed["doors"]
    noise = np.random.default_rng(0).integers(0, 255, (300, 300, 3), dtype=np.uint8)
    nobody = enrol_everywhere([doors, lobby], "ghost", noise)
    assert not nobody.enrolled and set(nobody.failed) == {"doors", "lobby"}
    assert all("no face" in why for why in nobody.failed.values())
    with pytest.raises(InputError, match="listed twice"):
        enrol_everywhere([doors, doors], "x", noise)
    with pytest.raises(InputError, match="at least one engine"):
        enrol_everywhere([], "x", noise)
