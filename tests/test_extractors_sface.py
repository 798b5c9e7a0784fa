"""SFace: the in-memory repair of its graph, and what it leaves untouched."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from frip_plugins.extractors._common import onnx_session, sha256_file
from frip_plugins.extractors.sface import MODELS, SFaceExtractor, repaired_sface

from frip_engine.images import load_image


@pytest.fixture(scope="module")
def sface() -> SFaceExtractor:
    extractor = SFaceExtractor()
    extractor.load()
    return extractor


def _recogniser_path(sface: SFaceExtractor) -> str:
    return next(m.path for m in sface.models() if m.name == Path(MODELS["recogniser"][0]).name)


def test_the_shipped_graph_is_refused_until_repaired(sface: SFaceExtractor) -> None:
    path = _recogniser_path(sface)
    shipped = onnx.load(path)
    declared = [i.name for i in shipped.graph.input]
    initialisers = {t.name for t in shipped.graph.initializer}
    dangling = [n for n in declared if n not in initialisers and n != "data"]
    assert len(dangling) == 29  # the quantiser's leftover float weights
    face = np.zeros((1, 3, 112, 112), np.float32)
    with pytest.raises(Exception, match="Required inputs"):
        onnx_session(path, 1).run(None, {"data": face})
    graph, dropped = repaired_sface(path)
    assert dropped == 29 and sface.unused_inputs_dropped == 29
    repaired = onnx.load_from_string(graph)
    assert [i.name for i in repaired.graph.input] == ["data"]
    # nodes and weights are the file's own
    assert [n.name for n in repaired.graph.node] == [n.name for n in shipped.graph.node]
    assert {t.name for t in repaired.graph.initializer} == initialisers
    out = onnx_session(graph, 1).run(None, {"data": np.zeros((3, 3, 112, 112), np.float32)})
    assert out[0].shape == (3, 128)  # the batch axis is free


def test_the_package_file_is_not_modified_and_no_copy_is_written(
    sface: SFaceExtractor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = Path(_recogniser_path(sface))
    before = sorted(p.name for p in path.parent.iterdir())
    monkeypatch.chdir(tmp_path)
    SFaceExtractor().load()
    assert sha256_file(str(path)) == MODELS["recogniser"][1]
    assert sorted(p.name for p in path.parent.iterdir()) == before
    assert not list(tmp_path.iterdir())


def test_batch_size_does_not_change_embeddings(lfw: Path, sface: SFaceExtractor) -> None:
    images = [load_image(p) for p in sorted((lfw / "Adam_Sandler").iterdir())]
    one = SFaceExtractor(batch_size=1).extract_many(images)
    many = sface.extract_many(images)
    for a, b in zip(one, many, strict=True):
        assert np.allclose(a.embedding, b.embedding, atol=1e-5)  # type: ignore[union-attr]


def test_large_images_are_detected_on_a_shrunk_copy_and_cropped_at_full_size(
    lfw: Path, sface: SFaceExtractor
) -> None:
    import cv2

    small = load_image(lfw / "Adam_Sandler" / "Adam_Sandler_0001.jpg")
    big = cv2.resize(small, (2000, 2000), interpolation=cv2.INTER_CUBIC)
    a, b = sface.extract(small), sface.extract(big)
    assert np.allclose(np.array(b.box) / 8, a.box, atol=8)  # full-resolution coordinates
    assert a.embedding @ b.embedding > 0.8
