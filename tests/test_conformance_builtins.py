"""Every built-in plugin passes the conformance suite of its kind (frip_engine.testing):
the suites are tested against real plugins, and the built-ins keep the guarantees. (The
acme adapter runs the adapter suite in its own tests: adapters/frip-adapter-acme/tests.)"""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
from conftest import PASSPHRASE, SOFTHSM_PIN

from frip_engine import plugins
from frip_engine.testing import (
    ClustererConformance,
    ExtractorConformance,
    GalleryStoreConformance,
    HEBackendConformance,
    KeyStoreConformance,
    ProtectionConformance,
)


def _available(kind: str, name: str) -> Any:
    """Skip, saying why, when a built-in's optional dependency is not installed."""
    component = plugins.registry().get(kind, name)
    return pytest.mark.skipif(
        not component.available,
        reason=f"{component.label} is unavailable: {component.install_hint()}",
    )


@_available("extractor", "arcface")
class TestArcface(ExtractorConformance):
    plugin_name = "arcface"
    params: ClassVar[dict[str, Any]] = {"orientation": "as-is"}


@_available("extractor", "sface")
class TestSface(ExtractorConformance):
    plugin_name = "sface"
    params: ClassVar[dict[str, Any]] = {"orientation": "as-is"}


@_available("extractor", "facenet")
class TestFacenet(ExtractorConformance):
    plugin_name = "facenet"
    params: ClassVar[dict[str, Any]] = {"orientation": "as-is"}


@_available("extractor", "facenet-pytorch")
class TestFacenetPytorch(ExtractorConformance):
    plugin_name = "facenet-pytorch"


WEAK = {"poly_modulus_degree": 8192, "coeff_mod_bit_sizes": [60, 60, 60, 60], "scale_bits": 40}


@_available("he_backend", "tenseal")
class TestTenseal(HEBackendConformance):
    plugin_name = "tenseal"
    other_params: ClassVar[dict[str, Any] | None] = {"preset": "compact"}
    weak_params: ClassVar[dict[str, Any] | None] = WEAK


@_available("he_backend", "tenseal")
class TestTensealFastScorer(HEBackendConformance):
    plugin_name = "tenseal"
    params: ClassVar[dict[str, Any]] = {"scorer": "fast"}
    other_params: ClassVar[dict[str, Any] | None] = {"preset": "compact", "scorer": "fast"}
    weak_params: ClassVar[dict[str, Any] | None] = {**WEAK, "scorer": "fast"}


@_available("he_backend", "pyfhel")
class TestPyfhel(HEBackendConformance):
    plugin_name = "pyfhel"
    other_params: ClassVar[dict[str, Any] | None] = {"preset": "compact"}
    weak_params: ClassVar[dict[str, Any] | None] = WEAK


class TestPlaintext(HEBackendConformance):
    plugin_name = "plaintext"


class TestProtectionNone(ProtectionConformance):
    plugin_name = "none"


class TestProtectionPemiu(ProtectionConformance):
    plugin_name = "pe-miu"


class TestClusterSingle(ClustererConformance):
    plugin_name = "single"


@_available("clusterer", "kmeans")
class TestClusterKmeans(ClustererConformance):
    plugin_name = "kmeans"


@_available("clusterer", "faiss")
class TestClusterFaiss(ClustererConformance):
    plugin_name = "faiss"


class TestFileKeyStore(KeyStoreConformance):
    plugin_name = "file"
    params: ClassVar[dict[str, Any]] = {"scrypt_log2_n": 14}
    environment: ClassVar[dict[str, str]] = {"FRIP_PASSPHRASE": PASSPHRASE}


class TestMemoryKeyStore(KeyStoreConformance):
    plugin_name = "memory"


class TestPkcs11KeyStore(KeyStoreConformance):
    plugin_name = "pkcs11"
    params: ClassVar[dict[str, Any]] = {"token_label": "frip-a"}
    environment: ClassVar[dict[str, str]] = {"FRIP_PKCS11_PIN": SOFTHSM_PIN}

    @pytest.fixture(autouse=True)
    def _tokens(self, softhsm: dict[str, str]) -> None:
        """The session's SoftHSM2 tokens (skips, saying why, without softhsm2)."""


class TestSqliteStore(GalleryStoreConformance):
    plugin_name = "sqlite"
