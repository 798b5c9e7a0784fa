"""Executor ``ray``: score the encrypted gallery in shard actors on a Ray cluster.

``[executor] plugin = "ray"``, ``shards = N`` (default 2), ``address`` (``"auto"``: the
cluster this machine belongs to, from ``RAY_ADDRESS`` or the last ``ray start``;
``"host:port"``: a head node's GCS; ``"ray://host:port"``: Ray Client), and optionally
``placement``: one Ray custom resource name per shard (a node started with
``ray start --resources '{"shard_node_a": 1}'`` offers ``shard_node_a``), which pins the
shard to the nodes offering it; without it the shards are spread over the cluster.
``num_cpus`` (default 0.5) is what each shard reserves in Ray's scheduler,
``timeout`` (seconds, default 60) how long a call waits for a shard, and
``encrypt_workers`` (default 1) the local encryption processes, and ``cache_dir`` (default
the node's ``$FRIP_RESIDUE_DIR``, else ``frip-residues-<uid>`` in its temp dir) where
shards keep their residue files (:meth:`RayExecutor.details` lists them, node by node).

What runs where (docs/scale.md has the whole table):

- A shard actor (one per shard, any node) holds PUBLIC material only: the engine's public
  context and the encrypted blocks it owns, loaded into the HE backend's matcher. It never
  sees the secret key, a decrypted score, an enrolled embedding or a subject id. With the
  fast scorer it also keeps each loaded block's raw residues (ciphertext, public) in a
  private file on its node (:mod:`~frip_plugins.executors._residue_cache`) and, restarted,
  maps those files instead of reading and parsing the store's blobs. It gets
  probe payloads (as the engine's probe mode makes them: the probe template in ``plain``
  mode, a ciphertext in ``encrypted`` mode) and answers score ciphertexts, which only a
  key service can decrypt: its node's key-service actor
  (:mod:`~frip_plugins.executors._ray_keyservice`, :meth:`RayExecutor.decide_many`) when
  the engine's key store is reachable from the nodes, else the coordinator's. The
  scoring itself is the worker code of :mod:`frip_engine.parallel` (``_score_many``:
  every probe of a batch scored in one pass per block), run in the actor's process.
- Blocks are placed on shards by rendezvous (highest-random-weight) hashing of the block
  id over the shard names (:func:`owner`): deterministic, so a restarted shard knows its
  blocks without asking anyone, and adding or removing a shard moves only the blocks that
  the added shard wins or the removed one held (about 1/N of them).
- Shards read their blocks from the GALLERY STORE themselves, as the ``processes``
  workers do, not through Ray's object store from the coordinator. Why: a block is tens of
  MB (67 MB for a full 4,096-slot 512-d block), so shipping every block from the
  coordinator would make the coordinator's network link the bottleneck of every start and
  every restart, and would make a restart depend on the coordinator; read from the store,
  a restarted shard reloads on its own, in parallel with the others, and the store's
  revision and checksum checks are the same as everywhere else. A node must therefore
  reach the gallery store: the ``postgres`` store across machines (or a ``sqlite`` file
  on a filesystem the nodes share); a shard that cannot open it fails every call with
  that StoreError (a clear error, not a retry loop).
- Each shard caches its blocks by (block id, revision) under the single HE key version
  it was started for, so by (block id, revision, key version): it refuses a job of
  another key version (StoreError), refuses a store whose public context is not its own
  (another engine or key: StoreError), and never scores a revision other than the one the
  coordinator's BlockInfo names: a newer revision in the cache or the store is reloaded,
  a moved one fails the call with StoreError (retry), never an older answer.
- Encryption of new blocks (enrolment) does NOT go to the shards: the rows are embeddings
  in the clear, which must not cross the network or land in Ray's object store (which
  spills to disk). They are encrypted in ``encrypt_workers`` local processes
  (:class:`~frip_engine.parallel.ParallelScorer`, the ``processes`` executor's
  mechanics); only ciphertext reaches the store, and the shards read it from there.

Faults: a shard that dies (killed, out of memory, its node lost) fails the call in
flight with WorkerLostError (503 ``worker_lost``, retry): the coordinator never answers
from the shards that did answer. Ray restarts the actor (``max_restarts = -1``), which
loads its blocks from the store again in its constructor and serves the next call; a
shard pinned to a lost node comes back when a node offering its resource joins. A
node's key-service actor is pinned to its node alike (its placement resource, else hard
node affinity): killed, it restarts there, beside its shards; its node lost, the next
call after the failed one starts key services beside the shards' new nodes. A call
that waits longer than ``timeout`` for a shard fails alike. A cluster that does not
answer, or runs another Ray or Python version, is an ExecutorConnectError (exit 4). A
shard whose blocks exceed its node's available memory does not load them: every call
answers a ProfileError that says how much it needs and has (instead of the kernel killing
it mid-load and Ray restarting it in a loop).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import socket
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from contextlib import suppress
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from frip_engine import parallel
from frip_engine.contracts import (
    BlockInfo,
    Executor,
    KeyAccess,
    Register,
    Requirement,
    ShardStatus,
    Shortlist,
)
from frip_engine.errors import (
    ExecutorConnectError,
    FripError,
    ProfileError,
    StoreError,
    WorkerLostError,
)
from frip_engine.hookspecs import hookimpl
from frip_engine.parallel import EncryptJob, ParallelScorer, WorkerSetup, context_fingerprint
from frip_plugins.executors._ray_keyservice import Job, NodeKeyService, merge
from frip_plugins.executors._ray_keyservice import options as key_service_options
from frip_plugins.executors._ray_public import lean, public_setup
from frip_plugins.executors._residue_cache import (
    ResidueCache,
    default_dir,
    engine_dir_name,
    inspect,
    remove_folder,
)

NAMESPACE = "frip"
MAX_SHARDS = 256
PLACEMENT_SHARE = 0.001  # of a node's custom resource per shard: many shards fit on a node
CONNECT_SECONDS = 5.0  # how long a "host:port" address may take to accept a connection
START_SECONDS = 600.0  # how long a new executor waits for its shards to load their blocks
MAX_NUM_CPUS = 1024.0  # per shard; the cluster itself is checked once joined
MAX_TIMEOUT_S = 86_400.0  # a day: beyond it ray.get overflows, and nobody waits that long
STATUS_SECONDS = 5.0  # how long status() waits for a shard before calling it unhealthy
KEY_SERVICE = "frip-keyservice"  # the prefix of a key-service actor's Ray name
_STATES = {"ALIVE": "alive", "RESTARTING": "restarting", "DEAD": "dead"}
_joined: str | None = None  # the address this process joined its Ray cluster at


def owner(block_id: int, shards: Sequence[str]) -> str:
    """The shard that holds block ``block_id``: the one of ``shards`` (names) with the
    highest weight SHA-256(name, block id) (rendezvous hashing). The same on every
    process; removing a shard moves only its own blocks, adding one only those it wins."""

    def weight(name: str) -> bytes:
        return hashlib.sha256(f"{name}\x00{block_id}".encode()).digest()

    return max(shards, key=weight)


def _check_number(key: str, value: object, high: float) -> None:
    """ProfileError unless ``value`` is a real number in (0, ``high``] (no bool, text,
    NaN or infinity: Ray would refuse them only at the first call)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 0 < value <= high
    ):
        raise ProfileError(f"{key} must be a number above 0 and at most {high:g}, not {value!r}")


