"""Conformance suites for plugin authors: one base class per plugin kind.

A vendor proves their plugin keeps the engine's guarantees by subclassing the suite of its
kind in a test file and naming the plugin (as registered, the name a profile uses)::

    from frip_engine.testing import AdapterConformance

    class TestAcmeConformance(AdapterConformance):
        plugin_name = "acme-v1"

and running ``pytest``. ``params`` gives the factory's keyword arguments (a profile
section's keys); overriding ``make`` builds the component some other way. The fixtures the
suites use (a real face image, a blank image, a private FRIP_HOME) come from
:mod:`frip_engine.testing.pytest_plugin`, which pytest loads through frip-engine's
``pytest11`` entry point. docs/plugins.md describes every check.

Importing this package imports pytest; the engine itself never imports it.
"""

from __future__ import annotations

from frip_engine.testing.adapter import AdapterConformance
from frip_engine.testing.base import Conformance
from frip_engine.testing.executor import ExecutorConformance
from frip_engine.testing.extractor import ExtractorConformance
from frip_engine.testing.gallery_store import GalleryStoreConformance
from frip_engine.testing.he_backend import HEBackendConformance
from frip_engine.testing.key_store import KeyStoreConformance
from frip_engine.testing.small import ClustererConformance, ProtectionConformance

# The suite of each plugin kind, by kind name (frip_engine.kinds).
SUITES: dict[str, type[Conformance]] = {
    "extractor": ExtractorConformance,
    "he_backend": HEBackendConformance,
    "protection": ProtectionConformance,
    "clusterer": ClustererConformance,
    "key_store": KeyStoreConformance,
    "gallery_store": GalleryStoreConformance,
    "adapter": AdapterConformance,
    "executor": ExecutorConformance,
}

__all__ = [
    "SUITES",
    "AdapterConformance",
    "ClustererConformance",
    "Conformance",
    "ExecutorConformance",
    "ExtractorConformance",
    "GalleryStoreConformance",
    "HEBackendConformance",
    "KeyStoreConformance",
    "ProtectionConformance",
]
