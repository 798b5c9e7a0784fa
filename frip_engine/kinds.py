"""The plugin kinds: one row per kind, the one table the registry, the profile and the
engine read.

A kind's ``name`` keys the registry (``frip plugins``, ``plugins.create``) and names the
attribute of :class:`~frip_engine.profile.Components` holding the engine's instance;
``section`` is the profile table that chooses its plugin (None: not chosen per engine);
``hook`` the registration hook a plugin implements to offer components of this kind;
``protocol`` what those components provide (:mod:`frip_engine.contracts`); ``default``
the plugin a profile gets when its section names none.
"""

from __future__ import annotations

from dataclasses import dataclass

from frip_engine.contracts import (
    Adapter,
    Clusterer,
    Executor,
    Extractor,
    GalleryStore,
    HEBackend,
    KeyStore,
    Protection,
)


@dataclass(frozen=True)
class Kind:
    """One kind of plugin component (see the module's docstring for each field)."""

    name: str
    section: str | None
    hook: str
    protocol: type
    default: str | None

    @property
    def label(self) -> str:
        """The name in words, for messages: ``he backend``."""
        return self.name.replace("_", " ")


KINDS: tuple[Kind, ...] = (
    Kind("extractor", "extractor", "register_extractors", Extractor, "arcface"),
    Kind("he_backend", "he", "register_he_backends", HEBackend, "tenseal"),
    Kind("protection", "protection", "register_protections", Protection, "none"),
    Kind("clusterer", "clusterer", "register_clusterers", Clusterer, "single"),
    Kind("key_store", "key_store", "register_key_stores", KeyStore, "file"),
    Kind("gallery_store", "gallery_store", "register_gallery_stores", GalleryStore, "sqlite"),
    Kind("adapter", None, "register_adapters", Adapter, None),
    Kind("executor", "executor", "register_executors", Executor, "local"),
)
# The kinds an engine's profile chooses, by section: Components' fields in order, then the
# executor, which the engine builds itself once its keys are known (it needs the public
# context: :meth:`frip_engine.engine.Engine._executor`).
SECTIONS: dict[str, Kind] = {k.section: k for k in KINDS if k.section is not None}
# Each kind by its name (what the registry and messages are keyed on).
BY_NAME: dict[str, Kind] = {k.name: k for k in KINDS}