def available_memory() -> int | None:
    """Bytes this node can still give a process without swapping (Linux ``MemAvailable``
    in /proc/meminfo), or None where the kernel does not say."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _check_memory(name: str, blocks: Sequence[BlockInfo]) -> None:
    """ProfileError (exit 4; every call of the shard answers it) if ``blocks`` (their
    stored bytes, ~ the residues a shard holds) exceed what its node has available: a
    clear answer instead of the kernel killing the shard and Ray restarting it forever."""
    needed = sum(info.size_bytes for info in blocks)
    available = available_memory()
    if available is not None and needed > available:
        raise ProfileError(
            f"shard {name} needs {needed / 1e9:.2f} GB for its {len(blocks)} blocks, but its "
            f"node ({socket.gethostname()}) has {available / 1e9:.2f} GB available: add nodes, "
            "or more shards spread over nodes (placement), or free memory on that node"
        )


class Shard:
    """One shard: a Ray actor process holding the public context and its blocks.

    Built (and rebuilt after a crash) as ``Shard(setup, name, shards, fingerprint,
    cache_dir)`` (``setup`` as :func:`lean` makes it; without ``fingerprint``, its own
    context's): it opens the gallery store, reads the public context of
    ``setup.key_version`` there, which must be the engine's (:func:`public_setup`; else
    every call answers StoreError), then loads every block it owns (:func:`owner`) so it
    serves at full speed from its first call: mapped from its residue file in
    ``cache_dir`` (:class:`ResidueCache`) where that holds the store's revision, else read
    from the store and written there."""

    def __init__(
        self,
        setup: WorkerSetup,
        name: str,
        shards: list[str],
        fingerprint: str | None = None,
        cache_dir: str | None = None,
    ) -> None:
        self._broken: FripError | None = None
        self._cache: ResidueCache | None = None
        try:
            expected = fingerprint or context_fingerprint(setup.public_context)
            # parallel's worker state, without its owner watch: a shard's life is Ray's (it
            # ends with the coordinator that owns it), so the watch is pointed at itself
            parallel._start(replace(public_setup(setup, expected), owner_pid=os.getpid()))
            store = parallel._worker["gallery_store"]
            stored = [info for info in store.blocks() if info.key_version == setup.key_version]
            mine = [info for info in stored if owner(info.block_id, shards) == name]
            _check_memory(name, mine)
            root = Path(cache_dir) if cache_dir else default_dir()
            self._cache = ResidueCache(root, setup.engine_dir, expected, setup.key_version)
            self._cache.prune({info.block_id: info.revision for info in stored})
            for info in mine:
                self._load(info)
        except FripError as exc:
            self._broken = exc

    def _load(self, info: BlockInfo) -> None:
        """Load one block: mapped from the residue cache where it holds this revision,
        else read from the store (and cached for the next start)."""
        assert self._cache is not None
        matcher = parallel._worker["matcher"]
        key = (info.block_id, info.revision)
        block = self._cache.load(matcher, *key)
        if block is not None:
            parallel._worker["blocks"][info.block_id] = (info.revision, block)
            parallel._worker["sizes"][info.block_id] = info.size_bytes
            return
        self._cache.save(parallel._block(info.block_id, info.revision), *key)

    def score(
        self,
        blocks: list[tuple[int, int, int]],
        groups: list[tuple[bytes, ...]],
        which: list[int],
    ) -> list[list[bytes | FripError]] | FripError:
        """Each (block id, revision, key version)'s scores for the probe payloads
        ``groups[which[i]]``, or the FripError that fails the whole call (a block that
        moved in the store, a key version not this shard's)."""
        if self._broken is not None:
            return self._broken
        try:
            return [
                parallel._score_many(key_version, block_id, revision, groups[group])
                for (block_id, revision, key_version), group in zip(blocks, which, strict=True)
            ]
        except FripError as exc:
            return exc

    def held(self) -> tuple[str, str, int, dict[int, int]] | FripError:
        """(Ray node id, node IP, process id, block id -> serialised bytes held)."""
        if self._broken is not None:
            return self._broken
        import ray

        pid, held = parallel._held()
        return ray.get_runtime_context().get_node_id(), ray.util.get_node_ip_address(), pid, held  # type: ignore[no-untyped-call]


_HOST = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\]")


