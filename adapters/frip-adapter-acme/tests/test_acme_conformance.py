"""The ACME adapter against frip-engine's adapter conformance suite (round trip within the
int8 quantisation, every damaged or truncated template refused with an InputError)."""

from __future__ import annotations

from frip_engine.testing import AdapterConformance


class TestAcmeV1(AdapterConformance):
    plugin_name = "acme-v1"  # found through the package's frip_engine entry point
