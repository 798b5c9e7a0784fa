"""What the ``ray`` executor's actors are built from: the engine's setup without its
public context (small enough for Ray to pass inline, so a restarted actor depends on no
object in the object store, ray#53727), the context read back from the gallery store and
checked against the engine's fingerprint. Used by the shards and the key-service actors."""

from __future__ import annotations

from dataclasses import replace

from frip_engine.errors import StoreError
from frip_engine.parallel import WorkerSetup, context_fingerprint


def lean(setup: WorkerSetup) -> tuple[WorkerSetup, str]:
    """``setup`` without its public context (MBs), and that context's SHA-256 (hex): an
    actor's constructor arguments small enough for Ray to pass inline, so a restarted
    actor depends on no object in the object store (ray#53727); the actor reads the
    context from the gallery store (:func:`public_setup`)."""
    return replace(setup, public_context=b""), context_fingerprint(setup.public_context)


def public_setup(setup: WorkerSetup, fingerprint: str) -> WorkerSetup:
    """``setup`` with the public context of its key version read from its gallery store.
    StoreError unless that context's SHA-256 is ``fingerprint`` (the engine's): a store
    of another engine or key, whose blocks must not be served."""
    from frip_engine import plugins

    store = plugins.create("gallery_store", setup.gallery_store, **setup.gallery_store_params)
    store.bind(setup.engine_dir)
    context = store.public_context(setup.key_version)
    if context_fingerprint(context) != fingerprint:
        raise StoreError(
            f"the gallery store this actor opened ({store.describe()}) has another public "
            f"context for HE key v{setup.key_version} than the engine's: it belongs to "
            "another engine or key; refusing its blocks"
        )
    return replace(setup, public_context=context)