def _split_address(address: object) -> tuple[str, int]:
    """(host, port) of a ``"host:port"`` or ``"ray://host:port"`` address (an IPv6 host in
    brackets); ProfileError for anything else (no host, no port, a port out of 1-65535)."""
    where = address.removeprefix("ray://") if isinstance(address, str) else ""
    host, _, port = where.rpartition(":")
    plain = _HOST.fullmatch(host) is not None  # no scheme (http://), path or user part
    if not plain or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ProfileError(
            'address must be "auto", "host:port" or "ray://host:port" (port 1-65535), '
            f"not {address!r}"
        )
    return host.strip("[]"), int(port)


def _check_address(address: str) -> None:
    """Raise ExecutorConnectError unless a Ray cluster answers at ``address`` within
    CONNECT_SECONDS: a TCP connection, then a gRPC call to the GCS (``host:port``: Ray's
    ``NodeInfoGcsService.GetClusterId``) or a ready gRPC channel (``ray://``: the Ray Client
    server), through Ray's own channel maker (RAY_USE_TLS, token authentication). Without
    it, ``ray.init`` at a port that is not Ray's (an HTTP server, a silent one) retries for
    minutes while Ray's C++ client floods stderr with "Failed to connect to GCS"."""
    host, port = _split_address(address)
    refused = f"no Ray cluster answers at {address}"
    try:
        socket.create_connection((host, port), CONNECT_SECONDS).close()
    except OSError as exc:
        raise ExecutorConnectError(
            f"{refused} ({exc.strerror or exc}); start one (ray start --head) or fix "
            "[executor] address"
        ) from exc
    import grpc
    from ray._private.grpc_utils import init_grpc_channel
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    channel = init_grpc_channel(f"{host}:{port}" if ":" not in host else f"[{host}]:{port}")
    try:
        if address.startswith("ray://"):
            grpc.channel_ready_future(channel).result(timeout=CONNECT_SECONDS)
        else:
            stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)  # type: ignore[no-untyped-call]
            request = gcs_service_pb2.GetClusterIdRequest()  # type: ignore[attr-defined]
            stub.GetClusterId(request, timeout=CONNECT_SECONDS)
    except (grpc.RpcError, grpc.FutureTimeoutError) as exc:
        if isinstance(exc, grpc.Call) and exc.code() == grpc.StatusCode.UNAUTHENTICATED:
            return  # a GCS that wants a token: ray.init says so
        raise ExecutorConnectError(
            f"{refused} within {CONNECT_SECONDS:g} s (the port accepts connections, but no "
            "Ray GCS answers there: another service's port, or a Ray head node still "
            "starting): give the head's GCS address (ray start --head --port), or "
            '"ray://host:port" for a Ray Client server'
        ) from exc
    finally:
        channel.close()


