"""The ``ray`` executor's trusted side on a node: a key-service actor that decides the
blocks its node's shards scored (the issue's "decrypt where they are made").

One :class:`NodeKeyService` actor per node group (the shards sharing a ``placement``
resource, or without placement the shards on one Ray node) runs beside those shards. It
alone, on its node, reaches the key store (``[key_store]``: the ``file`` store's sealed
file, a PKCS#11 token), unwraps the HE secret key for one call and wipes its copy
(:meth:`~frip_engine.keyservice.KeyService.unlocked`). Its shards' score ciphertexts reach
it through its node's object store, without crossing to the coordinator; it answers each
probe's top-k as (score, (block id, slot)): no subject id (the coordinator holds the slot
map) and no score ciphertext. A shard never holds the secret key: it never receives a
:class:`~frip_engine.contracts.KeyAccess` and never calls this actor.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from frip_engine.contracts import KeyAccess, Shortlist
from frip_engine.errors import FripError
from frip_engine.parallel import WorkerSetup
from frip_plugins.executors._ray_public import public_setup

# per block a shard scored: (position in the engine's block order, block id, probe indices)
Job = tuple[int, int, list[int]]


class NodeKeyService:
    """A trusted key-service actor: ``NodeKeyService(setup, fingerprint, access)`` (the
    setup and fingerprint as :func:`~frip_plugins.executors._ray_public.lean` makes them) reads
    the engine's public context from the gallery store, builds the HE backend and key
    store (bound to ``setup.engine_dir``) and a
    :class:`~frip_engine.keyservice.KeyService` of ``setup.key_version``; a store or key
    store it cannot open makes every call answer that FripError."""

    def __init__(self, setup: WorkerSetup, fingerprint: str, access: KeyAccess) -> None:
        from frip_engine import plugins
        from frip_engine.keyservice import KeyService

        self._broken: FripError | None = None
        try:
            setup = public_setup(setup, fingerprint)
            he_backend = plugins.create("he_backend", setup.he_backend, **setup.he_backend_params)
            key_store = plugins.create("key_store", access.key_store, **access.key_store_params)
            key_store.bind(setup.engine_dir)
            self._service = KeyService(
                he_backend, key_store, access.engine_id, setup.key_version, setup.public_context
            )
        except FripError as exc:
            self._broken = exc

    def decide(
        self,
        jobs: list[list[Job]],
        probes: int,
        slots: dict[int, np.ndarray],
        top_k: int,
        *scored: list[list[bytes | FripError]] | FripError,
    ) -> list[Shortlist | FripError | None] | FripError:
        """Each probe's shortlist over the blocks of ``scored`` (one shard call's answer
        per entry, its jobs in ``jobs``), None for a probe that wanted none of them, or
        the probe's own FripError (its payload failed to score on its first such block,
        in block order, or its scores are out of bounds). A FripError a shard answered
        for its whole call is answered as is (the coordinator raises it)."""
        if self._broken is not None:
            return self._broken
        for shard_answer in scored:
            if isinstance(shard_answer, FripError):
                return shard_answer
        merged = sorted(
            (job, per_probe)
            for shard_jobs, shard_answer in zip(jobs, scored, strict=True)
            for job, per_probe in zip(shard_jobs, shard_answer, strict=True)  # type: ignore[arg-type]
        )
        batch: dict[int, list[tuple[int, bytes]]] = {}
        failed: dict[int, FripError] = {}
        for (_, block_id, who), per_probe in merged:
            for probe, blob in zip(who, per_probe, strict=True):
                if isinstance(blob, FripError):
                    failed.setdefault(probe, blob)
                elif probe not in failed:
                    batch.setdefault(probe, []).append((block_id, blob))
        wanted = [p for p in batch if p not in failed]
        try:
            decided = self._service.shortlist_many([batch[p] for p in wanted], slots, top_k)
        except FripError as exc:  # the key store (KeyStoreError): the whole call
            return exc
        answers: list[Shortlist | FripError | None] = [failed.get(p) for p in range(probes)]
        for probe, answer in zip(wanted, decided, strict=True):
            answers[probe] = answer
        return answers

    def pid(self) -> int:
        """This actor's process id (``frip cluster status``, the tests)."""
        import os

        return os.getpid()


def merge(
    answers: list[list[Shortlist | FripError | None]],
    position: dict[int, int],
    probes: int,
    top_k: int,
) -> list[Shortlist | FripError]:
    """Each probe's decision over every node's shortlist (``answers``: per node, per
    probe): its top-k by score, ties in the engine's block order (``position``: block id
    -> position) then each node's own order, i.e. exactly
    :meth:`~frip_engine.keyservice.KeyService.decide_many`'s order; a probe any node
    failed gets that node's error (the first node's, in ``answers`` order). Timings: per
    stage, the slowest node's (the nodes decide in parallel)."""
    merged: list[Shortlist | FripError] = []
    for probe in range(probes):
        found: list[tuple[float, tuple[int, int]]] = []
        timings: dict[str, float] = {}
        error: FripError | None = None
        for node in answers:
            answer = node[probe]
            if isinstance(answer, FripError):
                error = error or answer
            elif answer is not None:
                found.extend(answer[0])
                for stage, seconds in answer[1].items():
                    timings[stage] = max(timings.get(stage, 0.0), seconds)
        if error is not None:
            merged.append(error)
            continue
        found.sort(key=lambda pair: (-pair[0], position[pair[1][0]]))
        merged.append((found[:top_k], timings))
    return merged


def options(resource: str | None, node_id: str | None, share: float) -> dict[str, Any]:
    """Ray actor options placing a key-service actor beside its shards: on the nodes
    offering ``resource`` (their placement; ``share`` of it), else on node ``node_id``
    (hard affinity: killed, it restarts on that node, beside its shards, never on another
    node; if the node itself is gone it cannot restart, its call fails WorkerLostError and
    the executor starts key services beside the shards' new nodes: see
    :meth:`~frip_plugins.executors.ray.RayExecutor.decide_many`).
    It reserves no CPU (decryption is ~10% of scoring) and restarts when it dies, failing
    the call in flight (WorkerLostError, retry)."""
    chosen: dict[str, Any] = {"num_cpus": 0, "max_restarts": -1, "max_task_retries": 0}
    if resource is not None:
        chosen["resources"] = {resource: share}
    elif node_id is not None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        chosen["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id, soft=False)
    return chosen
