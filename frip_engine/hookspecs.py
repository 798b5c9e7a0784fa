"""The plugin contract: every hook a plugin may implement.

Registration hooks receive a ``register`` callback (the simonw/llm pattern): a plugin
calls ``register(name, factory, ...)`` once per component it offers
(:class:`~frip_engine.contracts.Register`, typed by the kind's protocol; which hook serves
which kind is in :mod:`frip_engine.kinds`). Event hooks are called after the engine has
committed a change, so an audit or linkage plugin never sees an event that did not happen.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pluggy import HookimplMarker, HookspecMarker

if TYPE_CHECKING:
    import typer

    from frip_engine.contracts import (
        Adapter,
        Clusterer,
        Executor,
        Extractor,
        GalleryStore,
        HEBackend,
        KeyStore,
        Protection,
        Register,
    )
    from frip_engine.decision import Decision

hookspec = HookspecMarker("frip_engine")
hookimpl = HookimplMarker("frip_engine")


@hookspec
def register_extractors(register: Register[Extractor]) -> None:
    """Register face feature extractors (image -> embedding)."""


@hookspec
def register_he_backends(register: Register[HEBackend]) -> None:
    """Register homomorphic-encryption backends (encrypted gallery and scoring)."""


@hookspec
def register_protections(register: Register[Protection]) -> None:
    """Register template protections applied before encryption."""


@hookspec
def register_clusterers(register: Register[Clusterer]) -> None:
    """Register clusterers that partition the gallery and route probes."""


@hookspec
def register_key_stores(register: Register[KeyStore]) -> None:
    """Register key stores that keep the HE secret key wrapped."""


@hookspec
def register_gallery_stores(register: Register[GalleryStore]) -> None:
    """Register gallery stores that persist encrypted blocks and the slot map."""


@hookspec
def register_adapters(register: Register[Adapter]) -> None:
    """Register vendor adapters that translate vendor templates to embeddings."""


@hookspec
def register_executors(register: Register[Executor]) -> None:
    """Register executors that score the encrypted gallery and encrypt new blocks (in the
    engine's process, in worker processes, on a cluster); built as ``factory(setup,
    **params)`` (:class:`~frip_engine.contracts.Executor`)."""


@hookspec
def register_commands(cli: typer.Typer) -> None:
    """Add commands to the ``frip`` CLI (a typer.Typer app)."""


@hookspec
def frip_enrolled(engine: str, subject_id: str, block_id: int, slot: int) -> None:
    """A subject was committed to an engine's gallery."""


@hookspec
def frip_identified(engine: str, decision: Decision) -> None:
    """A probe was identified; ``decision`` is a Decision (scores and subject ids, no embedding)."""


@hookspec
def frip_removed(engine: str, subject_id: str) -> None:
    """A subject was erased from an engine's gallery."""