def resolve_address(address: str) -> str:
    """The cluster ``address`` names: itself, or for ``"auto"`` the ``RAY_ADDRESS``
    environment variable, else the cluster the last ``ray start`` on this machine recorded
    (Ray's ``ray_current_cluster`` file). Never Ray's legacy ``auto`` fallback, which joins
    any cluster found running on the machine (another user's, a test's) and would send it
    probe payloads. Raises ExecutorConnectError when ``auto`` finds no recorded cluster."""
    if address != "auto":
        return address
    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"]
    from ray._private import utils  # Ray's own reader of what `ray start` recorded

    recorded = utils.read_ray_address()
    if not recorded:
        raise ExecutorConnectError(
            '[executor] address = "auto", but no Ray cluster was started on this machine '
            "(no RAY_ADDRESS, nothing recorded by `ray start --head`): start one, or name "
            'its head in [executor] address = "host:port"'
        )
    return str(recorded)


def _connect(address: str) -> str:
    """Join the Ray cluster at ``address`` (see :func:`resolve_address`) as a driver in
    namespace NAMESPACE (once per process; later engines share the connection) and return
    the address joined. ExecutorConnectError if it cannot."""
    import ray

    global _joined
    where = resolve_address(address)
    _check_address(where)
    if ray.is_initialized():
        if where != _joined:
            raise ExecutorConnectError(
                f"this process has joined the Ray cluster at {_joined} already and "
                f"cannot join {where} too: one process, one Ray cluster"
            )
        return where
    try:
        ray.init(
            address=where,
            namespace=NAMESPACE,
            log_to_driver=False,
            logging_level=logging.WARNING,
        )
    except Exception as exc:  # ConnectionError, a version mismatch (RuntimeError), ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExecutorConnectError(
            f"cannot join the Ray cluster at {where!r}: {first} (the cluster must run "
            f"the same Ray and Python versions as this process: Ray {ray.__version__})"
        ) from exc
    _joined = where
    return where


