"""frip-engine: privacy-preserving 1:N face identification over a CKKS-encrypted gallery.

    import frip_engine
    with frip_engine.open_engine("doors", create=True) as engine:
        engine.enrol("alice", "alice.jpg")
        decision = engine.identify("probe.jpg")

Everything a user needs is a name in this package: ``open_engine``, ``Engine``,
``EnrolItem``, ``EnrolReport``, ``Probe``, ``VendorTemplate``, ``Decision``,
``Candidate``, ``list_engines`` and the typed errors (``FripError`` and its
subclasses). Importing this package loads nothing heavy: the engine's names are imported
on first use, plugins and their dependencies when an engine needs them.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

from frip_engine.decision import Candidate, Decision
from frip_engine.errors import (
    BackendError,
    CorruptionError,
    DuplicateSubjectError,
    EmbeddingError,
    EngineClosedError,
    FripError,
    ImageError,
    InputError,
    KeyStoreError,
    KeyStoreUnavailableError,
    MissingFileError,
    NoFaceError,
    NotFoundError,
    NotOnePersonError,
    PluginError,
    ProfileError,
    SecurityError,
    StoreError,
    SubjectError,
    UnknownSubjectError,
    WorkerStartError,
)

if TYPE_CHECKING:
    from frip_engine.api import open_engine
    from frip_engine.engine import Engine, EnrolItem, EnrolReport, list_engines
    from frip_engine.probe import Probe, VendorTemplate

__version__ = "0.1.0"

# Names whose modules load numpy and the plugin machinery: imported on first access.
_LAZY = {
    "open_engine": "frip_engine.api",
    "Engine": "frip_engine.engine",
    "EnrolItem": "frip_engine.engine",
    "EnrolReport": "frip_engine.engine",
    "list_engines": "frip_engine.engine",
    "Probe": "frip_engine.probe",
    "VendorTemplate": "frip_engine.probe",
}
__all__ = [
    "BackendError",
    "Candidate",
    "CorruptionError",
    "Decision",
    "DuplicateSubjectError",
    "EmbeddingError",
    "Engine",
    "EngineClosedError",
    "EnrolItem",
    "EnrolReport",
    "FripError",
    "ImageError",
    "InputError",
    "KeyStoreError",
    "KeyStoreUnavailableError",
    "MissingFileError",
    "NoFaceError",
    "NotFoundError",
    "NotOnePersonError",
    "PluginError",
    "Probe",
    "ProfileError",
    "SecurityError",
    "StoreError",
    "SubjectError",
    "UnknownSubjectError",
    "VendorTemplate",
    "WorkerStartError",
    "__version__",
    "list_engines",
    "open_engine",
]


def __getattr__(name: str) -> object:
    """Import an exported name's module on first access (PEP 562)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'frip_engine' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value  # later accesses skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
