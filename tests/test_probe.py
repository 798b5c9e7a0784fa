"""The one Probe type: its rules, and every form identify and verify accept."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import near, unit_vectors
from frip_adapter_acme import AcmeV1Adapter

from frip_engine.engine import Engine, EnrolItem
from frip_engine.errors import EmbeddingError, MissingFileError, ProbeError
from frip_engine.probe import PROBE_KINDS, Probe, VendorTemplate, one_probe


@pytest.fixture
def plain(make_engine: Callable[..., Engine]) -> Engine:
    return make_engine(
        "plain", engine={"name": "plain", "insecure": True}, he={"plugin": "plaintext"}
    )


def test_exactly_one_probe_is_one_rule_spelled_by_each_caller() -> None:
    assert one_probe([False, True, False]) == 1
    with pytest.raises(ProbeError, match="an image, an embedding or a vendor template"):
        one_probe([False, False, False])
    with pytest.raises(ProbeError, match="give exactly one probe: 'image', 'embedding'"):
        one_probe([True, True, False], ["'image'", "'embedding'", "'template'"])
    with pytest.raises(ProbeError, match="exactly one probe"):
        Probe()
    with pytest.raises(ProbeError, match="exactly one probe"):
        Probe(image=b"x", embedding=np.ones(3))
    assert PROBE_KINDS == ("an image", "an embedding", "a vendor template")


def test_a_caller_that_chose_the_kind_builds_that_probe(tmp_path: Path) -> None:
    vector = np.ones(4)
    by_kind = Probe.of_kind(one_probe([False, True, False], ["-i", "-e", "-t"]), vector)
    assert by_kind.embedding is vector and by_kind.image is None and by_kind.template is None
    assert Probe.of_kind(0, b"jpeg").image == b"jpeg"
    with pytest.raises(ProbeError):
        Probe.of_kind(3, vector)
    with pytest.raises(ProbeError):
        Probe.of_kind(1, None)
    (tmp_path / "t.acmt").write_bytes(b"ACMT")
    template = VendorTemplate.read("acme-v1", tmp_path / "t.acmt")
    assert template == VendorTemplate("acme-v1", b"ACMT")
    assert Probe.of_kind(2, template).template is template
    with pytest.raises(MissingFileError, match=r"absent\.acmt does not exist"):
        VendorTemplate.read("acme-v1", tmp_path / "absent.acmt")


def test_probe_of_takes_every_form_identify_accepts(tmp_path: Path) -> None:
    vector = np.ones(4)
    assert Probe.of("probe.jpg").image == "probe.jpg"
    assert Probe.of(tmp_path).image == tmp_path
    assert Probe.of(image=b"jpeg").image == b"jpeg"
    assert Probe.of(embedding=vector).embedding is vector
    given = Probe(embedding=vector)
    assert Probe.of(given) is given
    with pytest.raises(ProbeError):
        Probe.of(given, embedding=vector)
    with pytest.raises(ProbeError):
        Probe.of("a.jpg", image="b.jpg")
    with pytest.raises(ProbeError):
        Probe.of("a.jpg", embedding=vector)
    with pytest.raises(ProbeError):
        Probe.of()


def test_identify_and_verify_take_a_probe_object_and_a_vendor_template(plain: Engine) -> None:
    gallery = unit_vectors(3, seed=21)
    for i, vector in enumerate(gallery):
        plain.enrol(EnrolItem(f"s{i}", embeddings=[vector]))
    probe = near(gallery[1], 0.3, 5)
    by_keyword = plain.identify(embedding=probe)
    by_object = plain.identify(Probe(embedding=probe))
    assert by_keyword.subject_id == by_object.subject_id == "s1"
    assert by_keyword.score == pytest.approx(by_object.score)
    template = VendorTemplate("acme-v1", AcmeV1Adapter().encode(probe))
    assert plain.identify(Probe(template=template)).subject_id == "s1"
    assert plain.verify("s1", Probe(template=template)).matched
    assert not plain.verify("s2", Probe(template=template)).matched
    damaged = VendorTemplate("acme-v1", AcmeV1Adapter().encode(probe)[:-1])
    with pytest.raises(EmbeddingError, match="ACMT"):
        plain.identify(Probe(template=damaged))
    with pytest.raises(ProbeError):
        plain.identify()
    with pytest.raises(ProbeError):
        plain.verify("s1", image=b"x", embedding=probe)


def test_a_path_as_the_first_argument_is_an_image(plain: Engine, tmp_path: Path) -> None:
    with pytest.raises(MissingFileError, match="no such file"):
        plain.identify(str(tmp_path / "missing.jpg"))
    with pytest.raises(MissingFileError, match="no such file"):
        plain.verify("s1", tmp_path / "missing.jpg")