class RayExecutor:
    """Shard actors on a Ray cluster; see the module's docstring."""

    name = "ray"

    @staticmethod
    def check_params(params: Mapping[str, Any]) -> None:
        """Raise ProfileError for a value out of range (the profile's loader calls this, so
        that a bad section fails when the engine is created or opened, before any Ray)."""
        shards = params.get("shards", 2)
        if isinstance(shards, bool) or not isinstance(shards, int) or not 1 <= shards <= MAX_SHARDS:
            raise ProfileError(f"shards must be an integer from 1 to {MAX_SHARDS}, not {shards!r}")
        placement = params.get("placement")
        if placement is not None and len(placement) != shards:
            raise ProfileError(
                f"placement names {len(placement)} resources for {shards} shards: "
                "give one Ray custom resource name per shard"
            )
        _check_number("num_cpus", params.get("num_cpus", 0.5), MAX_NUM_CPUS)
        _check_number("timeout", params.get("timeout", 60.0), MAX_TIMEOUT_S)
        if placement is not None and not all(isinstance(p, str) and p for p in placement):
            raise ProfileError(f"placement must name Ray custom resources, not {placement!r}")
        if params.get("address", "auto") != "auto":
            _split_address(params["address"])
        workers = params.get("encrypt_workers", 1)
        if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= 64:
            raise ProfileError(f"encrypt_workers must be an integer from 1 to 64, not {workers!r}")

    @staticmethod
    def warnings(params: Mapping[str, Any], key_store: str) -> list[str]:
        """One line if ``key_store`` (the engine's key store plugin) is one whose secrets a
        Ray cluster exposes (``file``: its sealed key file and FRIP_PASSPHRASE in the nodes'
        environment; ``memory``: the key in a process on the cluster): Ray authenticates no
        client by default, so whoever reaches its ports runs code on its nodes. A warning,
        not an error: a one-machine cluster for tests is legitimate (docs/scale.md)."""
        if key_store not in ("file", "memory"):
            return []
        return [
            f"executor 'ray' with the '{key_store}' key store: Ray does not authenticate "
            "clients by default, so anyone who reaches the cluster's ports (or logs in to a "
            "node) can run code there and read FRIP_PASSPHRASE and the key files; use a "
            "'pkcs11' key store (a token on each node) on a cluster only trusted hosts "
            "reach, with Ray TLS (docs/scale.md, who holds what)"
        ]

    def __init__(
        self,
        setup: WorkerSetup,
        shards: int = 2,
        address: str = "auto",
        placement: list[str] | None = None,
        num_cpus: float = 0.5,
        timeout: float = 60.0,
        encrypt_workers: int = 1,
        cache_dir: str | None = None,
    ) -> None:
        self.check_params(
            {
                "shards": shards,
                "placement": placement,
                "num_cpus": num_cpus,
                "timeout": timeout,
                "encrypt_workers": encrypt_workers,
                "address": address,
            }
        )
        import ray

        _connect(address)
        if placement:
            offered = ray.cluster_resources()  # type: ignore[no-untyped-call]
            missing = sorted({p for p in placement if p not in offered})
            if missing:
                raise ProfileError(
                    f"placement names {missing}, which no node of the Ray cluster "
                    "offers (ray start --resources '{\"NAME\": 1}')"
                )
        nodes = ray.nodes()  # type: ignore[no-untyped-call]
        most = max((n["Resources"].get("CPU", 0.0) for n in nodes if n["Alive"]), default=0.0)
        if num_cpus > most:
            raise ProfileError(
                f"num_cpus = {num_cpus:g} per shard, but no node of the Ray cluster offers more "
                f"than {most:g} CPUs: no shard could start; lower num_cpus or add bigger nodes"
            )
        self._setup = setup
        self._timeout = float(timeout)
        self._cache_dir = cache_dir
        self._names = [f"shard-{i}" for i in range(shards)]
        remote: Any = ray.remote(Shard)
        self._lean = lean(setup)  # passed inline: each actor reads the context from the store
        self._actors: list[Any] = []
        for i, shard in enumerate(self._names):
            options: dict[str, Any] = {
                "num_cpus": num_cpus,
                "max_restarts": -1,  # a dead shard is started again, and reloads its blocks
                "max_task_retries": 0,  # a call it was running fails: never answered twice
            }
            if placement:
                options["resources"] = {placement[i]: PLACEMENT_SHARE}
            else:
                options["scheduling_strategy"] = "SPREAD"
            self._actors.append(
                remote.options(**options).remote(
                    self._lean[0], shard, self._names, self._lean[1], cache_dir
                )
            )
        self._encryptor: ParallelScorer | None = None
        self._encrypt_workers = encrypt_workers
        self._closed = False
        self._owners: dict[int, int] = {}  # block id -> index of the shard holding it
        self._placed = bool(placement)
        self._deciders: dict[str, Any] | None = None  # node group -> its key-service actor
        self._access: KeyAccess | None = None
        self._regroup = False  # a decide call failed: check the shards' nodes are alive
        self._slots_for: Any = None  # the slot arrays last sent, and their ref
        self._slots_ref: Any = None
        try:  # every shard up, its blocks loaded (a shard that cannot start: a clear error)
            started = self._wait(
                [actor.held.remote() for actor in self._actors], "start", START_SECONDS
            )
        except FripError:
            self.close()
            raise
        # each shard's node group: its placement resource, else the Ray node it started on
        self._groups = list(placement) if placement else [node for node, *_ in started]

    def _wait(self, refs: list[Any], what: str, seconds: float | None = None) -> list[Any]:
        """Every ref's value, in order; WorkerLostError (retry) if a shard died or did not
        answer within ``seconds`` (default: the timeout; the calls still queued are
        cancelled), StoreError if a shard failed otherwise; a FripError a shard answered
        is raised."""
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError, RayError, RayTaskError

        try:
            answers = ray.get(refs, timeout=seconds or self._timeout)
        except RayError as exc:
            for ref in refs:
                with suppress(Exception):  # already finished or gone: nothing to cancel
                    ray.cancel(ref)
            if isinstance(exc, RayTaskError) and not isinstance(exc.cause, RayActorError):
                raise StoreError(f"a shard failed to {what}: {exc.cause!r}") from exc
            if isinstance(exc, RayActorError) and exc.actor_init_failed:
                lines = [line.strip() for line in str(exc).splitlines() if "Error" in line]
                raise ExecutorConnectError(
                    f"a Ray shard could not start on its node ({lines[-1] if lines else exc}): "
                    "every node needs the engine's Python, frip-engine and its plugins, in "
                    "the same versions"
                ) from exc
            why = (
                f"no answer within {seconds or self._timeout:g} s"
                if isinstance(exc, GetTimeoutError)
                else type(exc).__name__
            )
            raise WorkerLostError(
                f"a Ray shard did not {what} ({why}); nothing was decided: retry (Ray restarts "
                "the shard, which reloads its blocks from the store)"
            ) from exc
        for answer in answers:
            if isinstance(answer, FripError):
                raise answer
        return list(answers)

    def _score_calls(
        self, jobs: list[tuple[BlockInfo, tuple[bytes, ...]]]
    ) -> tuple[dict[int, list[int]], list[Any]]:
        """One ``Shard.score`` call per shard holding any of the jobs' blocks, the distinct
        payload tuples sent once through Ray's object store: (shard index -> its job
        indices, in job order; the calls' refs, in the same order)."""
        import ray

        groups: dict[tuple[bytes, ...], int] = {}
        mine: dict[int, list[int]] = {}  # shard index -> job indices
        for j, (info, payloads) in enumerate(jobs):
            groups.setdefault(payloads, len(groups))
            mine.setdefault(self._shard_of(info.block_id), []).append(j)
        sent = ray.put(list(groups))
        refs = [
            self._actors[s].score.remote(
                [(jobs[j][0].block_id, jobs[j][0].revision, jobs[j][0].key_version) for j in js],
                sent,
                [groups[jobs[j][1]] for j in js],
            )
            for s, js in mine.items()
        ]
        return mine, refs

    def _shard_of(self, block_id: int) -> int:
        """The index of the shard that holds ``block_id`` (:func:`owner`, remembered)."""
        found = self._owners.get(block_id)
        if found is None:
            found = self._owners[block_id] = self._names.index(owner(block_id, self._names))
        return found

    def score_many(
        self, jobs: list[tuple[BlockInfo, tuple[bytes, ...]]]
    ) -> list[list[bytes | FripError]]:
        """Each job's per-probe scores (see :class:`~frip_engine.contracts.Executor`): one
        call per shard holding any of the blocks; the whole call fails if any shard fails."""
        if not jobs:
            return []
        mine, refs = self._score_calls(jobs)
        answers: list[list[bytes | FripError]] = [[] for _ in jobs]
        for js, scored in zip(mine.values(), self._wait(refs, "score"), strict=True):
            for j, per_probe in zip(js, scored, strict=True):
                answers[j] = per_probe
        return answers

    def decide_many(
        self,
        payloads: list[bytes],
        jobs: list[tuple[BlockInfo, list[int]]],
        slots: Any,
        top_k: int,
        access: KeyAccess,
    ) -> list[Shortlist | FripError]:
        """Score and decide on the nodes (:class:`~frip_engine.contracts.DecidingExecutor`):
        each shard scores its blocks, its node's key-service actor
        (:class:`~frip_plugins.executors._ray_keyservice.NodeKeyService`) decrypts them
        there (the ciphertexts stay in that node's object store) and answers top-k lists,
        merged here. One key-service call per node per batch; the whole call fails if any
        shard or key-service actor fails (WorkerLostError: retry)."""
        if not jobs:
            return [([], {}) for _ in payloads]
        import ray

        deciders = self._key_services(access)
        if self._slots_for is not slots:  # a new slot map: sent to the object store once
            self._slots_ref = ray.put({b: np.asarray(a, dtype=np.int64) for b, a in slots.items()})
            self._slots_for = slots
        mine, refs = self._score_calls(
            [(info, tuple(payloads[p] for p in who)) for info, who in jobs]
        )
        nodes: dict[str, list[tuple[list[Job], Any]]] = {}
        for (s, js), ref in zip(mine.items(), refs, strict=True):
            shard_jobs = [(j, jobs[j][0].block_id, jobs[j][1]) for j in js]
            nodes.setdefault(self._groups[s], []).append((shard_jobs, ref))
        decided = [
            deciders[group].decide.remote(
                [shard_jobs for shard_jobs, _ in calls],
                len(payloads),
                self._slots_ref,
                top_k,
                *[ref for _, ref in calls],
            )
            for group, calls in nodes.items()
        ]
        position = {info.block_id: j for j, (info, _) in enumerate(jobs)}
        try:
            answers = self._wait(decided, "decide")
        except WorkerLostError:
            self._regroup = not self._placed  # a lost node: its key service cannot return
            raise
        return merge(answers, position, len(payloads), top_k)

    def _key_services(self, access: KeyAccess) -> dict[str, Any]:
        """The key-service actor of each node group of the shards (started on first use,
        with ``access``; the same access afterwards: it is the engine's). Without
        placement a group is a Ray node, and its key service is pinned there; after a
        failed call, if a group's node is gone (its shards restarted on other nodes, its
        key service cannot), the groups are read again from the shards and a key service
        started beside each."""
        import ray

        if self._regroup:  # after a failed call: are the shards still on the same nodes?
            self._regroup = False
            alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}  # type: ignore[no-untyped-call]
            if not alive.issuperset(self._groups):
                held = self._wait([actor.held.remote() for actor in self._actors], "start")
                self._groups = [node for node, *_ in held]
                for decider in (self._deciders or {}).values():
                    with suppress(Exception):  # on the lost node: gone already
                        ray.kill(decider, no_restart=True)
                self._deciders = None
        if self._deciders is None or self._access != access:
            remote: Any = ray.remote(NodeKeyService)
            self._deciders = {
                group: remote.options(
                    name=self._key_service_name(group),
                    **key_service_options(
                        group if self._placed else None,
                        None if self._placed else group,
                        PLACEMENT_SHARE,
                    ),
                ).remote(*self._lean, access)
                for group in dict.fromkeys(self._groups)
            }
            self._access = access
        return self._deciders

    def _key_service_name(self, group: str) -> str:
        """A key-service actor's Ray name, unique in the namespace, saying what it serves:
        ``frip-keyservice:<engine>:<engine dir hash>:k<key version>:<node group>:<nonce>``
        (what :meth:`details` reads back, from any process)."""
        engine = Path(self._setup.engine_dir).name
        where = engine_dir_name(self._setup.engine_dir)
        nonce = os.urandom(4).hex()
        return f"{KEY_SERVICE}:{engine}:{where}:k{self._setup.key_version}:{group}:{nonce}"

    def encrypt_steps(
        self, jobs: list[EncryptJob], key_version: int
    ) -> Future[list[tuple[str, bytes]]]:
        """Every job's block, encrypted in a local process (never on a shard: the rows are
        embeddings in the clear)."""
        if self._encryptor is None:
            self._encryptor = ParallelScorer(self._setup, self._encrypt_workers)
        return self._encryptor.encrypt_steps(jobs, key_version)

    def status(self) -> list[ShardStatus]:
        """Each shard's node (Ray node id and IP, process id), blocks and bytes held;
        unhealthy with why when it is restarting, dead or busy past STATUS_SECONDS."""
        import ray
        from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayError

        shards = []
        for name, actor in zip(self._names, self._actors, strict=True):
            if self._closed:
                shards.append(ShardStatus(name, "", (), 0, False, "closed"))
                continue
            try:
                answer = ray.get(actor.held.remote(), timeout=STATUS_SECONDS)
            except RayError as exc:
                why = {
                    ActorUnavailableError: "restarting (Ray is starting it again)",
                    GetTimeoutError: f"busy or restarting: no answer within {STATUS_SECONDS:g} s",
                }.get(type(exc), f"lost: {type(exc).__name__}")
                shards.append(ShardStatus(name, "", (), 0, False, why))
                continue
            if isinstance(answer, FripError):
                shards.append(ShardStatus(name, "", (), 0, False, str(answer)))
                continue
            node_id, ip, pid, held = answer
            node = f"{node_id[:16]} {ip} pid {pid}"
            shards.append(ShardStatus(name, node, tuple(sorted(held)), sum(held.values()), True))
        return shards

    def details(self) -> dict[str, list[dict[str, Any]]]:
        """What ``frip cluster status`` shows beside the shards, cluster-wide (whichever
        process started them), as JSON-ready rows:

        - ``key_services``: every frip key-service actor in the cluster's namespace that is
          starting, alive or restarting, or dead while the driver that started it runs:
          ``engine``, ``key_version`` (from its Ray name; ``this_engine`` whether it is
          this engine's directory), ``node`` (Ray node id, IP), ``state`` (alive,
          restarting, dead, starting), ``restarts`` (Ray's count), ``pid``.
        - ``residue_files``: per alive node, every residue file in that node's cache
          directory (``cache_dir``, else the node's :func:`default_dir`), checked by
          :func:`~frip_plugins.executors._residue_cache.inspect` on the node: ``node``,
          ``dir``, ``engine``, ``block``, ``revision``, ``key_version``, ``bytes``, and
          ``state``: ``ok``; ``DAMAGED`` (``why``: wrong size, SHA-256, mode, or a key
          version or context not this engine's current); or ``orphaned``, a file of an
          engine whose directory on this host no longer exists (a deleted engine: shards
          never use it; remove it with ``frip cluster status ENGINE --prune-orphans``).
          A node that does not answer within the timeout is one row, ``unreachable``.

        Uses Ray's GCS actor table (``ray._private.state.actors``: the state API needs the
        dashboard, which clusters may run without)."""
        from ray._private import state

        alive_jobs = {job["JobID"] for job in state.jobs() if not job["IsDead"]}  # type: ignore[no-untyped-call]
        mine = engine_dir_name(self._setup.engine_dir)
        services = []
        for actor in state.actors().values():
            parts = actor["Name"].split(":")
            if actor["ActorClassName"] != "NodeKeyService" or parts[0] != KEY_SERVICE:
                continue
            if actor["State"] == "DEAD" and actor["JobID"] not in alive_jobs:
                continue  # ended with the engine that started it
            address = actor["Address"]
            services.append(
                {
                    "engine": parts[1],
                    "this_engine": parts[2] == mine,
                    "key_version": int(parts[3][1:]),
                    "node": f"{address['NodeID'][:16]} {address['IPAddress']}",
                    "state": _STATES.get(actor["State"], "starting"),
                    "restarts": actor["NumRestarts"],
                    "pid": actor["Pid"],
                }
            )
        current = {mine: f"k{self._setup.key_version}-{self._lean[1][:16]}"}
        files = self._on_nodes(_node_files, current)
        host = socket.gethostname()
        for row in files:
            if row["state"] != "ok":
                continue
            if not row["engine_host"]:  # a live engine's shard writes one when it starts
                row["state"], row["why"] = "orphaned", "no engine.json: no engine opened it since"
            elif row["engine_host"] == host and not Path(row["engine"]).exists():
                row["state"], row["why"] = "orphaned", "its engine no longer exists"
        return {"key_services": services, "residue_files": files}

    def prune_orphans(self) -> int:
        """Remove, on every alive node, the residue files :meth:`details` calls orphaned
        (of engines whose directory on this host no longer exists); the bytes removed."""
        orphans = [r for r in self.details()["residue_files"] if r["state"] == "orphaned"]
        folders = sorted({r["folder"] for r in orphans})
        return sum(r for r in self._on_nodes(_remove_folders, folders) if isinstance(r, int))

    def _on_nodes(self, task: Any, argument: Any) -> list[Any]:
        """``task(cache_dir, argument)`` run once on every alive Ray node (no CPU
        reserved), its rows concatenated; a node that fails or does not answer within
        the timeout is one row saying so."""
        import ray
        from ray.exceptions import RayError
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        remote: Any = ray.remote(task)
        nodes = [n for n in ray.nodes() if n["Alive"]]  # type: ignore[no-untyped-call]
        refs = [
            remote.options(
                num_cpus=0,
                scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False),
            ).remote(self._cache_dir, argument)
            for n in nodes
        ]
        rows: list[Any] = []
        for node, ref in zip(nodes, refs, strict=True):
            try:
                rows.extend(ray.get(ref, timeout=self._timeout))
            except RayError as exc:  # the node was lost, or is busy past the timeout
                with suppress(Exception):  # already finished or gone: nothing to cancel
                    ray.cancel(ref)
                where = f"{node['NodeID'][:16]} {node['NodeManagerAddress']}"
                rows.append({"node": where, "state": "unreachable", "why": type(exc).__name__})
        return rows

    def close(self) -> None:
        """Kill the shard actors (no restart) and the local encryption workers."""
        if self._closed:
            return
        self._closed = True
        import ray

        for actor in [*self._actors, *(self._deciders or {}).values()]:
            with suppress(Exception):  # the cluster is gone already: nothing left to stop
                ray.kill(actor, no_restart=True)
        if self._encryptor is not None:
            self._encryptor.close()


def _node_files(cache_dir: str | None, current: dict[str, str]) -> list[dict[str, Any]]:
    """Run on a node (:meth:`RayExecutor._on_nodes`): its residue files, checked
    (:func:`~frip_plugins.executors._residue_cache.inspect`), each with ``node`` and
    ``dir``, ``state`` ``ok`` or ``DAMAGED`` and ``why``."""
    import ray

    root = Path(cache_dir) if cache_dir else default_dir()
    node = f"{ray.get_runtime_context().get_node_id()[:16]} {ray.util.get_node_ip_address()}"  # type: ignore[no-untyped-call]
    rows = []
    for row in inspect(root, current):
        problem = row.pop("problem")
        state = "DAMAGED" if problem else "ok"
        rows.append({"node": node, "dir": str(root), **row, "state": state, "why": problem})
    return rows


def _remove_folders(cache_dir: str | None, folders: list[str]) -> list[int]:
    """Run on a node: remove the engine directories ``folders`` of its residue cache (as
    :func:`inspect` names them) with their files; the bytes removed."""
    root = Path(cache_dir) if cache_dir else default_dir()
    return [remove_folder(root, folder) for folder in folders]


@hookimpl
def register_executors(register: Register[Executor]) -> None:
    register(
        "ray",
        RayExecutor,
        summary="shard actors on a Ray cluster (shards = N, address, placement)",
        requires=(Requirement("ray", "'frip-engine[ray]'"),),
    )
